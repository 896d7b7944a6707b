"""A GPU box's generators: the writer stage under SIGKILL, one generator per GPU, out-of-memory
batches, length-aware batches that starve nothing. Real daemons, generators and files (the rules alone
are in tests/unit/test_gpu_rules.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.books import make_dataset, read_state
from tests.support.processes import BIN, ROOT, cli, wait_for

RUN = ROOT / "bin" / "run-pipeline"
ENV = {**os.environ, "PIPELINE_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
for _k in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
    ENV.pop(_k, None)


def run_pipeline(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN), *args], capture_output=True, text=True, timeout=timeout, env=env or ENV)


def texts_file(tmp_path: Path, texts: list[str]) -> Path:
    tf = tmp_path / "texts.txt"
    tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return tf


def by_text(ds: Path) -> dict[str, dict]:
    return {e["text"]: e for e in read_state(ds)["entries"]}


# ---- the writer stage: a death while a batch is written and the next synthesized ----------------

def test_sigkill_while_writing_and_synthesizing_charges_only_the_text_under_synthesis(tmp_path: Path) -> None:
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    gate.touch()
    marks.mkdir()
    texts = ["texto uno", "texto dos WRITEHOLD", "texto tres", "texto cuatro", "texto cinco SYNTHHOLD"]
    ds = tmp_path / "ds"
    proc = subprocess.Popen([str(RUN), "--dataset", str(ds), "--texts", str(texts_file(tmp_path, texts)),
                             "--workers", "1", "--batch", "4", "--synth", "tests.support.plugins:HeldWriter",
                             "--synth-opt", f"gate={gate}", "--synth-opt", f"marks={marks}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        # the first batch's second take is held mid-write while the fifth text is under synthesis
        wait_for(lambda: (marks / "writing").exists() and (marks / "synthesizing").exists(), 60,
                 "a batch held mid-write while the next is synthesized")
        pid = int((marks / "writing").read_text())
        assert int((marks / "synthesizing").read_text()) == pid, "one generator does both at once"
        # the batch's four take files exist since its synthesis ended; the first is whole (on disk,
        # fsynced, not yet reported), the other three still empty
        sizes = sorted(p.stat().st_size for p in (ds / "wavs").glob(".take-*.wav"))
        assert len(sizes) == 4 and sizes[:3] == [0, 0, 0] and sizes[3] > 44, sizes
        os.kill(pid, signal.SIGKILL)
        gate.unlink()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    # the supervisor told the daemon: five leases back, only the text under synthesis paid
    assert "its 5 leases are back: entry 5 charged an attempt" in err, err
    entries = by_text(ds)
    assert all(e["status"] == "completed" for e in entries.values()), entries
    assert entries["texto cinco SYNTHHOLD"]["attempts"] == 2  # the death, then its take
    for t in texts[:4]:  # written (adopted) or synthesized but not on disk (back uncharged)
        assert entries[t]["attempts"] == 1, (t, entries[t])
    assert cli("verify", "--dataset", str(ds)).stdout.strip().endswith("0 sync errors")


def test_a_death_while_only_writing_charges_nobody(tmp_path: Path, start_daemon) -> None:
    """Synthesis over, its take held mid-write, nothing next: the generator has told the daemon
    nothing is under synthesis, so its death charges no attempt."""
    from statesvc.client import Client
    from statesvc.endpoints import running
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    gate.touch()
    marks.mkdir()
    ds = make_dataset(tmp_path, ["texto uno WRITEHOLD"])
    start_daemon(ds)
    log = tmp_path / "generate.log"
    with open(log, "wb") as out:
        gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--owner", "gen-a",
                                "--synth", "tests.support.plugins:HeldWriter", "--synth-opt", f"gate={gate}",
                                "--synth-opt", f"marks={marks}", "--log-level", "DEBUG"],
                               stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: (marks / "writing").exists()
                 and "told the daemon nothing is under synthesis" in log.read_text(), 30, "the take held mid-write")
        gen.kill()
        gen.wait(10)
    finally:
        if gen.poll() is None:
            gen.kill()
    with Client(running(ds)["endpoint"], timeout=5.0) as c:
        reply = c.call("died", owner="gen-a")
    assert reply["charged"] == [] and reply["returned"] == [1], reply
    assert read_state(ds)["entries"][0]["attempts"] == 0


def test_a_text_that_kills_before_its_notice_leaves_does_not_charge_the_text_before(
        tmp_path: Path, start_daemon) -> None:
    """The next text's working notice never left the generator (the daemon was away: a notice
    sent just before a death can be lost the same way) and that text killed the generator at
    once. The text before was synthesized but its take not yet written: the daemon, which last
    heard that text was under synthesis, must not charge it."""
    from statesvc.client import Client
    from statesvc.endpoints import running
    write_gate, synth_gate, marks = tmp_path / "write-gate", tmp_path / "synth-gate", tmp_path / "marks"
    write_gate.touch()
    synth_gate.touch()
    marks.mkdir()
    ds = make_dataset(tmp_path, ["texto uno SYNTHHOLD WRITEHOLD", "texto dos KILL"])
    daemon = start_daemon(ds)
    log = tmp_path / "generate.log"
    with open(log, "wb") as out:
        gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--owner", "gen-a",
                                "--synth", "tests.support.plugins:HeldWriter", "--synth-opt", f"gate={write_gate}",
                                "--synth-opt", f"synth_gate={synth_gate}", "--synth-opt", f"marks={marks}"],
                               stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: (marks / "synthesizing").exists(), 30, "the first text under synthesis")
        assert daemon.kill(signal.SIGTERM) == 0, daemon.output()
        synth_gate.unlink()  # the first text's synthesis ends, its take waits to be written
        assert gen.wait(30) == -signal.SIGKILL, log.read_text()
    finally:
        if gen.poll() is None:
            gen.kill()
    start_daemon(ds)
    with Client(running(ds)["endpoint"], timeout=5.0) as c:
        reply = c.call("died", owner="gen-a")
    assert reply["charged"] == [] and sorted(reply["returned"]) == [1, 2], reply
    assert [(e["id"], e["status"], e["attempts"]) for e in read_state(ds)["entries"]] == [
        (1, "pending", 0), (2, "pending", 0)]
    # the first text's take never got past its empty file, which went to stale/; nothing is in wavs/
    assert [(f.name.split(".")[0], f.stat().st_size) for f in (ds / "stale").iterdir()] == [("ds_0001", 0)]
    assert list((ds / "wavs").iterdir()) == []


# ---- --gpus ---------------------------------------------------------------------------------------

def gpus_seen(log: Path) -> list[str]:
    return sorted(line.split()[1] for line in log.read_text().splitlines())


def test_gpus_list_gives_each_generator_its_gpu(tmp_path: Path) -> None:
    log = tmp_path / "seen.log"
    r = run_pipeline("--dataset", str(tmp_path / "ds"), "--texts", str(texts_file(tmp_path, ["a", "b", "c"])),
                     "--gpus", "0,1", "--synth", "tests.support.plugins:GpuSeen", "--synth-opt", f"log={log}",
                     "--synth-opt", "expect=2")
    assert r.returncode == 0, r.stderr
    assert gpus_seen(log) == ["0", "1"]
    assert "generate-0 on GPU 0" in r.stderr and "generate-1 on GPU 1" in r.stderr
    owners = (tmp_path / "ds" / "logs" / "generate-1.log").read_text()
    assert ":generate-1-gpu1:" in owners  # the owner name the daemon and the page show


def test_gpus_all_reads_a_stand_in_nvidia_smi(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\n[ \"$1\" = -L ] || exit 9\n"
                   "echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5a1b2c3d-0000-1111-2222-333344445555)'\n"
                   "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-6b1b2c3d-0000-1111-2222-333344445555)'\n")
    smi.chmod(0o755)
    log = tmp_path / "seen.log"
    env = {**ENV, "PATH": f"{fake}:{ENV['PATH']}"}
    r = run_pipeline("--dataset", str(tmp_path / "ds"), "--texts", str(texts_file(tmp_path, ["a", "b"])),
                     "--gpus", "all", "--per-gpu", "2", "--synth", "tests.support.plugins:GpuSeen",
                     "--synth-opt", f"log={log}", "--synth-opt", "expect=4", env=env)
    assert r.returncode == 0, r.stderr
    assert gpus_seen(log) == ["0", "0", "1", "1"]


@pytest.mark.parametrize("extra, message", [
    ({}, "--gpus all: no GPU found (from nvidia-smi -L)"),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, "--gpus all: no GPU found (from NVIDIA_VISIBLE_DEVICES)"),
    ({"CUDA_VISIBLE_DEVICES": ""}, "--gpus all: no GPU found (from CUDA_VISIBLE_DEVICES)"),
])
def test_gpus_all_without_gpus_is_one_line(tmp_path: Path, extra: dict, message: str) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path), **extra}  # no nvidia-smi anywhere, no GPU variables
    tf = texts_file(tmp_path, ["a"])
    r = subprocess.run([str(BIN / "pipeline"), "run", "--dataset", str(tmp_path / "ds"), "--texts", str(tf),
                        "--gpus", "all", "--synth", "tone"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "ds").exists(), "nothing started"


def test_gpus_with_workers_is_one_line(tmp_path: Path) -> None:
    r = run_pipeline("--dataset", str(tmp_path / "ds"), "--texts", str(texts_file(tmp_path, ["a"])),
                     "--gpus", "0", "--workers", "2", "--synth", "tone")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--gpus replaces --workers" in r.stderr


# ---- out of memory --------------------------------------------------------------------------------

def test_out_of_memory_splits_uncharged_grows_back_and_charges_a_text_alone(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    texts = [f"frase corta número {i}" for i in range(1, 241)]
    texts.insert(2, "una frase HUGE que nunca cabe")
    r = run_pipeline("--dataset", str(tmp_path / "ds"), "--texts", str(texts_file(tmp_path, texts)),
                     "--workers", "1", "--batch", "16", "--max-attempts", "3",
                     "--synth", "tests.support.plugins:OomAbove",
                     "--synth-opt", f"log={log}", "--synth-opt", "refuse=10", "--synth-opt", "seconds_per_char=0.001")
    assert r.returncode == 3, r.stderr  # finished with a failed entry
    entries = by_text(tmp_path / "ds")
    huge = entries.pop("una frase HUGE que nunca cabe")
    assert huge["status"] == "failed" and huge["attempts"] == 3
    assert "CUDA out of memory" in huge["error"]
    assert all(e["status"] == "completed" and e["attempts"] == 1 for e in entries.values())
    calls = [(int(n), ok) for n, ok in (line.split() for line in log.read_text().splitlines())]
    refused = calls[:10]
    assert any(ok == "oom" and n > 4 for n, ok in refused)
    assert all(n <= 4 for n, ok in refused if ok == "ok"), "while refusing, batches of at most 4 passed"
    assert any(n > 4 and ok == "ok" for n, ok in calls[10:]), f"the batch never grew back: {calls}"
    assert max(n for n, ok in calls if ok == "ok") == 16


# ---- length-aware batches --------------------------------------------------------------------------

def test_a_long_text_completes_while_short_ones_keep_coming(tmp_path: Path, start_daemon) -> None:
    long_text = ("una frase muy larga " * 10).strip()
    ds = make_dataset(tmp_path, [f"corta {i}" for i in range(1, 30)] + [long_text]
                      + [f"corta {i}" for i in range(30, 60)])
    start_daemon(ds)
    log = tmp_path / "batches.log"
    added = 0

    def add_shorts() -> None:
        nonlocal added
        added += 1
        more = tmp_path / f"more-{added}.txt"
        more.write_text("\n".join(f"nueva {added}-{j}" for j in range(40)) + "\n")
        cli("add", "--dataset", str(ds), "--texts", str(more), check=True)

    add_shorts()
    # 20 batches of 4 a second: slower than the short texts come in, so the queue never runs dry
    gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--batch", "4",
                            "--synth", "tests.support.plugins:Padded", "--synth-opt", f"log={log}",
                            "--synth-opt", "per_call=0.05"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        def long_done() -> bool:
            add_shorts()  # short texts keep coming while the long one waits
            return log.exists() and long_text in log.read_text()
        wait_for(long_done, 60, "the long text synthesized")
        pending = read_state(ds)["pending"]
    finally:
        gen.send_signal(signal.SIGTERM)
        gen.wait(30)
    batches = log.read_text().splitlines()
    at = next(i for i, b in enumerate(batches) if long_text in b)
    # claimed 30th, it is the oldest in the queue within 30 batches, whatever came after it
    assert at < 30, (at, batches[:at + 1])
    assert pending > 0, "short texts were still waiting: the long one was not just what was left"
