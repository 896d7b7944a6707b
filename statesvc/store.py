"""The state on disk: the checkpoint file, the journal beside it, one loader for both, the writer lock.

``generation_state.json`` is a checkpoint: the whole state, written to a temp file, fsynced,
renamed over the old one, and the folder fsynced. Between checkpoints each group commit is
appended to ``generation_state.journal`` (see ``journal``). Loading means the file, then the
journal's records replayed on top; every reader (the daemon, the CLI with no daemon, the
reconciler, the supervisor) loads through ``load``.

The file names itself: its header holds a random ``checkpoint`` id, the id its journal extended
(``parent``) and the last commit it holds (``seq``), and a CRC-32 of its entries. A journal
applies to the file whose id it names, or, after a crash between a checkpoint's rename and the
new journal's, to the file whose parent it names (its records after ``seq`` only). A file whose
checksum fails was changed by hand: alone it is loaded the long way, with full validation and a
warning naming it; with
a journal holding records, nobody can tell which wins, so loading refuses and names the two
commands that decide (``statesvc journal replay`` or ``discard``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import io
import logging
import os
import secrets
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
import orjson

from . import journal
from .atomic import OutcomeUnknown, SaveFailed, fsync_dir, write_all, write_atomic
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
from .journal import JOURNAL_FILE, Contents, Record, journal_path
from .state import State
from .texts import check_filename

STATE_FILE = "generation_state.json"
LOCK_FILE = "statesvc.lock"
log = logging.getLogger("statesvc")


class DamagedState(Exception):
    """The state on disk cannot be trusted or read; the message says why in one line."""


class JournalConflict(DamagedState):
    """The file was changed by hand while the journal holds commits made after it."""


def state_path(dataset: Path) -> Path:
    return dataset / STATE_FILE


@dataclass(frozen=True)
class Head:
    """What a checkpoint file says of itself; ``checkpoint`` is None for a file statesvc did not
    write as it is (a hand edit, an older layout)."""

    checkpoint: str | None = None
    parent: str | None = None
    seq: int = 0

    def takes(self, extends: str | None) -> bool:
        """Whether a journal extending ``extends`` applies to this file (its records after ``seq``)."""
        return self.checkpoint is not None and extends is not None and extends in (self.checkpoint, self.parent)


# ---- loading ---------------------------------------------------------------
_INT_FIELDS = ("id", "attempts")


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
_MAX_FD = os.sysconf("SC_OPEN_MAX") if "SC_OPEN_MAX" in os.sysconf_names else 65536


_encode = msgspec.json.Encoder().encode


def read_state(raw: bytes, where: str = STATE_FILE) -> tuple[State, Head]:
    """The state of a checkpoint file's bytes, and what the file says of itself."""
    entries, sr, answers, head = _read_file_bytes(raw, where)
    return _state(entries, sr, answers), head


def parse_state(raw: bytes, where: str = STATE_FILE) -> State:
    """Validate a state document and build the state, or raise DamagedState."""
    return read_state(raw, where)[0]


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
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


_decode_entries = msgspec.json.Decoder(list[Entry]).decode
_READ = 16 << 20  # bytes read at a time: a load never holds the whole file next to its entries


def _read_streamed(f: BinaryIO, total: int, decode: Callable[[object], list] = _decode_entries
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


def _read_path(path: Path, decode: Callable[[object], list] = _decode_entries
               ) -> tuple[list[Entry], int | None, object, Head, int]:
    """A checkpoint file's entries, header values and identity, and its size."""
    try:
        with open(path, "rb") as f:
            fast = _read_streamed(f, os.fstat(f.fileno()).st_size, decode)
        if fast is not None:
            return fast
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedState(f"no state in {path.parent} (create one with: statesvc init --texts FILE)") from None
    except OSError as exc:
        raise DamagedState(f"{path}: {exc.strerror}") from None
    return (*_read_file_bytes(raw, str(path)), len(raw))


def _state(entries: list[Entry], sr: int | None, answers: object = None) -> State:
    if sr is None:
        sr = next((e.sample_rate for e in entries if e.status == "completed" and getattr(e, "sample_rate", None)),
                  None)
    state = State(entries, sample_rate=sr)
    if isinstance(answers, dict):  # the answers to recent add/edit requests, for resends
        state.answers = {k: v for k, v in answers.items() if isinstance(k, str) and isinstance(v, dict)}
    return state


class Replay:
    """Applies journal records to ``entries`` in place, one at a time as they are read: whole
    entries replace theirs by id, new ones are appended; records up to ``after`` (already in the
    file) are skipped."""

    def __init__(self, entries: list[Entry], after: int = 0):
        self.entries, self.after = entries, after
        self.n = len(entries)
        self.at: dict[int, int] | None = None  # id -> index, built only for ids that are not dense
        self.sample_rate: int | None = None
        self.answers: dict | None = None
        self.applied = self.versions = 0

    def index(self, eid: int) -> int | None:
        """Where entry ``eid`` is. Ids are usually 1..n in order (init and add number them so):
        then no index of a million ids needs building."""
        i = eid - 1
        if 0 <= i < self.n and self.entries[i].id == eid:
            return i
        if self.at is None:
            self.at = {e.id: i for i, e in enumerate(self.entries)}
        return self.at.get(eid)

    def __call__(self, rec: Record) -> None:
        if rec.seq <= self.after:
            return
        entries, index = self.entries, self.index
        for e in rec.entries:
            i = index(e.id)
            if i is None:
                if self.at is not None:
                    self.at[e.id] = len(entries)
                entries.append(e)
            else:
                entries[i] = e
        for eid, token, owner, deadline, phase, updated in rec.claims:
            i = index(eid)
            if i is not None:
                e = entries[i]
                e.status, e.lease, e.updated_at = Status.GENERATING, Lease(token, owner, deadline, phase), updated
        for eid, token, deadline, phase in rec.leases:
            i = index(eid)
            lease = entries[i].lease if i is not None else None
            if lease is not None and lease.token == token:  # the same lease: a later one is left alone
                lease.deadline, lease.phase = deadline, phase
        self.sample_rate = rec.sample_rate if rec.sample_rate is not None else self.sample_rate
        self.answers = rec.answers if rec.answers is not None else self.answers
        self.applied += 1
        self.versions += len(rec.entries)


@dataclass
class Loaded:
    state: State
    head: Head
    journal: Contents
    replayed: int  # records applied on top of the file
    file_bytes: int


def _conflict(dataset: Path, j: Contents) -> JournalConflict:
    return JournalConflict(
        f"{state_path(dataset)} was changed (by hand, or replaced) while {JOURNAL_FILE} holds {j.count} "
        f"commits made after the file it extends; nothing was touched. Apply them onto the file: "
        f"statesvc journal replay --dataset {dataset}; or drop them (kept aside): "
        f"statesvc journal discard --dataset {dataset}")


def damaged(dataset: Path, j: Contents, head: Head) -> DamagedState:
    """The one-line refusal of a damaged journal: the file, the first damaged record, the way out."""
    fix = ""
    if j.extends is None and head.checkpoint is not None:  # its header: the records after it may be whole
        fix = f"; or first repair line 1 by hand to read {journal.header(head.checkpoint).decode().strip()}"
    return DamagedState(
        f"{journal_path(dataset)}: {j.damage} is damaged, and a crash tears only the last record (the disk "
        f"or a hand changed it); nothing was touched. Keep a copy of the folder, then apply the {j.count} "
        f"whole records before it (the journal is kept aside): statesvc journal replay --up-to-damage "
        f"--dataset {dataset}{fix}")


def read(dataset: Path, view: type | None = None) -> Loaded:
    """The state: the file, then the journal's records replayed on top, as they are read.

    ``view``: a Struct type with some of Entry's fields, for a reader that shows entries and never
    writes them (the dashboard): the file's entries are decoded into it, so the fields it lacks
    are never allocated (a hundred megabytes at a million). Journal records stay Entries."""
    decode = _decode_entries if view is None else msgspec.json.Decoder(list[view]).decode
    with _no_gc():
        for attempt in range(4):
            entries, sr, answers, head, size = _read_path(state_path(dataset), decode)
            extends = journal.extends_of(dataset)
            rp = Replay(entries, head.seq) if head.takes(extends) else None
            try:
                j = journal.read(dataset, rp)
            except OSError as exc:
                raise DamagedState(f"{journal_path(dataset)}: {exc.strerror}") from None
            if j.damaged:
                raise damaged(dataset, j, head)
            if j.extends == extends and (rp is not None or not j.count):
                break
            # A checkpoint may have swapped the file and the journal between our reads.
            if attempt == 3 or holder_info(dataset) is None:
                raise _conflict(dataset, j)
            time.sleep(0.05 * (attempt + 1))
        if rp is not None and rp.applied:
            sr = rp.sample_rate or sr
            answers = rp.answers if rp.answers is not None else answers
        if head.checkpoint is None:
            log.warning("%s: its checksum does not match (edited by hand, or written by an older statesvc): "
                        "loaded as a hand edit, every entry validated", state_path(dataset))
        return Loaded(_state(entries, sr, answers), head, j, rp.applied if rp else 0, size)


def load(dataset: Path) -> State:
    """The state, for reading: the file and its journal."""
    return read(dataset).state


def load_for_writing(dataset: Path) -> tuple[State, Store]:
    """The state and the Store that commits to it. Call only under the writer lock: a torn
    journal tail is cut off, and a file with no usable journal gets a fresh one."""
    loaded = read(dataset)
    return loaded.state, Store.open(dataset, loaded)


# ---- writing ---------------------------------------------------------------
def _top(state: State, head: Head) -> dict:
    """The header values of a checkpoint of ``state`` (counters for people; the rest for loading)."""
    return {"schema_version": SCHEMA_VERSION, "sample_rate": state.sample_rate, **state.counters(),
            "answers": dict(state.answers), "checkpoint": head.checkpoint, "parent": head.parent, "seq": head.seq}


def _render(entries: list[Entry], n: int, top: dict, fd: int) -> int:
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
    return _render(state.entries, len(state.entries), _top(state, head), fd)


def render_bytes(state: State, head: Head = Head("0" * 16)) -> bytes:
    """A checkpoint file's bytes (tests, small states)."""
    import tempfile
    with tempfile.TemporaryFile() as f:
        n = render(state, head, f.fileno())
        return os.pread(f.fileno(), n, 0)


def _write_checkpoint(dataset: Path, state: State, head: Head) -> int:
    size = 0

    def fill(fd: int) -> None:
        nonlocal size
        size = render(state, head, fd)
    write_atomic(state_path(dataset), fill)
    return size


class Checkpointing:
    """A checkpoint being written while the daemon goes on committing to the journal.

    A forked child writes the file from its copy of the state as it was when the checkpoint began
    (after a commit; if anything applied was not yet committed, each such change is also in a
    later journal record, replayed on top, so file plus journal still load exactly). It must not
    hold a change that is later refused, so once the file is written (``encoded``) the thread
    waits for ``go``: the daemon gives it after a successful commit, when every change the file
    can hold is committed (or at once when nothing is uncommitted); a failed commit cancels it
    instead. Then a thread of the daemon renames the file into place, fsyncs the folder (the old journal
    still applies: it names the new file's parent), and prepares the new journal with the
    records committed since ``seq``. The daemon's loop is left only the swap (``Store.finish``):
    the last few records, the rename and one folder fsync."""

    def __init__(self, dataset: Path, state: State, head: Head, journal_at: int, durable: Callable[[], int]):
        self.dataset, self.head, self.journal_at, self.durable = dataset, head, journal_at, durable
        self.path = state_path(dataset)
        self.tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        self.jtmp = journal_path(dataset).with_name(f".{JOURNAL_FILE}.{os.getpid()}.tmp")
        self.size = 0
        self.error: str | None = None
        self.renamed = False
        self.jfd: int | None = None   # the new journal, written up to jlen, holding the old one's up to copied
        self.jlen = self.copied = 0
        self.encoded, self.go = threading.Event(), threading.Event()
        self.cancelled = False
        self.started = time.monotonic()
        self._args = (state.entries, len(state.entries), _top(state, head))
        # The file is written by a forked child: a copy-on-write snapshot of the state at this
        # commit, encoded without taking the daemon's GIL (Redis's BGSAVE). A thread waits for it.
        self._pipe, w = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            _die_with(parent)
            self._child(w)
        os.close(w)
        self._args = None
        self.thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self.thread.start()

    def _child(self, w: int) -> None:
        """In the forked child: write the file, report its size (or why not) and exit at once."""
        code = 1
        try:
            # Only the pipe is kept: an inherited descriptor of the writer lock would keep the
            # dataset locked after the daemon died, until this child exits (zmq's are not ours).
            os.closerange(3, w)
            os.closerange(w + 1, _MAX_FD)
            self._write()
            os.write(w, b"%d" % self.size)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the daemon, never raised in a fork
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            try:
                os.write(w, b"!" + why.encode(errors="replace")[:500])
            except OSError:
                pass
        finally:
            os._exit(code)

    def _wait_child(self) -> None:
        out = b""
        while chunk := os.read(self._pipe, 4096):
            out += chunk
        os.close(self._pipe)
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not out or out.startswith(b"!"):
            why = out[1:].decode(errors="replace") if out.startswith(b"!") else f"writer exited ({status})"
            raise OSError(0, f"writing {self.tmp.name}: {why}")
        self.size = int(out)

    def _run(self) -> None:
        try:
            self._wait_child()
            self.encoded.set()
            self.go.wait()
            if self.cancelled:
                return
            self._put_in_place()
            self._prepare_journal()
        except OSError as exc:
            self.error = f"checkpoint: {exc.strerror or exc}"

    def _write(self) -> None:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self.size = _render(*self._args, fd)
            os.fsync(fd)  # a failed fsync is never retried: this temp file is dropped
        finally:
            os.close(fd)
            self._args = None

    def _put_in_place(self) -> None:
        os.replace(self.tmp, self.path)
        self.renamed = True
        fsync_dir(self.dataset)  # failing, either file may survive: the old journal applies to both

    def _prepare_journal(self) -> None:
        self.copied = self.durable()  # records before it are acknowledged: never cut off again
        data = journal.header(self.head.checkpoint) + journal.tail(self.dataset, self.journal_at, self.copied)
        self.jfd = os.open(self.jtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        write_all(self.jfd, data, 0)
        os.fsync(self.jfd)
        self.jlen = len(data)

    def release(self) -> None:
        """Everything the file can hold is committed: let the thread put it in place."""
        if self.encoded.is_set():
            self.go.set()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def cancel(self) -> None:
        self.cancelled = True
        try:
            os.kill(self.pid, signal.SIGKILL)  # reaped by the thread
        except OSError:
            pass
        self.go.set()
        self.thread.join()
        self.cleanup()

    def cleanup(self) -> None:
        if self.jfd is not None:
            os.close(self.jfd)
            self.jfd = None
        _unlink_quietly(self.jtmp)
        if not self.renamed:
            _unlink_quietly(self.tmp)


def _die_with(parent: int) -> None:
    """In a forked child: be killed when the daemon dies, not left writing on its own."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Store:
    """The writer's side of the state on disk: commits appended to the journal, checkpoints.

    ``extends`` is the checkpoint the open journal extends: a checkpoint names it as its
    parent, so a crash between the checkpoint's rename and the new journal's leaves a pair
    that still loads."""

    def __init__(self, dataset: Path, writer: journal.Writer | None, extends: str | None, seq: int,
                 file_bytes: int):
        self.dataset = dataset
        self.writer = writer
        self.extends = extends
        self.seq = seq
        self.file_bytes = file_bytes
        self.checkpoint_seq = seq  # the last commit the file holds: the journal holds the ones after
        self.checkpoints = 0
        self.replayed = self.torn = 0  # what opening found: commits replayed, bytes of a torn tail cut
        self.torn_kept: Path | None = None  # where those bytes were kept
        self.job: Checkpointing | None = None
        self.last_checkpoint_seconds = 0.0
        self.bytes_written = 0  # journal records and checkpoints, for the operator

    @classmethod
    def open(cls, dataset: Path, loaded: Loaded) -> Store:
        j, head = loaded.journal, loaded.head
        store = cls(dataset, None, None, max(head.seq, j.last_seq), loaded.file_bytes)
        store.replayed, store.torn = loaded.replayed, j.torn
        if j.damaged:  # ``read`` refuses it: never start a journal over one
            raise damaged(dataset, j, head)
        if j.torn and not head.takes(j.extends):  # about to be replaced: its bytes are kept all the same
            store.torn_kept = journal.keep_tail(dataset, j.good_length)
        if head.checkpoint is None:  # a hand-edited or older file: make it a checkpoint of ours
            store.checkpoint(loaded.state)
            return store
        if head.takes(j.extends):  # the journal goes on (a rollback reopens it: nothing to write)
            if j.torn:  # unacknowledged: a crash mid-append
                store.torn_kept = journal.cut(dataset, j.good_length)
            store.writer, store.extends = journal.Writer(dataset, j.good_length), j.extends
            if j.count:
                store.checkpoint_seq = head.seq
        else:  # none yet, or a stale one without records (its file was replaced by a checkpoint)
            store._new_journal(head.checkpoint)
        return store

    @property
    def journal_bytes(self) -> int:
        return self.writer.length if self.writer else 0

    def commit(self, state: State) -> list[Entry]:
        """Append what changed since the last commit, durably; returns the entries it wrote.
        Raises SaveFailed (nothing of it will load) or OutcomeUnknown (it may)."""
        # Added entries have the highest ids, in the order they were appended: sorted by id, a
        # replay appends them in the file's order (the others are replaced where they are).
        ids = sorted(state.dirty)
        claims = [(i, (e := state.by_id[i]).lease.token, e.lease.owner, e.lease.deadline, e.lease.phase,
                   e.updated_at) for i in sorted(state.claimed)]
        leases = [(i, lease.token, lease.deadline, lease.phase) for i in state.lease_dirty - state.dirty
                  if (lease := state.by_id[i].lease) is not None]
        rec = Record(self.seq + 1, [state.by_id[i] for i in ids if i not in state.claimed], claims, leases,
                     state.sample_rate, state.answers if state.answers_dirty else None)
        line = journal.encode(rec)
        self.writer.append(line)
        self.seq += 1
        self.bytes_written += len(line)
        written = rec.entries + [state.by_id[c[0]] for c in claims]
        state.dirty.clear()
        state.lease_dirty.clear()
        state.claimed.clear()
        state.answers_dirty = False
        state.unsaved = False
        return written

    def checkpoint(self, state: State) -> None:
        """Write the whole state as the new file, then start a fresh journal extending it (call
        when everything applied is committed). Raises as ``finish`` does."""
        self.begin(state)
        self.complete()

    def complete(self) -> None:
        """Wait for the checkpoint being written and put it in place (nothing may be uncommitted)."""
        job = self.job
        while not job.encoded.wait(0.05) and job.thread.is_alive():
            pass
        job.release()
        job.thread.join()
        self.finish()

    def begin(self, state: State) -> None:
        """Start writing a checkpoint in a thread (see Checkpointing); ``finish`` puts it in place."""
        self.job = Checkpointing(self.dataset, state, Head(secrets.token_hex(8), self.extends, self.seq),
                                 self.journal_bytes, lambda: self.journal_bytes)

    def finish(self) -> None:
        """Swap in the journal the checkpoint thread prepared, once it is done: the records
        committed since it copied them, fdatasync, rename, folder fsync. A failure before the
        rename changes nothing that loads (the old journal extends the new file as its parent):
        SaveFailed. OutcomeUnknown only when the new journal's rename may not survive."""
        job, self.job = self.job, None
        try:
            if job.error:
                raise SaveFailed(job.error)
            if job.renamed:
                self.file_bytes = job.size
                self.bytes_written += job.size
            try:  # the records committed since the thread copied them
                delta = journal.tail(self.dataset, job.copied, self.journal_bytes) if self.writer else b""
                if delta:
                    write_all(job.jfd, delta, job.jlen)
                    os.fdatasync(job.jfd)
                os.replace(job.jtmp, journal_path(self.dataset))
            except OSError as exc:  # the old journal stays: it extends the new file as its parent
                raise SaveFailed(f"starting a new {JOURNAL_FILE}: {exc.strerror}") from None
        finally:
            job.cleanup()
        try:
            fsync_dir(self.dataset)
        except OSError as exc:
            raise OutcomeUnknown(f"fsync of {self.dataset} after the new journal's rename: {exc.strerror}") from None
        if self.writer is not None:
            self.writer.close()
        self.writer, self.extends = journal.Writer(self.dataset, job.jlen + len(delta)), job.head.checkpoint
        self.bytes_written += job.jlen + len(delta)
        self.checkpoint_seq = job.head.seq
        self.checkpoints += 1
        self.last_checkpoint_seconds = time.monotonic() - job.started

    def release(self) -> None:
        """Everything applied is committed: a checkpoint written meanwhile may go in place."""
        if self.job is not None:
            self.job.release()

    def abort(self) -> None:
        """Drop a checkpoint being written (a commit failed: it may hold what was refused)."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()

    def _new_journal(self, ck: str, tail: bytes = b"") -> None:
        length = journal.start(self.dataset, ck, tail)
        if self.writer is not None:
            self.writer.close()
        self.writer, self.extends = journal.Writer(self.dataset, length), ck
        self.bytes_written += length

    def close(self) -> None:
        self.abort()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def remove_stale_temps(dataset: Path) -> list[str]:
    """Temp copies left by a writer killed mid-save. Call only under the writer lock."""
    removed = []
    for pattern in (f".{STATE_FILE}.*.tmp", f".{JOURNAL_FILE}.*.tmp"):
        for tmp in dataset.glob(pattern):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass
    return removed


def create(dataset: Path, state: State) -> None:
    """Write a new state file (and no journal); refuse when one exists. A journal left without
    its file (the file deleted by hand) is moved aside, never applied to the new one."""
    if state_path(dataset).exists():
        raise FileExistsError(state_path(dataset))
    old = journal_path(dataset)
    if old.exists():
        os.replace(old, journal.aside(dataset, "orphaned"))
    _write_checkpoint(dataset, state, Head(secrets.token_hex(8), None, 0))
    state.dirty.clear()
    state.unsaved = False


# ---- the journal's two ways out of a conflict --------------------------------
@dataclass
class Replayed:
    """What ``statesvc journal replay`` did."""

    applied: int            # records applied
    versions: int           # entry versions they held
    kept: Path | None = None  # where a damaged journal was kept
    lost: list[Record] = field(default_factory=list)  # whole records after the damage: not applied


def replay_journal(dataset: Path, up_to_damage: bool = False) -> Replayed:
    """Apply every record of the journal onto the file as it is now, and make that a checkpoint.
    A damaged journal is refused, or with ``up_to_damage`` its whole records before the damage
    are applied, the journal kept aside (a hard link, never overwritten) and the whole records
    after it listed. Call only under the writer lock."""
    with _no_gc():
        entries, sr, answers, head, size = _read_path(state_path(dataset))
        rp = Replay(entries, head.seq if head.takes(journal.extends_of(dataset)) else 0)
        j = journal.read(dataset, rp)
        state = _state(entries, rp.sample_rate or sr, rp.answers if rp.answers is not None else answers)
    done = Replayed(rp.applied, rp.versions)
    if j.damaged:
        if not up_to_damage:
            raise damaged(dataset, j, head)
        done.lost = [r for r in journal.after_damage(dataset, j) if r.seq > rp.after]
        done.kept = journal.aside(dataset, "damaged")
        try:
            os.link(journal_path(dataset), done.kept)  # the checkpoint's new journal then replaces the name only
        except OSError:  # a filesystem without hard links: a durable copy
            write_atomic(done.kept, journal_path(dataset).read_bytes())
        fsync_dir(dataset)
    store = Store(dataset, None, None, max(head.seq, j.last_seq), size)
    store.checkpoint(state)
    store.close()
    return done


def discard_journal(dataset: Path) -> tuple[int, Path | None]:
    """Move the journal aside (nothing is deleted); the file alone is the state again.
    Returns (records it held, where it went). Call only under the writer lock."""
    path = journal_path(dataset)
    if not path.exists():
        return 0, None
    j = journal.read(dataset)
    n = j.count + (len(journal.after_damage(dataset, j)) if j.damaged else 0)  # whole records, damage or not
    aside = journal.aside(dataset, "discarded")
    os.replace(path, aside)
    fsync_dir(dataset)
    return n, aside


# ---- the writer lock -------------------------------------------------------
class Locked(Exception):
    """Another process holds the dataset's writer lock; the message names it."""


class WriterLock:
    """An flock on DIR/statesvc.lock; the kernel drops it when the holder dies."""

    def __init__(self, dataset: Path):
        self.path = dataset / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, info: str, wait: float = 1.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                # A reader probes with a shared lock for an instant; only a holder
                # that keeps it past the wait is a real writer.
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise Locked(holder_info(self.path.parent) or "another process") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder_info(dataset: Path) -> str | None:
    """What the running writer wrote into the lock file, or None when nobody holds it."""
    path = dataset / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a process"
        return None
    finally:
        os.close(fd)
