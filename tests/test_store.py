"""The save path under faults: the old file stays intact, no write of a failed batch is acknowledged."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import orjson
import pytest

from statesvc import store
from statesvc.atomic import OutcomeUnknown, SaveFailed
from statesvc.client import Client, ServiceError
from statesvc.daemon import Daemon
from statesvc.state import Entry, State
from statesvc.store import Store, load
from tests.conftest import take

STEPS = ["open", "write", "fsync", "replace", "fsync_dir"]


def new_state(ds: Path, n: int = 5) -> State:
    (ds / "wavs").mkdir(parents=True)
    s = State([Entry(i, f"u_{i:03d}", f"t{i}") for i in range(1, n + 1)])
    store.create(ds, s)
    return load(ds)


class Faults:
    """Fail one step of the save with ``err``, ``times`` times (0 = for ever)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step: str, err: int, times: int = 1):
        self.left = times if times else 10**9
        self.fsyncs = []
        real_open, real_write, real_fsync, real_replace = os.open, os.write, os.fsync, os.replace
        real_writev = os.writev

        def failing(real, name):
            def wrapped(*a, **kw):
                if name == step and self.left > 0:
                    if name != "open" or str(a[0]).endswith(".tmp"):
                        self.left -= 1
                        raise OSError(err, os.strerror(err))
                return real(*a, **kw)
            return wrapped

        def fsync(fd):
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
            self.fsyncs.append(fd)
            name = "fsync_dir" if is_dir else "fsync"
            if name == step and self.left > 0:
                self.left -= 1
                raise OSError(err, os.strerror(err))
            return real_fsync(fd)

        monkeypatch.setattr(store.os, "open", failing(real_open, "open"))
        monkeypatch.setattr(store.os, "write", failing(real_write, "write"))
        monkeypatch.setattr(store.os, "writev", failing(real_writev, "write"))
        monkeypatch.setattr(store.os, "replace", failing(real_replace, "replace"))
        monkeypatch.setattr(store.os, "fsync", fsync)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_failed_save_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch, step: str, err: int) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    before = (ds / "generation_state.json").read_bytes()
    s.claim("g", 2, None, 0)
    Faults(monkeypatch, step, err, times=1)
    st = Store(ds, s)
    if step == "fsync_dir":
        with pytest.raises(OutcomeUnknown):
            st.save(s)
        return  # the rename happened: the outcome is unknown, the daemon stops (tested below)
    with pytest.raises(SaveFailed):
        st.save(s)
    assert (ds / "generation_state.json").read_bytes() == before
    assert [p.name for p in ds.iterdir() if p.name.endswith(".tmp")] == []
    assert s.unsaved
    st.save(s)  # the fault has passed: the next save writes everything
    assert load(ds).counts["generating"] == 2


@pytest.mark.parametrize("step", ["open", "write", "fsync", "replace"])
def test_a_fault_for_ever_never_touches_the_old_file(tmp_path: Path, monkeypatch, step: str) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    before = (ds / "generation_state.json").read_bytes()
    Faults(monkeypatch, step, errno.EIO, times=0)
    st = Store(ds, s)
    for i in range(5):
        s.claim("g", 1, None, i)
        with pytest.raises(SaveFailed):
            st.save(s)
        assert (ds / "generation_state.json").read_bytes() == before
        assert [p.name for p in ds.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_fsync_is_not_retried_on_the_same_descriptor(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    s.claim("g", 1, None, 0)
    f = Faults(monkeypatch, "fsync", errno.EIO, times=1)
    with pytest.raises(SaveFailed):
        Store(ds, s).save(s)
    assert len(f.fsyncs) == 1  # one failed fsync, then the descriptor was closed, not fsynced again


def _serve_in_thread(ds: Path, s: State) -> tuple[Daemon, threading.Event, threading.Thread, list]:
    d = Daemon(ds, s, f"ipc://{ds}/statesvc.sock", f"ipc://{ds}/ev.sock")
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
                with pytest.raises(ServiceError, match="not saved"):
                    c.call("claim", owner="g", n=1)
                assert c.call("ping")["pid"] == os.getpid()  # still serving
            assert orjson.loads((ds / "generation_state.json").read_bytes())["generating"] == 0
            c.call("claim", owner="g", n=1)  # space is back: this batch is saved, the refused ones never
        # were applied (rolled back): what was answered "not saved" does not appear later
        assert orjson.loads((ds / "generation_state.json").read_bytes())["generating"] == 1
    finally:
        stop.set()
        t.join(10)
    assert not errors


def test_daemon_stops_when_folder_fsync_fails_after_rename(tmp_path: Path, monkeypatch) -> None:
    ds = tmp_path / "ds"
    s = new_state(ds)
    Faults(monkeypatch, "fsync_dir", errno.EIO, times=1)
    d, stop, t, errors = _serve_in_thread(ds, s)
    try:
        with Client(f"ipc://{ds}/statesvc.sock", timeout=5, retries=1) as c:
            with pytest.raises(ServiceError, match="outcome unknown"):  # never "not saved": it may survive
                c.call("claim", owner="g", n=1)
        t.join(10)
        assert errors and isinstance(errors[0], OutcomeUnknown)
    finally:
        stop.set()
        t.join(10)


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
        with pytest.raises(store.DamagedState):
            load(ds)


def test_cached_render_equals_a_fresh_render(tmp_path: Path) -> None:
    import random
    rng = random.Random(7)
    s = State([Entry(i, f"u_{i:05d}", f"t{i}") for i in range(1, 3001)])
    cached = Store(tmp_path, s)
    for step in range(30):
        for c in s.claim("g", rng.randint(1, 300), None, step)["entries"]:
            if rng.random() < 0.7:
                s.result(take(c, rng.random()), step)
        if step % 7 == 0:
            s.add([(None, f"new {step} {k}") for k in range(rng.randint(1, 1500))], "u", step)
        assert cached.render(s) == Store(tmp_path, s).render(s)
    assert len(load_bytes(cached.render(s)).entries) == len(s.entries)


def load_bytes(raw: bytes) -> State:
    return store.parse_state(raw)


def _saved(tmp_path: Path, n: int) -> Path:
    ds = tmp_path / "ds"
    ds.mkdir()
    s = State([Entry(i, f"u_{i:05d}", f"t{i}\n\"quoted\", {{x}}") for i in range(1, n + 1)])
    for c in s.claim("g", n // 2, None, 1)["entries"][::2]:
        s.result(take(c, 0.5, 16000), 2)
    store.create(ds, s)
    return ds


def test_a_checksummed_save_loads_fast_and_equals_a_full_validation(tmp_path: Path) -> None:
    ds = _saved(tmp_path, 2500)  # three blocks, the last one partial
    raw = (ds / "generation_state.json").read_bytes()
    fast, blocks = store.read_state(raw)
    assert blocks is not None and len(blocks) == 3
    slow = store.read_state(orjson.dumps(orjson.loads(raw)))  # same content, another layout
    assert slow[1] is None
    assert [e.to_dict() for e in fast.entries] == [e.to_dict() for e in slow[0].entries]
    assert fast.counters() == slow[0].counters() and fast.sample_rate == slow[0].sample_rate == 16000


def test_a_hand_edit_is_validated_the_long_way(tmp_path: Path) -> None:
    ds = _saved(tmp_path, 50)
    path = ds / "generation_state.json"
    raw = path.read_bytes()
    line = b'{"id":40,"filename":"u_00040","text":"t40\\n\\"quoted\\", {x}","status":"pending"'
    assert line in raw
    state, blocks = store.read_state(raw.replace(line, line.replace(b"pending", b"failed")))
    assert blocks is None and state.by_id[40].status == "failed"  # the checksum no longer matches
    path.write_bytes(raw.replace(b'"status":"pending"', b'"status":"done"', 1))
    with pytest.raises(store.DamagedState, match="unknown status 'done'"):
        load(ds)


def test_saves_after_a_fast_load_equal_a_fresh_render(tmp_path: Path) -> None:
    ds = _saved(tmp_path, 3000)
    s, st = store.load_for_writing(ds)
    for step in range(5):
        for c in s.claim("g", 700, None, step)["entries"]:
            s.result(take(c, 1.25, 16000), step)
        s.add([(None, f"added {step} {k}") for k in range(333)], "a", step)
        st.save(s)
        assert (ds / "generation_state.json").read_bytes() == Store(ds, s).render(s)
        again, blocks = store.read_state((ds / "generation_state.json").read_bytes())
        assert blocks is not None and again.counters() == s.counters()


def test_short_writev_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    real = os.writev
    monkeypatch.setattr(store.os, "writev", lambda fd, bufs: real(fd, [bytes(b"".join(bytes(b) for b in bufs)[:7])]))
    parts = [b"abc", memoryview(b"defghij")[2:], b"", b"0123456789" * 3]
    store.write_atomic(tmp_path / "f", parts)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(p) for p in parts)


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 1025, 2048])
def test_block_edges_round_trip_through_the_fast_path(tmp_path: Path, n: int) -> None:
    s = State([Entry(i, f"e_{i:05d}", f"text {i}") for i in range(1, n + 1)])
    raw = Store(tmp_path, s).render(s)
    again, blocks = store.read_state(raw)
    assert blocks is not None and len(blocks) == -(-n // store.BLOCK)
    assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in s.entries]
