"""Writing a take: a whole wav under a hidden name, which only the daemon moves under the entry's name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from statesvc.atomic import write_all
from statesvc.audio import TMP_PREFIX, Provenance, encode_wav, take_path


def write_take(dataset: Path, filename: str, pcm16: np.ndarray, sample_rate: int,
               provenance: Provenance) -> tuple[float, list[int]]:
    """Write the take of ``filename`` made under ``provenance`` (its text hash, revision and lease
    token, recorded in the file): a temp file named with our pid, fsync, rename to the take's name.

    A generator killed mid-write leaves only a temp file; a take file is always whole. Returns
    the duration in seconds and the file's [size, mtime_ns, inode].
    """
    final = take_path(dataset, filename, provenance.token)
    # the token too: two hosts sharing wavs/ may run processes with the same pid
    tmp = final.with_name(f"{TMP_PREFIX}{filename}.{provenance.token}.{os.getpid()}.wav")
    data = encode_wav(pcm16, sample_rate, provenance)  # in memory first: a full disk fails our own write
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(pcm16) / sample_rate, [st.st_size, st.st_mtime_ns, st.st_ino]
