"""Durable file writes: temp file, fsync, rename, fsync of the folder.

The one public module for writing files atomically: the state's store and the
generators' wavs both use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class SaveFailed(Exception):
    """A save did not complete; the old file is intact."""


class OutcomeUnknown(SaveFailed):
    """The rename happened but the folder fsync failed: the save may or may not survive."""


def write_atomic(path: Path, data: bytes | list | Callable[[int], None]) -> None:
    """Temp file, write, fsync, rename over ``path``, fsync the folder. ``data``: bytes, buffers,
    or a function that writes the content to the descriptor it is given (a big file, streamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SaveFailed(f"cannot create {tmp.name}: {exc.strerror}") from None
    try:
        try:
            if callable(data):
                data(fd)
            elif isinstance(data, list):
                writev_all(fd, data)
            else:
                write_all(fd, data)
            # A failed fsync is never retried on this descriptor: the kernel may have
            # dropped the dirty pages and would report success the second time.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        unlink_quietly(tmp)
        raise SaveFailed(f"saving {path.name}: {exc.strerror or exc}") from None
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise OutcomeUnknown(f"fsync of {path.parent} failed after rename: {exc.strerror}") from None


def write_all(fd: int, data: bytes | memoryview, at: int | None = None) -> None:
    """os.write (os.pwrite at ``at``) until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if at is None else os.pwrite(fd, view, at)
        view = view[n:]
        if at is not None:
            at += n


IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


def writev_all(fd: int, bufs: list) -> None:
    """os.writev until every buffer is written, IOV_MAX buffers per call (short writes resume)."""
    views = [memoryview(b) for b in bufs if len(b)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i:i + IOV_MAX])
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i], n = views[i][n:], 0


def fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def unlink_quietly(path: Path) -> None:
    """Remove ``path`` if it can be removed (a temp file dropped after a failure); never raises."""
    try:
        os.unlink(path)
    except OSError:
        pass


