"""The dataset's writer lock: an flock that says who holds it, dropped by the kernel when its holder dies."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from .layout import lock_path


class Locked(Exception):
    """Another process holds the dataset's writer lock; the message names it."""


class WriterLock:
    """An flock on DIR/statesvc.lock; the kernel drops it when the holder dies."""

    def __init__(self, dataset: Path):
        self.path = lock_path(dataset)
        self.fd: int | None = None

    def acquire(self, info: str, wait: float = 1.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                # A reader probes with a shared lock for an instant; only a holder
                # that keeps it past the wait is a real writer.
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise Locked(holder_info(self.path.parent) or "another process") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder_info(dataset: Path) -> str | None:
    """What the running writer wrote into the lock file, or None when nobody holds it."""
    path = lock_path(dataset)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process"
        return None
    finally:
        os.close(fd)
