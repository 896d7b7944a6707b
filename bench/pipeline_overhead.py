"""bin/run-pipeline against an ideal loop: the same processes, synthesis and wav writes, no bookkeeping.

The ideal loop splits the texts among W processes; each loads the synthesizer once and writes
every wav through a temp file, fsync and rename. run-pipeline does the same work through the
daemon, the reconciler and W generators, start-up and final reconcile included. Run:

    .venv/bin/python bench/pipeline_overhead.py --synth espeak --entries 2000 --workers 2 --runs 3
    .venv/bin/python bench/pipeline_overhead.py --synth tone --entries 20000 --workers 2 --runs 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

WORDS = ("el sol brilla sobre la montaña nevada mientras los niños juegan en el parque y la música "
         "suena por la ventana abierta de la biblioteca donde mi abuela lee un libro antiguo").split()


def make_texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        k = 6 + i % 9
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k)]
        out.append(" ".join(words).capitalize() + f", número {i}.")
    return out


def ideal_worker(synth: str, texts: list[tuple[str, str]], folder: str) -> None:
    from pipeline.synth import build, to_pcm16
    from statesvc.atomic import write_all
    from statesvc.audio import encode_wav
    model = build(synth, {})
    for name, text in texts:  # what a generator does for a take: encode, temp file, fsync, rename
        data = encode_wav(to_pcm16(model.synthesize(text)), model.sample_rate)
        tmp, final = os.path.join(folder, f".tmp-{name}.wav"), os.path.join(folder, f"{name}.wav")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)


def ideal(synth: str, texts: list[str], workers: int, folder: Path) -> float:
    (folder / "wavs").mkdir(parents=True)
    items = [(f"x_{i:06d}", t) for i, t in enumerate(texts, 1)]
    t0 = time.perf_counter()
    procs = [mp.Process(target=ideal_worker, args=(synth, items[w::workers], str(folder / "wavs")))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return time.perf_counter() - t0


def pipeline(synth: str, texts: list[str], workers: int, folder: Path) -> float:
    tf = folder.parent / f"{folder.name}.txt"
    tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
    t0 = time.perf_counter()  # bin/run-pipeline as a user runs it: with the repository's .venv
    p = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(folder), "--texts", str(tf),
                        "--workers", str(workers), "--synth", synth], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"run-pipeline failed: {p.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synth", default="tone")
    ap.add_argument("--entries", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    texts = make_texts(a.entries)
    times: dict[str, list[float]] = {"ideal": [], "run-pipeline": []}
    for run in range(a.runs):
        for name, fn in (("ideal", ideal), ("run-pipeline", pipeline)):
            tmp = Path(tempfile.mkdtemp(prefix="bench-pipe-", dir=os.environ.get("BENCH_DIR")))
            try:
                times[name].append(fn(a.synth, texts, a.workers, tmp / "ds"))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"  run {run} {name:>12}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    ratios = [p / i for p, i in zip(times["run-pipeline"], times["ideal"], strict=True)]
    med_i, med_p = statistics.median(times["ideal"]), statistics.median(times["run-pipeline"])
    print(f"synth={a.synth} entries={a.entries} workers={a.workers} runs={a.runs}")
    print(f"ideal loop     median {med_i:8.2f} s   ({a.entries / med_i:8.0f} wavs/s)")
    print(f"run-pipeline   median {med_p:8.2f} s   ({a.entries / med_p:8.0f} wavs/s)")
    print(f"ratio (per run, then median): {statistics.median(ratios):.3f}x  runs: "
          + ", ".join(f"{r:.3f}" for r in ratios))
    if not a.no_doc:
        from report import update
        rows = "\n".join(f"| {i + 1} | {t_i:.2f} | {t_p:.2f} | {r:.3f}x |" for i, (t_i, t_p, r)
                         in enumerate(zip(times["ideal"], times["run-pipeline"], ratios, strict=True)))
        update(f"pipeline-{a.synth}", f"Pipeline overhead: `{a.synth}`, {a.entries:,} entries, {a.workers} workers",
               "bin/run-pipeline (daemon, reconciler, generators, start-up and final reconcile included) against "
               "an ideal loop: the same processes, synthesis and wav writes (temp file, fsync, rename), no "
               f"bookkeeping.\n\n| run | ideal s | run-pipeline s | ratio |\n|---:|---:|---:|---:|\n{rows}\n\n"
               f"Median ratio **{statistics.median(ratios):.3f}x** (ideal median {med_i:.2f} s, "
               f"{a.entries / med_i:,.0f} wavs/s; run-pipeline median {med_p:.2f} s, {a.entries / med_p:,.0f} wavs/s).")


if __name__ == "__main__":
    main()
