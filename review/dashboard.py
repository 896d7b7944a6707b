"""The review dashboard: a web page to watch a run live, listen to its takes, flag, review,
regenerate and sync with the files.

It never writes the state. It reads the dataset's files (the loader every reader uses), keeps
its copy current from the daemon's change events, and sends every action to the daemon; the
page says an action is done only once the daemon answered, which it does once the change is
durable. It starts whether or not the daemon runs and follows it through restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
import weakref
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import zmq
import zmq.asyncio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from statesvc import protocol
from statesvc.curve import CurveError, secure_client
from statesvc.endpoints import connectable, defaults, running
from statesvc.handlers import SET_ASIDE
from statesvc.health import paused_line
from statesvc.journal import JOURNAL_FILE
from statesvc.store import DamagedState, state_path

from . import api, routes
from .analyzer import Analyzer
from .auth import refusal
from .errors import ActionError, error
from .files import EarlierTakes, Offload
from .mirror import Mirror
from .pushes import Pushes
from .query import QueryError
from .sync import REQUEST_TIMEOUT

log = logging.getLogger("statesvc.dashboard")

PUSH_EVERY = 0.5        # seconds: changes are coalesced into one push per tab at most this often
WATCH_EVERY = 1.0       # seconds between looks at whether the daemon came or went, or the files changed
RELOAD_WAIT = 10.0      # seconds a reload waits for requests to let go of the old copy


@dataclass(frozen=True)
class Settings:
    dataset: Path
    host: str = "127.0.0.1"
    port: int = 8321
    token: str | None = None
    analyze: bool = True   # analyse takes in the background for the audio flags


# ---- the daemon, asynchronously ---------------------------------------------------------------
class Daemon:
    """Requests to the daemon serving the dataset, over zmq.asyncio; one socket per request, so a
    daemon that restarted (or moved endpoint) is found again at the next request."""

    def __init__(self, dataset: Path, ctx: zmq.asyncio.Context):
        self.dataset = dataset
        self.ctx = ctx
        self.rids = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)

    async def call(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields: object) -> dict:
        rec = running(self.dataset)
        if rec is None or not rec.get("endpoint"):
            raise ActionError(503, "the daemon is not running: start it (statesvc serve) and try again")
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if rec["endpoint"].startswith("tcp://"):
                secure_client(sock)
            sock.connect(connectable(rec["endpoint"]))
            rid = next(self.rids)
            await sock.send(protocol.encode({"op": op, "rid": rid, **fields}))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not await sock.poll(left * 1000):
                    break
                reply = orjson.loads(await sock.recv())
                if reply.get("rid") != rid:
                    continue
                if not reply.get("ok"):  # refused: 409; the daemon's trouble (try again): 503
                    kind = protocol.error_kind(reply)
                    raise ActionError(409 if kind == protocol.ErrorKind.REFUSED else 503, str(reply.get("error")))
                return reply
            raise ActionError(504, f"the daemon did not answer within {timeout:.0f} s; "
                                   "the action may or may not be done: look again")
        finally:
            sock.close(0)


# ---- the copy of the state and the pushes to the pages -----------------------------------------
class Hub:
    """Owns the mirror: loads it, applies the daemon's events, reloads when it missed some, and
    pushes coalesced changes to every open page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dataset = settings.dataset
        self.ctx = zmq.asyncio.Context()
        self.daemon = Daemon(self.dataset, self.ctx)
        self.mirror: Mirror | None = None
        self.load_error: str | None = None
        self.daemon_pid: int | None = None
        self.files_sig: tuple | None = None
        self.events_at: str | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.batch: list[bytes] = []           # entries of the commit whose marker is still to come
        self.buffered: list[tuple[dict, list[bytes]]] = []  # commits received while reloading
        self.reloading = False
        self.reload_wanted = asyncio.Event()
        self.pushes = Pushes()
        self.analyzer = Analyzer(self.dataset, lambda: self.mirror) if settings.analyze else None
        self.tasks: list[asyncio.Task] = []
        self.files = Offload()
        self.earlier = EarlierTakes(self.dataset / SET_ASIDE)

    # ---- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.tasks = [asyncio.create_task(f()) for f in (self.watch, self.listen, self.reloader, self.pusher,
                                                         self.follow_pause)]
        if self.analyzer is not None:
            self.analyzer.start()
        self.reload_wanted.set()

    async def stop(self) -> None:
        if self.analyzer is not None:
            await self.analyzer.stop()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.sub is not None:
            self.sub.close(0)
        self.ctx.term()

    # ---- the daemon and the files -------------------------------------------------------------
    def _files_sig(self) -> tuple:
        sig = []
        for p in (state_path(self.dataset), self.dataset / JOURNAL_FILE):
            try:
                st = p.stat()
                sig.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append(None)
        return tuple(sig)

    async def watch(self) -> None:
        """Follow the daemon (its coming, going and events endpoint) and, while none runs, the
        files (an offline change made by the CLI)."""
        while True:
            rec = running(self.dataset)
            pid = rec.get("pid") if rec else None
            events = (rec.get("events") if rec else None) or defaults(self.dataset)[1]
            if events != self.events_at:
                self._subscribe(events)
            if pid != self.daemon_pid:
                self.daemon_pid = pid
                self.reload_wanted.set()  # what it did while we were not listening is in the files
            elif pid is None and self._files_sig() != self.files_sig:
                self.reload_wanted.set()
            await asyncio.sleep(WATCH_EVERY)

    async def follow_pause(self) -> None:
        """The generators' disk pause, as they told the daemon: its status says it, the events do not."""
        while True:
            try:
                self.paused = paused_line(await self.daemon.call("status", timeout=2.0))
            except ActionError:
                self.paused = ""  # no daemon: nobody generates, nobody is paused
            except Exception as exc:  # noqa: BLE001 (a bug here must not leave a stale line for ever)
                log.warning("cannot read the daemon's status for the disk pause: %s", exc)
                self.paused = ""
            await asyncio.sleep(WATCH_EVERY)

    paused = ""

    def _subscribe(self, events: str) -> None:
        if self.sub is not None:
            self.sub.close(0)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            if events.startswith("tcp://"):
                secure_client(sub)
        except CurveError as exc:
            sub.close(0)
            if self.load_error != str(exc):
                log.error("cannot follow the daemon's events: %s", exc)
            self.load_error = str(exc)
            return
        sub.connect(connectable(events))
        self.sub, self.events_at = sub, events
        self.reload_wanted.set()

    async def listen(self) -> None:
        while True:
            if self.sub is None:
                await asyncio.sleep(0.1)
                continue
            sub = self.sub
            try:
                topic, body = await sub.recv_multipart()
            except zmq.ZMQError:
                continue  # the socket was replaced (another endpoint): read from the new one
            if topic == b"entry":
                self.batch.append(body)
            elif topic == b"commit":
                marker, entries, self.batch = orjson.loads(body), self.batch, []
                self.on_commit(marker, entries)
            elif topic == b"beat":
                self.on_beat(orjson.loads(body)["seq"])

    def on_beat(self, seq: int) -> None:
        """The daemon's last commit number, sent between commits: a commit we do not hold, or
        entries whose commit never came to an end, mean events were lost."""
        lost, self.batch = bool(self.batch), []
        m = self.mirror
        if m is None or self.reloading:
            return
        if lost or seq > m.seq:
            log.info("missed change events (the daemon is at commit %d, we at %d): reading the state again", seq, m.seq)
            self.reload_wanted.set()

    def on_commit(self, marker: dict, entries: list[bytes]) -> None:
        m = self.mirror
        if self.reloading or m is None:
            self.buffered.append((marker, entries))
            return
        if marker["seq"] <= m.seq:
            return  # already in what was loaded
        if marker["seq"] != m.seq + 1 or marker["entries"] != len(entries):
            log.info("missed change events (commit %d after %d): reading the state again", marker["seq"], m.seq)
            self.reload_wanted.set()
            return
        for raw in entries:
            e = m.apply(raw)
            if e.status == "completed" and self.analyzer is not None:
                self.analyzer.took(e.id)
        m.seq = marker["seq"]

    async def reloader(self) -> None:
        while True:
            await self.reload_wanted.wait()
            self.reload_wanted.clear()
            self.reloading = True
            self.files_sig = self._files_sig()
            # Not two copies of a million entries at once: the page says loading meanwhile, and the
            # new copy is read once requests still at work on the old one are done with it.
            old = weakref.ref(self.mirror) if self.mirror is not None else None
            self.mirror = None
            deadline = time.monotonic() + RELOAD_WAIT
            while old is not None and old() is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            del old
            started = time.monotonic()
            try:
                mirror, backlog = await asyncio.to_thread(self._load)
            except Exception as exc:  # the files (said in a line), or a bug (with its traceback): the page lives on
                known = isinstance(exc, (DamagedState, OSError))
                self.load_error = f"cannot read the state: {exc if known else f'{type(exc).__name__}: {exc}'}"
                log.error("%s", self.load_error, exc_info=not known)
                self.reloading = False
                self.buffered.clear()
                continue
            self.load_error = None
            log.info("read the state: %d entries in %.1f s", len(mirror.entries), time.monotonic() - started)
            self.mirror, self.reloading = mirror, False
            if self.analyzer is not None:  # after the copy is in place: the analyzer looks takes up in it
                self.analyzer.queue(backlog)
            del backlog
            del mirror  # else this frame holds the old copy through the next load
            buffered, self.buffered = self.buffered, []
            for marker, entries in buffered:
                self.on_commit(marker, entries)
            self.pushes.broadcast("snapshot", {})

    def _load(self) -> tuple[Mirror, array]:
        """The state read again, and the ids of its takes to analyse (what an earlier load's
        analysis found still holds for the same takes)."""
        mirror = Mirror.load(self.dataset)
        return mirror, (array("q") if self.analyzer is None else self.analyzer.known(mirror))

    # ---- pushes ---------------------------------------------------------------------------------
    def overview(self) -> dict:
        m = self.mirror
        base = {"daemon": "up" if self.daemon_pid else "down", "load_error": self.load_error,
                "loading": m is None, "paused": self.paused}
        if m is None:
            return base
        return {**base, **m.overview(time.monotonic())}

    async def pusher(self) -> None:
        """Coalesce: at most one overview and one batch of changed rows per PUSH_EVERY."""
        while True:
            await asyncio.sleep(PUSH_EVERY)
            self.push()  # no frame holds the copy across the sleep: a reload drops it at once

    def push(self) -> None:
        m = self.mirror
        if m is not None and m.refit_due(time.time()):
            m.refit(time.time())
            self.pushes.broadcast("snapshot", {})  # flags may have changed anywhere
        self.pushes.push(m, self.overview)


# ---- the web application ------------------------------------------------------------------------
def create_app(settings: Settings) -> FastAPI:
    """The page's app: the hub, its routers, the guard every request passes, errors as JSON."""
    hub = Hub(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(title="statesvc dashboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub
    app.state.csrf = csrf = secrets.token_urlsafe(24)

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN202
        try:
            refused = refusal(request, settings.host, settings.token, csrf)
            if isinstance(refused, Response):
                return refused
            return await call_next(request)
        except Exception as exc:  # nothing a browser sends may take the server down
            log.exception("request %s %s failed", request.method, request.url.path)
            return error(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ActionError, _action_error)
    app.add_exception_handler(QueryError, _query_error)
    app.include_router(routes.router)
    app.include_router(api.router)
    return app


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))


async def _action_error(request: Request, exc: ActionError) -> JSONResponse:
    return error(exc.status, str(exc))


async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
    return error(400, str(exc))


def serve(settings: Settings) -> None:
    """Serve until stopped. The caller (the CLI) has refused a host that is not loopback without a
    token, and said where the page is."""
    import uvicorn
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)

