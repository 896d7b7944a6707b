"""Following the daemon: whether it runs, its change events, its disk pause, and the actions asked of it.

While no daemon runs, the files are watched instead (an offline change made by the CLI). What is
followed is handed to the hub through the callbacks it gives: an event, a reload wanted, the
events that cannot be followed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.asyncio

from statesvc import protocol
from statesvc.client import AsyncClient, NoDaemon, ServiceError, Unavailable
from statesvc.curve import CurveError
from statesvc.endpoints import defaults, running
from statesvc.events import AsyncSubscriber, Beat, Commit
from statesvc.health import paused_line
from statesvc.layout import journal_path, state_path

from .errors import ActionError
from .sync import REQUEST_TIMEOUT

log = logging.getLogger("statesvc.dashboard")

WATCH_EVERY = 1.0       # seconds between looks at whether the daemon came or went, or the files changed


class Follower:
    """The daemon of a dataset as the page follows it: ``watch``, ``listen`` and ``follow_pause``
    run as the hub's tasks; ``ask`` sends an action."""

    def __init__(self, dataset: Path, on_event: Callable[[Commit | Beat], None], reload: Callable[[], None],
                 unfollowable: Callable[[str], None]):
        self.dataset = dataset
        self.on_event = on_event          # a commit or a beat received
        self.reload = reload              # what the daemon did meanwhile is in the files: read them again
        self.unfollowable = unfollowable  # the events cannot be followed (CURVE keys): why
        self.ctx = zmq.asyncio.Context()
        self.daemon = AsyncClient.for_dataset(dataset, self.ctx, REQUEST_TIMEOUT)
        self.daemon_pid: int | None = None
        self.files_sig: tuple | None = None
        self.events_at: str | None = None
        self.sub: AsyncSubscriber | None = None
        self.paused = ""

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        self.ctx.term()

    def files_read(self) -> None:
        """The files are being read (a reload): a change from now on is a change."""
        self.files_sig = self._files_sig()

    def _files_sig(self) -> tuple:
        sig = []
        for p in (state_path(self.dataset), journal_path(self.dataset)):
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
                self.reload()  # what it did while we were not listening is in the files
            elif pid is None and self._files_sig() != self.files_sig:
                self.reload()
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
            self.unfollowable(str(exc))
            return
        self.sub, self.events_at = sub, events
        self.reload()

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
            self.on_event(event)
