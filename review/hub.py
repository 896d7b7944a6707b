"""The page's copy of the state: read from the files, kept current by the daemon's events, read again if need be.

The hub owns the copy (``Mirror``) and its parts: the ``Follower`` of the daemon, the takes'
``Analyzer``, the ``Pushes`` to the open pages, and the file threads the routes read with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from array import array
from dataclasses import dataclass
from pathlib import Path

from statesvc.codec import DamagedState
from statesvc.events import Beat, Commit, Follow, follow, missed
from statesvc.layout import SET_ASIDE

from .analyzer import Analyzer
from .files import EarlierTakes, Offload
from .follow import Follower
from .mirror import Mirror
from .pushes import Pushes

log = logging.getLogger("statesvc.dashboard")

PUSH_EVERY = 0.5        # seconds: changes are coalesced into one push per tab at most this often
RELOAD_WAIT = 10.0      # seconds a reload waits for requests to let go of the old copy


@dataclass(frozen=True)
class Settings:
    dataset: Path
    host: str = "127.0.0.1"
    port: int = 8321
    token: str | None = None
    analyze: bool = True   # analyse takes in the background for the audio flags


class Hub:
    """Owns the mirror: loads it, applies the daemon's events, reloads when it missed some, and
    pushes coalesced changes to every open page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dataset = settings.dataset
        self.mirror: Mirror | None = None
        self.load_error: str | None = None
        self.buffered: list[Commit] = []  # commits received while reloading
        self.reloading = False
        self.reload_wanted = asyncio.Event()
        self.follower = Follower(self.dataset, self.on_event, self.reload_wanted.set, self.unfollowable)
        self.pushes = Pushes()
        self.analyzer = Analyzer(self.dataset, lambda: self.mirror) if settings.analyze else None
        self.files = Offload()
        self.earlier = EarlierTakes(self.dataset / SET_ASIDE)
        self.tasks: list[asyncio.Task] = []

    # ---- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        f = self.follower
        self.tasks = [asyncio.create_task(task()) for task in (f.watch, f.listen, self.reloader, self.pusher,
                                                               f.follow_pause)]
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
        self.follower.close()

    # ---- the daemon's events ------------------------------------------------------------------
    def on_event(self, event: Commit | Beat) -> None:
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
            if e.status == "completed" and self.analyzer is not None:
                self.analyzer.took(e.id)
        m.seq = commit.seq

    def unfollowable(self, why: str) -> None:
        """The daemon's events cannot be followed (its CURVE keys): said once in the log, and on the page."""
        if self.load_error != why:
            log.error("cannot follow the daemon's events: %s", why)
        self.load_error = why

    # ---- reading the state again --------------------------------------------------------------
    async def reloader(self) -> None:
        while True:
            await self.reload_wanted.wait()
            self.reload_wanted.clear()
            self.reloading = True
            self.follower.files_read()
            await self._drop_copy()
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
            for commit in buffered:
                self.on_commit(commit)
            self.pushes.broadcast("snapshot", {})

    async def _drop_copy(self) -> None:
        """Not two copies of a million entries at once: the page says loading meanwhile, and the
        new copy is read once requests still at work on the old one are done with it."""
        old = weakref.ref(self.mirror) if self.mirror is not None else None
        self.mirror = None
        deadline = time.monotonic() + RELOAD_WAIT
        while old is not None and old() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _load(self) -> tuple[Mirror, array]:
        """The state read again, and the ids of its takes to analyse (what an earlier load's
        analysis found still holds for the same takes)."""
        mirror = Mirror.load(self.dataset)
        return mirror, (array("q") if self.analyzer is None else self.analyzer.known(mirror))

    # ---- what the pages are told ----------------------------------------------------------------
    def overview(self) -> dict:
        m = self.mirror
        f = self.follower
        base = {"daemon": "up" if f.daemon_pid else "down", "load_error": self.load_error,
                "loading": m is None, "paused": f.paused}
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
