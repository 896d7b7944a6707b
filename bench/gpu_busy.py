"""How busy a generator keeps its GPU: synthesis time over the first-to-last synthesis span.

A plugin shaped like a GPU model (bench/gpu_like.py: it sleeps per_call + per_text * n a batch,
or pads the batch to its longest text, and logs each call) runs under bin/run-pipeline; the busy
fraction of each generator is the time inside its synthesis calls over the span from its first
call's start to its last call's end, so start-up and the final reconcile do not count (1.0 is
the limit). Shapes: 50 ms + 10 ms a text, 30 ms + 2 ms a text, and a padded model (20 ms + 0.05
ms per character of the longest text, per text) on texts of a real corpus's lengths; 1 and 2
generators (each on its own GPU: sleeping uses no core); batch 1 and 16. The dataset is on the
filesystem of --dir (ext4 here: a tmpfs would hide the fsyncs).

With --lengths it also measures length-aware batches against claim order: the padded model,
declared (`batch_cost = "longest"`) or not, same texts, batch 16; whole-job texts per second.

    .venv/bin/python bench/gpu_busy.py --entries 800 --runs 1
    git archive 89f37d6 | tar -x -C /var/tmp/before   # the code before issue 20, as a baseline
    .venv/bin/python bench/gpu_busy.py --entries 800 --runs 1 --baseline /var/tmp/before
    .venv/bin/python bench/gpu_busy.py --lengths-only --entries 1600 --runs 3
"""

from __future__ import annotations

import argparse
import collections
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

from pipeline_overhead import make_texts  # noqa: E402

from tests.support.corpus import texts as corpus_texts  # noqa: E402

SHAPES = {  # name: (plugin, options, texts)
    "50 ms + 10 ms/text": ("gpu_like:GpuLike", {"per_call": "0.05", "per_text": "0.01"}, "plain"),
    "30 ms + 2 ms/text": ("gpu_like:GpuLike", {"per_call": "0.03", "per_text": "0.002"}, "plain"),
    "padded: 20 ms + 0.05 ms/char of the longest, per text": (
        "gpu_like:PaddedGpuLike", {"per_call": "0.02", "per_char": "0.00005"}, "corpus"),
}


def run(plugin: str, opts: dict[str, str], texts: list[str], workers: int, batch: int,
        root: Path, code: Path = ROOT) -> tuple[float, list[float]]:
    """One bin/run-pipeline run of the code in ``code``: its wall time and each generator's busy fraction."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-busy-", dir=root))
    try:
        tf, log = tmp / "t.txt", tmp / "calls.log"
        tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
        env = {**os.environ, "PIPELINE_PYTHON": sys.executable,
               "PYTHONPATH": os.pathsep.join([str(code), str(ROOT / "bench")])}
        argv = [str(code / "bin" / "run-pipeline"), "--dataset", str(tmp / "ds"), "--texts", str(tf),
                "--workers", str(workers), "--batch", str(batch), "--synth", plugin,
                "--synth-opt", f"log={log}"]
        for k, v in opts.items():
            argv += ["--synth-opt", f"{k}={v}"]
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"run-pipeline failed: {p.stderr[-2000:]}")
        return wall, busy(log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def busy(log: Path) -> list[float]:
    calls: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        pid, start, end, _n = line.split()
        calls[pid].append((float(start), float(end)))
    out = []
    for spans in calls.values():
        if len(spans) < 10:  # a generator that got only the crumbs at the end says nothing
            continue
        spans.sort()
        out.append(sum(e - s for s, e in spans) / (spans[-1][1] - spans[0][0]))
    return out


def busy_table(a: argparse.Namespace, root: Path) -> str:
    codes = [("this code", ROOT)] + ([("before", Path(a.baseline))] if a.baseline else [])
    rows, worst = [], 1.0
    for name, (plugin, opts, kind) in SHAPES.items():
        texts = make_texts(a.entries) if kind == "plain" else corpus_texts(a.entries)
        for workers in (1, 2):
            for batch in (1, 16):
                n = texts if batch > 1 else texts[: max(200, a.entries // 4)]  # batch 1 is slower: fewer texts
                fractions: dict[str, list[float]] = {c: [] for c, _ in codes}
                for _ in range(a.runs):  # interleaved with the baseline's
                    for c, path in codes:
                        fractions[c].extend(run(plugin, opts, n, workers, batch, root, path)[1])
                m = statistics.median(fractions["this code"])
                worst = min(worst, m)
                before = (f" {statistics.median(fractions['before']):.3f} |" if a.baseline else "")
                print(f"  {name:>55} workers {workers} batch {batch:>2}: busy {m:.3f} "
                      f"({', '.join(f'{x:.3f}' for x in fractions['this code'])}){before}", file=sys.stderr, flush=True)
                rows.append(f"| {name} | {workers} | {batch} | {len(n)} | **{m:.3f}** | "
                            f"{', '.join(f'{x:.3f}' for x in fractions['this code'])} |{before}")
    head = "| model shape | generators | batch | texts | busy (median) | each generator, each run |"
    return (head + (" before (median) |" if a.baseline else "") + "\n|---|---:|---:|---:|---:|---|"
            + ("---:|" if a.baseline else "") + "\n" + "\n".join(rows)
            + f"\n\nLowest median: **{worst:.3f}** (goal 0.97)."
            + (f" Before: the code at `{a.baseline}`, run interleaved with this code's." if a.baseline else ""))


def lengths_table(a: argparse.Namespace, root: Path) -> str:
    texts = corpus_texts(a.entries)
    opts = {"per_call": "0.02", "per_char": "0.00005"}
    rates: dict[str, list[float]] = {"claim order": [], "length-aware": []}
    for r in range(a.runs):  # interleaved pairs
        for name, plugin in (("claim order", "gpu_like:PaddedInClaimOrder"),
                             ("length-aware", "gpu_like:PaddedGpuLike")):
            wall, _ = run(plugin, opts, texts, 1, 16, root)
            rates[name].append(len(texts) / wall)
            print(f"  run {r} {name:>13}: {rates[name][-1]:.1f} texts/s", file=sys.stderr, flush=True)
    ratios = [b / c for c, b in zip(rates["claim order"], rates["length-aware"], strict=True)]
    rows = "\n".join(f"| {i + 1} | {c:.1f} | {b:.1f} | {r:.2f}x |" for i, (c, b, r)
                     in enumerate(zip(rates["claim order"], rates["length-aware"], ratios, strict=True)))
    return (f"{len(texts)} texts of a real corpus's lengths (tests/support/corpus.py: 8 to 300 characters), "
            "1 generator, "
            "batch 16, the padded model (20 ms a call + 0.05 ms per character of the longest text, per text); "
            "whole job, start-up and final reconcile included.\n\n| run | claim order texts/s | length-aware "
            f"texts/s | ratio |\n|---:|---:|---:|---:|\n{rows}\n\nMedian ratio **{statistics.median(ratios):.2f}x** "
            "(goal 1.3x).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=800)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/var/tmp"),
                    help="Where the datasets go (a disk filesystem, never a tmpfs).")
    ap.add_argument("--baseline", default=None, help="Another checkout's code to measure interleaved (before).")
    ap.add_argument("--lengths", action="store_true", help="Also length-aware batches against claim order.")
    ap.add_argument("--lengths-only", action="store_true")
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    root = Path(a.dir)
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(root)], capture_output=True,
                        text=True).stdout.strip() or "an unknown filesystem"
    if fs == "tmpfs":
        raise SystemExit(f"{root} is a tmpfs: it would hide the fsyncs; give --dir on a disk")
    from report import update
    if not a.lengths_only:
        table = busy_table(a, root)
        print(table)
        if not a.no_doc:
            update("gpu-busy", "GPU busy fraction: synthesis time over the first-to-last synthesis span",
                   f"bin/run-pipeline with bench/gpu_like.py, datasets on {fs}; each generator's time inside its "
                   f"synthesis calls over the span from its first call's start to its last call's end.\n\n{table}")
    if a.lengths or a.lengths_only:
        table = lengths_table(a, root)
        print(table)
        if not a.no_doc:
            update("length-aware", "Length-aware batches against claim order", table)


if __name__ == "__main__":
    main()
