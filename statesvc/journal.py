"""The journal beside generation_state.json: the commits made since the last checkpoint.

``generation_state.journal`` is one header line naming the checkpoint it extends, then one
line per group commit::

    {"journal":1,"extends":"3f9c0a6e1b2d4c5a"}
    1c0ffee5 {"seq":41,"entries":[{...whole entry...},...],"leases":[[7,"9f3a...",1764395.2,"written"]],...}

A record holds whole entries and lease updates (absolute, never increments), so replaying one
twice is harmless, and the CRC-32 (8 hex digits) of its JSON. The writer appends a record and
fdatasyncs before it acknowledges anything in it; a failed append is cut off again before
the batch is refused, so a write answered "not saved" never comes back on a later load.

Reading stops at the first line that is incomplete, fails its checksum or does not follow the
sequence. A crash mid-append can tear only the last record, which was never acknowledged: a
bad line is *torn* only when nothing follows it and no whole record hides in it (a damaged
newline). Anything else, the header included, is *damage*: every reader refuses it and names
the first damaged record, since cutting there would drop acknowledged commits.
"""

from __future__ import annotations

import io
import os
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
import orjson

from .atomic import OutcomeUnknown, SaveFailed, write_all, write_atomic
from .entry import Entry, Phase
from .layout import JOURNAL_FILE, journal_path


class Record(msgspec.Struct, gc=False, omit_defaults=True):
    """One group commit: every entry it changed, as a whole, except two kinds of change that are
    written as short rows, absolute too: an entry whose only change is a claim
    (``claims``: ``[id, token, owner, deadline, phase, updated_at]``: generating under that lease),
    and a lease whose deadline or phase alone changed (``leases``: ``[id, token, deadline, phase]``:
    heartbeats, working notices). On a run that is about half the bytes of whole entries. The
    header values when they changed."""

    seq: int
    entries: list[Entry]
    claims: list[tuple[int, str, str, float, Phase, str]] = []
    leases: list[tuple[int, str, float, Phase]] = []
    sample_rate: int | None = None
    answers: dict | None = None


_decode_record = msgspec.json.Decoder(Record).decode
_CRC = re.compile(rb"[0-9a-f]{8} ")  # a record's checksum as the writer writes it (int() would take " +_A")
_encode = msgspec.json.Encoder().encode


@dataclass
class Contents:
    """What a journal holds, as far as it can be trusted."""

    extends: str | None = None     # the checkpoint it extends; None when there is no journal
    records: list[Record] = field(default_factory=list)  # kept only when asked (tests, small journals)
    good_length: int = 0           # bytes up to the end of the last good record
    size: int = 0                  # bytes in the file (more than good_length: a torn tail)
    ends: list[int] = field(default_factory=list)  # offset just after each record
    count: int = 0                 # good records
    last_seq: int = 0
    damage: str | None = None      # the first damaged record (or the header), in words; None: no damage

    @property
    def damaged(self) -> bool:
        """Damage a crash cannot make: reading it as a torn tail would drop acknowledged commits."""
        return self.damage is not None

    @property
    def torn(self) -> int:
        """Bytes of a torn last record (never acknowledged); 0 when damaged (nothing may be cut)."""
        return 0 if self.damaged else self.size - self.good_length


def header(extends: str) -> bytes:
    return orjson.dumps({"journal": 1, "extends": extends}) + b"\n"


def _extends(line: bytes) -> str | None:
    try:
        head = orjson.loads(line) if line.endswith(b"\n") else None
    except orjson.JSONDecodeError:
        return None
    ok = isinstance(head, dict) and head.get("journal") == 1 and isinstance(head.get("extends"), str)
    return head["extends"] if ok else None


def scan(f: BinaryIO, size: int, use: Callable[[Record], None] | None = None, keep: bool = False) -> Contents:
    """Read a journal a record at a time, handing each good one to ``use`` as it is read (a
    replay never holds the whole journal). An unreadable header is damage, never "holds nothing":
    a journal is swapped in whole (temp file and rename), so no crash leaves half a header."""
    first = f.readline()
    extends = _extends(first)
    if extends is None:
        return Contents(None, [], 0, size, damage="its header (line 1)")
    out = Contents(extends, [], len(first), size)
    pos = len(first)
    for line in iter(f.readline, b""):
        rec = _record(line)
        if rec is None or (out.count and rec.seq <= out.last_seq):
            # Bytes after it within ``size`` (what the file held when opened: a reader racing the
            # writer may read a record being appended, and more after it, later) mean damage.
            if rec is not None or pos + len(line) < size or _whole_inside(line):
                out.damage = f"record {out.count + 1} (line {out.count + 2}, at byte {pos})"
            break
        out.count, out.last_seq = out.count + 1, rec.seq
        if keep:
            out.records.append(rec)
        if use is not None:
            use(rec)
        pos += len(line)
        out.good_length = pos
        out.ends.append(pos)
    return out


def _whole_inside(line: bytes) -> bool:
    """Whether a bad last line starts with a whole record whose newline was damaged (then it was
    acknowledged, not torn): some prefix of its body ending in "}" matches its checksum, and
    something other than zeros follows it (a crash may stop just before the newline, or leave
    zeros after it)."""
    if _CRC.match(line) is None:
        return False
    want, body, crc, at = int(line[:8], 16), memoryview(line)[9:], 0, 0
    while (end := line.find(b"}", 9 + at)) >= 0:
        crc = zlib.crc32(body[at:end - 8], crc)
        at = end - 8
        if crc == want and line[9 + at:].strip(b"\0"):
            try:
                _decode_record(body[:at])
                return True
            except msgspec.DecodeError:
                pass
    return False


def parse(raw: bytes) -> Contents:
    """The good records of a journal's bytes, kept."""
    return scan(io.BytesIO(raw), len(raw), keep=True)


def _record(line: bytes) -> Record | None:
    """The record on one line, or None when it is incomplete or fails its checksum."""
    if len(line) < 11 or not line.endswith(b"\n") or _CRC.match(line) is None:
        return None
    body = memoryview(line)[9:-1]
    try:
        return _decode_record(body) if int(line[:8], 16) == zlib.crc32(body) else None
    except (ValueError, msgspec.DecodeError):
        return None


def extends_of(dataset: Path) -> str | None:
    """The checkpoint the journal extends (None: no journal, or not even a whole header)."""
    try:
        with open(journal_path(dataset), "rb") as f:
            return _extends(f.readline())
    except FileNotFoundError:
        return None


def read(dataset: Path, use: Callable[[Record], None] | None = None) -> Contents:
    """Scan the journal (see ``scan``); no journal reads as an empty one. Raises OSError."""
    try:
        with open(journal_path(dataset), "rb") as f:
            return scan(f, os.fstat(f.fileno()).st_size, use)
    except FileNotFoundError:
        return Contents()


def encode(rec: Record) -> bytes:
    body = _encode(rec)
    return b"%08x " % zlib.crc32(body) + body + b"\n"


class Writer:
    """Appends records to the journal of one dataset; the only code that writes it."""

    def __init__(self, dataset: Path, length: int):
        self.path = journal_path(dataset)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        self.length = length  # everything before this offset is durable and acknowledged

    def append(self, line: bytes) -> None:
        """Write one record and fdatasync it; on failure cut it off again and raise SaveFailed.

        A failed fdatasync is never retried on the same descriptor (the kernel may have dropped
        the pages and report success the second time): the record is cut off through a new one.
        If even that fails, the record may survive: OutcomeUnknown."""
        try:
            write_all(self.fd, line, self.length)
            os.fdatasync(self.fd)
        except OSError as exc:
            self._cut_back()
            raise SaveFailed(f"appending to {self.path.name}: {exc.strerror or exc}") from None
        self.length += len(line)

    def _cut_back(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            os.ftruncate(self.fd, self.length)
            os.fsync(self.fd)
        except OSError as exc:
            raise OutcomeUnknown(f"cannot cut a failed record off {self.path.name}: {exc.strerror}") from None

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def start(dataset: Path, extends: str, tail: bytes = b"") -> int:
    """A fresh journal extending checkpoint ``extends`` (holding ``tail``, records made after its
    snapshot), swapped in atomically. Returns its length. Raises SaveFailed, or OutcomeUnknown
    when the rename happened but the folder fsync failed (appends to it might not survive)."""
    data = header(extends) + tail
    write_atomic(journal_path(dataset), data)
    return len(data)


def tail(dataset: Path, start: int, end: int) -> bytes:
    """The records between two offsets (those made while a checkpoint was being written)."""
    if end <= start:
        return b""
    with open(journal_path(dataset), "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise SaveFailed(f"{JOURNAL_FILE} is shorter than its writer wrote")
    return data


def aside(dataset: Path, why: str) -> Path:
    """A free name next to the journal for a copy kept aside (``generation_state.journal.WHY-TIME``)."""
    base = journal_path(dataset).with_name(f"{JOURNAL_FILE}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}.{n}"), n + 1
    return path


def keep_tail(dataset: Path, length: int) -> Path:
    """Keep the bytes after ``length`` (a torn last record) in a file next to the journal."""
    with open(journal_path(dataset), "rb") as f:
        f.seek(length)
        data = f.read()
    path = aside(dataset, "torn")
    write_atomic(path, data)
    return path


def cut(dataset: Path, length: int) -> Path:
    """Cut a torn tail off (at start, under the writer lock), durably, its bytes kept aside first;
    returns where they went."""
    kept = keep_tail(dataset, length)
    fd = os.open(journal_path(dataset), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept


def after_damage(dataset: Path, j: Contents) -> list[Record]:
    """The whole records after the first damage of a damaged journal (acknowledged commits that
    nothing can apply in order)."""
    found: list[Record] = []
    with open(journal_path(dataset), "rb") as f:
        f.seek(j.good_length)
        f.readline()  # the damaged line (the header, when that is the damage)
        for line in iter(f.readline, b""):
            rec = _record(line)
            if rec is not None:
                found.append(rec)
    return found


__all__ = ["Record", "Contents", "Writer", "parse", "read", "scan", "extends_of",
           "encode", "start", "tail", "cut", "aside", "keep_tail", "after_damage"]
