"""The state file on disk: loading and validating it, saving it atomically, the writer lock.

The save writes a temp file in the same folder, fsyncs it, renames it over the
state and fsyncs the folder. Entries are serialized once and cached; a save
re-serializes only the entries that changed and splices the cached bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from .atomic import write_atomic
from .state import SCHEMA_VERSION, STATUS_OF, STATUSES, Entry, Lease, Phase, State
from .texts import check_filename

STATE_FILE = "generation_state.json"
LOCK_FILE = "statesvc.lock"


class DamagedState(Exception):
    """The state file cannot be trusted; the message says why in one line."""


def state_path(dataset: Path) -> Path:
    return dataset / STATE_FILE


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
    e = Entry(eid, fname, text, STATUS_OF[status], None if dur is None else float(dur), sr, attempts, err,
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
    return e


def parse_state(raw: bytes, where: str = STATE_FILE) -> State:
    """Validate a state document and build the state, or raise DamagedState."""
    return read_state(raw, where)[0]


def read_state(raw: bytes, where: str = STATE_FILE) -> tuple[State, list | None]:
    """Build the state from a document; also its entry blocks when the checksum proves statesvc wrote them.

    A file whose checksum matches is exactly what a save of validated entries produced, so its
    entries are built without re-validating each field and its bytes become the save cache.
    Anything else (a hand edit, an older file) goes through full validation.
    """
    with _no_gc():
        return _read(raw, where)


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Creating a million long-lived objects with the cyclic GC on makes it walk them again and
    again (a 1M-entry load took 2.2 s instead of 0.4 s to build its entries)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read(raw: bytes, where: str) -> tuple[State, list | None]:
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
    return _state(entries, sr, doc.get("answers")), None


def _state(entries: list[Entry], sr: int | None, answers: object = None) -> State:
    if sr is None:
        sr = next((e.sample_rate for e in entries if e.status == "completed" and e.sample_rate), None)
    state = State(entries, sample_rate=sr)
    if isinstance(answers, dict):  # the answers to recent add/edit requests, for resends
        state.answers = {k: v for k, v in answers.items() if isinstance(k, str) and isinstance(v, dict)}
    return state


def load(dataset: Path) -> State:
    """The state, for reading: no save cache is built (a hand-edited file would cost one)."""
    return _read_file(dataset)[0]


def load_for_writing(dataset: Path) -> tuple[State, Store]:
    """The state and a Store that reuses the file's own bytes for entries that have not changed."""
    state, blocks = _read_file(dataset)
    return state, Store(dataset, state, blocks)


def _read_file(dataset: Path) -> tuple[State, list | None]:
    path = state_path(dataset)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedState(f"no state in {dataset} (create one with: statesvc init --texts FILE)") from None
    except OSError as exc:
        raise DamagedState(f"{path}: {exc.strerror}") from None
    return read_state(raw, str(path))


# ---- the file's layout -----------------------------------------------------
# A saved file is one header line, then one entry per line (lines joined by ",\n"),
# then "\n]}\n". orjson never writes a raw newline inside a value, so every newline of
# the body separates two entries. The header's "checksum" is the CRC-32 of the
# big-endian CRC-32s of each run of BLOCK entry lines (joined by ",\n"): a save
# recomputes only the CRCs of the blocks it changed.
BLOCK = 1024
CHECKSUM = "crc32-blocks-1024:"
_OPEN = b',"entries":[\n'
_CLOSE = b"\n]}\n"
_SEP = b",\n"


def _checksum(crcs: list[int]) -> str:
    return f"{CHECKSUM}{zlib.crc32(b''.join(c.to_bytes(4, 'big') for c in crcs)):08x}"


def _read_checked(raw: bytes) -> tuple[State, list] | None:
    """The fast path of read_state, or None when the file is not a checksummed statesvc save."""
    nl = raw.find(b"\n")
    if nl < 0 or not raw[:nl + 1].endswith(_OPEN) or not raw.endswith(_CLOSE):
        return None
    try:
        head = orjson.loads(raw[:nl + 1 - len(_OPEN)] + b"}")
    except orjson.JSONDecodeError:
        return None
    want = head.get("checksum")
    if not isinstance(want, str) or head.get("schema_version") != SCHEMA_VERSION:
        return None
    lo, hi = nl + 1, len(raw) - len(_CLOSE)
    if lo >= hi:
        return (_state([], head.get("sample_rate")), []) if want == _checksum([]) else None
    view = memoryview(raw)
    blocks, crcs, start, find = [], [], lo, raw.find
    while start < hi:
        end = start - 1
        for _ in range(BLOCK):  # the block ends before its BLOCK-th newline (",\n" separates blocks)
            end = find(b"\n", end + 1, hi)
            if end < 0:
                end = hi + 1  # the last block runs to the end of the body
                break
        blocks.append(view[start:end - 1])
        crcs.append(zlib.crc32(blocks[-1]))
        start = end + 1
    if _checksum(crcs) != want:
        return None
    entries = _entries_of(blocks)
    if entries is None:
        return None  # a forged checksum: validate the long way and say what is wrong
    state = _state(entries, head.get("sample_rate"), head.get("answers"))
    if len(state.by_id) != len(entries) or len(state.by_name) != len(entries):
        return None  # cannot happen for a statesvc save; validate the long way and say why
    return state, list(zip(blocks, crcs, strict=True))


def _entries_of(blocks: list) -> list[Entry] | None:
    entries: list[Entry] = []
    try:
        for blk in blocks:
            # A checksummed line is Entry.to_dict(): twelve values in Entry's field order, then
            # "lease" and "suspect" only when set. Entry(*values) skips a lookup per field.
            entries.extend([Entry(*d.values()) if len(d) == 12 else _entry_of(d)
                            for d in orjson.loads(b"[" + blk + b"]")])
        for e in entries:
            e.status = STATUS_OF[e.status]  # one shared enumeration member per status, not a string each
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return entries


def _entry_of(d: dict) -> Entry:
    e = Entry(d["id"], d["filename"], d["text"], d["status"], d["duration_seconds"], d["sample_rate"],
              d["attempts"], d["error"], d["updated_at"], d["text_hash"], d["rev"], d["take"])
    lease = d.get("lease")
    if lease is not None:
        e.lease = Lease(lease["token"], lease["owner"], lease["deadline"], Phase(lease["phase"]))
    e.suspect = d.get("suspect") is True
    return e


# ---- saving ----------------------------------------------------------------
def _dumps(e: Entry) -> bytes:
    # orjson's result holds a 4 KiB allocation whatever its length; a copy kept for
    # later (the events of a commit) holds only its bytes: 390 MB less after a 100k requeue.
    return bytes(memoryview(orjson.dumps(e.to_dict())))


class Store:
    """Serializes a state into the file's layout, reusing the bytes of unchanged entries.

    The bytes are kept per block of BLOCK entries (at first, views of the file as loaded);
    a save re-serializes the changed entries, splices them into their blocks and writes
    every block with writev, without joining the whole file in memory.
    """

    def __init__(self, dataset: Path, state: State, blocks: list | None = None):
        self.dataset = dataset
        self.path = state_path(dataset)
        if blocks is None:
            blocks = []
            for lo in range(0, len(state.entries), BLOCK):
                blk = _SEP.join(_dumps(e) for e in state.entries[lo:lo + BLOCK])
                blocks.append((blk, zlib.crc32(blk)))
            state.dirty.clear()
        self._blocks: list = [b for b, _ in blocks]
        self._crcs: list[int] = [c for _, c in blocks]
        self._views = sum(isinstance(b, memoryview) for b in self._blocks)  # blocks still in the loaded file
        self.fresh: dict[int, bytes] = {}  # entry id -> its line, for the entries the last render changed

    def render_parts(self, state: State) -> list:
        """The file as a list of buffers; brings the cached blocks up to date with the state."""
        n = len(state.entries)
        self.fresh = fresh = {}
        todo: dict[int, list[int]] = {b: [] for b in range(len(self._blocks), (n + BLOCK - 1) // BLOCK)}
        for eid in state.dirty:
            i = state.index_of[eid]
            todo.setdefault(i // BLOCK, []).append(i)
        state.dirty.clear()
        for b, changed in todo.items():
            lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
            lines = bytes(self._blocks[b]).split(_SEP) if b < len(self._blocks) else []
            lines.extend(_dumps(state.entries[i]) for i in range(lo + len(lines), hi))  # added entries
            for i in changed:
                e = state.entries[i]
                lines[i - lo] = fresh[e.id] = _dumps(e)
            blk = _SEP.join(lines)
            if b < len(self._blocks):
                self._views -= isinstance(self._blocks[b], memoryview)
                self._blocks[b], self._crcs[b] = blk, zlib.crc32(blk)
            else:
                self._blocks.append(blk)
                self._crcs.append(zlib.crc32(blk))
        if 0 < self._views < len(self._blocks) // 2:  # copy the few left so the loaded file can be freed
            self._blocks = [bytes(b) for b in self._blocks]
            self._views = 0
        head = orjson.dumps({"schema_version": SCHEMA_VERSION, "sample_rate": state.sample_rate,
                             **state.counters(), "answers": state.answers, "checksum": _checksum(self._crcs)})
        parts = [head[:-1], _OPEN]
        for blk in self._blocks:
            parts += (blk, _SEP)
        if self._blocks:
            parts.pop()
        parts.append(_CLOSE)
        return parts

    def render(self, state: State) -> bytes:
        return b"".join(self.render_parts(state))

    def save(self, state: State) -> None:
        """Write the state durably, or raise SaveFailed leaving the old file intact."""
        write_atomic(self.path, self.render_parts(state))
        state.unsaved = False


def remove_stale_temps(dataset: Path) -> list[str]:
    """Temp copies of the state left by a writer killed mid-save. Call only under the writer lock."""
    removed = []
    for tmp in dataset.glob(f".{STATE_FILE}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp.name)
        except OSError:
            pass
    return removed


def create(dataset: Path, state: State) -> None:
    """Write a new state file; refuse when one exists."""
    if state_path(dataset).exists():
        raise FileExistsError(state_path(dataset))
    Store(dataset, state).save(state)


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
