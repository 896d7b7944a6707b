"""The takes' audio analysis, in a thread of its own so that reading wavs does not stall the pages.

Fresh takes go first, then those a load found without a known analysis; each take is read once,
what it found is kept by ``Analyses`` (and its cache file, so a restart does not read every take
again) and handed to the event loop, which sets it on the copy of the state.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from statesvc.entry import Status
from statesvc.layout import wav_path

from .analyses import CACHE_FILE, SAVE_EVERY, Analyses, file_key
from .columns import STATUS_CODE
from .flags import analyze_file, bits
from .mirror import Mirror

log = logging.getLogger("statesvc.dashboard")

RELOADING = object()    # what the analyzer is told while the state is read again


class Analyzer:
    """The analysis thread and its queues: ``took`` a fresh take, ``queue`` what a load left to
    analyse. ``current`` gives the copy of the state as the hub holds it (None while it is read
    again), looked up at each take."""

    def __init__(self, dataset: Path, current: Callable[[], Mirror | None]):
        self.dataset = dataset
        self.current = current
        self.file = dataset / CACHE_FILE
        self.unsaved = False  # said once in the log: the cache file cannot be written
        self.failed_at: float | None = None  # the last failed save: tried again a while later
        self.analyses, why = Analyses.load(self.file)
        if why:
            log.warning("not using %s: %s; the takes are analysed again", self.file, why)
        self.fresh: collections.deque[int] = collections.deque()  # ids of fresh takes: first
        self.backlog: Iterator[int] = iter(())  # ids of the takes loaded without a known analysis
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self.run, name="analyzer", daemon=True)
        self.thread.start()

    async def stop(self) -> None:
        """Its last take done, then what it found saved."""
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.join, 10)
            await asyncio.to_thread(self.save, True)

    def took(self, eid: int) -> None:
        """An entry's fresh take, analysed before the backlog."""
        self.fresh.appendleft(eid)
        self.wake.set()

    def queue(self, backlog: array) -> None:
        """What a load left to analyse, once its copy is in place (the thread looks takes up in it)."""
        self.backlog = iter(backlog)
        self.wake.set()

    def known(self, mirror: Mirror) -> array:
        """Set on a copy just loaded the flags already found for its takes (an earlier load's, or
        the cache file's); the ids of the takes left to analyse."""
        backlog = array("q")
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
        return backlog

    def run(self) -> None:
        while not self.stopping.is_set():
            fresh = True
            try:
                eid = self.fresh.popleft()
            except IndexError:
                fresh, eid = False, next(self.backlog, None)
            if eid is None:
                self.save()  # all caught up
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            job = self._take_of(eid)
            if job is RELOADING:  # the reload queues the takes again; a fresh one keeps its turn
                if fresh:
                    self.fresh.appendleft(eid)
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            if job is not None:
                self._analyse(eid, *job)

    def _analyse(self, eid: int, name: str, take: str | None) -> None:
        path = wav_path(self.dataset, name)
        try:
            st = path.stat()
        except OSError:
            return
        sig = file_key(st.st_size, st.st_mtime_ns, st.st_ino)
        flags = self.analyses.of_file(eid, sig)
        if flags is None:
            try:
                flags = bits(analyze_file(path).flags)
            except ValueError:
                return  # unreadable: the reconciler's business, not a flag
        self.analyses.put(eid, sig, take, flags)
        if self.analyses.save_due():
            self.save()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._analysed, name, take, flags)

    def save(self, last: bool = False) -> None:
        """Write the flags' cache file; after a failure (a read-only dataset folder), not again
        until a while later, unless this is the last chance (on stop)."""
        if not last and self.failed_at is not None and time.monotonic() - self.failed_at < SAVE_EVERY:
            return
        try:
            self.analyses.save(self.file)
            self.failed_at = None
        except OSError as exc:
            self.failed_at = time.monotonic()
            if not self.unsaved:
                self.unsaved = True
                log.warning("cannot keep the flags in %s (%s): a restart analyses the takes again",
                            self.file, exc.strerror)

    def _take_of(self, eid: int) -> tuple[str, str | None] | None | object:
        """The filename and take of a completed entry; RELOADING while the copy is read again.
        (Its own frame: the analyzer holds no copy while it reads a wav, or waits.)"""
        m = self.current()
        if m is None:
            return RELOADING
        i = m.pos.get(eid)
        if i is None:
            return None
        e = m.entries[i]
        return (e.filename, e.take) if e.status == Status.COMPLETED else None

    def _analysed(self, name: str, take: str | None, flags: int) -> None:
        """On the event loop: the flags found, set on the copy if it still holds that take."""
        m = self.current()
        if m is not None and m.set_audio_flags(name, take, flags):
            i = m.by_name[name]
            m.changed.add(m.entries[i].id)
