"""The daemon loop: the only writer of generation_state.json and its journal.

Group commit: each ``run_once`` drains what has arrived on the control socket,
applies it one message at a time, appends what changed to the journal once
(fdatasync), and only then answers the writes. Reads are answered at once from
memory. Now and then (the journal as big as the file, a moment idle, ``statesvc
checkpoint``, a clean stop) the whole state is written as a new checkpoint file
and the journal starts afresh. Signals only set a flag.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import orjson
import zmq

from . import layout, protocol
from .atomic import OutcomeUnknown, SaveFailed, fsync_dir
from .codec import DamagedState
from .curve import CurveError, secure_server
from .endpoints import defaults
from .entry import Status
from .events import BEAT, COMMIT, ENTRY, beat_body, commit_body
from .handlers import Handlers
from .lock import WriterLock
from .notify import Notifier
from .protocol import BadRequest, ErrorKind
from .report import Commits, Report
from .state import Refused, State
from .store import Store, load_for_writing, remove_stale_temps

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("statesvc")

DRAIN_LIMIT = 20_000
EXPIRE_EVERY = 1.0
SAVE_RETRY = 1.0
# Writes nobody waits on (a generator's results batches) are committed at most every
# MIN_COMMIT_GAP seconds, or SAVE_DUTY times the last commit's duration if longer: every
# commit is an fdatasync, and committing after every batch (about 30 a second) slowed the
# generators' own wav fsyncs (bench/pipeline_overhead.py --synth tone).
MIN_COMMIT_GAP = 0.25
SAVE_DUTY = 2.0
# A checkpoint rewrites the whole file: when the journal has grown to half the file's size (so
# all that is written stays within three times what changed, and a start replays at most half a
# file's worth: at 1,000,000 entries a whole file's worth took the start past 3 s), after
# CHECKPOINT_IDLE seconds
# without a commit, on request, and on a clean stop. A failed one is tried again later; the
# journal keeps every commit meanwhile.
CHECKPOINT_MIN_BYTES = 1 << 20
CHECKPOINT_IDLE = 2.0
CHECKPOINT_RETRY = 10.0
# Plain ints: pyzmq's enum flags cost more to combine than the send itself.
NOBLOCK, NOBLOCK_MORE, RCVMORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE), int(zmq.RCVMORE)
URGENT = 2  # a deferred reply that somebody is waiting on (a claim): commit without pacing
CHECKPOINT = 3  # a request for a checkpoint: answered once it is written
_encode = msgspec.json.Encoder().encode


class Sockets:
    """The control ROUTER (requests, replies) and the events PUB (what each commit changed), bound
    to their endpoints, behind CURVE when asked; owner-only files for ipc endpoints."""

    def __init__(self, endpoint: str, events: str, ctx: zmq.Context | None = None,
                 curve: tuple[Path, Path] | None = None):
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE)
        self.router.setsockopt(zmq.SNDHWM, 10_000)
        self.router.setsockopt(zmq.RCVHWM, 100_000)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        self.auth = None
        if curve is not None:  # before bind: a tcp endpoint never accepts a plain client
            self.auth = secure_server(self.ctx, [self.router, self.pub], *curve)
        self.router.bind(endpoint)
        self.pub.bind(events)
        for ep in (endpoint, events):
            if ep.startswith("ipc://"):
                os.chmod(ep[len("ipc://"):], 0o600)  # local endpoints: owner only
        self.endpoint, self.events = endpoint, events
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)

    def send(self, envelope: list[bytes], reply: bytes) -> None:
        try:
            for frame in envelope:
                self.router.send(frame, NOBLOCK_MORE)
            self.router.send(reply, NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass  # a vanished or slow client never blocks the daemon; it will resend

    def publish(self, written: list, seq: int) -> None:
        """Change events: each entry the commit wrote, as it now is, then the commit's number and
        how many entries it wrote, so a subscriber knows it missed some (a full queue drops events)
        and reads the state again."""
        try:
            for e in written:
                self.pub.send(ENTRY, NOBLOCK_MORE)
                self.pub.send(_encode(e), NOBLOCK)
            self.pub.send(COMMIT, NOBLOCK_MORE)
            self.pub.send(commit_body(seq, len(written)), NOBLOCK)
        except zmq.Again:
            pass

    def beat(self, seq: int) -> None:
        """The number of the last commit, now and then: a subscriber that lost a commit's events
        and its end (a full queue drops both) learns it without waiting for the next commit."""
        try:
            self.pub.send(BEAT, NOBLOCK_MORE)
            self.pub.send(beat_body(seq), NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.router.close(0)
        self.pub.close(0)
        if self.auth is not None:
            self.auth.stop()
        if self._own_ctx:
            self.ctx.term()
        for ep in (self.endpoint, self.events):
            if ep.startswith("ipc://"):
                try:
                    os.unlink(ep[len("ipc://"):])
                except OSError:
                    pass


class Checkpoints:
    """When the daemon writes a checkpoint, and who waits for one (``statesvc checkpoint``): each
    asker is answered once a checkpoint holding every commit before its request is in place."""

    def __init__(self, limit_bytes: int | None = None, idle: float = CHECKPOINT_IDLE):
        self.waiting: list[tuple[list[bytes], int | None, int]] = []  # envelope, rid, seq then
        self.limit_bytes = limit_bytes  # None: half the file's size (at least CHECKPOINT_MIN_BYTES)
        self.idle = idle                # 0: never for idleness
        self.next_try = 0.0             # after a failed one: not before

    def ask(self, envelope: list[bytes], rid: int | None, seq: int) -> None:
        self.waiting.append((envelope, rid, seq))

    def due(self, store: Store, now: float) -> bool:
        """After a commit: somebody asked, or the journal has grown to the limit."""
        limit = self.limit_bytes or max(CHECKPOINT_MIN_BYTES, store.file_bytes // 2)
        return bool(self.waiting) or (store.journal_bytes >= limit and now >= self.next_try)

    def idle_due(self, store: Store, now: float, last_commit: float) -> bool:
        """No commit for ``idle`` seconds and the file lags: the file alone becomes the whole truth again."""
        return bool(self.idle and now - last_commit >= self.idle and store.seq != store.checkpoint_seq
                    and now >= self.next_try)

    def answer(self, send: Callable[[list[bytes], bytes], None], which: Callable[[int], bool], body: dict) -> None:
        """Answer the askers whose sequence number ``which`` accepts; the others keep waiting."""
        keep = []
        for envelope, rid, seq in self.waiting:
            if which(seq):
                send(envelope, protocol.encode({"rid": rid, **body}))
            else:
                keep.append((envelope, rid, seq))
        self.waiting = keep


class Daemon:
    """The loop's state: the books (state, store, handlers), its parts (sockets, checkpoints, the
    report and the commits' record for the status, metrics), and the writes waiting for a commit."""

    def __init__(self, dataset: Path, state: State, endpoint: str, events: str, store: Store,
                 ctx: zmq.Context | None = None, curve: tuple[Path, Path] | None = None,
                 checkpoints: Checkpoints | None = None):
        self.dataset = dataset
        self.state = state
        self.store = store
        self.report = Report(self)
        self.handlers = Handlers(dataset, state, self.report.status)
        self.sockets = Sockets(endpoint, events, ctx, curve)
        self.send = self.sockets.send  # bound once: the hot path's replies
        self.notifier = Notifier()
        self.checkpoints = checkpoints or Checkpoints()
        self.commits = Commits(state.counts[Status.COMPLETED])
        self.metrics: Metrics | None = None   # --metrics-port: Prometheus counters and histograms
        self.stopping = 0
        self.next_expire = self.next_watchdog = self.next_commit = 0.0
        self.last_commit = time.time()
        self.waiting: list[tuple[list[bytes], bytes, float]] = []  # envelope, reply, when it arrived
        self.totals = collections.Counter()
        self.broken = False  # a write failed half way (a bug): the next commit rolls back instead of saving

    # ---- one message ----------------------------------------------------
    def handle(self, frames: list[bytes], now: float) -> tuple[bytes | None, list[bytes] | None, int]:
        """Return (reply, envelope, deferred) for one multipart message; deferred may be URGENT.

        Every op goes to ``Handlers`` but a checkpoint (``protocol.STORAGE``): it is about the
        files, not the entries, and answered once a checkpoint is written, not once a commit is."""
        ident, rest = frames[0], frames[1:]
        envelope = [ident]
        if len(rest) == 2 and rest[0] == b"":
            envelope, rest = [ident, b""], rest[1:]  # a REQ client's delimiter
        rid = op = None
        try:
            if len(rest) != 1:
                raise BadRequest(f"expected one frame, got {len(rest)}")
            msg = protocol.decode(rest[0])
            rid = protocol.request_id(msg)
            op, args = protocol.validate(msg)
            urgent = protocol.waits(op, msg)  # validated before anything is applied
            req = args.get("req") if op in protocol.NOT_IDEMPOTENT else None
            first = self.state.answer_of(op, req) if req else None
            if first is not None:  # a resend: the first answer, applied once
                body, deferred = first, True
            elif op in protocol.STORAGE:
                self.checkpoints.ask(envelope, rid, self.store.seq)
                return b"", envelope, CHECKPOINT
            else:
                body, deferred = self.handlers.apply(op, args, now)
                if req:
                    self.state.remember(op, req, body)
            if deferred and urgent:
                deferred = URGENT
            self.totals[op] += 1
            if self.metrics is not None and op in protocol.WRITES:
                self.metrics.applied(op, args, body)
            reply = {"rid": rid, "ok": True, **body}
        except (BadRequest, Refused) as exc:
            self.totals["refused"] += 1
            reply, deferred = {"rid": rid, **protocol.failure(ErrorKind.REFUSED, str(exc))}, False
        except Exception as exc:  # a bug must cost one reply, never the daemon
            log.error("internal error: %s", traceback.format_exc().replace("\n", " | "))
            reply, deferred = {"rid": rid, **protocol.failure(ErrorKind.INTERNAL, f"internal error: {exc}")}, False
            if op in protocol.WRITES:  # it may have been half applied: this batch is not saved but rolled back
                self.broken = True
        return protocol.encode(reply), envelope, deferred

    # ---- the loop -------------------------------------------------------
    def wait(self, max_ms: int = 50) -> None:  # short: a signal is noticed within max_ms
        """Block until a message arrives or the next commit is due."""
        timeout = max_ms
        if self.waiting or self.state.unsaved:
            timeout = min(timeout, max(0, int((self.next_commit - time.time()) * 1000) + 1))
        self.sockets.poller.poll(timeout)

    def run_once(self, now: float) -> None:
        """Apply what has arrived; commit when due; answer the writes of a durable commit."""
        self.drain(now)
        if now >= self.next_expire:
            self.next_expire = now + EXPIRE_EVERY
            for eid in self.handlers.expire(now):
                log.info("lease on entry %d expired", eid)
            self.report.sample(now, self.state.counts["completed"])
            self.sockets.beat(self.store.seq)
        job = self.store.job
        if (self.waiting or self.state.unsaved or (self.checkpoints.waiting and job is None)) \
                and now >= self.next_commit:
            self.commit(now)
        elif job is not None and not self.state.unsaved and not self.waiting:
            job.let_in_place()  # nothing uncommitted: the file can hold nothing refused
            if job.done:
                self.finish_checkpoint(now)
        elif job is None and not self.state.unsaved and self.checkpoints.idle_due(self.store, now, self.last_commit):
            self.store.begin_checkpoint(self.state)  # idle: the file alone becomes the whole truth again
        if now >= self.next_watchdog:
            self.next_watchdog = now + self.notifier.watchdog_interval
            self.notifier.send("WATCHDOG=1")

    def drain(self, now: float) -> None:
        """Apply what has arrived on the control socket; answer reads at once."""
        router = self.sockets.router
        for _ in range(DRAIN_LIMIT):
            try:
                frames = [router.recv(NOBLOCK)]
                while router.getsockopt(RCVMORE):
                    frames.append(router.recv(NOBLOCK))
            except zmq.Again:
                break
            reply, envelope, later = self.handle(frames, now)
            if later == CHECKPOINT:
                self.next_commit = 0.0
            elif later:
                self.waiting.append((envelope, reply, now))
                if later == URGENT:
                    self.next_commit = 0.0
            else:
                self.send(envelope, reply)

    def commit(self, now: float) -> None:
        """Group commit: one journal record for everything applied since the last one, then the
        replies; then a checkpoint is started when one is due, or put in place when written.

        Unless somebody waits (URGENT), the next commit comes MIN_COMMIT_GAP or SAVE_DUTY times
        this commit's duration later, whichever is longer: fewer fdatasyncs taking the disk
        from the generators' wavs.
        """
        waiting, self.waiting = self.waiting, []
        if self.broken:
            self.broken = False
            self.refuse(waiting, SaveFailed("an internal error while applying this batch"))
            self.rollback(now)
            return
        if self.state.unsaved:
            try:
                written, took, appended = self.write()
            except SaveFailed as exc:
                self.commit_failed(waiting, exc, now)
                return
            completed = self.commits.succeeded(now, self.state.counts[Status.COMPLETED])
            if self.metrics is not None:
                self.metrics.committed(took, appended, completed)
            self.next_commit = now + took + max(MIN_COMMIT_GAP, SAVE_DUTY * took)
            self.last_commit = now
            self.handlers.carry_out(self.handlers.after_save)
            self.handlers.after_save.clear()
            self.sockets.publish(written, self.store.seq)
        self.acknowledge(waiting)
        job = self.store.job
        if job is not None:
            if not self.state.unsaved:
                job.let_in_place()  # right after a successful commit: everything it can hold is committed
            if job.done:
                self.finish_checkpoint(now)
            return
        if self.checkpoints.due(self.store, now):
            self.store.begin_checkpoint(self.state)  # written by a forked child: commits go on meanwhile

    def write(self) -> tuple[list, float, int]:
        """Make what was applied durable: (the entries written, seconds it took, journal bytes appended)."""
        started = time.monotonic()
        journal_before = self.store.journal_bytes
        if self.handlers.promoted:  # the takes' renames are durable before the state counts them
            self.handlers.promoted = False
            try:
                fsync_dir(layout.wavs(self.dataset))
            except OSError as exc:
                raise SaveFailed(f"fsync of wavs/: {exc.strerror}") from None
        written = self.store.commit(self.state)
        return written, time.monotonic() - started, self.store.journal_bytes - journal_before

    def finish_checkpoint(self, now: float, wait: bool = False) -> None:
        """Put a written checkpoint in place and start the journal afresh; answer who asked."""
        seq = self.store.job.head.seq
        try:
            self.store.wait_checkpoint_in_place() if wait else self.store.swap_in_checkpoint()
        except OutcomeUnknown:
            self.checkpoints.answer(self.send, lambda s: True, protocol.failure(
                ErrorKind.OUTCOME_UNKNOWN, "checkpoint outcome unknown"))
            raise
        except SaveFailed as exc:
            self.checkpoints.next_try = now + CHECKPOINT_RETRY
            log.error("checkpoint failed (the journal keeps every commit; next try in %.0f s): %s",
                      CHECKPOINT_RETRY, exc)
            if self.metrics is not None:
                self.metrics.save_failures.labels("checkpoint").inc()
            self.checkpoints.answer(self.send, lambda s: True, protocol.failure(
                ErrorKind.NOT_SAVED, f"checkpoint failed: {exc}"))
            return
        took = self.store.last_checkpoint_seconds
        log.info("checkpoint: %d bytes in %.3f s", self.store.file_bytes, took)
        if self.metrics is not None:
            self.metrics.checkpointed(took, self.store.file_bytes)
        # who asked before the commits it holds is answered; who asked later waits for the next one
        self.checkpoints.answer(self.send, lambda s: s <= seq, {"ok": True, "bytes": self.store.file_bytes,
                                                                "seconds": round(took, 3)})

    def commit_failed(self, waiting: list, exc: SaveFailed, now: float) -> None:
        """Refuse the batch and roll memory back to the disk (or, outcome unknown, stop)."""
        self.commits.failed(exc)
        if self.metrics is not None:
            self.metrics.save_failures.labels("commit").inc()
        self.refuse(waiting, exc)
        if isinstance(exc, OutcomeUnknown):
            raise exc  # the supervisor restarts us; clients resend
        self.next_commit = now + SAVE_RETRY
        self.rollback(now)

    def acknowledge(self, waiting: list) -> None:
        acked = time.time()
        for envelope, reply, arrived in waiting:
            self.send(envelope, reply)
            if self.metrics is not None:
                self.metrics.ack.observe(max(0.0, acked - arrived))

    def refuse(self, waiting: list, exc: SaveFailed) -> None:
        log.error("save failed, batch of %d writes refused: %s", len(waiting), exc)
        # after the rename, the save may survive or not: never tell a client "not saved" then
        if isinstance(exc, OutcomeUnknown):
            err = protocol.failure(ErrorKind.OUTCOME_UNKNOWN, f"outcome unknown (check, then retry): {exc}")
        else:
            err = protocol.failure(ErrorKind.NOT_SAVED, f"not saved: {exc}")
        for envelope, reply, _arrived in waiting:
            rid = orjson.loads(reply).get("rid")
            self.send(envelope, protocol.encode({"rid": rid, **err}))

    def rollback(self, now: float) -> None:
        """A failed save: memory goes back to what is on disk, so nothing answered "not saved"
        appears later (SQLite's rollback). Costs a load (seconds at a million entries), only on failure."""
        started = time.monotonic()
        if self.store.job is not None:  # it may hold what was just refused
            self.checkpoints.answer(self.send, lambda s: True, protocol.failure(
                ErrorKind.NOT_SAVED, "checkpoint failed: a commit failed"))
        self.store.close()
        try:
            state, store = load_for_writing(self.dataset)
        except (DamagedState, SaveFailed) as exc:  # the disk lies or fails: restart and load again
            raise OutcomeUnknown(f"cannot roll back: {exc}") from None
        state.lease_seconds, state.max_attempts = self.state.lease_seconds, self.state.max_attempts
        state.max_takes, state.judge.max_cer = self.state.max_takes, self.state.judge.max_cer
        state.grant_grace(now)
        self.state, self.store = state, store
        self.commits.completed_seen = state.counts[Status.COMPLETED]
        self.handlers = Handlers(self.dataset, state, self.report.status)
        log.warning("rolled back to the state on disk in %.2f s: %s", time.monotonic() - started,
                    " ".join(f"{k}={v}" for k, v in state.counters().items()))

    def close(self) -> None:
        self.sockets.close()


def serve(dataset: Path, endpoint: str | None = None, events: str | None = None,
          lease_seconds: float | None = None, max_attempts: int | None = None,
          curve: tuple[Path, Path] | None = None, checkpoint_bytes: int | None = None,
          checkpoint_idle: float = CHECKPOINT_IDLE, metrics: tuple[str, int] | None = None,
          max_cer: float | None = None, max_takes: int | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT. Raises Locked or DamagedState before touching anything.
    ``metrics``: (host, port) to serve Prometheus metrics on."""
    control, events = defaults(dataset, endpoint, events)
    if (control.startswith("tcp://") or events.startswith("tcp://")) and curve is None:
        raise CurveError("a tcp endpoint requires --curve-secret and --allow (make keys with: statesvc keygen)")
    lock = WriterLock(dataset)
    lock.acquire(orjson.dumps({"pid": os.getpid(), "endpoint": control, "events": events}).decode())
    try:
        for name in remove_stale_temps(dataset):
            log.info("removed %s, left by a daemon that was killed mid-save", name)
        state, store = load_for_writing(dataset)
        gc.freeze()  # the loaded entries live as long as we do: full collections need not walk them
        if lease_seconds:
            state.lease_seconds = lease_seconds
        if max_attempts:
            state.max_attempts = max_attempts
        if max_takes:
            state.max_takes = max_takes
        state.judge.max_cer = max_cer
        now = time.time()
        state.grant_grace(now)
        for eid in state.repair(now):
            log.warning("entry %d was generating without a lease: back to pending", eid)
        if store.replayed or store.torn:
            log.info("replayed %d commits from the journal%s", store.replayed,
                     f"; cut its torn last record, {store.torn} bytes (a crash mid-append: never acknowledged), "
                     f"kept in {store.torn_kept}" if store.torn else "")
        daemon = Daemon(dataset, state, control, events, curve=curve, store=store,
                        checkpoints=Checkpoints(checkpoint_bytes, checkpoint_idle))
        daemon.handlers.settle_all()  # the moves a retake or restore committed before a crash implies
        if metrics is not None:
            from .metrics import Metrics  # here: prometheus_client costs every other start its import
            daemon.metrics = Metrics()
            daemon.metrics.serve(daemon, metrics[1], metrics[0])
            log.info("metrics on http://%s:%d/metrics", *metrics)
        return _loop(daemon)
    finally:
        lock.release()


def _loop(daemon: Daemon) -> int:
    def on_signal(signum: int, _frame: object) -> None:
        daemon.stopping += 1
        if daemon.stopping > 1:
            os._exit(130)  # a second signal: now, as every other command

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s = daemon.state  # the loop may replace it (a rollback): the last line reads daemon.state
    log.info("serving %s on %s (events %s): %s", daemon.dataset, daemon.sockets.endpoint, daemon.sockets.events,
             " ".join(f"{k}={v}" for k, v in s.counters().items()))
    daemon.notifier.send("READY=1\nSTATUS=serving")
    code = 0
    try:
        while not daemon.stopping:
            daemon.wait()
            daemon.run_once(time.time())
        daemon.next_commit = 0.0
        daemon.run_once(time.time())  # apply and answer what already arrived
        if daemon.store.job is not None and not daemon.state.unsaved:
            daemon.finish_checkpoint(time.time(), wait=True)
        if daemon.store.seq != daemon.store.checkpoint_seq and not daemon.state.unsaved:
            daemon.store.begin_checkpoint(daemon.state)  # at rest, the file alone is the whole truth
            daemon.finish_checkpoint(time.time(), wait=True)
    except OutcomeUnknown as exc:
        log.error("stopping: %s", exc)
        code = 75
    finally:
        daemon.notifier.send("STOPPING=1")
        daemon.close()
        daemon.store.close()
    log.info("stopped: %s; handled %s", " ".join(f"{k}={v}" for k, v in daemon.state.counters().items()),
             dict(daemon.totals))
    return code
