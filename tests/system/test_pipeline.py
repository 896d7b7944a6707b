"""The pipeline end to end: real espeak audio, the seed's desyncs, broken plugins, signals, systemd units."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
import soundfile as sf

from tests.support.books import make_dataset, read_state
from tests.support.processes import BIN, ROOT, cli, wait_for
from tests.support.runs import ENV, RUN, assert_books_consistent, run_pipeline


def test_end_to_end_espeak(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hola mundo.\nEl perro corre por el parque.\n¿Dónde está la estación?\n"
                     "Buenas noches a todos.\nUno, dos, tres.\nLa lluvia en Sevilla es una maravilla.\n")
    ds = tmp_path / "voz"
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "finished: completed 6/6" in r.stderr
    doc = assert_books_consistent(ds)
    assert doc["sample_rate"] == 22050
    for e in doc["entries"]:
        audio, sr = sf.read(ds / "wavs" / f"{e['filename']}.wav", dtype="int16")
        assert sr == 22050 and np.abs(audio).max() > 1000, "silence is not speech"
        assert e["duration_seconds"] > 0.5
    assert cli("verify", "--dataset", str(ds)).stdout.strip().endswith("0 sync errors")
    out = tmp_path / "metadata.csv"
    cli("export", "--dataset", str(ds), "--out", str(out), check=True)
    rows = list(csv.reader(out.read_text(encoding="utf-8").splitlines(), delimiter="|", quoting=csv.QUOTE_NONE))
    assert len(rows) == 6 and all(len(r) == 3 and (ds / "wavs" / f"{r[0]}.wav").exists() for r in rows)
    manifest = [orjson.loads(x) for x in cli("export", "--format", "jsonl", "--dataset", str(ds),
                                              check=True).stdout.splitlines()]
    assert all(abs(sf.info(m["audio_filepath"]).duration - m["duration"]) < 0.002 for m in manifest)
    # a second run of the same command resumes: nothing to do, same result
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts))
    assert r.returncode == 0 and "completed 6/6" in r.stderr


def test_reconcile_repairs_the_seeds_four_desyncs(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"texto {i}" for i in range(1, 9)], name="casiopy")
    d = start_daemon(ds)
    gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--synth", "tone"],
                           stderr=subprocess.DEVNULL)
    wait_for(lambda: read_state(ds)["completed"] == 8, 30, "all completed")
    gen.send_signal(signal.SIGTERM)
    assert gen.wait(30) == 0
    assert d.kill(signal.SIGTERM) == 0
    # 1. audio on disk marked pending: an old script edits the file while no daemon runs
    doc = read_state(ds)
    doc["entries"][1].update(status="pending", duration_seconds=None)
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    wavs = ds / "wavs"
    (wavs / "casiopy_0003.wav").unlink()                                   # 2. completed, audio missing
    data = (wavs / "casiopy_0004.wav").read_bytes()
    (wavs / "casiopy_0004.wav").write_bytes(data[: len(data) // 2])       # 3. truncated wav
    (wavs / "casiopy_0005.wav").write_bytes(os.urandom(5000))             # 4. random bytes
    start_daemon(ds)
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 1 and r.stdout.strip().endswith("4 sync errors"), r.stdout
    once = cli("reconcile", "--once", "--dataset", str(ds), tool="pipeline", check=True)
    for name in ("casiopy_0002", "casiopy_0003", "casiopy_0004", "casiopy_0005"):
        assert name in once.stdout
    status = {e["filename"]: e["status"] for e in read_state(ds)["entries"]}
    assert status["casiopy_0002"] == "completed"
    assert status["casiopy_0003"] == status["casiopy_0004"] == status["casiopy_0005"] == "pending"
    quarantined = sorted(p.name.split(".")[0] for p in (ds / "quarantine").iterdir())
    assert quarantined == ["casiopy_0004", "casiopy_0005"]
    assert len((ds / "quarantine").joinpath(next((ds / "quarantine").glob("casiopy_0005.*")).name)
               .read_bytes()) == 5000, "quarantined files are kept whole"
    assert cli("verify", "--dataset", str(ds)).returncode == 0


def test_reconcile_marks_a_wav_on_disk_completed(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"], name="casiopy")
    sf.write(ds / "wavs" / "casiopy_0001.wav", np.zeros(11025, dtype=np.int16), 22050)
    sf.write(ds / "wavs" / "stray.wav", np.zeros(100, dtype=np.int16), 22050)
    start_daemon(ds)
    once = cli("reconcile", "--once", "--dataset", str(ds), tool="pipeline", check=True)
    assert "pending -> completed" in once.stdout and "stray.wav" in once.stdout
    e = read_state(ds)["entries"][0]
    assert (e["status"], e["duration_seconds"]) == ("completed", 0.5)
    assert (ds / "wavs" / "stray.wav").exists()


def test_plugin_that_raises_and_one_that_kills_itself(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    lines = [f"normal text number {i}" for i in range(30)]
    lines[5] = "please RAISE here"
    lines[17] = "please KILL the process"
    texts.write_text("\n".join(lines) + "\n")
    ds = tmp_path / "flaky"
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2",
                     "--synth", "tests.support.plugins:Flaky", "--lease-seconds", "2", "--reconcile-interval", "1")
    assert r.returncode == 3, r.stderr
    assert "restarted" in r.stderr and "SIGKILL" in r.stderr
    doc = assert_books_consistent(ds)
    failed = {e["id"]: e for e in doc["entries"] if e["status"] == "failed"}
    assert set(failed) == {6, 18}
    assert "RuntimeError" in failed[6]["error"] and failed[6]["attempts"] == 3
    # charged exactly: the text that kills its generator, three times, and no other entry ever
    assert failed[18]["error"] == "the generator died while synthesizing this text" and failed[18]["attempts"] == 3
    assert doc["completed"] == 28
    assert all(e["attempts"] == 1 for e in doc["entries"] if e["status"] == "completed")
    assert re.search(r"failed: 6 flaky_0006: RuntimeError", r.stderr)


def test_sigterm_mid_run_then_resume(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"sentence {i}\n" for i in range(300)))
    ds = tmp_path / "slow"
    args = ["--dataset", str(ds), "--texts", str(texts), "--workers", "2",
            "--synth", "tests.support.plugins:Slow", "--synth-opt", "delay=0.03"]
    p = subprocess.Popen([str(RUN), *args], stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (ds / "generation_state.json").exists() and read_state(ds)["completed"] >= 30,
             60, "some progress")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "run the same command again to resume" in err
    doc = assert_books_consistent(ds)
    assert doc["generating"] == 0 and 30 <= doc["completed"] < 300
    assert not (ds / "statesvc.sock").exists()
    r = run_pipeline(*args)
    assert r.returncode == 0, r.stderr
    assert assert_books_consistent(ds)["completed"] == 300


def test_batch_plugin_gets_batches(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"text {i}\n" for i in range(64)))
    calls = tmp_path / "calls.txt"
    r = run_pipeline("--dataset", str(tmp_path / "b"), "--texts", str(texts),
                     "--synth", "tests.support.plugins:Batched", "--synth-opt", f"calls_file={calls}", "--batch", "16")
    assert r.returncode == 0, r.stderr
    sizes = [int(x) for x in calls.read_text().split()]
    assert sum(sizes) == 64 and max(sizes) == 16 and len(sizes) <= 8
    assert_books_consistent(tmp_path / "b")


def test_bad_synth_and_bad_input_are_one_line_errors(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("hola\n")
    for args in (["--synth", "nope"], ["--synth", "nomodule:X"], ["--synth-opt", "novalue"]):
        r = run_pipeline("--dataset", str(tmp_path / "x"), "--texts", str(texts), *args)
        assert r.returncode not in (0, 3) and "Traceback" not in r.stderr, r.stderr
    r = run_pipeline("--dataset", str(tmp_path / "y"))
    assert r.returncode == 2 and "--texts" in r.stderr


def test_systemd_units_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units: dict[str, dict[str, list[str]]] = {}  # instance name -> [Service] key -> its values
    for unit in sorted((ROOT / "deploy" / "systemd").glob("*.service")):
        text = unit.read_text().replace("/opt/tts-pipeline/.venv/bin", str(BIN))
        name = unit.name.replace("@.service", "@0.service")
        (tmp_path / name).write_text(text)
        service = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
        keys: dict[str, list[str]] = {}
        for line in service.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                keys.setdefault(key, []).append(value)
        units[name] = keys
    assert len(units) == 5
    paths = [str(tmp_path / name) for name in units]
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    daemon = (ROOT / "deploy" / "systemd" / "tts-statesvc.service").read_text()
    assert "Type=notify" in daemon and "WatchdogSec=" in daemon and "Restart=always" in daemon
    assert "CUDA_VISIBLE_DEVICES=%i" in (ROOT / "deploy" / "systemd" / "tts-generate@.service").read_text()
    # Hardened: a dedicated user, and the sandbox every unit must keep (docs/DEPLOY.md).
    required = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes"}
    for name, keys in units.items():
        assert keys.get("User", [""])[-1] not in ("", "root", "0"), f"{name}: no dedicated User="
        for key, value in required.items():
            assert keys.get(key, [None])[-1] == value, f"{name}: {key}={value} missing"
        # systemd expands no variables in ReadWritePaths=: it must name a real absolute folder.
        rw = keys.get("ReadWritePaths", [])
        assert rw and all(v.startswith("/") for v in rw), f"{name}: ReadWritePaths={rw}"
    # GPUs: the generator and the checker need /dev/nvidia* and W+X memory (CUDA's JIT); the others neither.
    gpu = ("tts-generate@0.service", "tts-check@0.service")
    for name in gpu:
        assert "PrivateDevices" not in units[name] and "MemoryDenyWriteExecute" not in units[name], name
    for name, keys in units.items():
        if name not in gpu:
            assert keys.get("PrivateDevices") == ["yes"] and keys.get("MemoryDenyWriteExecute") == ["yes"], name
    # Exposure (systemd-analyze security, 0 safe .. 10 unsafe), measured with systemd 252: 1.2 for
    # each unit but the generator's 1.7 (9.6 each before hardening). --offline needs systemd 250+.
    limits = dict.fromkeys(gpu, 2.0)
    for name, path in zip(units, paths, strict=True):
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", path],
                           capture_output=True, text=True, cwd=tmp_path)
        if r.returncode != 0 and "offline" in r.stderr:
            break  # this systemd-analyze has no --offline: the units cannot be scored from files
        m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", r.stdout)
        assert r.returncode == 0 and m, r.stdout + r.stderr
        assert float(m.group(1)) <= limits.get(name, 1.5), f"{name}: exposure {m.group(1)}"
