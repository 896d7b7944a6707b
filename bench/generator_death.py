"""What one generator death costs a run, supervised (bin/run-pipeline) and unsupervised (the systemd layout).

Supervised: bin/run-pipeline with 2 workers, where one generator SIGKILLs itself once on a text
near the end of the run (a CUDA crash), against the same run with no death. The supervisor tells
the daemon at once; the text under way is charged, the rest of that generator's leases go back.

Unsupervised: a daemon and 2 `pipeline generate` processes started by hand, nothing restarts
them. One dies (SIGKILL) on a text near the end, against the same run where it stops cleanly at
the same text (SIGTERM: it gives its leases back). The difference is what the death costs: the
dead generator's leases wait for their expiry (the lease, 10 s by default, renewed by a
heartbeat thread every 2 s).

Runs are interleaved. Run:

    .venv/bin/python bench/generator_death.py --entries 300 --delay 0.02 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}", "PIPELINE_PYTHON": sys.executable}

from pipeline.synth.tone import Tone  # noqa: E402


class DiesOnce(Tone):
    """``delay`` seconds per text; on a text containing DIE, the first process to get there does
    ``how`` to itself (kill: SIGKILL, stop: SIGTERM, none: nothing). ``marker`` makes it once."""

    def __init__(self, marker: str, how: str = "kill", delay: str = "0.02", **kw: str):
        super().__init__(**kw)
        self.marker, self.how, self.delay = marker, how, float(delay)

    def synthesize(self, text: str) -> np.ndarray:
        if "DIE" in text and self.how != "none":
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL if self.how == "kill" else signal.SIGTERM)
        time.sleep(self.delay)
        return super().synthesize(text)


def texts(n: int, at: float) -> list[str]:
    die = int(n * at)
    return [f"texto número {i}" + (" DIE" if i == die else "") for i in range(n)]


def supervised(folder: Path, lines: list[str], how: str, delay: float) -> float:
    tf = folder.parent / "t.txt"
    tf.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    p = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(folder), "--texts", str(tf),
                        "--workers", "2", "--synth", "generator_death:DiesOnce",
                        "--synth-opt", f"marker={folder.parent / 'died'}", "--synth-opt", f"how={how}",
                        "--synth-opt", f"delay={delay}"], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"run-pipeline failed ({p.returncode}): {p.stderr[-2000:]}")
    return wall


def status(folder: Path) -> dict:
    import orjson
    p = subprocess.run([str(BIN / "statesvc"), "status", "--json", "--dataset", str(folder)],
                       capture_output=True, env=ENV)
    return orjson.loads(p.stdout) if p.returncode == 0 else {}


def unsupervised(folder: Path, lines: list[str], how: str, delay: float) -> float:
    tf = folder.parent / "t.txt"
    tf.write_text("\n".join(lines) + "\n")
    subprocess.run([str(BIN / "statesvc"), "init", "--dataset", str(folder), "--texts", str(tf)],
                   check=True, capture_output=True, env=ENV)
    daemon = subprocess.Popen([str(BIN / "statesvc"), "serve", "--dataset", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    gens = []
    try:
        t0 = time.perf_counter()
        gens = [subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(folder),
                                  "--synth", "generator_death:DiesOnce",
                                  "--synth-opt", f"marker={folder.parent / 'died'}", "--synth-opt", f"how={how}",
                                  "--synth-opt", f"delay={delay}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV) for _ in range(2)]
        while True:
            st = status(folder)
            if st and st["pending"] == 0 and st["generating"] == 0:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > 300:
                raise SystemExit("unsupervised run did not finish in 300 s")
            time.sleep(0.05)
    finally:
        for p in [*gens, daemon]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*gens, daemon]:
            p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=300)
    ap.add_argument("--delay", type=float, default=0.02, help="seconds of synthesis per text")
    ap.add_argument("--at", type=float, default=0.8, help="where in the texts the death comes")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    lines = texts(a.entries, a.at)
    cases = [("supervised", "none", supervised), ("supervised", "kill", supervised),
             ("unsupervised", "stop", unsupervised), ("unsupervised", "kill", unsupervised)]
    times: dict[tuple[str, str], list[float]] = {(c, h): [] for c, h, _ in cases}
    for run in range(a.runs):
        for case, how, fn in cases:
            tmp = Path(tempfile.mkdtemp(prefix="bench-death-", dir=os.environ.get("BENCH_DIR")))
            try:
                times[case, how].append(fn(tmp / "ds", lines, how, a.delay))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"  run {run} {case:>12} {how:>5}: {times[case, how][-1]:.2f} s", file=sys.stderr, flush=True)
    lost_sup = [k - n for k, n in zip(times["supervised", "kill"], times["supervised", "none"], strict=True)]
    lost_uns = [k - s for k, s in zip(times["unsupervised", "kill"], times["unsupervised", "stop"], strict=True)]
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [f"| supervised (bin/run-pipeline) | no death {med['supervised', 'none']:.2f} s | "
            f"SIGKILL {med['supervised', 'kill']:.2f} s | **{statistics.median(lost_sup):+.2f} s** "
            f"({', '.join(f'{x:+.2f}' for x in lost_sup)}) |",
            f"| unsupervised (systemd layout) | clean stop {med['unsupervised', 'stop']:.2f} s | "
            f"SIGKILL {med['unsupervised', 'kill']:.2f} s | **{statistics.median(lost_uns):+.2f} s** "
            f"({', '.join(f'{x:+.2f}' for x in lost_uns)}) |"]
    table = ("| layout | baseline (median) | one death (median) | time lost (median; per run) |\n"
             "|---|---:|---:|---:|\n" + "\n".join(rows))
    print(f"entries={a.entries} delay={a.delay} death at {a.at:.0%} runs={a.runs}\n{table}")
    if not a.no_doc:
        from report import update
        update("generator-death", f"One generator death: {a.entries} entries, 2 generators, death at {a.at:.0%}",
               "One of two generators SIGKILLs itself once on a text near the end (a CUDA crash). Supervised: "
               "against the same run without a death. Unsupervised (no restarts): against the same run where "
               "that generator stops cleanly on the same text (SIGTERM, leases given back), so the difference "
               f"is what the death itself costs. {a.delay * 1000:.0f} ms of synthesis per text; default lease "
               f"(10 s, heartbeats every 2 s).\n\n{table}")


if __name__ == "__main__":
    main()
