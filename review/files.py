"""The dataset's files as the page reads them, off the event loop: an entry's takes, its earlier ones, audio paths."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from starlette.exceptions import HTTPException as StarletteHTTPException

from statesvc.layout import SET_ASIDE, WAVS, set_aside, wav_path
from statesvc.texts import check_filename

from .errors import ActionError
from .flags import analyze_file

FILE_THREADS = 8        # file work (listings, wav decoding) at once; more waits for a free thread...
FILE_WAIT = 10.0        # ...this many seconds, then the request is told the files do not answer
EARLIER_TAKES = 20      # earlier takes an entry shows, newest first
RACY = 2_000_000_000    # ns: a folder changed this recently may change again within its mtime's tick


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


def takes_of(dataset: Path, earlier: EarlierTakes, name: str, completed: bool) -> list[dict]:
    """An entry's current take (when completed) and its earlier ones, read and drawn (blocking)."""
    takes = []
    current = wav_path(dataset, name)
    if completed and current.is_file():
        takes.append(_take(WAVS, current, True))
    folder = set_aside(dataset)
    return takes + [_take(SET_ASIDE, folder / n, False) for n in earlier.of(name)]


def _take(folder: str, path: Path, current: bool) -> dict:
    try:
        a = analyze_file(path)
        peaks, duration, flags = a.peaks, round(a.duration, 3), sorted(f.value for f in a.flags)
    except ValueError:
        peaks, duration, flags = [], None, []
    return {"name": path.name, "url": f"/audio/{folder}/{path.name}", "current": current, "peaks": peaks,
            "duration": duration, "flags": flags}


def audio_path(dataset: Path, folder: str, name: str) -> Path:
    """Only a wav directly in wavs/ or in the folder of earlier takes; anything else is a 404."""
    missing = StarletteHTTPException(404, "no such audio")
    if folder not in (WAVS, SET_ASIDE) or not name.endswith(".wav") or "/" in name or "\\" in name:
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
