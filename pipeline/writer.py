"""The writer stage of a generator: takes go to disk in a thread of their own.

The synthesizer (a GPU) starts on the next batch while this thread encodes, writes and fsyncs
the last one; the generator's loop reports what it wrote. The queue between them is bounded
(``depth`` batches), so a disk slower than the model holds the synthesis back instead of
filling memory with audio. The thread never talks to the daemon: every outcome goes back to
the generator's loop, which owns the socket and decides (report, charge, pause for the disk).
"""

from __future__ import annotations

import errno
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from statesvc.audio import Provenance

from .wavs import discard_take, write_take

DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
DEPTH = 2  # batches waiting to be written: one being written, one more ready, while the next is synthesized


@dataclass(frozen=True)
class Written:
    """A take on disk, fsynced: ready to report."""

    entry: dict
    seconds: float
    sig: list[int]


@dataclass(frozen=True)
class Failed:
    """The audio of this text could not be made a take (bad samples, an unexpected error): a
    failure of the text, charged as one."""

    entry: dict
    error: BaseException


@dataclass(frozen=True)
class DiskTrouble:
    """The disk refused (full, quota, read-only, I/O error): not the texts' fault. ``unwritten``
    go back to the daemon uncharged."""

    error: OSError
    unwritten: list[dict]


Outcome = Written | Failed | DiskTrouble


class Writer(threading.Thread):
    """Writes batches of (entry, audio) as takes, in order; outcomes come back through ``outcomes()``."""

    def __init__(self, dataset: Path, sample_rate: int, depth: int = DEPTH):
        super().__init__(name="writer", daemon=True)
        self.dataset, self.sample_rate = dataset, sample_rate
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted = 0   # batches handed over (the generator's thread only)
        self.finished = 0    # batches whose outcomes are all in ``done`` (this thread only)

    def submit(self, entries: list[dict], audios: list, timeout: float) -> bool:
        """Hand a synthesized batch over; False when the queue stayed full for ``timeout`` seconds
        (the caller handles replies meanwhile and tries again)."""
        try:
            self.jobs.put((entries, audios), timeout=timeout)
        except queue.Full:
            return False
        self.submitted += 1
        return True

    def in_flight(self) -> int:
        """Batches handed over whose outcomes are not all out yet."""
        return self.submitted - self.finished

    def outcomes(self) -> list[Outcome]:
        out = []
        while True:
            try:
                out.append(self.done.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then end the thread."""
        if self.is_alive():
            try:
                self.jobs.put(None, timeout=timeout)
            except queue.Full:
                return  # stuck on a disk that does not answer: a daemon thread, it ends with the process
            self.join(timeout)

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            entries, audios = job
            try:
                for out in self.write(entries, audios):
                    self.done.put(out)
            finally:
                self.finished += 1

    def write(self, entries: list[dict], audios: list) -> list[Outcome]:
        """Write each take into the file the generator created for it (``create_take``); a take
        that is not written has its file removed (``write_take`` removes its own on failure)."""
        out: list[Outcome] = []
        for i, (e, audio) in enumerate(zip(entries, audios, strict=True)):
            try:
                seconds, sig = write_take(self.dataset, e["filename"], audio, self.sample_rate,
                                          Provenance(e["text_hash"], e["rev"], e["token"]))
            except OSError as exc:
                if exc.errno in DISK_ERRORS:  # the disk, not the text: nothing charged, the rest given back
                    for later in entries[i + 1:]:
                        discard_take(self.dataset, later["filename"], later["token"])
                    out.append(DiskTrouble(exc, entries[i:]))
                    return out
                out.append(Failed(e, exc))
            except Exception as exc:
                out.append(Failed(e, exc))
            else:
                out.append(Written(e, seconds, sig))
        return out
