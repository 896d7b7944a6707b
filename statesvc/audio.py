"""Is this wav real audio? The one check shared by `statesvc verify` and the reconciler."""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import soundfile

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True, slots=True)
class Observation:
    valid: bool
    reason: str = ""
    duration: float = 0.0
    sample_rate: int = 0
    channels: int = 0

    def to_wire(self) -> dict:
        if self.valid:
            return {"valid": True, "duration": round(self.duration, 6), "sample_rate": self.sample_rate}
        return {"valid": False, "reason": self.reason}


def _riff_problem(path: Path, size: int) -> str | None:
    """A truncated or padded RIFF file still decodes; its declared sizes give it away."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return "not a RIFF/WAVE file"
    riff_size = struct.unpack_from("<I", head, 4)[0]
    if riff_size + 8 != size:
        return f"RIFF size {riff_size + 8} but file has {size} bytes (truncated?)"
    pos = 12
    while pos + 8 <= len(head):
        cid, csize = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == b"data":
            if pos + 8 + csize > size:
                return f"data chunk of {csize} bytes runs past the end of the file"
            return None
        pos += 8 + csize + (csize & 1)
    return None  # data chunk beyond the first 4 KiB: leave it to soundfile


def inspect(path: Path, sample_rate: int | None = None, st: os.stat_result | None = None) -> Observation:
    """Check one wav: a regular file, consistent header, readable, frames > 0, mono, the rate."""
    try:
        st = st or os.lstat(path)
    except FileNotFoundError:
        return Observation(False, "missing")
    if stat.S_ISLNK(st.st_mode):
        return Observation(False, "a symlink, not a file")
    if not stat.S_ISREG(st.st_mode):
        return Observation(False, "not a regular file")
    if st.st_size == 0:
        return Observation(False, "empty file")
    try:
        problem = _riff_problem(path, st.st_size)
        if problem:
            return Observation(False, problem)
        info = soundfile.info(str(path))
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        return Observation(False, f"unreadable: {str(exc).splitlines()[0][:120]}")
    if info.frames <= 0:
        return Observation(False, "no audio frames")
    if info.channels != 1:
        return Observation(False, f"{info.channels} channels, expected mono")
    if sample_rate is not None and info.samplerate != sample_rate:
        return Observation(False, f"sample rate {info.samplerate}, expected {sample_rate}")
    return Observation(True, "", info.frames / info.samplerate, info.samplerate, info.channels)


def wav_path(dataset: Path, filename: str) -> Path:
    return dataset / "wavs" / f"{filename}.wav"
