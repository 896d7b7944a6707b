"""Daemon bytes written per completed entry: the journal (this code) against whole-file saves (the baseline).

bin/run-pipeline with 2 generators, `--batch 16`, plugin `bench/gpu_like.py` (50 ms per call
+ 10 ms per text: about 120 wavs/s), on a fresh dataset of N entries. Once the daemon answers
and the generators have produced (plus ``--warmup`` seconds), the daemon's /proc/PID/io is read,
the run goes on for ``--seconds``, and /proc/PID/io is read again: bytes per completed entry =
the difference / the entries completed in between. ``wchar`` is every byte the daemon passed to
write(2) and friends; ``write_bytes`` is what it sent (or will send) to the block device.
The journal's daemon rewrites the whole file (a checkpoint) when the journal has grown to half
the file's size: at 100,000 entries (a file of about 30 MB) that is every few minutes at 120
wavs/s, so a 40 s window usually holds none and measures the journal alone (the checkpoints
column says); the amortized column then adds the 2 bytes of file a checkpoint writes per byte
of journal.

The baseline is the code before the journal, checked out as a git worktree (``--baseline-root``),
run with the same Python, its folder first on PYTHONPATH and a working folder outside this
repository (the project is installed editable). Which code ran is checked: only the journal's
daemon reports ``journal_bytes`` in its status and writes generation_state.journal. Runs are
interleaved. Run:

    git worktree add /tmp/j/old 67b6136
    .venv/bin/python bench/commit_bytes.py --baseline-root /tmp/j/old --entries 100000 1000000 --seconds 40 --runs 3
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline_overhead import make_texts  # noqa: E402

from statesvc.client import Client, NoDaemon, ServiceError, Unavailable  # noqa: E402

JOURNAL = "generation_state.journal"
STOP_TIMEOUT = 60.0


@dataclass
class Result:
    version: str
    entries: int
    window: float          # seconds between the two /proc reads
    completed: int         # entries completed in the window
    wchar: int
    write_bytes: int
    cancelled: int         # cancelled_write_bytes: dirtied, then truncated or deleted before writeback
    audio_per_wav: float   # mean size of a wav in wavs/
    files: dict[str, int]  # the dataset folder's files and their sizes at the end of the window
    checkpoints: int | None  # whole-file checkpoints in the window (the journal's daemon only)
    amortized: float = 0.0   # bytes per completed entry with the checkpoints a whole run adds (see measure)

    @property
    def wchar_per(self) -> float:
        return self.wchar / self.completed

    @property
    def write_per(self) -> float:
        return self.write_bytes / self.completed

    @property
    def rate(self) -> float:
        return self.completed / self.window


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def children(ppid: int) -> dict[int, int]:
    """The live children of ``ppid``: {pid: start time}."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st is not None and st[0] == ppid:
                out[int(d)] = st[1]
    return out


def find_daemon(ppid: int, ds: Path) -> int | None:
    for pid in children(ppid):
        argv = cmdline(pid)
        if ("serve" in argv and (str(ds) in argv or str(ds.resolve()) in argv)
                and any(a.endswith("statesvc") for a in argv)):
            return pid
    return None


def status(ds: Path) -> dict | None:
    """The running daemon's status; None when no daemon answers (never read from the file)."""
    try:
        with Client.for_dataset(ds, timeout=5.0, retries=1) as c:
            return c.call("status")
    except (NoDaemon, Unavailable, ServiceError, OSError):
        return None


def checkpoints(ds: Path) -> int:
    """How many checkpoints the journal's daemon has logged ("checkpoint: N bytes in T s")."""
    try:
        return (ds / "logs" / "statesvc.log").read_text(errors="replace").count(" checkpoint: ")
    except OSError:
        return 0


def folder_files(ds: Path) -> tuple[dict[str, int], float]:
    """Sizes of the dataset folder's files (wavs/ summed), and the mean wav size."""
    files: dict[str, int] = {}
    for p in ds.rglob("*"):
        if p.is_file() and p.parent.name != "wavs":
            files[str(p.relative_to(ds))] = p.stat().st_size
    n = total = 0
    with os.scandir(ds / "wavs") as it:
        for e in it:
            if e.name.endswith(".wav") and e.is_file():
                n, total = n + 1, total + e.stat().st_size
    files[f"wavs/ ({n} wavs)"] = total
    return files, total / n if n else 0.0


def stop(p: subprocess.Popen, started: dict[int, int]) -> None:
    """SIGTERM run-pipeline's process group, wait; SIGKILL it and whatever it started if it lingers."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"    run-pipeline did not stop within {STOP_TIMEOUT:.0f} s: SIGKILL", file=sys.stderr)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    # The children run in their own sessions (and get SIGTERM when run-pipeline dies): wait for
    # them, then kill any that is still the process we saw (same pid and start time).
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(
            (st := proc_stat(pid)) is not None and st[1] == t0 for pid, t0 in started.items()):
        time.sleep(0.2)
    for pid, t0 in started.items():
        st = proc_stat(pid)
        if st is not None and st[1] == t0:
            print(f"    pid {pid} ({' '.join(cmdline(pid))[:80]}) still runs: SIGKILL", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class RunFailed(Exception):
    pass


def wait_started(p: subprocess.Popen, ds: Path, version: str, timeout: float) -> int:
    """Through the start-up (init, the daemon's load, the generators' model load): until the
    daemon answers and entries complete. Checks which code runs. Returns the daemon's pid."""
    t_start = time.monotonic()
    daemon = st = None
    while st is None or st.get("completed", 0) == 0:
        if p.poll() is not None:
            raise RunFailed(f"run-pipeline exited {p.returncode} during start-up")
        if time.monotonic() > t_start + timeout:
            raise RunFailed(f"no entry completed within {timeout:.0f} s")
        time.sleep(0.5)
        daemon = daemon or find_daemon(p.pid, ds)
        st = status(ds) if daemon else None
    if st.get("pid") != daemon:
        raise RunFailed(f"the daemon answering is pid {st.get('pid')}, not run-pipeline's child {daemon}")
    if ("journal_bytes" in st) != (version == "new"):
        raise RunFailed(f"wrong code ran: the daemon {'does' if 'journal_bytes' in st else 'does not'} "
                        "keep a journal")
    print(f"    {version}: first completions {time.monotonic() - t_start:.1f} s after start "
          f"(daemon pid {daemon})", file=sys.stderr, flush=True)
    return daemon


def measure(p: subprocess.Popen, ds: Path, daemon: int, version: str, entries: int, seconds: float) -> Result:
    """The window: /proc/PID/io and the completed count, ``seconds`` apart."""
    ck0 = checkpoints(ds)
    io0 = proc_io(daemon)
    t0 = time.monotonic()
    st0 = status(ds)
    time.sleep(seconds)
    st1 = status(ds)
    io1 = proc_io(daemon)
    t1 = time.monotonic()
    ck1 = checkpoints(ds)
    if st0 is None or st1 is None:
        raise RunFailed("the daemon stopped answering during the window")
    if proc_stat(daemon) is None or p.poll() is not None:
        raise RunFailed("the daemon or run-pipeline exited during the window")
    done = st1["completed"] - st0["completed"]
    if done <= 0:
        raise RunFailed("no entry completed in the window")
    if st1["pending"] == 0:
        print(f"    warning: {version} ran out of pending entries in the window: use more entries",
              file=sys.stderr)
    if (ds / JOURNAL).exists() != (version == "new"):
        raise RunFailed(f"wrong code ran: {JOURNAL} {'exists' if version != 'new' else 'is missing'}")
    files, per_wav = folder_files(ds)
    r = Result(version, entries, t1 - t0, done, io1["wchar"] - io0["wchar"],
               io1["write_bytes"] - io0["write_bytes"],
               io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"], per_wav, files,
               ck1 - ck0 if version == "new" else None)
    r.amortized = r.wchar_per
    if version == "new" and not r.checkpoints:
        # No checkpoint fell in the window: over a whole run the daemon writes the file (F bytes)
        # each time the journal has grown by its checkpoint threshold T (F/2, at least 1 MiB).
        f = st1["checkpoint_bytes"]
        r.amortized = r.wchar_per * (1 + f / max(1 << 20, f // 2))
    return r


def one_run(version: str, code: Path, texts: Path, entries: int, a: argparse.Namespace) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="bench-commit-", dir=os.environ.get("BENCH_DIR")))
    ds = tmp / "ds"
    env = {**os.environ, "PYTHONPATH": f"{code}:{ROOT / 'bench'}", "PIPELINE_PYTHON": sys.executable}
    log = tmp / "run-pipeline.log"
    argv = [str(code / "bin" / "run-pipeline"), "--dataset", str(ds), "--texts", str(texts),
            "--workers", str(a.workers), "--batch", str(a.batch), "--synth", "gpu_like:GpuLike",
            "--synth-opt", f"per_call={a.per_call}", "--synth-opt", f"per_text={a.per_text}"]
    started: dict[int, int] = {}
    with open(log, "wb") as out:
        # cwd outside this repository: `python -m` puts the cwd first on sys.path.
        p = subprocess.Popen(argv, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        daemon = wait_started(p, ds, version, a.start_timeout)
        time.sleep(a.warmup)
        started = children(p.pid)
        return measure(p, ds, daemon, version, entries, a.seconds)
    except RunFailed as exc:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{version}, {entries:,} entries: {exc}\n--- run-pipeline output ---\n{tail}") from None
    finally:
        stop(p, started or children(p.pid))
        shutil.rmtree(tmp, ignore_errors=True)


def kb(x: float) -> str:
    return f"{x / 1024:,.2f}" if x < 10 * 1024 else f"{x / 1024:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--baseline-root", type=Path, default=Path("/tmp/j/old"),
                    help="a checkout of the code before the journal (git worktree add /tmp/j/old 67b6136)")
    ap.add_argument("--seconds", type=float, default=40.0, help="length of the measurement window")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after the first completions")
    ap.add_argument("--start-timeout", type=float, default=900.0,
                    help="seconds allowed for init, the daemon's start and the first completions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--per-call", default="0.05", help="GpuLike per_call seconds")
    ap.add_argument("--per-text", default="0.01", help="GpuLike per_text seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    base = a.baseline_root.resolve()
    if not (base / "statesvc" / "daemon.py").exists() or not (base / "bin" / "run-pipeline").exists():
        raise SystemExit(f"--baseline-root {base}: not a checkout of this project")
    if (base / "statesvc" / "journal.py").exists():
        raise SystemExit(f"--baseline-root {base}: has statesvc/journal.py, so it is not the code before the journal")
    codes = {"new": ROOT, "baseline": base}
    commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    results: list[Result] = []
    texts_dir = Path(tempfile.mkdtemp(prefix="bench-commit-texts-", dir=os.environ.get("BENCH_DIR")))
    try:
        for n in a.entries:
            texts = texts_dir / f"texts-{n}.txt"
            texts.write_text("\n".join(make_texts(n)) + "\n", encoding="utf-8")
            for run in range(a.runs):
                order = ("new", "baseline") if run % 2 == 0 else ("baseline", "new")
                for version in order:
                    r = one_run(version, codes[version], texts, n, a)
                    results.append(r)
                    print(f"  {n:,} entries run {run} {version:>8}: {r.completed} completed in {r.window:.1f} s "
                          f"({r.rate:.0f}/s), wchar {kb(r.wchar_per)} KB, write_bytes {kb(r.write_per)} KB "
                          f"per completed entry (cancelled {kb(r.cancelled / r.completed)} KB), "
                          f"{kb(r.amortized)} KB with checkpoints amortized; "
                          f"wav {kb(r.audio_per_wav)} KB; checkpoints in the window: "
                          f"{'-' if r.checkpoints is None else r.checkpoints}", file=sys.stderr, flush=True)
                    print("    files: " + ", ".join(f"{k} {v:,}" for k, v in sorted(r.files.items())),
                          file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(texts_dir, ignore_errors=True)

    lines = ["| entries | run | code | completed/s | wchar KB/entry | write_bytes KB/entry | with checkpoints "
             "amortized, KB/entry | wav KB | write_bytes / wav | checkpoints |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for n in a.entries:
        rs = {v: [r for r in results if r.entries == n and r.version == v] for v in ("baseline", "new")}
        for v in ("baseline", "new"):
            for i, r in enumerate(rs[v]):
                lines.append(f"| {n:,} | {i + 1} | {v} | {r.rate:.0f} | {kb(r.wchar_per)} | {kb(r.write_per)} | "
                             f"{kb(r.amortized)} | {kb(r.audio_per_wav)} | "
                             f"{r.write_per / max(r.audio_per_wav, 1):.2f}x | "
                             f"{'every commit' if r.checkpoints is None else r.checkpoints} |")
        med = {v: {k: statistics.median(getattr(r, k) for r in rs[v])
                   for k in ("wchar_per", "write_per", "rate", "audio_per_wav", "amortized")} for v in rs}
        for v in ("baseline", "new"):
            m = med[v]
            lines.append(f"| {n:,} | **median** | {v} | {m['rate']:.0f} | **{kb(m['wchar_per'])}** | "
                         f"**{kb(m['write_per'])}** | **{kb(m['amortized'])}** | {kb(m['audio_per_wav'])} | "
                         f"{m['write_per'] / max(m['audio_per_wav'], 1):.2f}x | |")
        ratio_w = [b.wchar_per / x.wchar_per for b, x in zip(rs["baseline"], rs["new"], strict=True)]
        ratio_b = [b.write_per / x.write_per if x.write_per else float("inf")
                   for b, x in zip(rs["baseline"], rs["new"], strict=True)]
        cks = sum(r.checkpoints or 0 for r in rs["new"])
        summary.append(f"- {n:,} entries: the journal writes **{kb(med['new']['wchar_per'])} KB** (wchar) and "
                       f"**{kb(med['new']['write_per'])} KB** (write_bytes) per completed entry, the baseline "
                       f"{kb(med['baseline']['wchar_per'])} KB and {kb(med['baseline']['write_per'])} KB: "
                       f"baseline/new **{statistics.median(ratio_w):,.0f}x** (wchar; runs "
                       + ", ".join(f"{x:,.0f}" for x in ratio_w) + f") and **{statistics.median(ratio_b):,.0f}x** "
                       "(write_bytes; runs " + ", ".join(f"{x:,.0f}" for x in ratio_b) + ")."
                       + f" With the checkpoints a whole run adds (amortized): **{kb(med['new']['amortized'])} KB**."
                       + ("" if cks else " No checkpoint fell in the journal's windows: the window measures the "
                          "journal alone, and the amortized figure adds what the file's size and the checkpoint "
                          "threshold (half the file) imply: 2 bytes of file per byte of journal."))
    table = "\n".join(lines)
    print(f"entries={' '.join(map(str, a.entries))} workers={a.workers} batch={a.batch} "
          f"gpu_like per_call={a.per_call} per_text={a.per_text} window={a.seconds:.0f} s runs={a.runs}")
    print(table)
    print("\n".join(summary))
    if not a.no_doc:
        from report import update
        update("commit-bytes", "Daemon bytes written per completed entry: journal against whole-file saves",
               f"bin/run-pipeline, {a.workers} generators, `--batch {a.batch}`, plugin `bench/gpu_like.py` "
               f"(`per_call={a.per_call} per_text={a.per_text}`), on a fresh dataset; this code against the "
               f"code before the journal (`{base}`, commit {commit}), interleaved. After the start-up (init, "
               f"the daemon's load, the first completions, {a.warmup:.0f} s more) the daemon's `/proc/PID/io` "
               f"is read twice, {a.seconds:.0f} s apart: bytes written per entry completed in between. "
               "`wchar`: bytes passed to write calls; `write_bytes`: bytes sent to the block device (ext4). "
               "KB = 1,024 bytes; wav KB is the mean size of a wav in `wavs/`. checkpoints: whole-file "
               "rewrites the journal's daemon logged in the window (it writes one when the journal has grown "
               "to half the file's size, so over a long run they add twice what the journal adds; the baseline "
               "rewrites the whole file on every commit). Target: at most 2 KB per "
               f"completed entry.\n\n{table}\n\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
