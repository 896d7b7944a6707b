"""The review dashboard: a web page to watch a run live, listen to its takes, flag, review,
regenerate and sync with the files.

It never writes the state. It reads the dataset's files (the loader every reader uses), keeps
its copy current from the daemon's change events, and sends every action to the daemon; the
page says an action is done only once the daemon answered, which it does once the change is
durable. It starts whether or not the daemon runs and follows it through restarts.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
import weakref
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import zmq
import zmq.asyncio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.reconciler import Reconciler  # the sync: the same pass as the reconciler's, a layer below
from statesvc import protocol
from statesvc.client import AsyncClient, Client, NoDaemon, ServiceError, Unavailable
from statesvc.codec import DamagedState, state_path
from statesvc.curve import CurveError
from statesvc.endpoints import defaults, running
from statesvc.entry import Status
from statesvc.events import AsyncSubscriber, Beat, Commit, Follow, follow, missed
from statesvc.handlers import SET_ASIDE
from statesvc.health import paused_line
from statesvc.journal import JOURNAL_FILE
from statesvc.texts import check_filename, check_text

from . import pages
from .analyses import CACHE_FILE, SAVE_EVERY, Analyses, file_key
from .mirror import STATUS_CODE, Mirror, Query, QueryError
from .takes import analyze_file, bits
from .words import word_diff

log = logging.getLogger("statesvc.dashboard")

COOKIE = "statesvc_token"
CSRF_HEADER = "x-csrf-token"
PUSH_EVERY = 0.5        # seconds: changes are coalesced into one push per tab at most this often
CLIENT_QUEUE = 64       # pushes a tab may fall behind by before it is sent a fresh snapshot instead
WATCH_EVERY = 1.0       # seconds between looks at whether the daemon came or went, or the files changed
REQUEST_TIMEOUT = 10.0  # seconds an action waits for the daemon's durable answer
RELOADING = object()    # what the analyzer is told while the state is read again
RELOAD_WAIT = 10.0      # seconds a reload waits for requests to let go of the old copy
MAX_BODY = 1 << 20
FILE_THREADS = 8        # file work (listings, wav decoding) at once; more waits for a free thread...
FILE_WAIT = 10.0        # ...this many seconds, then the request is told the files do not answer
EARLIER_TAKES = 20      # earlier takes an entry shows, newest first
RACY = 2_000_000_000    # ns: a folder changed this recently may change again within its mtime's tick


class ActionError(Exception):
    """An action the daemon refused or could not be asked: (HTTP status, message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Settings:
    dataset: Path
    host: str = "127.0.0.1"
    port: int = 8321
    token: str | None = None
    analyze: bool = True   # analyse takes in the background for the audio flags


def loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port or brackets) is this machine's
    loopback: ``localhost`` or an address in 127.0.0.0/8 or ::1, exactly (not a name that merely
    starts or ends like one)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str | None:
    """The name or address in a Host header (``name``, ``name:port``, ``[v6]:port``); None when it
    is not shaped like one."""
    if header.startswith("["):
        inside, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and _port(rest[1:]))):
            return None
        return inside if ":" in inside else None  # brackets hold an IPv6 address only
    name, sep, port = header.partition(":")
    if sep and not _port(port):
        return None  # another colon, or no port after it
    return name


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"token file {path} is not UTF-8 text") from None
    if len(token) < 16:
        raise ValueError(f"token file {path} must hold a token of at least 16 characters")
    return token


# ---- the files, off the event loop ---------------------------------------------------------------
class Offload:
    """Blocking file work (listings, wav decoding, waveform peaks) in threads of its own, at most
    FILE_THREADS at once, so the event loop answers every other request meanwhile. The threads are
    daemon threads: one stuck on a file (a FIFO, a hung network mount) neither blocks the rest
    nor keeps the process from stopping."""

    def __init__(self, limit: int = FILE_THREADS):
        self.slots = asyncio.Semaphore(limit)

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        try:
            await asyncio.wait_for(self.slots.acquire(), FILE_WAIT)
        except TimeoutError:
            raise ActionError(503, "the dataset's files do not answer (every file thread is still at work); "
                                   "try again later") from None
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def work() -> None:
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # handed to the request, which answers it
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(self._finished, done, outcome)

        try:
            threading.Thread(target=work, name="page-files", daemon=True).start()
        except BaseException:
            self.slots.release()
            raise
        return await done

    def _finished(self, done: asyncio.Future, outcome: tuple[bool, object]) -> None:
        self.slots.release()  # when the work ends, not when its request gave up: a stuck thread holds its slot
        if done.done():
            return  # the request went away (cancelled)
        ok, value = outcome
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)  # type: ignore[arg-type]


class EarlierTakes:
    """An entry's earlier takes (requeued/NAME.TIMESTAMP.wav), found by its name in a sorted
    listing of the folder instead of a glob per view: the folder is listed again only when its
    mtime changed (or changed so recently that another change may share the same mtime)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.lock = threading.Lock()
        self.names: list[str] = []
        self.listed: int | None = None  # the folder's mtime the listing is known to hold

    def of(self, name: str, limit: int = EARLIER_TAKES) -> list[str]:
        """The file names of ``name``'s earlier takes, newest first."""
        with self.lock:
            names = self._current()
        prefix = name + "."
        lo = bisect.bisect_left(names, prefix)
        hi = bisect.bisect_left(names, name + chr(ord(".") + 1))
        found = [n for n in names[lo:hi] if n.endswith(".wav") and n[len(prefix):-4].count(".") == 1]
        return found[::-1][:limit]

    def _current(self) -> list[str]:
        started = time.time_ns()
        try:
            mtime = self.folder.stat().st_mtime_ns
        except OSError:
            self.names, self.listed = [], None
            return self.names
        if mtime != self.listed:
            try:
                with os.scandir(self.folder) as it:
                    self.names = sorted(e.name for e in it)
            except OSError:
                self.names, mtime = [], None
            self.listed = mtime if mtime is not None and mtime < started - RACY else None
        return self.names


# ---- the copy of the state and the pushes to the pages -----------------------------------------
class Hub:
    """Owns the mirror: loads it, applies the daemon's events, reloads when it missed some, and
    pushes coalesced changes to every open page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dataset = settings.dataset
        self.ctx = zmq.asyncio.Context()
        self.daemon = AsyncClient.for_dataset(self.dataset, self.ctx, REQUEST_TIMEOUT)
        self.mirror: Mirror | None = None
        self.load_error: str | None = None
        self.daemon_pid: int | None = None
        self.files_sig: tuple | None = None
        self.events_at: str | None = None
        self.sub: AsyncSubscriber | None = None
        self.buffered: list[Commit] = []  # commits received while reloading
        self.reloading = False
        self.reload_wanted = asyncio.Event()
        self.clients: set[asyncio.Queue] = set()
        self.last_push = ""
        self.flags_file = self.dataset / CACHE_FILE
        self.flags_unsaved = False  # said once in the log: the cache file cannot be written
        self.flags_failed_at: float | None = None  # the last failed save: tried again a while later
        self.analyzer_thread: threading.Thread | None = None
        self.analyses = Analyses()
        if settings.analyze:
            self.analyses, why = Analyses.load(self.flags_file)
            if why:
                log.warning("not using %s: %s; the takes are analysed again", self.flags_file, why)
        self.to_analyze: collections.deque[int] = collections.deque()  # ids of fresh takes: first
        self.backlog: Iterator[int] = iter(())  # ids of the takes loaded without a known analysis
        self.wake_analyzer = threading.Event()
        self.stopping = threading.Event()
        self.tasks: list[asyncio.Task] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.files = Offload()
        self.earlier = EarlierTakes(self.dataset / SET_ASIDE)

    # ---- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.tasks = [asyncio.create_task(f()) for f in (self.watch, self.listen, self.reloader, self.pusher,
                                                         self.follow_pause)]
        if self.settings.analyze:
            self.analyzer_thread = threading.Thread(target=self.analyzer, name="analyzer", daemon=True)
            self.analyzer_thread.start()
        self.reload_wanted.set()

    async def stop(self) -> None:
        self.stopping.set()
        self.wake_analyzer.set()
        if self.analyzer_thread is not None:  # its last take done, then what it found saved
            await asyncio.to_thread(self.analyzer_thread.join, 10)
            await asyncio.to_thread(self.save_flags, True)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.sub is not None:
            self.sub.close()
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
                self.paused = paused_line(await self.ask("status", timeout=2.0))
            except ActionError:
                self.paused = ""  # no daemon: nobody generates, nobody is paused
            except Exception as exc:  # noqa: BLE001 (a bug here must not leave a stale line for ever)
                log.warning("cannot read the daemon's status for the disk pause: %s", exc)
                self.paused = ""
            await asyncio.sleep(WATCH_EVERY)

    paused = ""

    async def ask(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields: object) -> dict:
        """The daemon's answer to an action, or why not as an ``ActionError``: refused 409, the
        daemon's trouble (try again) or none running 503, no answer in time 504."""
        try:
            return await self.daemon.call(op, timeout=timeout, **fields)
        except NoDaemon:
            raise ActionError(503, "the daemon is not running: start it (statesvc serve) and try again") from None
        except ServiceError as exc:
            raise ActionError(409 if exc.kind == protocol.ErrorKind.REFUSED else 503, str(exc)) from None
        except Unavailable:
            raise ActionError(504, f"the daemon did not answer within {timeout:.0f} s; "
                                   "the action may or may not be done: look again") from None

    def _subscribe(self, events: str) -> None:
        if self.sub is not None:
            self.sub.close()
            self.sub = None
        try:
            sub = AsyncSubscriber(events, self.ctx)
        except CurveError as exc:
            if self.load_error != str(exc):
                log.error("cannot follow the daemon's events: %s", exc)
            self.load_error = str(exc)
            return
        self.sub, self.events_at = sub, events
        self.reload_wanted.set()

    async def listen(self) -> None:
        while True:
            if self.sub is None:
                await asyncio.sleep(0.1)
                continue
            sub = self.sub
            try:
                event = await sub.receive()
            except zmq.ZMQError:
                continue  # the socket was replaced (another endpoint): read from the new one
            if isinstance(event, Commit):
                self.on_commit(event)
            else:
                self.on_beat(event)

    def on_beat(self, beat: Beat) -> None:
        """The daemon's last commit number, sent between commits: a commit we do not hold, or
        entries whose commit never came to an end, mean events were lost."""
        m = self.mirror
        if m is None or self.reloading:
            return
        if follow(m.seq, beat) is Follow.MISSED:
            log.info("missed change events (%s): reading the state again", missed(m.seq, beat))
            self.reload_wanted.set()

    def on_commit(self, commit: Commit) -> None:
        m = self.mirror
        if self.reloading or m is None:
            self.buffered.append(commit)
            return
        step = follow(m.seq, commit)
        if step is Follow.HELD:
            return  # already in what was loaded
        if step is Follow.MISSED:
            log.info("missed change events (%s): reading the state again", missed(m.seq, commit))
            self.reload_wanted.set()
            return
        for raw in commit.entries:
            e = m.apply(raw)
            if e.status == "completed" and self.settings.analyze:
                self.to_analyze.appendleft(e.id)
                self.wake_analyzer.set()
        m.seq = commit.seq

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
            if self.settings.analyze:  # after the copy is in place: the analyzer looks takes up in it
                self.backlog = iter(backlog)
                self.wake_analyzer.set()
            del backlog
            del mirror  # else this frame holds the old copy through the next load
            buffered, self.buffered = self.buffered, []
            for commit in buffered:
                self.on_commit(commit)
            self.broadcast("snapshot", {})

    def _load(self) -> tuple[Mirror, array]:
        """The state read again, and the ids of its takes to analyse (what an earlier load's
        analysis found still holds for the same takes)."""
        mirror = Mirror.load(self.dataset)
        backlog = array("q")
        if self.settings.analyze:
            done = []
            for i in np.flatnonzero(mirror.status[:len(mirror.entries)] == STATUS_CODE[Status.COMPLETED]):
                e = mirror.entries[i]
                if e.take is None:  # a wav the reconciler adopted: the analyzer checks its file
                    backlog.append(e.id)
                else:
                    done.append(e)
            found = self.analyses.of_takes(np.fromiter((e.id for e in done), np.int64, len(done)),
                                           [e.take for e in done])
            for e, flags in zip(done, found.tolist(), strict=True):
                if flags < 0:
                    backlog.append(e.id)
                else:
                    mirror.set_audio_flags(e.filename, e.take, flags)
        return mirror, backlog

    # ---- the takes' analysis, in a thread (reading wavs must not stall the pages) ---------------
    def analyzer(self) -> None:
        while not self.stopping.is_set():
            fresh = True
            try:
                eid = self.to_analyze.popleft()
            except IndexError:
                fresh, eid = False, next(self.backlog, None)
            if eid is None:
                self.save_flags()  # all caught up
                self.wake_analyzer.wait(1.0)
                self.wake_analyzer.clear()
                continue
            job = self._take_of(eid)
            if job is RELOADING:  # the reload queues the takes again; a fresh one keeps its turn
                if fresh:
                    self.to_analyze.appendleft(eid)
                self.wake_analyzer.wait(0.5)
                self.wake_analyzer.clear()
                continue
            if job is None:
                continue
            name, take = job
            path = self.dataset / "wavs" / f"{name}.wav"
            try:
                st = path.stat()
            except OSError:
                continue
            sig = file_key(st.st_size, st.st_mtime_ns, st.st_ino)
            flags = self.analyses.of_file(eid, sig)
            if flags is None:
                try:
                    flags = bits(analyze_file(path).flags)
                except ValueError:
                    continue  # unreadable: the reconciler's business, not a flag
            self.analyses.put(eid, sig, take, flags)
            if self.analyses.save_due():
                self.save_flags()
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._analysed, name, take, flags)

    def save_flags(self, last: bool = False) -> None:
        """Write the flags' cache file; after a failure (a read-only dataset folder), not again
        until a while later, unless this is the last chance (on stop)."""
        if not last and self.flags_failed_at is not None and time.monotonic() - self.flags_failed_at < SAVE_EVERY:
            return
        try:
            self.analyses.save(self.flags_file)
            self.flags_failed_at = None
        except OSError as exc:
            self.flags_failed_at = time.monotonic()
            if not self.flags_unsaved:
                self.flags_unsaved = True
                log.warning("cannot keep the flags in %s (%s): a restart analyses the takes again",
                            self.flags_file, exc.strerror)

    def _take_of(self, eid: int) -> tuple[str, str | None] | None | object:
        """The filename and take of a completed entry; RELOADING while the copy is read again.
        (Its own frame: the analyzer holds no copy while it reads a wav, or waits.)"""
        m = self.mirror
        if m is None:
            return RELOADING
        i = m.pos.get(eid)
        if i is None:
            return None
        e = m.entries[i]
        return (e.filename, e.take) if e.status == Status.COMPLETED else None

    def _analysed(self, name: str, take: str | None, flags: int) -> None:
        if self.mirror is not None and self.mirror.set_audio_flags(name, take, flags):
            i = self.mirror.by_name[name]
            self.mirror.changed.add(self.mirror.entries[i].id)

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
            self.broadcast("snapshot", {})  # flags may have changed anywhere
        if not self.clients:
            if m is not None:
                m.changed.clear()
            return
        ov = orjson.dumps(self.overview()).decode()
        if ov != self.last_push:
            self.last_push = ov
            self.broadcast("overview", ov)
        if m is not None and m.changed:
            ids, m.changed = list(m.changed), set()
            if len(ids) > 200:
                self.broadcast("snapshot", {})
            else:
                self.broadcast("entries", [m.row(m.pos[i]) for i in ids if i in m.pos])

    def broadcast(self, event: str, data: object) -> None:
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        for q in list(self.clients):
            try:
                q.put_nowait((event, text))
            except asyncio.QueueFull:  # a tab that fell behind: drop what it missed, send a fresh start
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(("snapshot", "{}"))

    async def events(self, request: Request) -> AsyncIterator[dict]:
        q: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(q)
        try:
            yield {"event": "overview", "data": orjson.dumps(self.overview()).decode()}
            while True:
                event, data = await q.get()
                yield {"event": event, "data": data}
        finally:
            self.clients.discard(q)


# ---- the web application ------------------------------------------------------------------------
def create_app(settings: Settings) -> FastAPI:  # noqa: C901 (each route is a closure: their branches count here)
    hub = Hub(settings)
    csrf = secrets.token_urlsafe(24)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(title="statesvc dashboard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub
    static = Path(__file__).with_name("web")

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN202
        try:
            refusal = _refusal(request, settings, csrf)
            if isinstance(refusal, Response):
                return refusal
            return await call_next(request)
        except Exception as exc:  # nothing a browser sends may take the server down
            log.exception("request %s %s failed", request.method, request.url.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(ActionError)
    async def action_error(request: Request, exc: ActionError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return _error(400, str(exc))

    def mirror() -> Mirror:
        if hub.mirror is None:
            raise ActionError(503, hub.load_error or "the state is still loading; try again in a moment")
        return hub.mirror

    # ---- pages ----
    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        query = _query(request)
        m = hub.mirror
        total, rows = await asyncio.to_thread(m.select, query) if m is not None else (0, [])
        return HTMLResponse(pages.overview(hub.overview(), rows, total, query, csrf))

    @app.get("/entries/{filename}", response_class=HTMLResponse)
    async def entry_page(request: Request, filename: str) -> HTMLResponse:
        data = await _entry(hub, mirror, filename)
        query = _query(request)
        prev, nxt = await asyncio.to_thread(mirror().neighbours, data["filename"], query)
        return HTMLResponse(pages.entry(data, csrf, pages.view_of(query), prev, nxt))

    @app.get("/health", response_class=HTMLResponse)
    async def health_page() -> HTMLResponse:
        m = mirror()
        coverage = await asyncio.to_thread(m.coverage)  # seconds at a million, the first time
        return HTMLResponse(pages.health(m.histograms(), coverage, m.counters(), csrf))

    @app.get("/static/{name}")
    async def static_file(name: str) -> FileResponse:
        path = static / name
        if name not in ("app.js", "style.css") or not path.is_file():
            raise StarletteHTTPException(404, f"no static file {name!r}")
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    # ---- JSON ----
    @app.get("/api/status")
    async def api_status() -> dict:
        return hub.overview()

    @app.get("/api/entries")
    async def api_entries(request: Request) -> dict:
        total, rows = await asyncio.to_thread(mirror().select, _query(request))
        return {"total": total, "entries": rows}

    @app.get("/api/entries/{filename}")
    async def api_entry(filename: str) -> dict:
        return await _entry(hub, mirror, filename)

    @app.get("/api/neighbours/{filename}")
    async def api_neighbours(request: Request, filename: str) -> dict:
        prev, nxt = await asyncio.to_thread(mirror().neighbours, filename, _query(request))
        return {"prev": prev, "next": nxt}

    @app.get("/api/health")
    async def api_health() -> dict:
        m = mirror()
        return {"histograms": m.histograms(), "coverage": await asyncio.to_thread(m.coverage)}

    @app.post("/api/requeue")
    async def api_requeue(request: Request) -> dict:
        body = await _body(request)
        if body.get("failed") is True:
            reply = await hub.ask("requeue", keys=[], failed=True)
        else:
            names = _names(body, mirror())
            if not names:
                raise ActionError(400, "nothing to regenerate: give filenames, or failed or flagged: true")
            reply = await hub.ask("requeue", keys=names, failed=False)
        return {"requeued": len(reply["requeued"]), "moved": reply.get("moved", [])}

    @app.post("/api/edit")
    async def api_edit(request: Request) -> dict:
        body = await _body(request)
        name, text = _filename(body.get("filename")), body.get("text")
        if check_text(text):
            raise ActionError(400, str(check_text(text)))
        reply = await hub.ask("edit", key=name, text=text, req=secrets.token_hex(8))
        return {"edited": name, "rev": reply["rev"]}

    @app.post("/api/review")
    async def api_review(request: Request) -> dict:
        body = await _body(request)
        verdict = body.get("review")
        if verdict not in ("approved", "rejected", None):
            raise ActionError(400, "review must be approved, rejected or null")
        note = body.get("note")
        if note is not None and not isinstance(note, str):
            raise ActionError(400, "note must be a string")
        take = body.get("take")
        if not isinstance(take, str) or not take:  # the page always sends the take it shows: fenced by it
            raise ActionError(400, "take must be the token of the take heard (the entry's take)")
        fields: dict = {"key": _filename(body.get("filename")), "review": verdict, "note": note or None,
                        "take": take}
        reply = await hub.ask("review", **fields)
        return {"filename": fields["key"], "review": reply["review"]}

    @app.post("/api/reconcile")
    async def api_reconcile(request: Request) -> dict:
        body = await _body(request)
        dry = body.get("dry_run", True)
        if not isinstance(dry, bool):
            raise ActionError(400, "dry_run must be true or false")
        return {"dry_run": dry, "changes": await asyncio.to_thread(_reconcile, settings.dataset, dry)}

    @app.get("/api/events")
    async def api_events(request: Request) -> EventSourceResponse:
        return EventSourceResponse(hub.events(request), ping=10)

    @app.get("/audio/{folder}/{name}")
    async def audio(folder: str, name: str) -> FileResponse:
        path = await hub.files.run(_audio_path, settings.dataset, folder, name)
        return FileResponse(path, media_type="audio/wav",
                            headers={"Cache-Control": "no-cache"})

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _refusal(request: Request, settings: Settings, csrf: str) -> Response | None:
    """Origin, token and CSRF checks; a response refuses the request, None lets it through."""
    return (_foreign(request, loopback(settings.host)) or _unauthorized(request, settings.token)
            or _forged(request, csrf))


def _foreign(request: Request, on_loopback: bool) -> Response | None:
    """A request that another site's page may have sent. On loopback, a Host that is not loopback
    (a DNS rebinding: the attacker's name now points at 127.0.0.1) or an Origin other than the
    Host's is refused, whatever the method. Elsewhere (a token is required) an action's Origin,
    when sent, must be the Host the request was sent to."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    same = origin is None or origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())
    if on_loopback:
        name = host_name(host)
        if name is None or not loopback(name):
            return _error(403, f"refused: Host {host[:80]!r} is not this machine's loopback (a DNS rebinding?); "
                               "open the page as http://127.0.0.1:PORT/ or http://localhost:PORT/")
        if not same:
            return _error(403, f"refused: Origin {origin[:80]!r} is not this page's")
    elif not same and request.method not in ("GET", "HEAD"):
        return _error(403, f"refused: Origin {origin[:80]!r} is not the page this request was sent to")
    return None


def _unauthorized(request: Request, token: str | None) -> Response | None:
    """The token, compared as bytes (UTF-8, as in the token file): whatever characters a client
    sends, a wrong token is a 401. The cookie holds a digest of the token, not the token: ASCII,
    whatever the token's characters."""
    if token is None:
        return None
    secret = token.encode("utf-8")
    given = request.query_params.get("token")
    if given is not None and request.method == "GET":
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret):
            return _error(401, "wrong token")
        clean = request.url.remove_query_params("token")
        resp = RedirectResponse(str(clean.path) + (f"?{clean.query}" if clean.query else ""), status_code=303)
        resp.set_cookie(COOKIE, _cookie_of(secret), httponly=True, samesite="strict")
        return resp
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):  # headers arrive decoded as latin-1: back to their bytes
        ok = hmac.compare_digest(auth[7:].encode("latin-1", "replace"), secret)
    else:
        ok = hmac.compare_digest(request.cookies.get(COOKIE, "").encode("latin-1", "replace"),
                                 _cookie_of(secret).encode())
    if not ok:
        return _error(401, "a token is needed: open the page once as /?token=TOKEN, or send "
                           "Authorization: Bearer TOKEN")
    return None


def _cookie_of(secret: bytes) -> str:
    return hmac.new(secret, b"statesvc dashboard cookie", "sha256").hexdigest()


def _forged(request: Request, csrf: str) -> Response | None:
    if request.method not in ("GET", "HEAD") and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode("latin-1", "replace"), csrf.encode()):
        return _error(403, "missing or wrong CSRF header: actions are sent by the page")
    return None


async def _body(request: Request) -> dict:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ActionError(413, f"request body over {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise ActionError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ActionError(400, "the body must be a JSON object")
    return body


def _filename(v: object) -> str:
    if not isinstance(v, str) or check_filename(v):
        raise ActionError(400, f"{str(v)[:60]!r} is not an entry's filename")
    return v


def _names(body: dict, m: Mirror) -> list[str]:
    if body.get("flagged") is True:
        idx = m.matching(Query(status="completed", flag="any"))
        return [m.entries[int(i)].filename for i in idx][:protocol.MAX_BATCH]
    names = body.get("filenames")
    if not isinstance(names, list) or len(names) > protocol.MAX_BATCH:
        raise ActionError(400, f"filenames must be a list of at most {protocol.MAX_BATCH} names")
    out = [_filename(n) for n in names]
    unknown = [n for n in out if n not in m.by_name]
    if unknown:
        raise ActionError(404, f"no entry {unknown[0]!r}")
    return out


def _query(request: Request) -> Query:
    p = request.query_params

    def num(key: str, default: int) -> int:
        v = p.get(key)
        if v is None or v == "":
            return default
        if not v.isdigit() or len(v) > 10:
            raise QueryError(f"{key} must be a whole number")
        return int(v)

    return Query(status=p.get("status") or None, flag=p.get("flag") or None, review=p.get("review") or None,
                 q=p.get("q", ""), sort=p.get("sort") or "id", offset=num("offset", 0),
                 limit=num("limit", 50)).check()


async def _entry(hub: Hub, mirror: Callable[[], Mirror], filename: str) -> dict:
    name = _filename(filename)
    data = mirror().entry(name)  # not held while the files are read: a reload may drop the copy meanwhile
    if data is None:
        raise ActionError(404, f"no entry {name!r}")
    takes = await hub.files.run(_takes, hub.dataset, hub.earlier, name, data["status"] == "completed")
    checks = data.pop("earlier_checks")
    for t in takes:  # an earlier take a check set aside carries that check (its CER)
        t["check"] = None if t["current"] else checks.get(f"{SET_ASIDE}/{t['name']}")
    if data["check"] is not None:
        data["diff"] = word_diff(data["text"], data["check"]["transcript"]).to_dict()
    return {**data, "takes": takes}


def _takes(dataset: Path, earlier: EarlierTakes, name: str, completed: bool) -> list[dict]:
    """An entry's current take (when completed) and its earlier ones, read and drawn (blocking)."""
    takes = []
    current = dataset / "wavs" / f"{name}.wav"
    if completed and current.is_file():
        takes.append(_take("wavs", current, True))
    folder = dataset / SET_ASIDE
    return takes + [_take(SET_ASIDE, folder / n, False) for n in earlier.of(name)]


def _take(folder: str, path: Path, current: bool) -> dict:
    try:
        a = analyze_file(path)
        peaks, duration, flags = a.peaks, round(a.duration, 3), sorted(f.value for f in a.flags)
    except ValueError:
        peaks, duration, flags = [], None, []
    return {"name": path.name, "url": f"/audio/{folder}/{path.name}", "current": current, "peaks": peaks,
            "duration": duration, "flags": flags}


def _audio_path(dataset: Path, folder: str, name: str) -> Path:
    """Only a wav directly in wavs/ or in the folder of earlier takes; anything else is a 404."""
    missing = StarletteHTTPException(404, "no such audio")
    if folder not in ("wavs", SET_ASIDE) or not name.endswith(".wav") or "/" in name or "\\" in name:
        raise missing
    stem = name[:-4]
    base = stem.split(".", 1)[0] if folder == SET_ASIDE else stem
    if check_filename(base) or name.startswith("."):
        raise missing
    root = (dataset / folder).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        raise missing
    return path


def _reconcile(dataset: Path, dry_run: bool) -> list[dict]:
    """A reconcile pass, as the reconciler process makes one; with dry_run, what it would change."""
    rec = running(dataset)
    if rec is None or not rec.get("endpoint"):
        raise ActionError(503, "the daemon is not running: start it (statesvc serve) and try again")
    with Client(rec["endpoint"], timeout=REQUEST_TIMEOUT, retries=2) as client:
        try:
            result = Reconciler(client, dataset, dry_run=dry_run).run_pass()
        except Unavailable:
            raise ActionError(504, "the daemon did not answer; nothing is known to be done") from None
        except ServiceError as exc:
            raise ActionError(409, f"the daemon refused: {exc}") from None
    return [{"filename": f["filename"], "from": f.get("from"), "to": f.get("to"), "reason": f["fix"]}
            for f in result.fixes]


def serve(settings: Settings) -> None:
    """Serve until stopped. The caller (the CLI) has refused a host that is not loopback without a
    token, and said where the page is."""
    import uvicorn
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)

