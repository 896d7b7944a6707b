"""The writer stage's files: every take's file exists from the end of its synthesis (so a death
after it charges that text nothing, see tests/system/test_gpu.py), and a take that is not written
leaves no file behind. Real files, a real ENOSPC (a take path pointing at /dev/full)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.wavs import create_take
from pipeline.writer import DiskTrouble, Failed, Writer, Written
from statesvc import layout
from statesvc.audio import take_path

RATE = 16000


def entries(n: int) -> list[dict]:
    return [{"filename": f"ds_{i:04d}", "token": f"tok{i}", "text_hash": "0" * 16, "rev": 0} for i in range(1, n + 1)]


def dataset(tmp_path: Path) -> Path:
    layout.wavs(tmp_path).mkdir()
    return tmp_path


def tone() -> np.ndarray:
    return np.sin(np.linspace(0, 200, RATE // 4)).astype(np.float32) * 0.3


def test_bad_audio_leaves_no_file_and_the_rest_is_written(tmp_path: Path) -> None:
    ds, batch = dataset(tmp_path), entries(3)
    for e in batch:
        create_take(ds, e["filename"], e["token"])
    assert all(take_path(ds, e["filename"], e["token"]).stat().st_size == 0 for e in batch)
    bad = np.full(100, np.nan, dtype=np.float32)
    out = Writer(ds, RATE).write(batch, [tone(), bad, tone()])
    assert [type(o) for o in out] == [Written, Failed, Written]
    assert "NaN" in str(out[1].error)
    assert sorted(p.name for p in layout.wavs(ds).iterdir()) == [".take-ds_0001.tok1.wav", ".take-ds_0003.tok3.wav"]
    assert all(take_path(ds, e["filename"], e["token"]).stat().st_size > 44 for e in (batch[0], batch[2]))


def test_a_full_disk_gives_the_rest_back_and_leaves_none_of_their_files(tmp_path: Path) -> None:
    ds, batch = dataset(tmp_path), entries(4)
    for e in batch:
        create_take(ds, e["filename"], e["token"])
    full = take_path(ds, batch[1]["filename"], batch[1]["token"])
    full.unlink()
    full.symlink_to("/dev/full")  # writing it fails with ENOSPC, as a full disk does
    out = Writer(ds, RATE).write(batch, [tone()] * 4)
    assert [type(o) for o in out] == [Written, DiskTrouble]
    assert out[1].error.errno == 28 and [e["token"] for e in out[1].unwritten] == ["tok2", "tok3", "tok4"]
    assert [p.name for p in layout.wavs(ds).iterdir()] == [".take-ds_0001.tok1.wav"]
    assert os.path.exists("/dev/full")
