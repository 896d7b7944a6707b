"""Headroom of one daemon: how many remote GPU generators one `statesvc serve` carries.

One daemon listens on tcp with CURVE (keys made in a temp folder, one client pair per simulated
generator, each loaded through $STATESVC_CLIENT_KEY / $STATESVC_SERVER_KEY as a GPU box does). N
simulated generators do on the wire what `pipeline generate` does with a model producing R takes a
second in batches of B: claim ahead (the generator's prefetch rule, ``batch`` in the claim), a
``working`` notice before each batch, a ``results`` batch of B completed takes after it (every B/R
seconds, sent without waiting, ``take_file: false`` so no wavs are needed), and a heartbeat of the
leases held every 2 s on a second socket. The generators run as asyncio tasks on zmq.asyncio
DEALER sockets in a few worker processes, so hundreds fit on two cores.

For each N of a ladder, a fresh copy of the dataset and a fresh daemon: after a warm-up, for
``--seconds``, the acknowledgement latency of every results batch (send to the reply with its rid;
a batch never answered counts as infinitely late), of the claims and of the reads (``working``,
heartbeats); takes acknowledged per second; the daemon's CPU (utime+stime of all its threads from
/proc/PID/stat over the window, % of one core), its commits per second and their mean duration
(journal append + fdatasync, from its Prometheus metrics); the load generator's own CPU and how late
its timers fire (when it saturates, its figures are not the daemon's); and the CPU the rest of the
machine used meanwhile (noise from other work).

Results batches nobody waits on are committed at most every 0.25 s (the daemon's MIN_COMMIT_GAP,
sparing the disk fdatasyncs) unless an urgent write (a claim) forces a commit sooner, so with a few
generators their p99 sits near 250 ms by design, and falls once claims arrive often enough. The
rule is therefore: p99 within ``--limit-ms`` for claims (urgent writes, committed at once, what a
generator can wait on) and reads, within the limit on top of the pacing for results, and every take
acknowledged. The ladder stops at the first N that breaks it, or when the load generator or the
machine saturates (then the figure is a floor). Also printed: the daemon's CPU per take, and the
number of GPUs one core would carry at that cost. Run:

    .venv/bin/python bench/headroom.py --rate 20 --batch 8 --seconds 15 --max-n 512
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import multiprocessing as mp
import os
import random
import re
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline.generator import MAX_CLAIM, PREFETCH_MAX, PREFETCH_MIN, PREFETCH_SECONDS  # noqa: E402
from statesvc.daemon import MIN_COMMIT_GAP  # noqa: E402

LADDER = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024)
HEARTBEAT_EVERY = 2.0   # a fifth of the default 10 s lease, as pipeline/generator.py's Heartbeat
GRACE = 5.0             # after the window, how long replies to what was sent in it are awaited
SATURATED_CPU = 85.0    # a load-gen worker above this (% of one core) is taken as saturated
SATURATED_LATE_MS = 50.0  # ... or whose timers fire this late (p99)
DISTURBED = 20.0        # other processes and steal above this (% of one core): a failing step is run again
LOOP_FULL = 90.0        # the daemon's loop thread at this % of a core: the daemon itself is saturated
PACING_MS = 1000 * MIN_COMMIT_GAP  # results nobody waits on are committed at most this often

MAKE = """
import sys
from pathlib import Path
from statesvc.entry import Entry
from statesvc.state import State
from statesvc.store import create
folder, n = Path(sys.argv[1]), int(sys.argv[2])
(folder / "wavs").mkdir(parents=True)
create(folder, State([Entry.make(i, f"b_{i:07d}", f"text number {i} of the headroom bench") for i in range(1, n + 1)]))
"""


# ---- the simulated generators (in worker processes) ------------------------------------------
class Sim:
    """One GPU generator on the wire: its sockets, its queue of claimed texts, its leases."""

    def __init__(self, w: Worker, i: int):
        import zmq
        self.w, self.i = w, i
        self.owner = f"sim-gpu{i}:{os.getpid()}"
        self.rng = random.Random(i)
        self.sock = w.socket(i)
        self.hb = w.socket(i)  # the heartbeat thread has its own socket, as a real generator's
        self.zmq = zmq
        self.rid = self.rng.randrange(1 << 40) << 20
        self.pending: dict[int, tuple[str, float, tuple[str, ...]]] = {}  # rid: op, sent, tokens reported
        self.queue: collections.deque = collections.deque()
        self.held: dict[str, None] = {}
        self.claim_rid: int | None = None
        self.unit: set[str] = set()  # the tokens of the batch being synthesized
        self.claim_latency = 0.0
        self.got_claim = asyncio.Event()
        self.sample_rate = 22050

    async def send(self, sock, op: str, done: tuple[str, ...] = (), **fields: object) -> int:
        """Send without waiting; ``done``: the tokens of the takes a results batch reports."""
        import orjson
        self.rid += 1
        await sock.send(orjson.dumps({"op": op, "rid": self.rid, **fields}))
        self.pending[self.rid] = (op, time.monotonic(), done)
        return self.rid

    def high(self) -> int:
        """pipeline/generator.py's prefetch: PREFETCH_SECONDS of work, two claim round trips."""
        b, ts = self.w.batch, 1.0 / self.w.rate
        need = int(max(PREFETCH_SECONDS, 2 * self.claim_latency) / ts) + 2 * b
        return max(PREFETCH_MIN, 4 * b, min(PREFETCH_MAX, need))

    async def want_more(self) -> None:
        high = self.high()
        if self.claim_rid is None and len(self.queue) < high // 2 + self.w.batch:
            self.claim_rid = await self.send(self.sock, "claim", owner=self.owner,
                                             n=min(MAX_CLAIM, high - len(self.queue)), batch=self.w.batch)

    async def produce(self) -> None:
        """Claim ahead; per batch: a working notice, synthesis (a sleep of B/R seconds, give or take the
        jitter: GPU batches vary), then a results batch. Generators start at random moments within
        one batch, as a fleet does, so their batches do not arrive in step."""
        w = self.w
        interval = w.batch / w.rate
        tick = w.t0 + self.rng.random() * interval
        await asyncio.sleep(tick - time.monotonic())
        await self.want_more()
        while time.monotonic() < w.end:
            while len(self.queue) < w.batch:
                await self.want_more()
                self.got_claim.clear()
                t = time.monotonic()
                try:
                    await asyncio.wait_for(self.got_claim.wait(), 2.0)
                except TimeoutError:
                    self.claim_rid = None  # never resent, as a generator's claims
                if w.in_window(t):
                    w.starved += time.monotonic() - t
                if time.monotonic() >= w.end:
                    return
            unit = [self.queue.popleft() for _ in range(w.batch)]
            self.unit = {e["token"] for e in unit}
            await self.send(self.sock, "working", owner=self.owner, tokens=[e["token"] for e in unit])
            await self.want_more()
            now = time.monotonic()
            if now > tick:  # the previous batch ran late (starved, or this process is too busy)
                tick = now
            tick += interval * (1 + w.jitter * (2 * self.rng.random() - 1))
            await asyncio.sleep(tick - now)
            late = time.monotonic() - tick
            if w.in_window(tick):
                w.late.append(late)
            items = [{"id": e["id"], "token": e["token"], "status": "completed", "duration_seconds": 4.2,
                      "sample_rate": self.sample_rate, "text_hash": e["text_hash"], "rev": e["rev"],
                      "take_file": False} for e in unit]
            await self.send(self.sock, "results", done=tuple(e["token"] for e in unit), items=items)
            if w.in_window(time.monotonic()):
                w.offered += len(items)

    async def connected(self) -> None:
        """A ping on both sockets: the CURVE handshakes are done before the clock starts."""
        for sock in (self.sock, self.hb):
            await sock.send(b'{"op": "ping", "rid": 0}')
            await asyncio.wait_for(sock.recv(), 60)

    async def read(self, sock) -> None:
        import orjson
        while True:
            try:
                frame = await sock.recv()
            except (asyncio.CancelledError, self.zmq.ZMQError):
                return
            now = time.monotonic()
            msg = orjson.loads(frame)
            p = self.pending.pop(msg.get("rid"), None)
            if p is not None:
                self.on_reply(msg, now, *p)

    def on_reply(self, msg: dict, now: float, op: str, sent: float, done: tuple[str, ...]) -> None:
        w = self.w
        if w.in_window(sent):
            w.lat[op].append(now - sent)
        if not msg.get("ok"):
            w.errors[f"{op}: {msg.get('error')}"[:200]] += 1
            if op == "claim":
                self.claim_rid = None
                self.got_claim.set()
            return
        if op == "claim":
            self.claim_rid = None
            self.claim_latency = 0.7 * self.claim_latency + 0.3 * (now - sent)
            self.sample_rate = msg.get("sample_rate") or self.sample_rate
            self.queue.extend(msg["entries"])
            self.held.update(dict.fromkeys(e["token"] for e in msg["entries"]))
            self.got_claim.set()
        elif op == "results":
            for r in msg.get("replies", []):
                if not r.get("ok"):
                    w.errors[f"result: {r.get('error')}"[:200]] += 1
            for t in done:
                self.held.pop(t, None)
            if w.in_window(now):
                w.acked += len(done)
        elif op in ("working", "heartbeat") and msg.get("lost"):
            # a heartbeat crossing a results batch on its way names the takes just reported: not a loss
            live = {e["token"] for e in self.queue} | self.unit
            w.lost += sum(1 for t in msg["lost"] if t in live)

    async def heartbeat(self) -> None:
        """Every 2 s, the tokens held (from the first beat, at a random phase)."""
        w = self.w
        await asyncio.sleep(w.t0 + self.rng.random() * HEARTBEAT_EVERY - time.monotonic())
        reader = asyncio.ensure_future(self.read(self.hb))
        try:
            while time.monotonic() < w.end:
                if self.held:
                    await self.send(self.hb, "heartbeat", owner=self.owner, tokens=list(self.held))
                await asyncio.sleep(HEARTBEAT_EVERY)
        finally:
            reader.cancel()

    def waiting_on_window(self) -> int:
        return sum(1 for _op, sent, _n in self.pending.values() if self.w.in_window(sent))

    def unanswered(self) -> collections.Counter:
        return collections.Counter(op for op, sent, _n in self.pending.values() if self.w.in_window(sent))

    def close(self) -> None:
        self.sock.close(0)
        self.hb.close(0)


class Worker:
    """A worker process's share of the generators and what they measured."""

    def __init__(self, endpoint: str, keys: Path, ids: list[int], rate: float, batch: int, jitter: float):
        import zmq.asyncio
        self.ctx = zmq.asyncio.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.ctx.set(zmq.MAX_SOCKETS, 8 * len(ids) + 64)
        self.endpoint, self.keys, self.ids, self.rate, self.batch = endpoint, keys, ids, rate, batch
        self.jitter = jitter
        self.t0 = self.w0 = self.w1 = self.end = math.inf
        self.lat: dict[str, list[float]] = collections.defaultdict(list)
        self.late: list[float] = []
        self.errors: collections.Counter = collections.Counter()
        self.offered = self.acked = self.lost = 0
        self.starved = 0.0

    def socket(self, i: int):
        """A DEALER made a CURVE client from the environment, as statesvc.client does for a tcp endpoint."""
        import zmq

        from statesvc.curve import ENV_CLIENT_KEY, ENV_SERVER_KEY, secure_client
        os.environ[ENV_CLIENT_KEY] = str(self.keys / f"gpu{i}.key_secret")
        os.environ[ENV_SERVER_KEY] = str(self.keys / "daemon.key")
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        secure_client(s)
        s.connect(self.endpoint)
        return s

    def in_window(self, t: float) -> bool:
        return self.w0 <= t < self.w1

    async def run(self, go, warm: float, seconds: float, ready) -> dict:
        sims = [Sim(self, i) for i in self.ids]
        for k in range(0, len(sims), 32):  # a few at a time: the daemon's ZAP handler checks each key
            await asyncio.gather(*(s.connected() for s in sims[k:k + 32]))
        ready.put(os.getpid())
        while go.value == 0:  # the main process sets the common start once every worker is connected
            await asyncio.sleep(0.01)
        self.t0 = go.value
        self.w0, self.w1 = self.t0 + warm, self.t0 + warm + seconds
        self.end = self.w1
        readers = [asyncio.ensure_future(s.read(s.sock)) for s in sims]
        await asyncio.gather(*(s.produce() for s in sims), *(s.heartbeat() for s in sims))
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(s.waiting_on_window() for s in sims):
            await asyncio.sleep(0.05)
        unanswered = collections.Counter()
        for s in sims:
            unanswered += s.unanswered()
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for s in sims:
            s.close()
        return {"lat": dict(self.lat), "late": self.late, "errors": dict(self.errors), "offered": self.offered,
                "acked": self.acked, "lost": self.lost, "starved": self.starved, "unanswered": dict(unanswered)}


def worker_main(endpoint: str, keys: str, ids: list[int], rate: float, batch: int, jitter: float, warm: float,
                seconds: float, go, ready, out) -> None:
    w = Worker(endpoint, Path(keys), ids, rate, batch, jitter)
    try:
        out.put(asyncio.run(w.run(go, warm, seconds, ready)))
    finally:
        w.ctx.term()


# ---- the daemon and the machine ----------------------------------------------------------------
def cpu_seconds(pid: int, children: bool = False, thread: int | None = None) -> float:
    """User plus system CPU time of a process so far, all its threads (and, with ``children``, its
    children once reaped: the daemon's checkpoints are written by forked children); or of one thread."""
    where = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    f = [int(x) for x in Path(where).read_text().rsplit(")", 1)[1].split()[11:15]]
    return (f[0] + f[1] + (f[2] + f[3] if children else 0)) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float, float]:
    """CPU seconds of the whole machine (all cores) from /proc/stat: processes (user, nice, system),
    interrupts (irq, softirq: loopback tcp is handled there, not in any process's time), steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2]) / tck, (f[5] + f[6]) / tck, f[7] / tck


def scrape(port: int) -> dict[str, float]:
    """From the daemon's metrics: its commits and checkpoints (count, seconds), journal bytes written."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for name in ("tts_commit_seconds_count", "tts_commit_seconds_sum", "tts_checkpoint_seconds_count",
                 "tts_checkpoint_seconds_sum", 'tts_bytes_written_total{file="journal"}'):
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def free_ports(k: int) -> list[int]:
    """k free consecutive ports (the daemon's events socket takes the port after its control socket)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + k >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + k):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return list(range(base, base + k))
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()


def start_daemon(folder: Path, keys: Path, port: int, metrics_port: int, extra: list[str]) -> subprocess.Popen:
    from statesvc.client import Client, Unavailable
    d = subprocess.Popen([sys.executable, "-m", "statesvc", "serve", "--dataset", str(folder),
                          "--endpoint", f"tcp://127.0.0.1:{port}", "--events", f"tcp://127.0.0.1:{port + 1}",
                          "--curve-secret", str(keys / "daemon.key_secret"), "--allow", str(keys / "allowed"),
                          "--metrics-port", str(metrics_port), "--log-level", "WARNING", *extra],
                         cwd=tempfile.gettempdir())
    os.environ["STATESVC_CLIENT_KEY"] = str(keys / "gpu0.key_secret")
    os.environ["STATESVC_SERVER_KEY"] = str(keys / "daemon.key")
    deadline = time.monotonic() + 120
    while True:
        try:
            with Client(f"tcp://127.0.0.1:{port}", timeout=0.3, retries=1) as c:
                c.call("ping")
            return d
        except Unavailable:
            if d.poll() is not None or time.monotonic() > deadline:
                d.kill()
                raise SystemExit(f"the daemon did not start (exit {d.poll()})") from None


def make_keys(folder: Path, n: int) -> None:
    """The daemon's pair, and one client pair per simulated generator, each allowed."""
    from statesvc.curve import keygen
    keygen(folder, "daemon")
    (folder / "allowed").mkdir()
    for i in range(n):
        public, _ = keygen(folder, f"gpu{i}")
        shutil.copy(public, folder / "allowed" / public.name)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def sample(daemon: int, workers: list[int], metrics_port: int) -> dict:
    """The counters a window is the difference of."""
    return {"d": cpu_seconds(daemon, True), "loop": cpu_seconds(daemon, thread=daemon),
            "w": [cpu_seconds(p) for p in workers], "m": machine_busy(), "me": time.process_time(),
            "metrics": scrape(metrics_port), "t": time.monotonic()}


def step(n: int, a: argparse.Namespace, template: Path, keys: Path, tmp: Path) -> dict:
    folder = tmp / f"n{n}"
    shutil.copytree(template, folder)
    from statesvc.layout import state_path
    file_bytes = state_path(folder).stat().st_size
    port, mport = free_ports(2)[0], free_ports(1)[0]
    d = start_daemon(folder, keys, port, mport, shlex.split(a.serve_args))
    spawn = mp.get_context("spawn")
    workers = min(a.workers, n)
    go, ready, out = spawn.Value("d", 0.0), spawn.Queue(), spawn.Queue()
    shares = [list(range(w, n, workers)) for w in range(workers)]
    procs = [spawn.Process(target=worker_main, args=(f"tcp://127.0.0.1:{port}", str(keys), ids, a.rate, a.batch,
                                                     a.jitter, a.warmup, a.seconds, go, ready, out)) for ids in shares]
    try:
        for p in procs:
            p.start()
        pids = [ready.get(timeout=120) for _ in procs]
        t0 = time.monotonic() + 0.5
        go.value = t0
        time.sleep(max(0.0, t0 + a.warmup - time.monotonic()))
        c0 = sample(d.pid, pids, mport)
        time.sleep(max(0.0, t0 + a.warmup + a.seconds - time.monotonic()))
        c1 = sample(d.pid, pids, mport)
        results = [out.get(timeout=a.seconds + 120) for _ in procs]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        d.kill()
        d.wait()
        shutil.rmtree(folder, ignore_errors=True)
    span = c1["t"] - c0["t"]
    lat = collections.defaultdict(list)
    unanswered = collections.Counter()
    errors = collections.Counter()
    for r in results:
        for op, xs in r["lat"].items():
            lat[op] += xs
        unanswered.update(r["unanswered"])
        errors.update(r["errors"])
    for op in list(lat) + list(unanswered):
        lat[op] = sorted(lat[op]) + [math.inf] * unanswered[op]
    reads = sorted(lat["working"] + lat["heartbeat"])
    late = sorted(x for r in results for x in r["late"])
    wcpu = [100 * (b - a_) / span for a_, b in zip(c0["w"], c1["w"], strict=True)]
    dcpu = 100 * (c1["d"] - c0["d"]) / span
    procs, irq, steal = (100 * (b - a_) / span for a_, b in zip(c0["m"], c1["m"], strict=True))
    busy = procs + irq + steal
    mine = 100 * (c1["me"] - c0["me"]) / span
    m = {k: c1["metrics"][k] - c0["metrics"][k] for k in c0["metrics"]}
    commits, commit_s = m["tts_commit_seconds_count"], m["tts_commit_seconds_sum"]
    acked = sum(r["acked"] for r in results)
    row = {
        "n": n, "offered": sum(r["offered"] for r in results) / a.seconds, "nominal": n * a.rate,
        "acked": acked / a.seconds, "busy": busy,
        "checkpoints": m["tts_checkpoint_seconds_count"], "checkpoint_s": m["tts_checkpoint_seconds_sum"],
        "journal_per_take": m['tts_bytes_written_total{file="journal"}'] / max(1, acked), "file_bytes": file_bytes,
        "p50": 1000 * pct(lat["results"], 0.5), "p99": 1000 * pct(lat["results"], 0.99),
        "max": 1000 * (lat["results"][-1] if lat["results"] else math.nan),
        "batches": len(lat["results"]), "unanswered": sum(unanswered.values()),
        "claim_p99": 1000 * pct(lat["claim"], 0.99), "read_p99": 1000 * pct(reads, 0.99),
        "daemon_cpu": dcpu, "loop_cpu": 100 * (c1["loop"] - c0["loop"]) / span,
        "loadgen_cpu": sum(wcpu), "loadgen_max": max(wcpu),
        "other_cpu": max(0.0, procs - dcpu - sum(wcpu) - mine), "irq_cpu": irq, "steal_cpu": steal,
        "commits": commits / span, "commit_ms": 1000 * commit_s / commits if commits else math.nan,
        "commit_share": 100 * commit_s / span,
        "late_p99": 1000 * pct(late, 0.99), "starved": sum(r["starved"] for r in results) / max(1, n),
        "errors": dict(errors), "lost": sum(r["lost"] for r in results),
    }
    full = busy >= 0.9 * 100 * (os.cpu_count() or 1)
    # a window holds a batch more or less of each generator's: the 2 batches absorb that at small N
    gen_full = (row["loadgen_max"] > SATURATED_CPU or row["late_p99"] > SATURATED_LATE_MS
                or row["offered"] < 0.95 * row["nominal"] - 2 * a.batch / a.seconds)
    row["note"] = "; ".join(x for x in ("load generator saturated" if gen_full else "",
                                         f"machine CPU full ({busy:.0f}%)" if full else "") if x)
    return row


def need_texts(n: int, a: argparse.Namespace) -> int:
    """Texts a step of n generators takes: what they complete, and twice their prefetch."""
    high = max(PREFETCH_MIN, 4 * a.batch, min(PREFETCH_MAX, int(PREFETCH_SECONDS * a.rate) + 2 * a.batch))
    return int(n * a.rate * (a.warmup + a.seconds + 1) * (1 + a.jitter) + 2 * n * high)


def fmt(x: float, nd: int = 1) -> str:
    return "∞" if math.isinf(x) else "-" if math.isnan(x) else f"{x:,.{nd}f}"


def judge(r: dict, a: argparse.Namespace) -> str:
    """Why a step fails the headroom rule ("" if it passes): results acknowledged within the limit on
    top of the daemon's deliberate pacing, claims and reads within the limit, every take acknowledged."""
    if r["p99"] > a.limit_ms + PACING_MS:
        return f"results p99 {fmt(r['p99'])} ms > {a.limit_ms:g} + {PACING_MS:g} ms"
    if r["claim_p99"] > a.limit_ms:
        return f"claim p99 {fmt(r['claim_p99'])} ms > {a.limit_ms:g} ms"
    if r["read_p99"] > a.limit_ms:
        return f"read p99 {fmt(r['read_p99'])} ms > {a.limit_ms:g} ms"
    if r["acked"] < 0.95 * r["offered"]:
        return f"acknowledged {r['acked']:,.0f} of {r['offered']:,.0f} takes/s"
    return ""


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0, help="Takes per second per simulated GPU (10 to 50).")
    ap.add_argument("--batch", type=int, default=8, help="Takes per results message (a synthesis batch).")
    ap.add_argument("--max-n", type=int, default=512, help="Largest number of generators tried.")
    ap.add_argument("--ladder", type=int, nargs="+", default=None,
                    help=f"The Ns to try (default: {' '.join(map(str, LADDER))}, up to --max-n).")
    ap.add_argument("--seconds", type=float, default=15.0, help="Measured seconds per step, after the warm-up.")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--entries", type=int, default=None,
                    help="Texts in the dataset, a fresh copy per step (default: what the largest N needs, "
                         "at least 200,000).")
    ap.add_argument("--jitter", type=float, default=0.2,
                    help="Each batch's synthesis takes B/R seconds times 1 ± this (uniform).")
    ap.add_argument("--workers", type=int, default=2, help="Load-generator processes.")
    ap.add_argument("--limit-ms", type=float, default=100.0,
                    help="p99 allowed for claims and reads, and for results on top of the commit pacing.")
    ap.add_argument("--retries", type=int, default=2,
                    help=f"Run a step again when it fails while other work takes over {DISTURBED:g}%% of a core.")
    ap.add_argument("--serve-args", default="", help="More arguments for `statesvc serve`, e.g. "
                    "'--checkpoint-bytes 100000000000' to see what the checkpoints cost.")
    ap.add_argument("--keep-going", action="store_true", help="Run the whole ladder, past the limit.")
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md.")
    a = ap.parse_args()
    a.ladder = [n for n in (a.ladder or LADDER) if n <= a.max_n]
    a.entries = a.entries or max(200_000, need_texts(max(a.ladder), a))
    return a


def show(r: dict) -> None:
    print(f"  N={r['n']:>4}: offered {r['offered']:8.0f}/s acked {r['acked']:8.0f}/s results p50 {fmt(r['p50'])} "
          f"p99 {fmt(r['p99'])} max {fmt(r['max'])} ms ({r['batches']} batches, {r['unanswered']} "
          f"unanswered); claim p99 {fmt(r['claim_p99'])} read p99 {fmt(r['read_p99'])} ms; daemon CPU "
          f"{r['daemon_cpu']:.0f}% (loop thread {r['loop_cpu']:.0f}%), {r['commits']:.1f} commits/s of "
          f"{fmt(r['commit_ms'], 2)} ms "
          f"({r['commit_share']:.0f}% of the time); load-gen CPU {r['loadgen_cpu']:.0f}% (max worker "
          f"{r['loadgen_max']:.0f}%, timers late p99 {fmt(r['late_p99'])} ms, starved "
          f"{r['starved']:.2f} s/gen); other processes {r['other_cpu']:.0f}%, irq+softirq {r['irq_cpu']:.0f}%, "
          f"steal {r['steal_cpu']:.0f}% (machine {r['busy']:.0f}%); {r['checkpoints']:.0f} checkpoints "
          f"({r['checkpoint_s']:.1f} s), journal {r['journal_per_take']:.0f} B/take; {r['note'] or 'ok'}"
          + (f"; FAILS: {r['fails']}" if r["fails"] else "")
          + (f"; {r['lost']} leases lost" if r["lost"] else "")
          + (f"; errors {r['errors']}" if r["errors"] else ""), file=sys.stderr, flush=True)


def ladder(a: argparse.Namespace) -> list[dict]:
    """Each N in turn, until one fails the rule or saturates (a step that does so while other work
    takes the CPU is run again)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per connection, on both sides
    tmp = Path(tempfile.mkdtemp(prefix="bench-headroom-", dir=os.environ.get("BENCH_DIR")))
    rows: list[dict] = []
    try:
        t = time.monotonic()
        make_keys(tmp / "keys", max(a.ladder))
        template = tmp / "template"
        subprocess.run([sys.executable, "-c", MAKE, str(template), str(a.entries)], check=True,
                       cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": str(ROOT)})
        print(f"  {max(a.ladder)} key pairs and {a.entries:,} texts made in {time.monotonic() - t:.1f} s",
              file=sys.stderr, flush=True)
        for n in a.ladder:
            if need_texts(n, a) > a.entries:
                print(f"  N={n} needs about {need_texts(n, a):,} texts; stopping (raise --entries)", file=sys.stderr)
                break
            for attempt in range(a.retries + 1):
                r = step(n, a, template, tmp / "keys", tmp)
                r["fails"] = judge(r, a)
                r["disturbed"] = r["other_cpu"] + r["steal_cpu"] > DISTURBED
                show(r)
                if not ((r["fails"] or r["note"]) and r["disturbed"]) or attempt == a.retries:
                    break
                print(f"  N={n:>4}: disturbed by other work ({r['other_cpu'] + r['steal_cpu']:.0f}% of the CPU): "
                      "again", file=sys.stderr, flush=True)
            rows.append(r)
            if (r["fails"] or r["note"]) and not a.keep_going:
                break
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def conclude(rows: list[dict], a: argparse.Namespace) -> tuple[str, list[str]]:
    """The conclusion line, and the daemon's CPU per take where it is most amortized (the ceiling of one core)."""
    stop = next((r for r in rows if r["fails"] or r["note"]), None)
    best = 0
    for r in rows:  # in ladder order, up to the first step that fails or saturates
        if r["fails"]:
            break
        best = r["n"]
        if r["note"]:
            break
    if stop is None:
        why = "the largest N tried; p99 within the limit throughout, so this is a floor"
    elif not stop["fails"]:
        why = f"at N={stop['n']}: {stop['note']} with p99 still within the limit, so this is a floor"
    else:
        why = f"at N={stop['n']}: {stop['fails']}" + (", disturbed by other work" if stop["disturbed"] else "")
    conclusion = f"one daemon carries about {best} GPUs at {a.rate:g} takes/s each (p99 ≤ {a.limit_ms:g} ms; {why})"
    ref = max((r for r in rows if r["acked"] > 0 and not r["note"]), key=lambda r: r["n"], default=None)
    extra = []
    if ref is not None:
        us = 1e4 * ref["daemon_cpu"] / ref["acked"]
        extra.append(f"Daemon CPU per acknowledged take at N={ref['n']}: {us:.0f} µs (its claims, notices and "
                     f"heartbeats included): one core would carry about {1e6 / us:,.0f} takes/s, "
                     f"{1e6 / us / a.rate:,.0f} GPUs at {a.rate:g} takes/s (extrapolated). Its loop thread used "
                     f"{ref['loop_cpu']:.0f}% of a core and waited {ref['commit_share']:.0f}% of the time in commits "
                     f"(journal append and fdatasync, {fmt(ref['commit_ms'], 2)} ms each on average).")
        cps = [r for r in rows if r["checkpoints"]]
        took = f", each taking {sum(r['checkpoint_s'] for r in cps) / sum(r['checkpoints'] for r in cps):.1f} s " \
               "in a forked child" if cps else ""
        every = ref["file_bytes"] / 2 / (ref["journal_per_take"] * ref["acked"])
        extra.append(f"The journal grows by {ref['journal_per_take']:.0f} bytes per take: at N={ref['n']} it reaches "
                     f"half the {ref['file_bytes'] / 2**20:.0f} MiB file, and a checkpoint is written, every "
                     f"{every:.0f} s in a long run{took}.")
    return conclusion, extra


def main() -> None:
    a = parse()
    rows = ladder(a)
    table = ["| N | offered takes/s | acked takes/s | results ack p50 ms | results ack p99 ms | claim p99 ms "
             "| read p99 ms | daemon CPU % (loop thread) | commits/s | mean commit ms | checkpoints | load-gen CPU % "
             "| softirq CPU % | other CPU % | note |", "|---:|" + "---:|" * 13 + "---|"]
    for r in rows:
        note = "; ".join(x for x in (r["fails"], r["note"], "disturbed by other work" if r["disturbed"] else "",
                                     "daemon loop saturated" if r["loop_cpu"] >= LOOP_FULL else "") if x)
        table.append(f"| {r['n']} | {r['offered']:,.0f} | {r['acked']:,.0f} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
                     f"{fmt(r['claim_p99'])} | {fmt(r['read_p99'])} | {r['daemon_cpu']:.0f} ({r['loop_cpu']:.0f}) | "
                     f"{r['commits']:.0f} | "
                     f"{fmt(r['commit_ms'], 2)} | {r['checkpoints']:.0f} | {r['loadgen_cpu']:.0f} | "
                     f"{r['irq_cpu']:.0f} | {r['other_cpu'] + r['steal_cpu']:.0f} | {note} |")
    conclusion, extra = conclude(rows, a)
    cmd = " ".join([".venv/bin/python", *sys.argv])
    print("\n" + "\n".join(table) + f"\n\n{conclusion}\n\n" + "".join(x + "\n\n" for x in extra)
          + f"Command: `{cmd}`")
    if not a.no_doc:
        from report import update
        update("headroom", "Headroom: how many GPU generators one daemon carries",
               f"One daemon on tcp with CURVE against N simulated remote generators, each doing on the wire what "
               f"`pipeline generate` does at {a.rate:g} takes/s: claims ahead (its prefetch rule), a `working` "
               f"notice per batch, a `results` batch of {a.batch} takes every {a.batch / a.rate:.2f} s "
               f"(± {100 * a.jitter:.0f}%) sent without waiting (`take_file: false`: no wavs), a heartbeat every "
               f"{HEARTBEAT_EVERY:g} s on a second socket; asyncio DEALER sockets in {a.workers} load-generator "
               f"processes, one CURVE key pair per generator. {a.entries:,} texts, a fresh copy and a fresh daemon "
               f"per N; {a.warmup:g} s warm-up, then {a.seconds:g} s measured. Results ack: from sending a batch "
               "to its reply (unanswered counts as infinite). Results nobody waits on are committed at most every "
               f"{PACING_MS:g} ms (the daemon's pacing, sparing fdatasyncs) unless a claim forces a commit, so "
               "with few generators their p99 sits near that by design; the rule is p99 ≤ the limit for claims "
               "(urgent writes, committed at once) and reads (`working`, heartbeats: answered from memory), "
               "and ≤ the limit on top of the pacing for results, every take acknowledged. Daemon CPU: "
               "utime+stime of all its threads over the window, % of one core; commits and their mean duration "
               "from its metrics; softirq: the machine's interrupt time (loopback tcp is handled there); other: "
               "other processes and steal meanwhile. The daemon and the load generator share the machine's "
               f"{os.cpu_count()} cores.\n\n"
               + "\n".join(table) + f"\n\n**{conclusion}.**" + "".join("\n\n" + x for x in extra))


if __name__ == "__main__":
    main()
