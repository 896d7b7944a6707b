"""The save path under faults: the old file stays intact, no write of a failed batch is acknowledged."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import orjson
import pytest

from statesvc import store
from statesvc.client import Client, ServiceError
from statesvc.daemon import Daemon
from statesvc.state import Entry, State
from statesvc.store import OutcomeUnknown, SaveFailed, Store, load

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


def test_daemon_refuses_the_failed_batch_and_catches_up(tmp_path: Path, monkeypatch) -> None:
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
            c.call("claim", owner="g", n=1)  # space is back: this batch and the earlier ones are saved
        assert orjson.loads((ds / "generation_state.json").read_bytes())["generating"] == 4
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
            with pytest.raises(ServiceError, match="not saved"):
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
                s.result({"id": c["id"], "token": c["token"], "status": "completed",
                          "duration_seconds": rng.random(), "sample_rate": 22050}, step)
        if step % 7 == 0:
            s.add([(None, f"new {step} {k}") for k in range(rng.randint(1, 1500))], "u", step)
        assert cached.render(s) == Store(tmp_path, s).render(s)
    assert len(load_bytes(cached.render(s)).entries) == len(s.entries)


def load_bytes(raw: bytes) -> State:
    return store.parse_state(raw)
