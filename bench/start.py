"""Daemon start at 1,000,000 entries: the file alone, and the file plus the biggest journal a
daemon ever leaves (half the size of the file: at that size it checkpoints), against the code before
the journal (which had no journal to replay).

Start is the time from `statesvc serve` to its first answer; peak RSS is the daemon's VmHWM.
The three are interleaved, run by run. Run:

    .venv/bin/python bench/start.py --entries 1000000 --runs 5 --baseline-root /tmp/old

``--baseline-root`` is a checkout of the code before the journal (git worktree add /tmp/old
67b6136); without it only the new code is measured.
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

MAKE = """
import sys
from pathlib import Path
from statesvc.entry import Entry
from statesvc.state import State
from statesvc.store import create
folder, n = Path(sys.argv[1]), int(sys.argv[2])
(folder / "wavs").mkdir(parents=True)
make = getattr(Entry, "make", Entry)
create(folder, State([make(i, f"b_{i:07d}", f"text number {i}") for i in range(1, n + 1)]))
"""

# Claims and results, committed as a daemon commits them, until the journal is half the file: the most
# a daemon leaves (it checkpoints at that size).
FILL = """
import sys
from pathlib import Path
from statesvc.store import load_for_writing
folder = Path(sys.argv[1])
s, st = load_for_writing(folder)
k = 0
while st.journal_bytes < st.file_bytes // 2:
    items = s.claim(f"g{k % 8}", 512, None, 1000.0 + k)["entries"]
    st.commit(s)
    for c in items:
        s.result({"id": c["id"], "token": c["token"], "status": "completed", "duration_seconds": 1.5,
                  "sample_rate": 22050, "text_hash": c["text_hash"], "rev": c["rev"]}, 1000.5 + k)
    st.commit(s)
    k += 1
print(st.journal_bytes, st.file_bytes, s.counts)
"""


def env_for(code: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(code)}


def start_once(code: Path, folder: Path) -> tuple[float, float]:
    """Seconds until the daemon answers, and its peak RSS in MB; then it is stopped (SIGKILL: the
    next start must not find a checkpoint written at the stop)."""
    from statesvc.client import Client, Unavailable
    t0 = time.perf_counter()
    d = subprocess.Popen([sys.executable, "-m", "statesvc", "serve", "--dataset", str(folder), "--log-level",
                          "WARNING", *(["--checkpoint-idle", "0"] if code == ROOT else [])],
                         env=env_for(code), cwd=tempfile.gettempdir())
    try:
        while True:
            try:
                with Client(f"ipc://{folder}/statesvc.sock", timeout=0.2, retries=1) as c:
                    c.call("ping")
                break
            except Unavailable:
                if d.poll() is not None:
                    raise SystemExit(f"daemon exited {d.returncode}") from None
        took = time.perf_counter() - t0
        rss = 0.0
        for line in Path(f"/proc/{d.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
        return took, rss
    finally:
        d.kill()
        d.wait()


def prepare(code: Path, folder: Path, n: int, journal: bool) -> str:
    subprocess.run([sys.executable, "-c", MAKE, str(folder), str(n)], check=True, env=env_for(code),
                   cwd=tempfile.gettempdir())
    if not journal:
        return ""
    out = subprocess.run([sys.executable, "-c", FILL, str(folder)], check=True, env=env_for(code),
                         cwd=tempfile.gettempdir(), capture_output=True, text=True).stdout
    jb, fb = out.split()[:2]
    return f"journal {int(jb) / 2**20:.0f} MiB, file {int(fb) / 2**20:.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline-root", type=Path, default=None)
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    cases = [("new, file alone", ROOT, False), ("new, file + journal of half its size", ROOT, True)]
    if a.baseline_root:
        cases.append(("before the journal (file alone)", a.baseline_root.resolve(), False))
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-", dir=os.environ.get("BENCH_DIR")))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in cases}
    try:
        folders = {}
        for name, code, journal in cases:
            folders[name] = tmp / f"case{len(folders)}"
            note = prepare(code, folders[name], a.entries, journal)
            print(f"  prepared {name} {note}", file=sys.stderr, flush=True)
        for run in range(a.runs):
            for name, code, _ in cases:
                took, rss = start_once(code, folders[name])
                results[name].append((took, rss))
                print(f"  run {run} {name:>40}: start {took:.2f} s, peak RSS {rss:.0f} MB", file=sys.stderr,
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = ["| case | start s, median | min | max | peak RSS MB (max) |", "|---|---:|---:|---:|---:|"]
    for name, _, _ in cases:
        ts = [t for t, _ in results[name]]
        rows.append(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} | "
                    f"{max(r for _, r in results[name]):.0f} |")
    print("\n".join(rows))
    if not a.no_doc:
        from report import update
        update("start", f"Daemon start at {a.entries:,} entries",
               "From `statesvc serve` to its first answer, and the daemon's peak RSS (VmHWM), interleaved run by "
               f"run, {a.runs} runs. The journal case is the most a daemon replays: it checkpoints once the "
               "journal is half the size of the file (claims and results of 512 entries per commit, made until "
               "then). "
               "The state is the bench's (`text number N`, 223 MB).\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
