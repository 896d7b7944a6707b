"""The state file on disk: loading and validating it, saving it atomically, the writer lock.

The save writes a temp file in the same folder, fsyncs it, renames it over the
state and fsyncs the folder. Entries are serialized once and cached; a save
re-serializes only the entries that changed and splices the cached bytes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import orjson

from .state import SCHEMA_VERSION, STATUSES, Entry, State
from .texts import check_filename

STATE_FILE = "generation_state.json"
LOCK_FILE = "statesvc.lock"


class DamagedState(Exception):
    """The state file cannot be trusted; the message says why in one line."""


class SaveFailed(Exception):
    """A save did not complete; the old file is intact."""


class OutcomeUnknown(SaveFailed):
    """The rename happened but the folder fsync failed: the save may or may not survive."""


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
    e = Entry(eid, fname, text, status, None if dur is None else float(dur), sr, attempts, err,
              obj.get("updated_at") if isinstance(obj.get("updated_at"), str) else None)
    lease = obj.get("lease")
    if status == "generating" and isinstance(lease, dict) and isinstance(lease.get("token"), str):
        e.lease_token = lease["token"]
        e.lease_owner = str(lease.get("owner"))
        d = lease.get("deadline")
        e.lease_deadline = float(d) if isinstance(d, (int, float)) else None
    e.requeued = obj.get("requeued") is True
    return e


def parse_state(raw: bytes, where: str = STATE_FILE) -> State:
    """Validate a state document and build the state, or raise DamagedState."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DamagedState(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise DamagedState(f"{where} has no 'entries' list")
    schema = doc.get("schema_version", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
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
    if sr is None:
        sr = next((e.sample_rate for e in entries if e.status == "completed" and e.sample_rate), None)
    return State(entries, sample_rate=sr)


def load(dataset: Path) -> State:
    path = state_path(dataset)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DamagedState(f"no state in {dataset} (create one with: statesvc init --texts FILE)") from None
    except OSError as exc:
        raise DamagedState(f"{path}: {exc.strerror}") from None
    return parse_state(raw, str(path))


# ---- saving ----------------------------------------------------------------
def _dumps(e: Entry) -> bytes:
    return orjson.dumps(e.to_dict())


BLOCK = 1024


class Store:
    """Serializes a state into bytes, reusing the bytes of unchanged entries.

    Entries are cached one by one and joined in blocks of BLOCK; a save re-serializes
    the changed entries and re-joins only their blocks.
    """

    def __init__(self, dataset: Path, state: State):
        self.dataset = dataset
        self.path = state_path(dataset)
        self._parts = [_dumps(e) for e in state.entries]
        self._blocks: list[bytes | None] = [None] * (len(self._parts) // BLOCK + 1)

    def render(self, state: State) -> bytes:
        parts, blocks = self._parts, self._blocks
        if len(parts) < len(state.entries):
            parts.extend(b"" for _ in range(len(state.entries) - len(parts)))
            blocks.extend(None for _ in range(len(parts) // BLOCK + 1 - len(blocks)))  # added: dirty
        for eid in state.dirty:
            i = state.index_of[eid]
            parts[i] = _dumps(state.entries[i])
            blocks[i // BLOCK] = None
        state.dirty.clear()
        for b, block in enumerate(blocks):
            if block is None:
                blocks[b] = b",\n".join(parts[b * BLOCK:(b + 1) * BLOCK])
        head = orjson.dumps({"schema_version": SCHEMA_VERSION, "sample_rate": state.sample_rate,
                             **state.counters()})
        body = b",\n".join(b for b in blocks if b)
        return b"".join((head[:-1], b',"entries":[\n', body, b"\n]}\n"))

    def save(self, state: State) -> None:
        """Write the state durably, or raise SaveFailed leaving the old file intact."""
        write_atomic(self.path, self.render(state))
        state.unsaved = False


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SaveFailed(f"cannot create {tmp.name}: {exc.strerror}") from None
    try:
        try:
            write_all(fd, data)
            # A failed fsync is never retried on this descriptor: the kernel may have
            # dropped the dirty pages and would report success the second time.
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise SaveFailed(f"saving {path.name}: {exc.strerror or exc}") from None
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise OutcomeUnknown(f"fsync of {path.parent} failed after rename: {exc.strerror}") from None


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte is written (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
