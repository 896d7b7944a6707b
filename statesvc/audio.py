"""Is this wav real audio, and which take is it? The checks shared by `statesvc verify`, the reconciler and the daemon.

A take records its own provenance (text hash, entry revision, lease token) in a RIFF LIST/INFO/ICMT chunk
placed before the data chunk, so it is read from the file's first 4 KiB without decoding any audio.
"""

from __future__ import annotations

import numbers
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import layout
from .entry import DURATION_TOLERANCE, is_adopted, same_duration, text_hash  # re-exported: one definition each

__all__ = ["DURATION_TOLERANCE", "HEAD_BYTES", "TMP_PREFIX", "TAKE_PREFIX", "Observation", "Provenance", "encode_wav",
           "inspect", "is_adopted", "not_its_take", "read_provenance", "same_duration", "take_path", "text_hash"]

if TYPE_CHECKING:
    import numpy

# soundfile and numpy are imported where they are used: the daemon reads provenance without them, and the
# supervisor must not load libsndfile before it starts its children.

TMP_PREFIX = ".tmp-"  # a wav being written; .take- files (take_path) are whole takes not yet counted
HEAD_BYTES = 4096
MAX_REV = 2**63 - 1  # what a JSON int survives (orjson) on every side

_HASH_RE = re.compile(r"[0-9a-f]{16}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMENT_RE = re.compile(r"tts-take v1 text=([0-9a-f]{16}) rev=(0|[1-9][0-9]{0,18}) token=([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Which take a wav is: made from the text with this hash, for this revision, under this lease token."""

    text_hash: str
    rev: int
    token: str

    def __post_init__(self) -> None:
        # Checked here so that nothing written can fail to parse back.
        if not (isinstance(self.text_hash, str) and _HASH_RE.fullmatch(self.text_hash)):
            raise ValueError(f"text_hash must be 16 lowercase hex digits, got {self.text_hash!r}")
        if not (type(self.rev) is int and 0 <= self.rev <= MAX_REV):
            raise ValueError(f"rev must be an int in 0..{MAX_REV}, got {self.rev!r}")
        if not (isinstance(self.token, str) and _TOKEN_RE.fullmatch(self.token)):
            raise ValueError(f"token must be 1-64 characters of [A-Za-z0-9_-], got {self.token!r}")

    def to_comment(self) -> str:
        return f"tts-take v1 text={self.text_hash} rev={self.rev} token={self.token}"

    @staticmethod
    def parse(comment: str) -> Provenance | None:
        """The provenance in a comment of exactly our shape; None for any other comment."""
        m = _COMMENT_RE.fullmatch(comment) if isinstance(comment, str) else None
        if m is None or int(m[2]) > MAX_REV:
            return None
        return Provenance(m[1], int(m[2]), m[3])

    def to_wire(self) -> dict:
        return {"text_hash": self.text_hash, "rev": self.rev, "token": self.token}


@dataclass(frozen=True, slots=True)
class Observation:
    valid: bool
    reason: str = ""
    duration: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    provenance: Provenance | None = None

    def to_wire(self) -> dict:
        if not self.valid:
            return {"valid": False, "reason": self.reason}
        wire = {"valid": True, "duration": round(self.duration, 6), "sample_rate": self.sample_rate}
        if self.provenance is not None:
            wire["take"] = self.provenance.to_wire()
        return wire


def _chunk(cid: bytes, body: bytes) -> bytes:
    """One RIFF chunk: the size counts the body only; an odd body is followed by one pad byte."""
    return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def encode_wav(pcm16: numpy.ndarray, sample_rate: int, provenance: Provenance | None = None) -> bytes:
    """A mono 16-bit PCM wav whose LIST/INFO/ICMT chunk, before the data, records the take."""
    if pcm16.ndim != 1:
        raise ValueError(f"expected a 1-D array of samples, got {pcm16.ndim} dimensions")
    if pcm16.dtype.kind != "i" or pcm16.dtype.itemsize != 2:  # int16 of either byte order
        raise ValueError(f"expected int16 samples, got {pcm16.dtype}")
    if not (isinstance(sample_rate, numbers.Integral) and 0 < sample_rate < 2**31) or isinstance(sample_rate, bool):
        raise ValueError(f"bad sample rate {sample_rate!r}")
    sample_rate = int(sample_rate)
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)  # PCM, mono, rate, bytes/s, align, bits
    chunks = [_chunk(b"fmt ", fmt)]
    if provenance is not None:
        icmt = _chunk(b"ICMT", provenance.to_comment().encode("ascii") + b"\0")
        chunks.append(_chunk(b"LIST", b"INFO" + icmt))
    chunks.append(_chunk(b"data", pcm16.astype("<i2", copy=False).tobytes()))
    body = b"WAVE" + b"".join(chunks)
    if len(body) > 0xFFFFFFFF:
        raise ValueError(f"{pcm16.size} samples do not fit in one RIFF file")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunks(head: bytes, pos: int) -> Iterator[tuple[bytes, int, int]]:
    """(id, offset of the body, declared size) of every chunk whose 8-byte header lies in head from pos on."""
    while pos + 8 <= len(head):
        cid, csize = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        yield cid, pos + 8, csize
        pos += 8 + csize + (csize & 1)


def _info_comment(head: bytes, start: int, size: int) -> Provenance | None:
    """Our provenance in a LIST chunk's body, if it is an INFO list holding a whole ICMT of our shape."""
    body = head[start:start + size]
    if len(body) != size or body[:4] != b"INFO":  # a list cut off by the 4 KiB head is not trusted
        return None
    for cid, at, csize in _chunks(body, 4):
        if cid == b"ICMT" and at + csize <= len(body):
            text = body[at:at + csize].split(b"\0", 1)[0]
            try:
                return Provenance.parse(text.decode("ascii"))
            except UnicodeDecodeError:
                return None
    return None


def _scan_head(head: bytes, size: int) -> tuple[str | None, Provenance | None]:
    """(problem, provenance) from the first bytes of a file of `size` bytes. A truncated or padded RIFF file
    still decodes; its declared sizes give it away."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return "not a RIFF/WAVE file", None
    riff_size = struct.unpack_from("<I", head, 4)[0]
    if riff_size + 8 != size:
        return f"RIFF size {riff_size + 8} but file has {size} bytes (truncated?)", None
    provenance = None
    for cid, at, csize in _chunks(head, 12):
        if cid == b"LIST" and provenance is None:
            provenance = _info_comment(head, at, csize)
        elif cid == b"data":
            if at + csize > size:
                return f"data chunk of {csize} bytes runs past the end of the file", None
            return None, provenance
    return None, provenance  # data chunk beyond the first 4 KiB: leave it to soundfile


def _soundfile_info(path: Path) -> tuple[Any, str]:
    """(info, "") or (None, why soundfile cannot read the file)."""
    import soundfile

    try:
        return soundfile.info(str(path)), ""
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        return None, f"unreadable: {str(exc).splitlines()[0][:120]}"


def inspect(path: Path, sample_rate: int | None = None, st: os.stat_result | None = None) -> Observation:
    """Check one wav: a regular file, consistent header, readable, frames > 0, mono, the rate; and its take."""
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
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        return Observation(False, f"unreadable: {str(exc).splitlines()[0][:120]}")
    problem, provenance = _scan_head(head, st.st_size)
    if problem:
        return Observation(False, problem)
    info, problem = _soundfile_info(path)
    if info is None:
        return Observation(False, problem)
    if info.frames <= 0:
        return Observation(False, "no audio frames")
    if info.channels != 1:
        return Observation(False, f"{info.channels} channels, expected mono")
    if sample_rate is not None and info.samplerate != sample_rate:
        return Observation(False, f"sample rate {info.samplerate}, expected {sample_rate}")
    return Observation(True, "", info.frames / info.samplerate, info.samplerate, info.channels, provenance)


def read_provenance(path: Path) -> Provenance | None:
    """Which take a file is, from its head alone (no decoding); None for a missing, foreign or damaged file,
    and for anything that is not a regular file (a symlink is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang us
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = _read_up_to(fd, HEAD_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    problem, provenance = _scan_head(head, st.st_size)
    return None if problem else provenance


def _read_up_to(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0 and (part := os.read(fd, n)):
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


TAKE_PREFIX = ".take-"


def take_path(dataset: Path, filename: str, token: str) -> Path:
    """Where a generator leaves a take for the daemon: hidden, named after the entry and the lease.
    Only the daemon moves it under the entry's name, and only when the take counts."""
    return layout.wavs(dataset) / f"{TAKE_PREFIX}{filename}.{token}.wav"


def not_its_take(obs: Observation, duration: float | None, text_hash: str | None, rev: int | None,
                 take: str | None) -> str | None:
    """Why the wav observed under a completed entry's name is not the take the state recorded
    (valid audio, same duration, made from the entry's text and revision, the recorded token),
    or None when it is. The one place that decides; `verify` and the reconciler both ask it."""
    if not obs.valid:
        return f"wav {obs.reason}"
    if not same_duration(obs.duration, duration):
        return f"duration {duration} in state, {obs.duration:.3f} on disk"
    p = obs.provenance
    if p is not None and p.text_hash != text_hash:
        return "the wav is a take of another text"
    if p is not None and p.rev != rev:
        return f"the wav is a take of revision {p.rev}, the entry is at {rev}"
    if take and (p is not None if is_adopted(take) else p is None or p.token != take):
        return "the wav is not the take the state recorded"  # an adopted take's wav records none
    return None
