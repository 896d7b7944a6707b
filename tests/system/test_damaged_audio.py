"""Damaged audio: every kind is found by the reconciler and by verify, set back to pending, kept in quarantine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import soundfile as sf

from tests.support.books import make_dataset, read_state
from tests.support.processes import cli

SR = 22050


def damage(wavs: Path, tmp_path: Path) -> dict[str, str]:
    """Write one damaged file per kind; returns filename -> kind."""
    good = np.zeros(SR // 2, dtype=np.int16)
    kinds = {}
    (wavs / "d_0002.wav").write_bytes(b"")
    kinds["d_0002"] = "zero bytes"
    sf.write(wavs / "d_0003.wav", good, SR)
    (wavs / "d_0003.wav").write_bytes((wavs / "d_0003.wav").read_bytes()[:30])
    kinds["d_0003"] = "truncated header"
    (wavs / "d_0004.wav").write_bytes(os.urandom(4000))
    kinds["d_0004"] = "random bytes"
    sf.write(wavs / "d_0005.wav", good, 16000)
    kinds["d_0005"] = "wrong sample rate"
    sf.write(wavs / "d_0006.wav", np.zeros((SR // 2, 2), dtype=np.int16), SR)
    kinds["d_0006"] = "stereo"
    (wavs / "d_0007.wav").unlink()
    (wavs / "d_0007.wav").mkdir()
    kinds["d_0007"] = "a directory"
    outside = tmp_path / "outside.wav"
    sf.write(outside, good, SR)
    (wavs / "d_0008.wav").unlink()
    (wavs / "d_0008.wav").symlink_to(outside)
    kinds["d_0008"] = "symlink out of wavs/"
    data = (wavs / "d_0001.wav").read_bytes()
    sf.write(wavs / "d_0009.wav", good, SR)
    (wavs / "d_0009.wav").write_bytes(data[: len(data) - 1000])
    kinds["d_0009"] = "truncated data"
    return kinds


def test_every_kind_of_damage_is_found_and_quarantined(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(1, 10)], name="d")
    wavs = ds / "wavs"
    doc = read_state(ds)
    for e in doc["entries"]:  # every entry completed by hand, with a good wav
        sf.write(wavs / f"{e['filename']}.wav", np.zeros(SR // 2, dtype=np.int16), SR)
        e.update(status="completed", duration_seconds=0.5, sample_rate=SR)
    doc["sample_rate"] = SR
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    kinds = damage(wavs, tmp_path)
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 1 and r.stdout.strip().endswith(f"{len(kinds)} sync errors"), r.stdout
    for name in kinds:
        assert name in r.stdout, (name, kinds[name])
    start_daemon(ds)
    once = cli("reconcile", "--once", "--dataset", str(ds), tool="pipeline", check=True)
    status = {e["filename"]: e["status"] for e in read_state(ds)["entries"]}
    for name, kind in kinds.items():
        assert status[name] == "pending", (name, kind, once.stdout)
        assert not os.path.lexists(wavs / f"{name}.wav"), (name, kind)
    kept = {p.name.split(".")[0] for p in (ds / "quarantine").iterdir()}
    assert kept == set(kinds), "nothing is deleted: every bad file is in quarantine"
    assert (tmp_path / "outside.wav").exists(), "the symlink's target is never touched"
    assert status["d_0001"] == "completed"
    assert cli("verify", "--dataset", str(ds)).returncode == 0
