"""Writing a wav so that no partial file ever carries a real name."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from statesvc.atomic import fsync_dir, write_all
from statesvc.audio import TMP_PREFIX


def write_wav(folder: Path, filename: str, pcm16: np.ndarray, sample_rate: int,
              sync_dir: bool = True) -> tuple[float, list[int]]:
    """Write ``folder/filename.wav`` via a hidden temp file, fsync and rename.

    Returns the duration in seconds and the file's [size, mtime_ns, inode].
    """
    tmp = folder / f"{TMP_PREFIX}{filename}.{os.getpid()}.wav"
    final = folder / f"{filename}.wav"
    try:
        # Encoded in memory first: a full disk then fails our own write with a plain OSError
        # (libsndfile would swallow it inside its I/O callback and report a short write).
        buf = io.BytesIO()
        sf.write(buf, pcm16, sample_rate, format="WAV", subtype="PCM_16")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, buf.getbuffer())
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
    if sync_dir:
        fsync_dir(folder)
    return len(pcm16) / sample_rate, [st.st_size, st.st_mtime_ns, st.st_ino]
