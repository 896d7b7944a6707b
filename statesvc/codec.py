"""The state file's format: a header line with its identity and checksum, then one entry per line.

``generation_state.json`` is a checkpoint: the whole state, written to a temp file, fsynced,
renamed over the old one, and the folder fsynced (see ``checkpoint`` and ``store``). The file
names itself: its header holds a random ``checkpoint`` id, the id its journal extended
(``parent``) and the last commit it holds (``seq``), and a CRC-32 of its entries. A file whose
checksum holds decodes straight into entries; one whose checksum fails was changed by hand (or
written by an older statesvc) and is read the long way, every entry validated.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec
import orjson

from .atomic import write_all, write_atomic
from .entry import (
    SCHEMA_VERSION,
    STATUS_OF,
    STATUSES,
    Check,
    Earlier,
    Entry,
    Lease,
    Phase,
    Review,
    Stage,
    Status,
    Verdict,
)
from .layout import state_path
from .state import State
from .texts import check_filename


class DamagedState(Exception):
    """The state on disk cannot be trusted or read; the message says why in one line."""


@dataclass(frozen=True)
class Head:
    """What a checkpoint file says of itself; ``checkpoint`` is None for a file statesvc did not
    write as it is (a hand edit, an older layout)."""

    checkpoint: str | None = None
    parent: str | None = None
    seq: int = 0

    def journal_applies(self, extends: str | None) -> bool:
        """Whether a journal extending ``extends`` applies to this file (its records after ``seq``)."""
        return self.checkpoint is not None and extends is not None and extends in (self.checkpoint, self.parent)


# ---- a file changed by hand: read with full validation ------------------------
def _entry_from(obj: object, n: int) -> Entry:
    if not isinstance(obj, dict):
        raise DamagedState(f"entry {n} is not an object")
    try:
        eid, fname, text, status = obj["id"], obj["filename"], obj["text"], obj["status"]
    except KeyError as exc:
        raise DamagedState(f"entry {n} has no {exc.args[0]!r}") from None
    if not isinstance(eid, int) or isinstance(eid, bool) or eid < 1:
        raise DamagedState(f"entry {n}: id must be a positive integer")
    why = check_filename(fname)
    if why:
        raise DamagedState(f"entry {eid}: {why}")
    if not isinstance(text, str):
        raise DamagedState(f"entry {eid}: text must be a string")
    if status not in STATUSES:
        raise DamagedState(f"entry {eid}: unknown status {status!r}")
    dur = obj.get("duration_seconds")
    if dur is not None and (not isinstance(dur, (int, float)) or isinstance(dur, bool) or dur < 0):
        raise DamagedState(f"entry {eid}: duration_seconds must be a number or null")
    sr = obj.get("sample_rate")
    if sr is not None and (not isinstance(sr, int) or sr <= 0):
        raise DamagedState(f"entry {eid}: sample_rate must be a positive integer or null")
    attempts = obj.get("attempts", 0)
    if not isinstance(attempts, int) or attempts < 0:
        raise DamagedState(f"entry {eid}: attempts must be a non-negative integer")
    err = obj.get("error")
    if err is not None and not isinstance(err, str):
        raise DamagedState(f"entry {eid}: error must be a string or null")
    e = Entry.make(eid, fname, text, STATUS_OF[status], None if dur is None else float(dur), sr, attempts, err,
                   obj.get("updated_at") if isinstance(obj.get("updated_at"), str) else None)
    # text_hash is recomputed from the text (a hand edit of the text makes older takes not count)
    rev, take = obj.get("rev", 0), obj.get("take")
    e.rev = rev if isinstance(rev, int) and not isinstance(rev, bool) and 0 <= rev < 2**62 else 0
    e.take = take if isinstance(take, str) and 0 < len(take) <= 64 else None
    lease = obj.get("lease")
    if status == "generating" and isinstance(lease, dict) and isinstance(lease.get("token"), str):
        d = lease.get("deadline")
        phase = lease.get("phase")
        e.lease = Lease(lease["token"], str(lease.get("owner")), float(d) if isinstance(d, (int, float)) else 0.0,
                        Phase(phase) if phase in Phase.__members__.values() else Phase.QUEUED)
    e.suspect = obj.get("suspect") is True
    e.review = _review_from(obj.get("review"), eid) if status == "completed" else None
    _checks_from(e, obj)
    return e


def _checks_from(e: Entry, obj: dict) -> None:
    """The check fields of an entry read with full validation (a hand-edited file)."""
    try:
        tc = obj.get("take_count", 0)
        e.take_count = tc if isinstance(tc, int) and not isinstance(tc, bool) and tc >= 0 else 0
        e.deterministic = obj.get("deterministic") is True
        ce = obj.get("check_expiries", 0)
        e.check_expiries = ce if isinstance(ce, int) and not isinstance(ce, bool) and ce >= 0 else 0
        e.earlier = msgspec.convert(obj.get("earlier") or [], list[Earlier])
        if e.status == Status.COMPLETED:
            e.stage = Stage(obj.get("stage", "waiting"))
            e.check = None if obj.get("check") is None else msgspec.convert(obj["check"], Check)
            lease = obj.get("check_lease")
            e.check_lease = msgspec.convert(lease, Lease) if e.stage == Stage.LEASED and lease is not None else None
            if e.stage in (Stage.CHECKED, Stage.FLAGGED) and (e.check is None or e.check.take != e.take):
                e.stage, e.check = Stage.WAITING, None  # a check of another take does not hold: checked again
    except (msgspec.ValidationError, ValueError) as exc:
        raise DamagedState(f"entry {e.id}: its check fields: {exc}") from None


def _review_from(obj: object, eid: int) -> Review | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.get("verdict") not in Verdict.__members__.values():
        raise DamagedState(f"entry {eid}: review must be null or an object with verdict approved or rejected")
    take, at, note = obj.get("take"), obj.get("at"), obj.get("note")
    return Review(Verdict(obj["verdict"]), take if isinstance(take, str) else None,
                  at if isinstance(at, str) else "", note if isinstance(note, str) else None)


# ---- the file's layout -----------------------------------------------------
# One header line (ending in ',"entries":[' and a newline), then one entry per line (lines
# joined by ",\n"), then "\n]}\n". The header's checksum is the CRC-32 of the header line (with
# the checksum's digits as zeros: its seq and parent decide which journal records apply) and the
# entry lines; "crc32:" (files written before) covers the entry lines only.
# A checksummed file decodes straight into entries (msgspec), without full validation.
CHECKSUM = "crc32h:"
_OLD_CHECKSUM = "crc32:"
_OPEN = b',"entries":[\n'
_CLOSE = b"\n]}\n"
_SEP = b",\n"
_CHUNK = 4096  # entries encoded and written at a time: a checkpoint never holds the whole file
_WRITEBACK = 4 << 20  # bytes of a checkpoint written between two fdatasyncs of it


_encode = msgspec.json.Encoder().encode


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Creating a million long-lived objects with the cyclic GC on makes it walk them again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_file_bytes(raw: bytes, where: str) -> tuple[list[Entry], int | None, object, Head]:
    fast = _read_checked(raw)
    if fast is not None:
        return fast
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DamagedState(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise DamagedState(f"{where} has no 'entries' list")
    schema = doc.get("schema_version", SCHEMA_VERSION)
    if schema not in (1, SCHEMA_VERSION):  # 1: before text hashes and revisions, which a load fills in
        raise DamagedState(f"{where} has schema_version {schema!r}; this statesvc reads {SCHEMA_VERSION}")
    entries = [_entry_from(obj, n) for n, obj in enumerate(doc["entries"], 1)]
    ids, names = set(), set()
    for e in entries:
        if e.id in ids:
            raise DamagedState(f"{where}: duplicate id {e.id}")
        if e.filename in names:
            raise DamagedState(f"{where}: duplicate filename {e.filename!r}")
        ids.add(e.id)
        names.add(e.filename)
    sr = doc.get("sample_rate")
    if sr is not None and (not isinstance(sr, int) or sr <= 0):
        raise DamagedState(f"{where}: sample_rate must be a positive integer or null")
    seq = doc.get("seq")
    return entries, sr, doc.get("answers"), Head(None, None, seq if isinstance(seq, int) and seq >= 0 else 0)


def _read_checked(raw: bytes) -> tuple[list[Entry], int | None, object, Head] | None:
    """The fast path over bytes in memory: a file whose checksum proves statesvc wrote it as it is; else None."""
    fast = _read_streamed(io.BytesIO(raw), len(raw))
    return None if fast is None else fast[:4]


decode_entries = msgspec.json.Decoder(list[Entry]).decode
_READ = 16 << 20  # bytes read at a time: a load never holds the whole file next to its entries


def _read_streamed(f: BinaryIO, total: int, decode: Callable[[object], list] = decode_entries
                   ) -> tuple[list[Entry], int | None, object, Head, int] | None:
    """The fast path of a load from an open file, a chunk at a time; None when the file is not a
    checksummed statesvc checkpoint (the caller then reads it whole and validates it)."""
    first = f.readline()
    if not first.endswith(_OPEN):
        return None
    try:
        head = orjson.loads(first[:-len(_OPEN)] + b"}")
    except orjson.JSONDecodeError:
        return None
    ck, parent, seq, kind = head.get("checkpoint"), head.get("parent"), head.get("seq"), _checksum_kind(head)
    if head.get("schema_version") != SCHEMA_VERSION or not isinstance(ck, str) or not isinstance(seq, int) or not kind:
        return None
    entries: list[Entry] = []
    crc, carry, size = _head_crc(first, head["checksum"]) if kind == CHECKSUM else 0, b"", len(first)
    try:
        while True:
            # "[" + the previous chunk's unfinished line + a chunk, read in place (no copies of
            # the chunk): the last ",\n" becomes "]" and the lines before it decode as one list.
            buf = bytearray(1 + len(carry) + max(1 << 16, min(_READ, total - size)))  # total: a size hint
            buf[0:1 + len(carry)] = b"[" + carry
            n = f.readinto(memoryview(buf)[1 + len(carry):])
            if not n:
                break
            size += n
            end = 1 + len(carry) + n
            cut = buf.rfind(_SEP, 1, end)  # entry lines hold no raw newline: ",\n" only separates two
            if cut < 0:
                carry = bytes(buf[1:end])
                continue
            carry = bytes(buf[cut + len(_SEP):end])
            crc = zlib.crc32(_SEP, zlib.crc32(memoryview(buf)[1:cut], crc))
            buf[cut] = 0x5D  # "]"
            entries += decode(memoryview(buf)[:cut + 1])
        if not carry.endswith(_CLOSE):
            return None
        last = carry[:-len(_CLOSE)]
        crc = zlib.crc32(last, crc)
        if last:
            entries += decode(b"[" + last + b"]")
    except (msgspec.DecodeError, ValueError):
        return None  # damaged or forged: validate the long way and say what is wrong
    if head.get("checksum") != f"{kind}{crc:08x}":
        return None
    return entries, head.get("sample_rate"), head.get("answers"), Head(ck, parent if isinstance(parent, str) else None,
                                                                           seq), size


def _checksum_kind(head: dict) -> str | None:
    c = head.get("checksum")
    if not isinstance(c, str):
        return None
    return CHECKSUM if c.startswith(CHECKSUM) else _OLD_CHECKSUM if c.startswith(_OLD_CHECKSUM) else None


def _head_crc(first: bytes, checksum: str) -> int:
    """The CRC-32 of a header line as it was when its checksum was computed (digits as zeros)."""
    return zlib.crc32(first.replace(b'"checksum":' + orjson.dumps(checksum),
                                    b'"checksum":"' + CHECKSUM.encode() + b'00000000"', 1))


@dataclass
class StateFile:
    """What a state file holds: its entries and header values, what it says of itself, its size."""

    entries: list[Entry]
    sample_rate: int | None
    answers: object
    head: Head
    size: int

    def state(self) -> State:
        """The state of this file alone (no journal replayed on top)."""
        return build_state(self.entries, self.sample_rate, self.answers)


def read_file(path: Path, decode: Callable[[object], list] = decode_entries) -> StateFile:
    """A state file as it is on disk: fast when its checksum holds, validated the long way otherwise.
    ``decode`` turns a chunk of entry lines into entries (see ``loader.read``'s ``view``)."""
    try:
        with open(path, "rb") as f:
            fast = _read_streamed(f, os.fstat(f.fileno()).st_size, decode)
        if fast is not None:
            return StateFile(*fast)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedState(f"no state in {path.parent} (create one with: statesvc init --texts FILE)") from None
    except OSError as exc:
        raise DamagedState(f"{path}: {exc.strerror}") from None
    return StateFile(*_read_file_bytes(raw, str(path)), len(raw))


def build_state(entries: list[Entry], sr: int | None, answers: object = None) -> State:
    """The state of a file's entries and header values (the journal's replayed on top, if any)."""
    if sr is None:
        sr = next((e.sample_rate for e in entries if e.status == "completed" and getattr(e, "sample_rate", None)),
                  None)
    state = State(entries, sample_rate=sr)
    if isinstance(answers, dict):  # the answers to recent add/edit requests, for resends
        state.answers = {k: v for k, v in answers.items() if isinstance(k, str) and isinstance(v, dict)}
    return state


# ---- writing ---------------------------------------------------------------
def header_values(state: State, head: Head) -> dict:
    """The header values of a checkpoint of ``state`` (counters for people; the rest for loading)."""
    return {"schema_version": SCHEMA_VERSION, "sample_rate": state.sample_rate, **state.counters(),
            "answers": dict(state.answers), "checkpoint": head.checkpoint, "parent": head.parent, "seq": head.seq}


def write_entries(entries: list[Entry], n: int, top: dict, fd: int) -> int:
    """Write the first ``n`` entries as a checkpoint file into ``fd``, a chunk at a time; its size."""
    placeholder = orjson.dumps({**top, "checksum": f"{CHECKSUM}00000000"})[:-1] + _OPEN
    at, crc, synced = len(placeholder), zlib.crc32(placeholder), 0
    for lo in range(0, n, _CHUNK):
        chunk = _SEP.join([_encode(e) for e in entries[lo:min(n, lo + _CHUNK)]])
        if lo:
            chunk = _SEP + chunk
        crc = zlib.crc32(chunk, crc)
        write_all(fd, chunk, at)
        at += len(chunk)
        if at - synced >= _WRITEBACK:
            # Flushed as it goes: on ext4 (data=ordered) a journal fdatasync commits the dirty data of
            # other files too, so tens of MB left dirty here stalled the commits behind it.
            os.fdatasync(fd)
            synced = at
    write_all(fd, _CLOSE, at)
    first = orjson.dumps({**top, "checksum": f"{CHECKSUM}{crc:08x}"})[:-1] + _OPEN
    write_all(fd, first, 0)  # the same length as the placeholder: the checksum is 8 hex digits
    return at + len(_CLOSE)


def render(state: State, head: Head, fd: int) -> int:
    """Write ``state`` as a checkpoint file into ``fd`` (streamed, a chunk at a time); returns its size."""
    return write_entries(state.entries, len(state.entries), header_values(state, head), fd)


def write_file(dataset: Path, state: State, head: Head) -> int:
    """Write ``state`` as the dataset's state file, durably (temp file, fsync, rename); returns its size."""
    size = 0

    def fill(fd: int) -> None:
        nonlocal size
        size = render(state, head, fd)
    write_atomic(state_path(dataset), fill)
    return size
