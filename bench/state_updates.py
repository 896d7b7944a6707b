"""Acknowledged state updates per second: our daemon against what a user would otherwise do.

(a) seed: each process loads the JSON, reloads it before saving, saves it (lost updates counted);
(b) flock: the same under an exclusive flock with an atomic rename; (c) sqlite: WAL mode,
synchronous=FULL, one row per entry, one commit per update; (d) daemon: ours, acknowledged once
durable; (e) router: a bare ROUTER acknowledging the same messages with no state and no disk.

Each of W writer processes claims entries and keeps up to K results in flight; an update
counts when its acknowledgement arrives (for the daemon: once it is durable). Run:

    .venv/bin/python bench/state_updates.py --entries 2000 100000 --writers 8 --inflight 64 --runs 3
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class Writer:
    """Claims ahead and keeps up to ``inflight`` results in flight; when the pool runs dry it
    requeues what it completed and goes on, so a small state is measured as long as a big one."""

    def __init__(self, sock: zmq.Socket, inflight: int, owner: str):
        self.sock, self.inflight, self.owner = sock, inflight, owner
        self.rid = 0
        self.tokens: list[dict] = []
        self.sent: dict[int, tuple[float, int]] = {}
        self.done: list[int] = []  # acknowledged as completed and not requeued since
        self.lat: list[float] = []
        self.requeues: set[int] = set()
        self.claim_rid: int | None = None
        self.exhausted = False

    def send(self, **msg: object) -> int:
        self.rid += 1
        self.sock.send(orjson.dumps({**msg, "rid": self.rid}))
        return self.rid

    def fill(self) -> None:
        while self.tokens and len(self.sent) < self.inflight:
            e = self.tokens.pop()
            t = time.perf_counter()
            rid = self.send(op="result", id=e["id"], token=e["token"], status="completed",
                            duration_seconds=1.5, sample_rate=22050, text_hash=e["text_hash"], rev=e["rev"],
                            take_file=False)  # the books alone: no audio behind these results
            self.sent[rid] = (t, e["id"])
        if len(self.tokens) < self.inflight and self.claim_rid is None and not self.requeues and not self.exhausted:
            self.claim_rid = self.send(op="claim", owner=self.owner, n=self.inflight)

    def idle(self) -> bool:
        return self.exhausted and not self.sent and self.claim_rid is None and not self.requeues

    def on_reply(self, msg: dict) -> None:
        assert msg["ok"], msg
        r = msg["rid"]
        if r in self.sent:
            t, eid = self.sent.pop(r)
            self.lat.append(time.perf_counter() - t)
            self.done.append(eid)
        elif r == self.claim_rid:
            self.claim_rid = None
            self.tokens += msg["entries"]
            if not msg["entries"] and not self.sent and not self.exhausted:
                self.exhausted = not self.done  # the pool ran dry: put this writer's entries back
                for k in range(0, len(self.done), 5000):
                    self.requeues.add(self.send(op="requeue", keys=self.done[k:k + 5000]))
                self.done = []
        else:
            self.requeues.discard(r)


def writer(endpoint: str, inflight: int, owner: str, seconds: float, q: mp.Queue, start_at: float) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    w = Writer(s, inflight, owner)
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while True:
        if time.perf_counter() - t0 > seconds:
            w.exhausted = True  # stop claiming; what is in flight is still counted
        w.fill()
        if w.idle():
            break
        if not s.poll(10_000):
            raise SystemExit("no reply within 10 s")
        while True:
            try:
                w.on_reply(orjson.loads(s.recv(zmq.NOBLOCK)))
            except zmq.Again:
                break
    q.put((w.lat, time.perf_counter() - t0, w.done))
    s.close()
    ctx.term()


def bare_router(endpoint: str, entries: int, ready: mp.Event) -> None:
    """The same messages acknowledged at once with no state and no disk; claims hand out fake tokens."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.bind(endpoint)
    ready.set()
    pool = collections.deque(range(1, entries + 1))
    while True:
        frames = r.recv_multipart()
        msg = orjson.loads(frames[-1])
        if msg["op"] == "claim":
            got = [pool.popleft() for _ in range(min(msg["n"], len(pool)))]
            body = {"rid": msg["rid"], "ok": True, "entries": [{"id": i, "token": "t", "text_hash": "", "rev": 0}
                                                               for i in got]}
        elif msg["op"] == "requeue":
            pool.extend(msg["keys"])
            body = {"rid": msg["rid"], "ok": True, "requeued": msg["keys"]}
        elif msg["op"] == "stop":
            break
        else:
            body = {"rid": msg["rid"], "ok": True, "applied": True}
        r.send_multipart([frames[0], orjson.dumps(body)])
    r.close()
    ctx.term()


def make_state(folder: Path, entries: int) -> None:
    from statesvc.entry import Entry
    from statesvc.state import State
    from statesvc.store import create
    (folder / "wavs").mkdir(parents=True)
    create(folder, State([Entry.make(i, f"b_{i:07d}", f"text number {i}") for i in range(1, entries + 1)]))


SECONDS = 8.0  # every target is measured for this long


def fan_out(target, args: list[tuple]) -> tuple[list[float], float, set[int]]:
    """One process per tuple of ``args``, each given a queue and a common start time; returns every
    latency, the longest wall time and the ids each reported done."""
    q: mp.Queue = mp.Queue()
    start_at = time.time() + 0.5
    procs = [mp.Process(target=target, args=(*a, q, start_at)) for a in args]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return (sorted(x for r, _, _ in results for x in r), max(w for _, w, _ in results),
            {i for _, _, d in results for i in d})


def rates(lat: list[float], updates: int, wall: float) -> dict:
    lat = lat or [float("nan")]
    return {"updates": updates, "per_second": updates / wall, "median_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))]}


def run_writers(endpoint: str, writers: int, inflight: int) -> dict:
    lat, wall, done = fan_out(writer, [(endpoint, inflight, f"w{i}", SECONDS) for i in range(writers)])
    return {**rates(lat, len(lat), wall), "done": done}


def bench_daemon(entries: int, writers: int, inflight: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-state-", dir=os.environ.get("BENCH_DIR")))
    try:
        make_state(folder, entries)
        t0 = time.perf_counter()
        d = subprocess.Popen([sys.executable, "-m", "statesvc", "serve", "--dataset", str(folder),
                              "--log-level", "WARNING"])
        from statesvc.client import Client, Unavailable
        endpoint = f"ipc://{folder}/statesvc.sock"
        while True:
            try:
                with Client(endpoint, timeout=0.2, retries=1) as c:
                    c.call("ping")
                break
            except Unavailable:
                if d.poll() is not None:
                    raise SystemExit("daemon died")
        startup = time.perf_counter() - t0
        cpu = _cpu_seconds(d.pid)
        out = run_writers(endpoint, writers, inflight)
        out["cpu_us"] = 1e6 * (_cpu_seconds(d.pid) - cpu) / max(1, out["updates"])
        out["startup_s"] = startup
        out["rss_mb"] = _rss_mb(d.pid, "VmHWM")  # the peak, start-up included
        d.kill()  # an acknowledgement means durable: SIGKILL must lose none of them
        d.wait(60)
        from statesvc.loader import load  # the file, then its journal: what every reader sees
        kept = {e.id for e in load(folder).entries if e.status == "completed"}
        out["lost"] = len(out.pop("done") - kept)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_router(entries: int, writers: int, inflight: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="bench-router-"))
    endpoint = f"ipc://{folder}/r.sock"
    ready = mp.Event()
    p = mp.Process(target=bare_router, args=(endpoint, entries, ready))
    p.start()
    ready.wait(10)
    cpu = _cpu_seconds(p.pid)
    out = run_writers(endpoint, writers, inflight)
    out["cpu_us"] = 1e6 * (_cpu_seconds(p.pid) - cpu) / max(1, out["updates"])
    p.kill()
    p.join()
    shutil.rmtree(folder, ignore_errors=True)
    out["lost"] = 0
    del out["done"]
    return out


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---- what a user would otherwise do --------------------------------------------------------
class Unreadable(Exception):
    """The seed's in-place writes left a file that no longer parses: every update is lost."""


def read_torn(path: Path, give_up: float = 3.0) -> dict:
    """The seed writes in place, so a reader can see a half-written file: read until it parses.

    Two writers overlapping can leave a file that never parses again; after ``give_up``
    seconds of that the writer stops (the post-mortem's worst case, counted as such)."""
    import json
    deadline = time.monotonic() + give_up
    while True:
        try:
            return json.loads(path.read_bytes())
        except ValueError:
            if time.monotonic() > deadline:
                raise Unreadable(str(path)) from None
            time.sleep(0.001)


def timed_updates(update, ids: list[int], seconds: float, q: mp.Queue, start_at: float) -> None:
    """Apply ``update(eid)`` to ``ids`` until ``seconds`` pass; report latencies and what was done."""
    lat: list[float] = []
    done: list[int] = []
    while time.time() < start_at:
        time.sleep(0.001)
    end = time.perf_counter() + seconds
    for eid in ids:
        if time.perf_counter() >= end:
            break
        t = time.perf_counter()
        try:
            update(eid)
        except Unreadable:
            break
        lat.append(time.perf_counter() - t)
        done.append(eid)
    q.put((lat, time.perf_counter() - (end - seconds), done))


def file_writer(kind: str, folder: str, ids: list[int], seconds: float, q: mp.Queue, start_at: float) -> None:
    """(a) the seed: load, modify, reload before save, save; (b) the same under flock, atomic rename."""
    import fcntl
    import json

    from statesvc.atomic import write_atomic
    path = Path(folder) / "generation_state.json"
    lock_path = Path(folder) / "state.lock"

    def seed(eid: int) -> None:
        state = read_torn(path)                        # load
        fresh = read_torn(path)                        # the seed's fix: reload before saving
        try:
            fresh["entries"][eid - 1].update(status="completed", duration_seconds=1.5)
            fresh["completed"] = state["completed"] + 1  # a counter incremented, as the seed did
        except (KeyError, IndexError, TypeError, AttributeError):
            raise Unreadable("parses, but is no longer a state") from None
        path.write_text(json.dumps(fresh))

    def flocked(eid: int) -> None:
        with open(lock_path, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            state = json.loads(path.read_bytes())
            state["entries"][eid - 1].update(status="completed", duration_seconds=1.5)
            write_atomic(path, json.dumps(state).encode())  # temp, fsync, rename, folder fsync

    timed_updates(seed if kind == "seed" else flocked, ids, seconds, q, start_at)


def sqlite_writer(folder: str, ids: list[int], seconds: float, q: mp.Queue, start_at: float) -> None:
    """(c) SQLite in WAL mode, synchronous=FULL, one row per entry, one commit per update."""
    import sqlite3
    db = sqlite3.connect(str(Path(folder) / "state.db"), timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")

    def update(eid: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE entries SET status='completed', duration=1.5 WHERE id=?", (eid,))
        db.execute("COMMIT")

    timed_updates(update, ids, seconds, q, start_at)
    db.close()


def bench_baseline(kind: str, entries: int, writers: int, inflight: int, seconds: float = SECONDS) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=os.environ.get("BENCH_DIR")))
    try:
        if kind == "sqlite":
            import sqlite3
            db = sqlite3.connect(str(folder / "state.db"))
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, filename TEXT, text TEXT, status TEXT, "
                       "duration REAL)")
            db.executemany("INSERT INTO entries VALUES (?,?,?,?,NULL)",
                           ((i, f"b_{i:07d}", f"text number {i}", "pending") for i in range(1, entries + 1)))
            db.commit()
            db.close()
        else:
            make_state(folder, entries)
        shares = [list(range(1 + w, entries + 1, writers)) for w in range(writers)]
        target, extra = (sqlite_writer, ()) if kind == "sqlite" else (file_writer, (kind,))
        lat, wall, done = fan_out(target, [(*extra, str(folder), shares[w], seconds) for w in range(writers)])
        if kind == "sqlite":
            import sqlite3
            db = sqlite3.connect(str(folder / "state.db"))
            kept = {r[0] for r in db.execute("SELECT id FROM entries WHERE status='completed'")}
            db.close()
        else:
            try:
                doc = orjson.loads((folder / "generation_state.json").read_bytes())
                entries = doc["entries"] if isinstance(doc, dict) and isinstance(doc.get("entries"), list) else None
            except orjson.JSONDecodeError:
                entries = None
            torn = entries is None  # the seed tore its own file: nothing it did survives
            kept = {e.get("id") for e in entries or [] if isinstance(e, dict) and e.get("status") == "completed"}
        return {**rates(lat, len(done), wall), "lost": len(done - kept), "torn": kind != "sqlite" and torn}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


BENCHES = {
    "seed": lambda n, w, k: bench_baseline("seed", n, w, k),
    "flock": lambda n, w, k: bench_baseline("flock", n, w, k),
    "sqlite": lambda n, w, k: bench_baseline("sqlite", n, w, k),
    "daemon": bench_daemon,
    "router": bench_router,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, nargs="+", default=[2000, 100_000])
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", nargs="+", default=list(BENCHES), choices=list(BENCHES),
                    help="seed: load/reload/save (a); flock: locked atomic rewrite (b); sqlite: WAL, "
                         "synchronous=FULL (c); daemon (d); router: bare ROUTER (e)")
    ap.add_argument("--json", type=Path, default=None, help="Also write the medians here.")
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    rows = []
    for n in a.entries:
        for run in range(a.runs):
            for t in a.targets:  # interleaved, so drift on a shared machine hits every target alike
                r = BENCHES[t](n, a.writers, a.inflight)
                r.update(entries=n, target=t, run=run)
                rows.append(r)
                print(f"  {t:>7} n={n:>8} run {run}: {r['per_second']:9.0f}/s median {r['median_ms']:7.2f} ms "
                      f"p99 {r['p99_ms']:8.2f} ms lost {r['lost']}"
                      + (f" cpu {r['cpu_us']:.1f} us/update" if "cpu_us" in r else "")
                      + (f" start {r['startup_s']:.2f} s RSS {r['rss_mb']:.0f} MB" if "startup_s" in r else ""),
                      file=sys.stderr, flush=True)
    summary = []
    table = ["| entries | target | updates/s | median ack ms | p99 ack ms | lost | vs bare ROUTER | vs SQLite "
             "| server CPU µs/update | start s, median (max) | peak RSS MB |", "|---:|---|" + "---:|" * 9]
    head = ("entries", "target", "updates/s", "median ms", "p99 ms", "lost", "vs router", "vs sqlite")
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(head, (9, 8, 10, 10, 9, 5, 9, 9), strict=True)))
    for n in a.entries:
        base = {t: statistics.median(r["per_second"] for r in rows if r["entries"] == n and r["target"] == t)
                for t in ("router", "sqlite") if t in a.targets}
        for t in a.targets:
            rs = [r for r in rows if r["entries"] == n and r["target"] == t]
            med = {k: statistics.median(r[k] for r in rs) for k in ("per_second", "median_ms", "p99_ms")}
            med.update(entries=n, target=t, lost=max(r["lost"] for r in rs), torn=sum(r.get("torn", 0) for r in rs),
                       **{f"vs_{b}": med["per_second"] / v for b, v in base.items() if v},
                       startup_s=statistics.median(r.get("startup_s", 0) for r in rs),
                       startup_max_s=max(r.get("startup_s", 0) for r in rs), rss_mb=max(r.get("rss_mb", 0) for r in rs),
                       cpu_us=statistics.median(r.get("cpu_us", 0) for r in rs))
            summary.append(med)
            vs = {b: f"{med[f'vs_{b}']:.2f}x" if f"vs_{b}" in med else "-" for b in ("router", "sqlite")}
            print(f"{n:>9} {t:>8} {med['per_second']:>10.0f} {med['median_ms']:>10.2f} {med['p99_ms']:>9.2f} "
                  f"{med['lost']:>5} {vs['router']:>9} {vs['sqlite']:>9}")
            start, rss = (f"{med['startup_s']:.2f} ({med['startup_max_s']:.2f})", f"{med['rss_mb']:.0f}") \
                if t == "daemon" else ("-", "-")
            rate = f"{med['per_second']:,.0f}" if med["per_second"] >= 10 else f"{med['per_second']:.2f}"
            cpu = f"{med['cpu_us']:.1f}" if t in ("daemon", "router") else "-"
            lost = f"{med['lost']}" + (f" (file torn in {med['torn']} of {len(rs)} runs)" if med["torn"] else "")
            table.append(f"| {n:,} | {t} | {rate} | {med['median_ms']:.2f} | {med['p99_ms']:.2f} | "
                         f"{lost} | {vs['router']} | {vs['sqlite']} | {cpu} | {start} | {rss} |")
    if a.json:
        a.json.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if not a.no_doc:
        from chart import bars
        from report import update
        chart = bars("bench-state-updates", "Acknowledged state updates per second (log scale)", "updates/s",
                     [f"{n:,} entries" for n in a.entries],
                     {t: [next(m["per_second"] for m in summary if m["entries"] == n and m["target"] == t)
                          for n in a.entries] for t in a.targets}, log=True)
        update("state-updates", "State updates: acknowledged updates per second",
               f"{a.writers} writer processes, each claiming ahead and keeping up to {a.inflight} results in flight, "
               f"for {SECONDS:.0f} s per target (on a small state a writer requeues what it completed and goes on); "
               f"medians of {a.runs} runs, targets interleaved. `daemon` acknowledges only once durable and is "
               "SIGKILLed before the lost updates are counted; `router` is a bare ROUTER that acknowledges the "
               "same messages with no state and no disk. Server CPU is the user+system time of the daemon "
               "(or the ROUTER) during the run per acknowledged update; start is the time until the daemon "
               "answers; peak RSS is its VmHWM.\n\n" + "\n".join(table) + (f"\n\n{chart}" if chart else ""))


if __name__ == "__main__":
    main()
