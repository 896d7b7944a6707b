"""Writing a wav so that no partial file ever carries a real name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from statesvc.audio import TMP_PREFIX
from statesvc.store import fsync_dir


def write_wav(folder: Path, filename: str, pcm16: np.ndarray, sample_rate: int,
              sync_dir: bool = True) -> tuple[float, list[int]]:
    """Write ``folder/filename.wav`` via a hidden temp file, fsync and rename.

    Returns the duration in seconds and the file's [size, mtime_ns, inode].
    """
    tmp = folder / f"{TMP_PREFIX}{filename}.{os.getpid()}.wav"
    final = folder / f"{filename}.wav"
    try:
        with open(tmp, "wb") as f:
            sf.write(f, pcm16, sample_rate, format="WAV", subtype="PCM_16")
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
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
