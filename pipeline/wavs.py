"""Writing a take: a whole wav under a hidden name, which only the daemon moves under the entry's name.

A take's file exists from the moment its synthesis is over (``create_take``, before the generator
says what it synthesizes next), empty until its writer fills it (``write_take``) or removes it
(``write_take`` when the take cannot be made, ``discard_take`` for the rest of a batch the disk
refused). The daemon reads that file as "this text was not under way": a death after it
charges the text nothing, even when the next text's working notice died with the generator.
"""

from __future__ import annotations

import os
from pathlib import Path

from statesvc.atomic import unlink_quietly, write_all
from statesvc.audio import Provenance, encode_wav, take_path

from .synth import to_pcm16

TAKE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC


def create_take(dataset: Path, filename: str, token: str) -> None:
    """Create the empty file of a take whose synthesis is over. A disk that refuses is not
    raised here: ``write_take`` tries again and reports it as the writer's outcome."""
    try:
        os.close(os.open(take_path(dataset, filename, token), TAKE_FLAGS, 0o644))
    except OSError:
        pass


def discard_take(dataset: Path, filename: str, token: str) -> None:
    """A take that will not be written: the disk refused an earlier one of its batch."""
    unlink_quietly(take_path(dataset, filename, token))


def write_take(dataset: Path, filename: str, audio: object, sample_rate: int,
               provenance: Provenance) -> tuple[float, list[int]]:
    """Write a synthesizer's ``audio`` as the take of ``filename`` made under ``provenance`` (its
    text hash, revision and lease token, recorded in the file) under its hidden take name, and
    fsync it. A take that cannot be made (bad audio, a disk that refuses) leaves no file.

    No temp file: only the daemon ever moves a take under the entry's name, after its generator
    reported it whole; a take cut short by a crash fails the header check and goes to stale/.
    Returns the duration in seconds and the file's [size, mtime_ns, inode].
    """
    path = take_path(dataset, filename, provenance.token)
    try:
        pcm16 = to_pcm16(audio)
        data = encode_wav(pcm16, sample_rate, provenance)  # in memory first: a full disk fails our own write
        fd = os.open(path, TAKE_FLAGS | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(path)
        raise
    return len(pcm16) / sample_rate, [st.st_size, st.st_mtime_ns, st.st_ino]
