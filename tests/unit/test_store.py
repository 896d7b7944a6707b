"""The commit path under faults: a failed append is cut off and refused, a failed checkpoint loses nothing."""

from __future__ import annotations

import errno
import os
import threading
import time
import zlib
from pathlib import Path

import orjson
import pytest

from statesvc import codec, store
from statesvc.atomic import OutcomeUnknown, SaveFailed, write_atomic
from statesvc.client import Client, ServiceError
from statesvc.codec import DamagedState, read_file
from statesvc.daemon import Daemon
from statesvc.entry import Entry
from statesvc.layout import STATE_FILE
from statesvc.loader import Loaded, load, read
from statesvc.protocol import ErrorKind
from statesvc.state import State
from tests.support.books import take
from tests.support.processes import wait_for

STEPS = ["open", "write", "fsync", "replace", "fsync_dir"]  # of a checkpoint (temp, rename, folder)


def new_state(ds: Path, n: int = 5) -> State:
    (ds / "wavs").mkdir(parents=True)
    s = State([Entry.make(i, f"u_{i:03d}", f"t{i}") for i in range(1, n + 1)])
    store.create(ds, s)
    s, st = store.load_for_writing(ds)  # and its first journal, as a daemon starting would
    st.close()
    return s


def load_bytes(folder: Path, raw: bytes) -> Loaded:
    """``raw`` as the state file of a dataset of its own (no journal), loaded as every reader loads it."""
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(raw)
    return read(folder)


def file_alone(ds: Path) -> State:
    """The state ``ds``'s checkpoint file holds alone, without its journal."""
    return read_file(ds / STATE_FILE).state()


class Faults:
    """Fail one step of a checkpoint or an append with ``err``, ``times`` times (0 = for ever),
    after letting ``skip`` of them pass. ``events`` records each fsync, fdatasync and close."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: str, err: int, times: int = 1, skip: int = 0):
        self.step, self.err, self.left, self.skip = step, err, times if times else 10**9, skip
        self.events: list[tuple[str, int]] = []
        self.real = {n: getattr(os, n) for n in ("open", "write", "writev", "pwrite", "replace", "fsync",
                                                 "fdatasync", "ftruncate", "close")}
        for name, as_step in (("open", "open"), ("write", "write"), ("writev", "write"), ("pwrite", "write"),
                              ("replace", "replace"), ("ftruncate", "ftruncate")):
            monkeypatch.setattr(os, name, self._failing(name, as_step))
        monkeypatch.setattr(os, "fsync", self._sync("fsync"))
        monkeypatch.setattr(os, "fdatasync", self._sync("fdatasync"))
        monkeypatch.setattr(os, "close", self._close)

    def _hit(self, name: str) -> bool:
        if name != self.step or self.left <= 0:
            return False
        if self.skip:
            self.skip -= 1
            return False
        self.left -= 1
        return True

    def _failing(self, name: str, as_step: str):
        def wrapped(*a, **kw):
            if (as_step != "open" or str(a[0]).endswith(".tmp")) and self._hit(as_step):
                raise OSError(self.err, os.strerror(self.err))
            return self.real[name](*a, **kw)
        return wrapped

    def _sync(self, name: str):
        def wrapped(fd: int) -> None:
            self.events.append((name, fd))
            kind = "fsync_dir" if name == "fsync" and os.path.isdir(f"/proc/self/fd/{fd}") else name
            if self._hit(kind):
                raise OSError(self.err, os.strerror(self.err))
            return self.real[name](fd)
        return wrapped

    def _close(self, fd: int) -> None:
        self.events.append(("close", fd))
        return self.real["close"](fd)


def journal_bytes(ds: Path) -> bytes:
    return (ds / "generation_state.journal").read_bytes()


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_failed_checkpoint_loses_nothing_and_leaves_no_temp(tmp_path: Path, monkeypatch, step: str,
                                                               err: int) -> None:
    ds = tmp_path / "ds"
    new_state(ds)
    s, st = store.load_for_writing(ds)
    s.claim("g", 2, None, 0)
    st.commit(s)  # in the journal: durable
    before = (ds / "generation_state.json").read_bytes()
    Faults(monkeypatch, step, err, times=1)
    with pytest.raises(SaveFailed):
        st.checkpoint(s)
    monkeypatch.undo()  # the file is written by a forked child: it used up its own copy of the fault
    if step != "fsync_dir":  # after the rename the new file is in place; either one loads the same
        assert (ds / "generation_state.json").read_bytes() == before
    assert [p.name for p in ds.iterdir() if p.name.endswith(".tmp")] == []
    assert load(ds).counts["generating"] == 2  # file and journal still hold the commit
    s.claim("g", 1, None, 1)
    st.commit(s)  # the journal goes on after a failed checkpoint
    st.checkpoint(s)  # the fault has passed
    assert file_alone(ds).counts["generating"] == 3
    assert load(ds).counts["generating"] == 3


@pytest.mark.parametrize("step", ["write", "fdatasync"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_failed_append_is_cut_off_and_never_loads(tmp_path: Path, monkeypatch, step: str, err: int) -> None:
    ds = tmp_path / "ds"
    new_state(ds)
    s, st = store.load_for_writing(ds)
    s.claim("g", 1, None, 0)
    st.commit(s)
    before = journal_bytes(ds)
    s.claim("g", 2, None, 1)
    f = Faults(monkeypatch, step, err, times=1)
    with pytest.raises(SaveFailed):
        st.commit(s)
    assert journal_bytes(ds) == before  # the failed record was cut off again, durably
    assert load(ds).counts["generating"] == 1  # what is answered "not saved" never loads
    if step == "fdatasync":  # never retried on the descriptor that failed: closed, and a new one cut it
        first = next(i for i, e in enumerate(f.events) if e[0] == "fdatasync")
        fd = f.events[first][1]
        assert next(e for e in f.events[first + 1:] if e[1] == fd) == ("close", fd)


def test_an_append_that_cannot_be_cut_off_is_outcome_unknown(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    new_state(ds)
    s, st = store.load_for_writing(ds)
    s.claim("g", 1, None, 0)
    Faults(monkeypatch, "fdatasync", errno.EIO, times=1)
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OutcomeUnknown):
        st.commit(s)


def _serve_in_thread(ds: Path, s: State) -> tuple[Daemon, threading.Event, threading.Thread, list]:
    _, st = store.load_for_writing(ds)
    d = Daemon(ds, s, f"ipc://{ds}/statesvc.sock", f"ipc://{ds}/ev.sock", store=st)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        import time
        try:
            while not stop.is_set():
                d.wait(20)
                d.run_once(time.time())
        except BaseException as exc:
            errors.append(exc)
        finally:
            d.close()
    t = threading.Thread(target=loop)
    t.start()
    return d, stop, t, errors


def test_daemon_refuses_the_failed_batch_and_rolls_it_back(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    Faults(monkeypatch, "write", errno.ENOSPC, times=3)
    d, stop, t, errors = _serve_in_thread(ds, s)
    try:
        with Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as c:
            for _ in range(3):  # three batches hit the full disk
                with pytest.raises(ServiceError, match="not saved") as refused:
                    c.call("claim", owner="g", n=1)
                assert refused.value.kind == ErrorKind.NOT_SAVED  # the daemon's trouble: send it again
                assert c.call("ping")["pid"] == os.getpid()  # still serving
            assert load(ds).counts["generating"] == 0
            c.call("claim", owner="g", n=1)  # space is back: this batch is saved, the refused ones never
        # were applied (rolled back): what was answered "not saved" does not appear later
        assert load(ds).counts["generating"] == 1
    finally:
        stop.set()
        t.join(10)
    assert not errors


def test_a_failed_checkpoint_in_the_daemon_is_reported_and_retried(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    Faults(monkeypatch, "fsync_dir", errno.EIO, times=1)  # the checkpoint file's folder fsync
    d, stop, t, errors = _serve_in_thread(ds, s)
    try:
        with Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as c:
            c.call("claim", owner="g", n=1)
            with pytest.raises(ServiceError, match="checkpoint failed"):
                c.call("checkpoint")
            c.call("claim", owner="g", n=1)  # still serving, still committing
            assert c.call("checkpoint")["bytes"] > 0
        assert file_alone(ds).counts["generating"] == 2
    finally:
        stop.set()
        t.join(10)
    assert not errors


def test_daemon_stops_when_the_new_journals_folder_fsync_fails(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    Faults(monkeypatch, "fsync_dir", errno.EIO, times=1, skip=1)  # the file's passes, the journal's fails
    d, stop, t, errors = _serve_in_thread(ds, s)
    try:
        with Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as c:
            c.call("claim", owner="g", n=1)
            with pytest.raises(ServiceError, match="outcome unknown") as unknown:  # appends might not survive
                c.call("checkpoint")
            assert unknown.value.kind == ErrorKind.OUTCOME_UNKNOWN
        t.join(10)
        assert errors and isinstance(errors[0], OutcomeUnknown)
    finally:
        stop.set()
        t.join(10)
    assert load(ds).counts["generating"] == 1


def test_damaged_state_is_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    new_state(ds)
    path = ds / "generation_state.json"
    doc = orjson.loads(path.read_bytes())
    cases = {
        "status": lambda d: d["entries"][0].update(status="done"),
        "filename": lambda d: d["entries"][0].update(filename="../x"),
        "duplicate": lambda d: d["entries"][1].update(filename=d["entries"][0]["filename"]),
        "schema": lambda d: d.update(schema_version=99),
        "type": lambda d: d["entries"][0].update(attempts="3"),
    }
    for _name, damage in cases.items():
        d = orjson.loads(orjson.dumps(doc))
        damage(d)
        path.write_bytes(orjson.dumps(d))
        with pytest.raises(DamagedState):
            load(ds)


def _saved(tmp_path: Path, n: int) -> Path:
    ds = tmp_path / "ds"
    ds.mkdir()
    s = State([Entry.make(i, f"u_{i:05d}", f"t{i}\n\"quoted\", {{x}}") for i in range(1, n + 1)])
    for c in s.claim("g", n // 2, None, 1)["entries"][::2]:
        s.result(take(c, 0.5, 16000), 2)
    store.create(ds, s)
    return ds


def test_a_checksummed_file_loads_fast_and_equals_a_full_validation(tmp_path: Path) -> None:
    ds = _saved(tmp_path, 9000)  # three chunks, the last one partial
    raw = (ds / "generation_state.json").read_bytes()
    fast = load_bytes(tmp_path / "fast", raw)
    assert fast.head.checkpoint is not None
    slow = load_bytes(tmp_path / "slow", orjson.dumps(orjson.loads(raw)))  # same content, another layout
    assert slow.head.checkpoint is None
    fast, slow = fast.state, slow.state
    assert [e.to_dict() for e in fast.entries] == [e.to_dict() for e in slow.entries]
    assert fast.counters() == slow.counters() and fast.sample_rate == slow.sample_rate == 16000


def test_the_checksum_covers_the_header_and_an_older_entries_only_checksum_still_loads_fast(tmp_path: Path) -> None:
    raw = (_saved(tmp_path, 50) / "generation_state.json").read_bytes()
    at = raw.index(b'"seq":0') + 6
    edited = load_bytes(tmp_path / "edited", raw[:at] + b"7" + raw[at + 1:])  # a seq that would skip journal records
    assert edited.head.checkpoint is None  # not trusted: a hand edit, which a journal holding records refuses
    first, rest = raw.split(b"\n", 1)
    crc = zlib.crc32(rest[:-len(b"\n]}\n")])  # the entry lines only: how statesvc wrote files before
    start = raw.index(b'"crc32h:')
    older = raw[:start] + b'"crc32:%08x"' % crc + raw[start + len(b'"crc32h:00000000"'):]
    loaded = load_bytes(tmp_path / "older", older)
    assert loaded.head.checkpoint is not None and [e.to_dict() for e in loaded.state.entries] == \
        [e.to_dict() for e in load_bytes(tmp_path / "newer", raw).state.entries]


def test_a_hand_edit_is_validated_the_long_way(tmp_path: Path) -> None:
    ds = _saved(tmp_path, 50)
    path = ds / "generation_state.json"
    raw = path.read_bytes()
    line = b'{"id":40,"filename":"u_00040","text":"t40\\n\\"quoted\\", {x}","status":"pending"'
    assert line in raw
    edited = load_bytes(tmp_path / "edited", raw.replace(line, line.replace(b"pending", b"failed")))
    # the checksum no longer matches: validated the long way
    assert edited.head.checkpoint is None and edited.state.by_id[40].status == "failed"
    path.write_bytes(raw.replace(b'"status":"pending"', b'"status":"done"', 1))
    with pytest.raises(DamagedState, match="unknown status 'done'"):
        load(ds)


def test_short_writev_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, bufs: real(fd, [bytes(b"".join(bytes(b) for b in bufs)[:7])]))
    parts = [b"abc", memoryview(b"defghij")[2:], b"", b"0123456789" * 3]
    write_atomic(tmp_path / "f", parts)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 8192])
def test_chunk_edges_round_trip_through_the_fast_path(tmp_path: Path, n: int) -> None:
    s = State([Entry.make(i, f"e_{i:05d}", f"text {i}") for i in range(1, n + 1)])
    store.create(tmp_path, s)
    raw = (tmp_path / STATE_FILE).read_bytes()
    again = read(tmp_path)
    assert again.head.checkpoint is not None
    again = again.state
    assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in s.entries]
    assert orjson.loads(raw)["entries"] == [e.to_dict() for e in s.entries]  # plain JSON, every field


def test_a_commit_failing_while_a_checkpoint_is_written_drops_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds, 40)
    encode = codec._encode
    monkeypatch.setattr(codec, "_CHUNK", 1)  # a slow checkpoint: it is still being written below
    monkeypatch.setattr(codec, "_encode", lambda e: (time.sleep(0.01), encode(e))[1])
    d, stop, t, errors = _serve_in_thread(ds, s)
    try:
        with Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as c, \
                Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as asker:
            c.call("claim", owner="g", n=1)
            asker.send("checkpoint")  # begun by a thread; answered once it is in place
            wait_for(lambda: d.store.job is not None, 5, "the checkpoint begun")
            Faults(monkeypatch, "fdatasync", errno.EIO, times=1)
            with pytest.raises(ServiceError, match="not saved"):
                c.call("claim", owner="g", n=1)  # may have been read by the checkpoint thread
            replies = wait_for(lambda: asker.replies(0.1), 10, "the checkpoint's answer")
            assert "a commit failed" in replies[0]["error"] and replies[0]["kind"] == "not_saved"
            # the daemon's thread answers, then rolls back to a new store: not at once seen from here
            wait_for(lambda: d.store.job is None, 10, "the checkpoint dropped")
            c.call("claim", owner="g", n=1)
            assert c.call("checkpoint")["bytes"] > 0
        alone = file_alone(ds)
        assert alone.counts["generating"] == 2 and load(ds).counts["generating"] == 2  # never the refused one
    finally:
        stop.set()
        t.join(10)
    assert not errors
