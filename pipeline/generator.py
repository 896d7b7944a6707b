"""One generator process: claim texts, synthesize, write takes, report results.

The synthesizer is loaded once. Before each synthesis the generator tells the daemon
which leases it is working on (and waits for the answer), so a text that kills the
process is charged and no other. Each take is written under a hidden name that
records the text hash, revision and lease it was made for; the daemon moves it under
the entry's name only if it counts. Results are sent without waiting for their
acknowledgement and resent until the daemon confirms them. A thread heartbeats the
leases held, during synthesis too, so a long batch keeps its leases and a dead
process loses them within a lease (seconds).

Synthesis and writing overlap: a writer thread (``pipeline.writer``) encodes, writes and fsyncs
the last batch while the synthesizer works on the next, and the queue between them is bounded.
The working notice of the next batch tells the daemon the last one is no longer under way: a
death then charges only the texts under synthesis; the last batch's takes are adopted when they
reached the disk, and its other texts go back uncharged. A batch that runs out of GPU memory is
split and retried, uncharged, and the batch grows back after successes.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from statesvc import layout, protocol
from statesvc.client import Client, Unavailable
from statesvc.health import min_free_bytes
from statesvc.layout import state_path

from .batches import next_batch
from .synth import Synthesizer, batch_cost, is_deterministic, is_out_of_memory
from .wavs import create_take
from .writer import DiskTrouble, Failed, Writer, Written

log = logging.getLogger("pipeline.generate")

RESEND_AFTER = 2.0
CLAIM_RETRY = 2.0
IDLE_MAX = 2.0
IDLE_POLL = 0.05  # short: SIGTERM (the end of a run) is noticed within it
SILENCE_RECONNECT = 6.0
PREFETCH_MIN, PREFETCH_MAX = 8, 1024   # bounds of the queue of claimed texts
PREFETCH_SECONDS = 0.5                # of synthesis held in the queue
DISK_BACKOFF_MAX = 60.0
DISK_CHECK_EVERY = 2.0  # seconds between looks at the free space of wavs/
FLUSH_EVERY, FLUSH_COUNT = 0.2, 256  # results wait at most this long (s) / this many for one message
FLUSH_SECONDS = 10.0
WORKING_WAIT = 2.0  # seconds to wait for the daemon to hear what we start on (then start anyway)
HANDOVER_STEP = 0.02  # seconds between looks at the daemon's replies while the writer's queue is full
GROW_AFTER = 4  # batches that fit in memory before the batch size, cut by an out-of-memory error, doubles


MAX_CLAIM = 1000  # the protocol's limit on one claim
MAX_SYNTHESIS_SECONDS = 3600.0  # a synthesis running longer is stuck: its leases are let go


def default_owner() -> str:
    """Unique per process start: a restarted process is another owner, so its first working
    notice never touches what its predecessor died on."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class Pending:
    """A message waiting for its acknowledgement."""

    op: str
    fields: dict
    sent: float


@dataclass
class Generator:
    client: Client
    synth: Synthesizer
    dataset: Path
    batch: int = 1
    owner: str = field(default_factory=default_owner)
    heartbeat_seconds: float | None = None  # None: a fifth of the lease
    max_synthesis_seconds: float = MAX_SYNTHESIS_SECONDS
    until_done: bool = False  # exit once the daemon has nothing pending and nothing generating
    # The disk guard: under this many bytes free in wavs/, claim nothing and give back what is not
    # started, uncharged, until space returns. None: the floor `statesvc health` uses (1 GiB or 5 %
    # of the filesystem, whichever is smaller, at least the state file's size); 0: no guard (a full
    # disk still pauses on ENOSPC). The pause is told to the daemon, whose status shows it.
    min_free: int | None = None
    disk_low: bool = False
    disk_checked: float = float("-inf")
    finished: bool = False    # set when until_done saw the dataset done
    synthesizing_since: float | None = None  # monotonic start of the synthesis under way, for the heartbeat
    stopping: int = 0
    stopped_by: str = ""  # the signal that asked us to stop, for the last log line
    queue: collections.deque = field(default_factory=collections.deque)
    unacked: dict[int, Pending] = field(default_factory=dict)
    claim_rid: int | None = None
    claim_sent: float = 0.0
    claim_latency: float = 0.0
    text_seconds: float = 0.0
    idle_until: float = 0.0
    lease_seconds: float = 10.0
    held: dict[str, None] = field(default_factory=dict)   # tokens of our live leases, for the heartbeat thread
    lost: collections.deque = field(default_factory=collections.deque)  # tokens the daemon says we lost
    last_reply: float = field(default_factory=time.monotonic)
    backoff: float = 0.5
    done: int = 0
    failed: int = 0
    starved: float = 0.0
    disk_backoff: float = 0.0
    disk_pause_until: float = 0.0  # monotonic end of the pause the last refused write began
    written: list = field(default_factory=list)
    first_written: float = 0.0
    writer: Writer | None = None  # started by run(); without it takes are written in this thread
    batch_limit: int = 0   # the batch size memory allows now (0: --batch); cut on out-of-memory, grown back
    fitted: int = 0        # batches that fitted since the last cut or growth
    oom_splits: int = 0
    said_synthesizing: bool = False  # the daemon was told we synthesize something, and not told since that it ended

    # ---- talking to the daemon -------------------------------------------
    def send(self, op: str, **fields: object) -> int:
        rid = self.client.send(op, **fields)
        self.unacked[rid] = Pending(op, fields, time.monotonic())
        return rid

    def pump(self, timeout: float) -> None:
        """Handle replies for up to ``timeout`` seconds; resend what is overdue."""
        now = time.monotonic()
        for msg in self.client.replies(timeout):
            self.last_reply = now = time.monotonic()
            self.backoff = 0.5
            self.on_reply(msg)
        if self.unacked and now - self.last_reply > SILENCE_RECONNECT * self.backoff:
            # The daemon is away: a fresh socket, then resend everything (Lazy Pirate).
            log.warning("no reply for %.0f s; reconnecting", now - self.last_reply)
            self.client.reconnect()
            self.last_reply = now
            self.backoff = min(self.backoff * 2, 8.0)
            for p in self.unacked.values():
                p.sent = 0.0
        for rid, p in list(self.unacked.items()):
            if now - p.sent > RESEND_AFTER:
                if p.op in ("claim", "working", "status", "paused"):
                    del self.unacked[rid]  # never resent: expired leases come back; a notice is stale by now;
                    # a status is asked again after the next empty claim; a pause is said again at the next look
                    if p.op == "claim":
                        self.claim_rid = None
                    continue
                self.client.resend(rid, p.op, **p.fields)
                p.sent = now

    def on_reply(self, msg: dict) -> None:
        p = self.unacked.pop(msg.get("rid"), None)
        if p is None:
            return  # a late reply to something already answered
        if not msg.get("ok"):
            self.on_refused(p, msg)
            return
        if p.op == "claim":
            self.on_claim(msg)
        elif p.op == "status":
            self.on_status(msg)
        elif p.op == "results":
            self.on_results(p.fields["items"], msg.get("replies", []))
        elif p.op == "result":
            self.held.pop(p.fields["token"], None)
        elif p.op == "working":
            self.lost.extend(msg.get("lost", []))
        elif p.op == "release":
            for t in p.fields["tokens"]:
                self.held.pop(t, None)

    def on_refused(self, p: Pending, msg: dict) -> None:
        log.error("%s refused: %s", p.op, msg.get("error"))
        if p.op == "claim":
            self.claim_rid = None
            self.idle_until = time.monotonic() + CLAIM_RETRY
        elif protocol.error_kind(msg) in protocol.RETRY:
            self.unacked[self.client.send(p.op, **p.fields)] = Pending(p.op, p.fields, time.monotonic())
        else:  # refused for good: those leases are not ours to renew any more
            for item in p.fields.get("items", [p.fields]):
                self.held.pop(item.get("token"), None)

    def on_claim(self, msg: dict) -> None:
        self.claim_rid = None
        self.claim_latency = 0.7 * self.claim_latency + 0.3 * (time.monotonic() - self.claim_sent)
        self.lease_seconds = msg.get("lease_seconds") or self.lease_seconds
        got = msg.get("entries", [])
        self.queue.extend(got)
        self.held.update(dict.fromkeys(e["token"] for e in got))
        self.idle_until = 0.0 if got else time.monotonic() + min(IDLE_MAX, 0.2 + self.backoff)
        if not got and self.until_done:
            self.ask_if_done()

    def on_results(self, items: list[dict], replies: list[dict]) -> None:
        for item, r in zip(items, replies, strict=False):
            self.held.pop(item["token"], None)
            if not r.get("ok"):
                log.error("result for entry %s refused: %s", item["id"], r.get("error"))
            elif not r.get("applied") and r.get("reason") not in (None, "duplicate"):
                log.warning("take of entry %s does not count (%s); moved to stale/", item["id"], r["reason"])

    def idle(self) -> bool:
        """Nothing of ours in hand or in flight: no text queued, no take unreported, no result or
        claim unacknowledged (an unacknowledged result is still `generating` in the daemon's books)."""
        return (not self.queue and not self.written and self.claim_rid is None
                and not (self.writer is not None and self.writer.in_flight())
                and not any(p.op in ("result", "results", "release", "status") for p in self.unacked.values()))

    def ask_if_done(self) -> None:
        """A claim came back empty: ask the daemon whether the whole dataset is done (--until-done)."""
        if self.idle():
            self.send("status")

    def on_status(self, msg: dict) -> None:
        """Done only when nothing is pending and nothing is generating anywhere: texts other
        generators hold come back to pending if those die, and then they are ours to do."""
        if msg.get("pending") == 0 and msg.get("generating") == 0 and self.idle():
            log.info("nothing pending or generating (completed %s, failed %s): done",
                     msg.get("completed"), msg.get("failed"))
            self.finished = True

    def want_more(self) -> None:
        if self.stopping or self.claim_rid is not None or time.monotonic() < self.idle_until:
            return
        high = self.prefetch()
        if len(self.queue) < high // 2 + self.batch:
            self.claim_rid = self.send("claim", owner=self.owner, n=min(MAX_CLAIM, high - len(self.queue)),
                                       batch=self.batch)
            self.claim_sent = time.monotonic()

    def prefetch(self) -> int:
        """How many texts to hold: about PREFETCH_SECONDS of work, and two claim round trips.

        Every claim costs the daemon a durable save, so claims come in chunks sized by time,
        not by count: a fast synthesizer claims hundreds at once, a slow model a few.
        """
        if self.text_seconds <= 0:
            return max(PREFETCH_MIN, 4 * self.batch)
        need = int(max(PREFETCH_SECONDS, 2 * self.claim_latency) / self.text_seconds) + 2 * self.batch
        return max(PREFETCH_MIN, 4 * self.batch, min(PREFETCH_MAX, need))

    def drop_lost(self) -> None:
        """Leases the heartbeat thread heard we lost: never start on them."""
        if self.lost:
            lost = set()
            while self.lost:
                lost.add(self.lost.popleft())
            for t in lost:
                self.held.pop(t, None)
            self.queue = collections.deque(e for e in self.queue if e["token"] not in lost)

    def tell_working(self, entries: list[dict]) -> list[dict]:
        """Tell the daemon what we are about to synthesize, so a text that kills us is charged and
        no other. For a suspect entry (in flight when a generator died) wait for the answer first:
        a notice still in our socket when we die is lost. Otherwise go on at once: if this notice
        is lost, the daemon finds the previous unit's take files on disk (``write`` creates them
        before this is sent, written or not) and charges nobody, and the entries we held come back
        as suspects. Returns the entries whose leases we still hold."""
        rid = self.send("working", owner=self.owner, tokens=[e["token"] for e in entries])
        self.said_synthesizing = bool(entries)
        if not any(e.get("suspect") for e in entries):
            return entries
        self.await_reply(rid)
        self.unacked.pop(rid, None)  # no answer: the daemon is away; work on, the leases say the rest
        self.drop_lost()
        held = self.held
        return [e for e in entries if e["token"] in held]

    def next_unit(self) -> list[dict]:
        """What is synthesized together: a batch for a plugin with synthesize_batch (at most what
        memory allowed lately), else one text. Grouped by length for a model whose batch costs its
        longest text; a ``suspect`` entry goes alone (see ``pipeline.batches``)."""
        size = min(self.batch, self.batch_limit or self.batch) if hasattr(self.synth, "synthesize_batch") else 1
        return next_batch(self.queue, size, batch_cost(self.synth) == "longest")

    def work(self, entries: list[dict]) -> None:
        started = time.monotonic()
        self.synthesizing_since = started
        try:
            self.synthesize(entries)
        finally:
            self.synthesizing_since = None
            per_text = (time.monotonic() - started) / len(entries)
            self.text_seconds = per_text if not self.text_seconds else 0.8 * self.text_seconds + 0.2 * per_text

    def synthesize(self, entries: list[dict]) -> None:
        """Synthesize ``entries`` together and hand the audio to the writer. Out of memory: split in
        two and go on with each half (told to the daemon first, as any unit), nothing charged; a
        text out of memory alone is a failure of that text."""
        try:
            if len(entries) > 1:
                audios = list(self.synth.synthesize_batch([e["text"] for e in entries]))
                if len(audios) != len(entries):
                    raise ValueError(f"synthesize_batch returned {len(audios)} results for {len(entries)}")
            else:
                audios = [self.synth.synthesize(entries[0]["text"])]
        except Exception as exc:
            if len(entries) > 1 and is_out_of_memory(exc):
                self.split_for_memory(entries, exc)
                return
            for e in entries:
                self.report_failure(e, exc)
            return
        self.fitted += 1
        if self.batch_limit and self.fitted >= GROW_AFTER and len(entries) >= self.batch_limit:
            self.batch_limit = min(self.batch, 2 * self.batch_limit)
            self.fitted = 0
            log.info("batch size back to %d after %d batches that fitted in memory", self.batch_limit, GROW_AFTER)
        self.write(entries, audios)

    def split_for_memory(self, entries: list[dict], exc: BaseException) -> None:
        half = len(entries) // 2
        self.oom_splits += 1
        self.batch_limit, self.fitted = max(1, half), 0
        log.warning("out of memory on a batch of %d (%s: %s); retrying as %d and %d, uncharged",
                    len(entries), type(exc).__name__, str(exc)[:200], half, len(entries) - half)
        for part in (entries[:half], entries[half:]):
            part = self.tell_working(part)
            if part:
                self.synthesize(part)

    def write(self, entries: list[dict], audios: list) -> None:
        """Hand a synthesized batch to the writer thread; while its queue is full, handle replies.
        Each take's file is created first, before the next working notice can be sent: if that
        notice dies with us, the daemon finds these files and charges none of these texts."""
        for e in entries:
            create_take(self.dataset, e["filename"], e["token"])
        if self.writer is None:  # not running (a test stepping run_once): write here
            self.take_outcomes(Writer(self.dataset, self.synth.sample_rate).write(entries, audios))
            return
        while not self.writer.submit(entries, audios, timeout=HANDOVER_STEP):
            self.say_not_synthesizing()  # a death while we wait on the disk is not these texts' doing
            self.collect()
            self.pump(0)

    def say_not_synthesizing(self) -> None:
        """Tell the daemon nothing is under synthesis any more (an empty working notice), so a
        death while we wait (for work, or for the writer) charges nobody."""
        if self.said_synthesizing:
            self.send("working", owner=self.owner, tokens=[])
            self.said_synthesizing = False
            log.debug("told the daemon nothing is under synthesis")

    def collect(self) -> None:
        """What the writer finished: takes to report, failures to charge, a disk to wait for."""
        if self.writer is not None:
            self.take_outcomes(self.writer.outcomes())

    def take_outcomes(self, outcomes: list) -> None:
        for out in outcomes:
            if isinstance(out, Written):
                self.disk_backoff = 0.0
                if not self.written:
                    self.first_written = time.monotonic()
                self.written.append((out.entry, out.seconds, out.sig))
            elif isinstance(out, Failed):
                self.report_failure(out.entry, out.error)
            elif isinstance(out, DiskTrouble):
                self.pause_for_disk(out.error, out.unwritten)

    def drain_writer(self, timeout: float) -> None:
        """Wait (handling replies) until the writer has written everything handed to it."""
        deadline = time.monotonic() + timeout
        while self.writer is not None and self.writer.in_flight() and time.monotonic() < deadline:
            self.collect()
            self.pump(HANDOVER_STEP)
        self.collect()

    def pause_for_disk(self, exc: OSError, unwritten: list[dict]) -> None:
        """The disk, not the text, failed: give back what is not written and the queue, and wait
        before claiming again. No attempt is charged."""
        now = time.monotonic()
        if now >= self.disk_pause_until:  # one pause per refusal, not one per batch behind it in the writer
            self.disk_backoff = min(DISK_BACKOFF_MAX, max(1.0, 2 * self.disk_backoff))
            self.disk_pause_until = now + self.disk_backoff
            log.warning("cannot write wavs (%s); pausing %.0f s", exc.strerror, self.disk_backoff)
        back = unwritten + list(self.queue)
        self.queue.clear()
        self.send("release", owner=self.owner, tokens=[e["token"] for e in back])
        self.idle_until = max(self.idle_until, self.disk_pause_until)

    def flush_written(self, force: bool = False) -> None:
        """Report the takes written so far in one message. Each take was fsynced; the daemon
        moves the ones that count under their names and fsyncs wavs/ before it counts them."""
        slow = self.text_seconds * self.batch >= FLUSH_EVERY  # a slow model: report each batch at once
        if not self.written or not (force or slow or len(self.written) >= FLUSH_COUNT or not self.queue
                                    or time.monotonic() - self.first_written >= FLUSH_EVERY):
            return
        items = [{"id": e["id"], "token": e["token"], "status": "completed", "duration_seconds": round(sec, 6),
                  "sample_rate": self.synth.sample_rate, "text_hash": e["text_hash"], "rev": e["rev"],
                  "wav": sig, "deterministic": is_deterministic(self.synth)} for e, sec, sig in self.written]
        self.done += len(items)
        # one message for the whole flush; nobody waits on its reply unless we are stopping
        self.send("results", items=items, **({"wait": True} if self.stopping else {}))
        self.written = []

    def report_failure(self, e: dict, exc: BaseException) -> None:
        self.failed += 1
        text = f"{type(exc).__name__}: {exc}"
        log.warning("entry %s failed: %s", e["id"], text)
        log.debug("%s", traceback.format_exc())
        # Waited on (failures are rare): a failure still in our socket when the process dies is lost,
        # and the daemon would charge the text as one that killed its generator, with the wrong error.
        self.await_reply(self.send("result", id=e["id"], token=e["token"], status="failed", error=text[:2000]))

    def await_reply(self, rid: int) -> None:
        """Handle replies until ``rid`` is answered or WORKING_WAIT passes (the daemon is away)."""
        deadline = time.monotonic() + WORKING_WAIT
        while rid in self.unacked and time.monotonic() < deadline:
            for msg in self.client.replies(0.05):  # every reply of the batch: a claim's may come with ours
                self.last_reply = time.monotonic()
                self.on_reply(msg)

    # ---- the loop -----------------------------------------------------------
    def short_of_disk(self) -> bool:
        """Whether wavs/ has less free space than the guard's floor; said once in the log each way."""
        now = time.monotonic()
        if self.min_free == 0 or now - self.disk_checked < DISK_CHECK_EVERY:
            return self.disk_low
        self.disk_checked = now
        try:
            st = os.statvfs(layout.wavs(self.dataset))
        except OSError:
            return self.disk_low
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        floor = self.min_free if self.min_free is not None else min_free_bytes(total, None, self.checkpoint_size())
        low = free < floor
        if low or self.disk_low:  # said at each look while paused: the daemon forgets a pause not said again
            self.send("paused", owner=self.owner, paused=low, free=free, floor=floor)
        if low and not self.disk_low:
            log.warning("free disk space in wavs/ is %.2f GB, under %.2f GB: pausing (nothing claimed, nothing "
                        "charged) until space returns", free / 2**30, floor / 2**30)
            if self.queue:  # not started: back to the daemon at once, for no attempt
                self.send("release", owner=self.owner, tokens=[e["token"] for e in self.queue])
                self.queue.clear()
        elif self.disk_low and not low:
            log.info("free disk space in wavs/ is %.2f GB again: resuming", free / 2**30)
        self.disk_low = low
        return low

    def checkpoint_size(self) -> int:
        """About what one more checkpoint needs: the state file's size (0 if it cannot be seen)."""
        try:
            return state_path(self.dataset).stat().st_size
        except OSError:
            return 0

    def run_once(self) -> None:
        self.drop_lost()
        self.collect()
        if self.short_of_disk():
            self.flush_written(force=True)
            self.pump(IDLE_POLL)
            return
        self.want_more()
        if self.queue:
            unit = self.tell_working(self.next_unit())
            if unit:
                self.work(unit)
            self.flush_written()
            self.pump(0)
        else:
            self.say_not_synthesizing()
            self.drain_writer(IDLE_POLL)  # nothing to synthesize: report what is written at once
            self.flush_written(force=True)
            t = time.monotonic()
            self.pump(IDLE_POLL)
            self.starved += time.monotonic() - t

    def run(self) -> int:
        beat = Heartbeat(self)
        beat.start()
        self.writer = Writer(self.dataset, self.synth.sample_rate)
        self.writer.start()
        try:
            while not self.stopping and not self.finished:
                self.run_once()
            return self.shutdown()
        finally:
            self.writer.close()
            beat.stop()

    def shutdown(self) -> int:
        """Write what was synthesized, give back what was not started, flush results for a bounded time."""
        self.drain_writer(FLUSH_SECONDS)
        self.flush_written(force=True)
        deadline = time.monotonic() + FLUSH_SECONDS
        while time.monotonic() < deadline:
            if self.queue:  # unstarted work, including what a claim still in flight brings
                self.send("release", owner=self.owner, tokens=[e["token"] for e in self.queue])
                self.queue.clear()
            if not self.unacked:
                break
            self.pump(0.1)
        left = sum(len(p.fields.get("items", [p])) for p in self.unacked.values() if p.op.startswith("result"))
        why = f" on {self.stopped_by}" if self.stopped_by else " (done)" if self.finished else ""
        log.info("generator %s stopping%s: %d written, %d failed, %d results unacknowledged, "
                 "%.1f s waiting for work, %d batches split for memory", self.owner, why, self.done, self.failed,
                 left, self.starved, self.oom_splits)
        return 0


class Heartbeat(threading.Thread):
    """Renews the generator's leases every few seconds, during synthesis too, on its own socket
    (a zmq socket belongs to one thread). Lost leases go back to the generator through ``lost``."""

    def __init__(self, gen: Generator):
        super().__init__(name="heartbeat", daemon=True)
        self.gen = gen
        self.done = threading.Event()

    def interval(self) -> float:
        return self.gen.heartbeat_seconds or max(0.2, self.gen.lease_seconds / 5)

    def run(self) -> None:
        client = Client(self.gen.client.endpoint, timeout=1.0, retries=1, ctx=self.gen.client.ctx)
        last = time.monotonic()
        try:
            while not self.done.wait(0.1):  # short steps: a lease shorter than the default is honoured at once
                if time.monotonic() - last < self.interval():
                    continue
                last = time.monotonic()
                tokens = [] if self.stuck() else list(self.gen.held)
                if not tokens:
                    continue
                try:
                    reply = client.call("heartbeat", owner=self.gen.owner, tokens=tokens)
                except Unavailable:
                    continue  # the daemon is away; it grants a full lease when it comes back
                except Exception as exc:  # never let the thread die silently: the leases would go
                    log.warning("heartbeat failed: %s", exc)
                    continue
                self.gen.lost.extend(reply.get("lost", []))
        finally:
            client.close()

    def stuck(self) -> bool:
        """A synthesis running past --max-synthesis-seconds is stuck: its leases are let go (they
        expire; the text under way is charged) so the run does not wait on it for ever."""
        since = self.gen.synthesizing_since
        over = since is not None and time.monotonic() - since > self.gen.max_synthesis_seconds
        if over and not self.warned:
            log.error("synthesis running for over %.0f s: no longer renewing our leases",
                      self.gen.max_synthesis_seconds)
        self.warned = over
        return over

    warned = False

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def install_signals(gen: Generator) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        gen.stopping += 1
        gen.stopped_by = gen.stopped_by or signal.Signals(signum).name
        if gen.stopping > 1:
            os._exit(130)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
