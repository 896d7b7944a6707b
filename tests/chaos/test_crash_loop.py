"""Crash loop: kill the daemon, generators and reconciler with SIGKILL at random during a real run.

The synthesizer plugin also raises on some texts and kills its own process on others. The run
must finish by itself with books that pass the seed's own verification.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.runs import ENV, RUN, assert_books_consistent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def pids(pattern: str, min_age: float) -> list[int]:
    """Processes matching ``pattern`` that have run at least ``min_age`` seconds."""
    p = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    now = time.time()
    out = []
    for pid in (int(x) for x in p.stdout.split()):
        try:
            if now - os.stat(f"/proc/{pid}").st_mtime >= min_age:
                out.append(pid)
        except FileNotFoundError:
            pass
    return out


def test_crash_loop_2000_entries_4_generators(tmp_path: Path) -> None:
    rng = random.Random(11)
    lines = [f"frase número {i} del conjunto" for i in range(2000)]
    for i in rng.sample(range(2000), 20):
        lines[i] += " RAISE"
    for i in rng.sample(range(2000), 6):
        lines[i] += " KILL"
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(lines) + "\n")
    ds = tmp_path / "chaos"
    log = tmp_path / "synth.log"
    proc = subprocess.Popen([str(RUN), "--dataset", str(ds), "--texts", str(texts), "--workers", "4",
                             "--synth", "tests.support.plugins:Chaotic", "--synth-opt", f"log={log}",
                             "--synth-opt", "delay=0.1", "--lease-seconds", "3", "--reconcile-interval", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    kills: collections.Counter = collections.Counter()
    stop = threading.Event()

    def killer() -> None:
        targets = {"daemon": f"statesvc serve --dataset {ds}", "generator": f"pipeline generate --dataset {ds}",
                   "reconciler": f"pipeline reconcile --dataset {ds} --interval"}
        # A fixed rotation (half of the rounds aim at the daemon), not a weighted draw: how many
        # daemons die then follows the run's length alone, not the luck of the draw.
        rotation = ["daemon", "generator", "daemon", "reconciler", "daemon", "generator"]
        rounds = 0
        while not stop.wait(rng.uniform(0.8, 2.5)):
            role = rotation[rounds % len(rotation)]
            rounds += 1
            found = pids(targets[role], rng.uniform(0.3, 2.0))
            if found:
                try:
                    os.kill(rng.choice(found), signal.SIGKILL)
                    kills[role] += 1
                except ProcessLookupError:
                    pass

    t = threading.Thread(target=killer)
    t.start()
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        stop.set()
        t.join()
    print(f"chaos: kills {dict(kills)}")
    assert kills["daemon"] >= 8, f"only {kills['daemon']} daemon kills; the run was too short"
    assert proc.returncode == 3, err[-3000:]
    doc = assert_books_consistent(ds)
    failed = {e["text"] for e in doc["entries"] if e["status"] == "failed"}
    assert all("RAISE" in t or "KILL" in t for t in failed), failed
    assert doc["completed"] + doc["failed"] == 2000 and doc["pending"] == doc["generating"] == 0
    # no text was synthesized by two live processes at the same moment
    spans = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, text, start, end = line.split("\t")
        spans[text].append((float(start), float(end), pid))
    for text, s in spans.items():
        s.sort()
        for (_a0, a1, p), (b0, _, q) in zip(s, s[1:], strict=False):
            assert b0 >= a1 or p == q, f"{text!r} synthesized by {p} and {q} at once"
