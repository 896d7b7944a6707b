"""The daemon as a real process on real sockets: durability, locking, refusals, sd_notify."""

from __future__ import annotations

import os
import random
import signal
import socket
import stat
import threading
from pathlib import Path

import orjson
import pytest
import zmq

from statesvc.client import Client, ServiceError, Unavailable
from tests.support.books import make_dataset, read_state, take
from tests.support.processes import cli, wait_for


def client(ds: Path, timeout: float = 5.0) -> Client:
    return Client.for_dataset(ds, timeout=timeout)


def test_ack_means_durable_and_second_daemon_refused(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(10)])
    d = start_daemon(ds)
    c = client(ds)
    got = c.call("claim", owner="g1", n=3)["entries"]
    c.call("result", **take(got[0], 1.25))
    on_disk = {e["id"]: e for e in read_state(ds)["entries"]}
    assert on_disk[got[0]["id"]]["status"] == "completed"
    assert on_disk[got[0]["id"]]["duration_seconds"] == 1.25
    assert read_state(ds)["completed"] == 1 and read_state(ds)["generating"] == 2

    second = cli("serve", "--dataset", str(ds))
    assert second.returncode != 0
    assert str(d.proc.pid) in second.stderr and "Traceback" not in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    c.close()


def test_killed_daemon_lock_does_not_block_restart(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a", "b"])
    d = start_daemon(ds)
    d.kill(signal.SIGKILL)
    d2 = start_daemon(ds)
    with client(ds) as c:
        assert c.call("ping")["pid"] == d2.proc.pid


def test_the_sockets_a_killed_daemon_leaves_are_replaced_at_the_next_start(tmp_path: Path, start_daemon) -> None:
    from statesvc.layout import CONTROL_SOCKET, EVENTS_SOCKET

    def listening(path: Path) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return True
            except ConnectionRefusedError:
                return False

    ds = make_dataset(tmp_path, [f"t{i}" for i in range(20)])
    socks = [ds.resolve() / name for name in (CONTROL_SOCKET, EVENTS_SOCKET)]
    start_daemon(ds).kill(signal.SIGKILL)
    assert all(stat.S_ISSOCK(p.stat().st_mode) and not listening(p) for p in socks)  # left behind, dead
    d = start_daemon(ds)  # the stale ones are removed and bound anew (libzmq unlinks before bind)
    assert all(listening(p) for p in socks)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"commit")
    sub.connect(f"ipc://{socks[1]}")
    try:
        with client(ds) as c:  # a commit until its event arrives (a subscription takes a moment to join)
            wait_for(lambda: c.call("claim", owner="g", n=1) and sub.poll(200), 10, "a commit event")
        assert sub.recv_multipart()[0] == b"commit"
    finally:
        sub.close()
        ctx.term()
    d.kill(signal.SIGTERM)
    assert not any(p.exists() for p in socks)  # a clean stop removes its own


def test_malformed_requests_get_errors_and_change_nothing(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a", "b", "c"])
    start_daemon(ds)
    before = (ds / "generation_state.json").read_bytes()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    from statesvc.endpoints import running
    s.connect(running(ds)["endpoint"])
    bad = [
        [b"\xff\xfe not json"], [b"[1,2,3]"], [b"{}"], [b'{"op":"nope","rid":1}'],
        [b"a", b"b", b"c"], [orjson.dumps({"op": "claim", "owner": 5})],
        [orjson.dumps({"op": "result", "id": 999, "token": "x", "status": "completed",
                       "duration_seconds": 1, "sample_rate": 22050})],
        [orjson.dumps({"op": "show", "key": "../etc/passwd"})],
        [orjson.dumps({"op": "requeue", "keys": ["a/b"]})],
        [orjson.dumps({"op": "result", "id": 1, "token": "t", "status": "completed",
                       "duration_seconds": -1, "sample_rate": 22050})],
        [b"[" * 100_000 + b"]" * 100_000],
        [orjson.dumps({"op": "claim", "owner": "g", "n": 2, "wait": "yes"})],  # refused before it is applied
    ]
    for frames in bad:
        s.send_multipart(frames)
        assert s.poll(5000), f"no reply to {frames[0][:40]!r}"
        reply = orjson.loads(s.recv())
        assert reply["ok"] is False and reply["error"] and reply["kind"] == "refused", reply
    s.close()
    with client(ds) as c:
        assert c.call("ping")["pid"]
    assert (ds / "generation_state.json").read_bytes() == before


def test_oversized_message_does_not_kill_daemon(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a"])
    d = start_daemon(ds)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{ds.resolve()}/statesvc.sock")
    s.send(b"x" * (8 * 1024 * 1024))  # over MAXMSGSIZE: zmq drops that peer
    s.close()
    with client(ds) as c:
        assert c.call("ping")["pid"] == d.proc.pid


def test_damaged_file_refuses_start_without_touching_it(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a", "b"])
    path = ds / "generation_state.json"
    doc = read_state(ds)
    doc["entries"][1]["id"] = doc["entries"][0]["id"]
    for damage in (b'{"entries": [', orjson.dumps(doc), orjson.dumps({"entries": [{"id": 1}]})):
        path.write_bytes(damage)
        before = os.stat(path)
        r = cli("serve", "--dataset", str(ds))
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert path.read_bytes() == damage and os.stat(path).st_mtime_ns == before.st_mtime_ns
        for cmd in (["status"], ["list"], ["verify"], ["export"]):
            r = cli(*cmd, "--dataset", str(ds))
            assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, (cmd, r.stderr)
        assert path.read_bytes() == damage


def test_hand_edited_counters_are_recomputed(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a", "b", "c"])
    doc = read_state(ds)
    doc["completed"] = 77
    doc["entries"][0]["status"] = "failed"
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    start_daemon(ds)
    with client(ds) as c:
        st = c.call("status")
    assert (st["total"], st["pending"], st["failed"], st["completed"]) == (3, 2, 1, 0)


def test_kill9_while_clients_write_loses_no_acknowledged_update(tmp_path: Path, start_daemon) -> None:
    kill_loop(tmp_path, start_daemon, kills_wanted=6, n=400)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_soak(tmp_path: Path, start_daemon) -> None:
    kill_loop(tmp_path, start_daemon, kills_wanted=210, n=9000)


def kill_loop(tmp_path: Path, start_daemon, kills_wanted: int, n: int) -> None:
    ds = make_dataset(tmp_path, [f"text {i}" for i in range(n)])
    acked: dict[int, float] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(owner: str) -> None:
        c = Client(f"ipc://{ds.resolve()}/statesvc.sock", timeout=1.0, retries=1)
        while not stop.is_set():
            try:
                got = c.call("claim", owner=owner, n=2)["entries"]
                for e in got:
                    dur = round(random.uniform(0.5, 3), 3)
                    c.call("result", **take(e, dur))
                    with lock:
                        acked[e["id"]] = dur
            except (Unavailable, ServiceError):
                c.reconnect()
        c.close()

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    d = start_daemon(ds, "--lease-seconds", "2")
    for t in threads:
        t.start()
    kills = 0
    try:
        for _ in range(kills_wanted):
            wait_for(lambda k=kills: len(acked) > k * (n // (2 * kills_wanted)) + 20, 30, "progress between kills")
            d.kill(signal.SIGKILL)
            kills += 1
            doc = read_state(ds)  # parses after every kill
            with lock:
                snapshot = dict(acked)
            done = {e["id"]: e for e in doc["entries"] if e["status"] == "completed"}
            for eid, dur in snapshot.items():
                assert eid in done and done[eid]["duration_seconds"] == dur, f"acked {eid} lost"
            d = start_daemon(ds, "--lease-seconds", "2")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert kills == kills_wanted
    print(f"kill loop: {kills} SIGKILLs, {len(acked)} acknowledged updates checked after each, 0 lost")


def _notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    return s, path


def test_sd_notify_ready_and_watchdog(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a"])
    sock, path = _notify_socket(tmp_path)
    start_daemon(ds, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    seen: list[str] = []
    while not ({"READY=1", "WATCHDOG=1"} <= set(seen) and seen.count("WATCHDOG=1") >= 2):
        seen += sock.recv(4096).decode().splitlines()
    assert seen.index("READY=1") < len(seen)
    sock.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(tmp_path: Path, start_daemon, sig: int) -> None:
    ds = make_dataset(tmp_path, ["a"])
    d = start_daemon(ds)
    assert d.kill(sig) == 0
    assert "stopped:" in d.output()


def test_requeue_moves_old_take_aside_and_stays_pending(tmp_path: Path, start_daemon) -> None:
    import numpy as np
    import soundfile as sf
    ds = make_dataset(tmp_path, ["a", "b"])
    start_daemon(ds)
    with client(ds) as c:
        e = c.call("claim", owner="g", n=1)["entries"][0]
        sf.write(ds / "wavs" / f"{e['filename']}.wav", np.zeros(2205, dtype=np.float32), 22050)
        c.call("result", **take(e, 0.1))
    r = cli("requeue", "--dataset", str(ds), e["filename"])
    assert r.returncode == 0, r.stderr
    assert not (ds / "wavs" / f"{e['filename']}.wav").exists()
    assert len(list((ds / "requeued").glob(f"{e['filename']}.*.wav"))) == 1
    assert {x["id"]: x for x in read_state(ds)["entries"]}[e["id"]]["status"] == "pending"
    assert cli("requeue", "--dataset", str(ds), "nonexistent_9").returncode != 0


def test_watch_streams_changes(tmp_path: Path, start_daemon) -> None:
    import subprocess
    import sys
    ds = make_dataset(tmp_path, ["a", "b"])
    start_daemon(ds)
    w = subprocess.Popen([str(Path(sys.executable).parent / "statesvc"), "watch", "--json", "--dataset", str(ds)],
                         stdout=subprocess.PIPE, text=True)
    try:
        c = client(ds)

        def claim_seen() -> str | None:
            c.call("add", items=[[None, "more text"]], prefix="ds")
            return select_line(w.stdout)
        line = wait_for(claim_seen, 15, "a change event")
        c.close()
        assert orjson.loads(line)["status"] == "pending"
    finally:
        w.terminate()
        w.wait(10)
        w.stdout.close()


def select_line(stream) -> str | None:
    import select
    if select.select([stream], [], [], 0.2)[0]:
        return stream.readline()
    return None


def test_an_error_reply_is_decoded_into_what_a_client_does_about_it() -> None:
    from statesvc.protocol import ErrorKind, error_kind, failure
    for kind in ErrorKind:
        assert error_kind(failure(kind, "text")) == kind
    # a daemon older than the field: told by the start of its text, as clients did before
    assert error_kind({"ok": False, "error": "not saved: No space left on device"}) == ErrorKind.NOT_SAVED
    assert error_kind({"ok": False, "error": "outcome unknown (check, then retry): EIO"}) == ErrorKind.OUTCOME_UNKNOWN
    assert error_kind({"ok": False, "error": "checkpoint failed: EIO"}) == ErrorKind.NOT_SAVED
    assert error_kind({"ok": False, "error": "internal error: KeyError"}) == ErrorKind.INTERNAL
    assert error_kind({"ok": False, "error": "no entry 'x'"}) == ErrorKind.REFUSED
    assert error_kind({"ok": False, "kind": "bogus", "error": "no entry"}) == ErrorKind.REFUSED
