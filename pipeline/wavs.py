"""Writing a take: a whole wav under a hidden name, which only the daemon moves under the entry's name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from statesvc.atomic import write_all
from statesvc.audio import Provenance, encode_wav, take_path


def write_take(dataset: Path, filename: str, pcm16: np.ndarray, sample_rate: int,
               provenance: Provenance) -> tuple[float, list[int]]:
    """Write the take of ``filename`` made under ``provenance`` (its text hash, revision and lease
    token, recorded in the file) under its hidden take name, and fsync it.

    No temp file: only the daemon ever moves a take under the entry's name, after its generator
    reported it whole; a take cut short by a crash fails the header check and goes to stale/.
    Returns the duration in seconds and the file's [size, mtime_ns, inode].
    """
    path = take_path(dataset, filename, provenance.token)
    data = encode_wav(pcm16, sample_rate, provenance)  # in memory first: a full disk fails our own write
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return len(pcm16) / sample_rate, [st.st_size, st.st_mtime_ns, st.st_ino]
