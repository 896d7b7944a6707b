"""Batching: --batch 16 against --batch 1 with a plugin shaped like a GPU model.

    .venv/bin/python bench/batching.py --entries 960 --runs 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def run(batch: int, entries: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        texts = tmp / "t.txt"
        texts.write_text("".join(f"texto número {i}\n" for i in range(entries)))
        env = {**os.environ, "PIPELINE_PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "bench")}
        t0 = time.perf_counter()
        p = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(tmp / "ds"), "--texts", str(texts),
                            "--workers", "1", "--synth", "gpu_like:GpuLike", "--batch", str(batch)],
                           capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(p.stderr[-2000:])
        return entries / wall
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=960)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    rates: dict[int, list[float]] = {1: [], 16: []}
    for r in range(a.runs):
        for b in (1, 16):
            rates[b].append(run(b, a.entries))
            print(f"  run {r} batch {b:>2}: {rates[b][-1]:.1f} texts/s", file=sys.stderr, flush=True)
    m1, m16 = statistics.median(rates[1]), statistics.median(rates[16])
    ratios = [b16 / b1 for b1, b16 in zip(rates[1], rates[16], strict=True)]
    print(f"batch 1: {m1:.1f} texts/s  batch 16: {m16:.1f} texts/s  ratio {statistics.median(ratios):.2f}x")
    if not a.no_doc:
        from report import update
        rows = "\n".join(f"| {i + 1} | {x:.1f} | {y:.1f} | {y / x:.2f}x |"
                         for i, (x, y) in enumerate(zip(rates[1], rates[16], strict=True)))
        update("batching", "Batching: `--batch 16` against `--batch 1`",
               f"bin/run-pipeline, 1 generator, {a.entries} entries, plugin `bench/gpu_like.py` (30 ms per call "
               f"+ 1 ms per text, the shape of a GPU model).\n\n| run | batch 1 texts/s | batch 16 texts/s | ratio |\n"
               f"|---:|---:|---:|---:|\n{rows}\n\nMedian ratio **{statistics.median(ratios):.2f}x**.")


if __name__ == "__main__":
    main()
