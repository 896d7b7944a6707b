"""Reconciler scans of 100,000 wavs in one folder, against a bare os.scandir + stat of the same folder.

    .venv/bin/python bench/reconciler_scan.py --files 100000 --runs 3

warm: a pass over unchanged files (the reconciler's cache is full); cold: a fresh reconciler that
opens and validates every file (one process, so the rate is per core).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.reconciler import PassResult, Reconciler  # noqa: E402


def make(folder: Path, n: int) -> None:
    (folder / "wavs").mkdir(parents=True)
    template = tempfile.SpooledTemporaryFile()
    sf.write(template, np.zeros(2205, dtype=np.int16), 22050, format="WAV", subtype="PCM_16")
    template.seek(0)
    data = template.read()
    for i in range(n):
        with open(folder / "wavs" / f"r_{i:07d}.wav", "wb") as f:
            f.write(data)


def bare(folder: Path) -> float:
    t = time.perf_counter()
    with os.scandir(folder / "wavs") as it:
        for d in it:
            d.stat(follow_symlinks=False)
    return time.perf_counter() - t


def scan(rec: Reconciler) -> tuple[float, int]:
    r = PassResult()
    t = time.perf_counter()
    rec.scan(22050, time.time(), r)
    return time.perf_counter() - t, r.opened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true")
    a = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-scan-", dir=os.environ.get("BENCH_DIR")))
    try:
        make(folder, a.files)
        rows, warm_ratio, cold_rate = [], [], []
        for r in range(a.runs):
            cold_rec = Reconciler(None, folder)  # type: ignore[arg-type]  # scan() needs no daemon
            t_cold, opened = scan(cold_rec)
            assert opened == a.files
            t_bare = bare(folder)
            t_warm, reopened = scan(cold_rec)
            assert reopened == 0
            warm_ratio.append(t_warm / t_bare)
            cold_rate.append(a.files / t_cold)
            rows.append(f"| {r + 1} | {t_bare:.3f} | {t_warm:.3f} | {t_warm / t_bare:.2f}x | {t_cold:.2f} | "
                        f"{a.files / t_cold:,.0f} |")
            print(f"  run {r}: bare {t_bare:.3f} s, warm {t_warm:.3f} s ({t_warm / t_bare:.2f}x), "
                  f"cold {t_cold:.2f} s ({a.files / t_cold:,.0f} files/s)", file=sys.stderr, flush=True)
        print(f"warm pass {statistics.median(warm_ratio):.2f}x the bare scandir+stat; "
              f"cold pass {statistics.median(cold_rate):,.0f} files/s on one core")
        if not a.no_doc:
            from report import update
            update("reconciler", f"Reconciler: {a.files:,} wavs in one folder",
                   "| run | bare scandir+stat s | warm pass s | ratio | cold pass s | cold files/s (one core) |\n"
                   "|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) +
                   f"\n\nMedians: warm pass **{statistics.median(warm_ratio):.2f}x** the bare scan; cold pass "
                   f"**{statistics.median(cold_rate):,.0f} files/s** per core.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
