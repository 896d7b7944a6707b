"""Hostile and broken clients: the daemon answers every malformed message with an error and changes nothing."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import orjson
import pytest
import zmq

from statesvc.client import Client
from tests.support.books import make_dataset, read_state


def malformed(rng: random.Random) -> list[bytes]:
    """One message that must be refused: each kind the issue lists, picked at random."""
    kind = rng.randrange(10)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 300))]
    if kind == 1:
        return [b"{}"] * rng.choice([0, 2, 3, 5]) or [b"", b"", b""]
    if kind == 2:
        op = rng.choice(["claim", "result", "requeue", "heartbeat", "reconcile", "add", "show", "results",
                         "edit", "died", "working", "release", "paused"])
        field = rng.choice(["owner", "n", "id", "token", "status", "keys", "items", "files", "key", "since",
                            "text", "req", "tokens", "paused", "free", "floor"])
        value = rng.choice([None, True, -1, 2**70, 1.5, "x" * 5000, [], {}, [[[]]]]
                           + (["../x"] if field != "owner" else []))
        return [json.dumps({"op": op, "rid": rng.randrange(1000), field: value}).encode()]
    if kind == 3:
        return [orjson.dumps({"op": "".join(rng.choices("abcxyz_", k=rng.randrange(1, 20))), "rid": 1})]
    if kind == 4:
        depth = rng.randrange(600, 5000)
        return [b"[" * depth + b"]" * depth]
    if kind == 5:
        return [orjson.dumps({"op": "result", "rid": 2, "id": rng.randrange(10**6, 10**9), "token": "t",
                              "status": "completed", "duration_seconds": 1.0, "sample_rate": 22050})]
    if kind == 6:
        name = rng.choice(["a/b", "..", "../etc/passwd", ".hidden", "x/../y", "", "a\x00b", "ñ"])
        return [orjson.dumps({"op": rng.choice(["show", "requeue"]), "rid": 3, "key": name, "keys": [name]})]
    if kind == 7:
        return [orjson.dumps([rng.random() for _ in range(rng.randrange(1, 50))])]
    if kind == 8:
        return [orjson.dumps({"op": "reconcile", "rid": 4, "since": 0, "epoch": "nope",
                              "files": {"../../x": {"valid": True}}})]
    return [orjson.dumps({"op": "claim", "rid": 5, "owner": "o" * rng.randrange(201, 3000), "n": 1})]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fuzz(ds: Path, pid: int, count: int, seed: int) -> None:
    rng = random.Random(seed)
    before = (ds / "generation_state.json").read_bytes()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{ds.resolve()}/statesvc.sock")
    rss_start = None
    answered = 0
    window = 200
    for start in range(0, count, window):
        batch = [malformed(rng) for _ in range(min(window, count - start))]
        for frames in batch:
            s.send_multipart(frames)
        for _ in batch:
            assert s.poll(10_000), f"no reply after {answered} answers"
            reply = orjson.loads(s.recv())
            assert reply["ok"] is False and reply["error"], reply
            answered += 1
        if rss_start is None:
            rss_start = rss_mb(pid)
    s.close()
    assert answered == count
    assert (ds / "generation_state.json").read_bytes() == before
    assert rss_mb(pid) < rss_start + 50, "memory grew while fuzzing"
    with Client.for_dataset(ds) as c:
        assert c.call("ping")["pid"] == pid
        assert c.call("status")["pending"] == read_state(ds)["pending"]
    print(f"fuzz: {count} malformed messages, {answered} error replies, state unchanged, "
          f"rss {rss_start:.0f} -> {rss_mb(pid):.0f} MB")


def test_fuzz_10000_malformed_messages(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(50)])
    d = start_daemon(ds)
    fuzz(ds, d.proc.pid, 10_000, seed=1)


@pytest.mark.slow
def test_fuzz_soak(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(50)])
    d = start_daemon(ds)
    fuzz(ds, d.proc.pid, 100_000, seed=2)


def test_vanished_and_slow_clients_do_not_block(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(10)])
    start_daemon(ds)
    ctx = zmq.Context.instance()
    for _ in range(50):  # ask and vanish before the reply
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{ds.resolve()}/statesvc.sock")
        s.send(orjson.dumps({"op": "list", "rid": 1}))
        s.close()
    slow = ctx.socket(zmq.DEALER)  # never reads its replies
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.connect(f"ipc://{ds.resolve()}/statesvc.sock")
    sent = 0
    for i in range(3000):
        try:
            slow.send(orjson.dumps({"op": "list", "rid": i}), zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            break
    assert sent >= 1000
    with Client.for_dataset(ds, timeout=5) as c:
        assert c.call("ping")["pid"]
    slow.close()


def test_oversized_frames_from_many_clients(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a"])
    d = start_daemon(ds)
    ctx = zmq.Context.instance()
    for size in (5 * 2**20, 16 * 2**20):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"ipc://{ds.resolve()}/statesvc.sock")
        s.send(os.urandom(16) * (size // 16))
        s.close()
    with Client.for_dataset(ds) as c:
        assert c.call("ping")["pid"] == d.proc.pid
