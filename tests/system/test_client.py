"""The daemon client's two faces, sync and async, share the reply handling: a real daemon's answers
and refusals, and a real socket's late, foreign and error replies, decode the same through both."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import zmq
import zmq.asyncio

from statesvc.client import AsyncClient, Client, NoDaemon, ServiceError, Unavailable
from statesvc.protocol import ErrorKind
from tests.support.books import make_dataset


def both(dataset_or_endpoint: Path | str, op: str, timeout: float = 5.0, **fields: object) -> list[object]:
    """What each face gives for one request: its reply, or the exception it raised."""
    out: list[object] = []
    try:
        if isinstance(dataset_or_endpoint, Path):
            c = Client.for_dataset(dataset_or_endpoint, timeout=timeout, retries=1)
        else:
            c = Client(dataset_or_endpoint, timeout=timeout, retries=1)
        with c:
            out.append(c.call(op, **fields))
    except (ServiceError, Unavailable, NoDaemon) as exc:
        out.append(exc)

    async def ask() -> object:
        ctx = zmq.asyncio.Context()
        try:
            if isinstance(dataset_or_endpoint, Path):
                a = AsyncClient.for_dataset(dataset_or_endpoint, ctx, timeout)
            else:
                a = AsyncClient(dataset_or_endpoint, ctx, timeout)
            return await a.call(op, **fields)
        except (ServiceError, Unavailable, NoDaemon) as exc:
            return exc
        finally:
            ctx.term()
    out.append(asyncio.run(ask()))
    return out


def test_a_daemons_answer_and_refusal_are_the_same_through_both_faces(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    d = start_daemon(ds)
    sync, async_ = both(ds, "ping")
    assert isinstance(sync, dict) and isinstance(async_, dict)
    assert sync["ok"] is True and sync["pid"] == async_["pid"] == d.proc.pid
    sync, async_ = both(ds, "show", key="nowhere_0001")
    assert isinstance(sync, ServiceError) and isinstance(async_, ServiceError)
    assert sync.kind == async_.kind == ErrorKind.REFUSED
    assert str(sync) == str(async_) and "nowhere_0001" in str(sync)


def test_no_daemon_is_said_by_both_faces(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["uno"])
    sync, async_ = both(ds, "ping")
    assert isinstance(sync, NoDaemon) and isinstance(async_, NoDaemon)
    assert str(sync) == str(async_) == f"no statesvc daemon serves {ds}"


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[str, Callable[[dict], list[bytes]]]]:
    """A real ROUTER socket on ipc standing in for a daemon: each request gets the frames that
    ``answers`` (set by the test) gives for it."""
    endpoint = f"ipc://{tmp_path / 'router.sock'}"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    answers: list[Callable[[dict], list[bytes]]] = [lambda msg: []]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                who, raw = sock.recv_multipart()
                for reply in answers[0](orjson.loads(raw)):
                    sock.send_multipart([who, reply])
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield endpoint, answers
    stop.set()
    t.join(5)
    sock.close(0)
    ctx.term()


def test_late_foreign_and_garbled_replies_are_skipped_and_error_kinds_kept(router) -> None:
    endpoint, answers = router

    def noisy(msg: dict) -> list[bytes]:  # noise first, then the answer: a daemon's trouble
        return [b"not json", b"[1, 2]", orjson.dumps({"rid": msg["rid"] + 1, "ok": True}),
                orjson.dumps({"rid": msg["rid"], "ok": False, "kind": "not_saved", "error": "not saved: disk full"})]
    answers[0] = noisy
    for got in both(endpoint, "ping"):
        assert isinstance(got, ServiceError) and got.kind == ErrorKind.NOT_SAVED
        assert str(got) == "not saved: disk full"

    answers[0] = lambda msg: [orjson.dumps({"rid": msg["rid"], "ok": True, "pid": 7})]
    assert [r["pid"] for r in both(endpoint, "ping")] == [7, 7]  # type: ignore[index]

    answers[0] = lambda msg: [orjson.dumps({"rid": msg["rid"] - 1, "ok": True})]  # only a late one
    for got in both(endpoint, "ping", timeout=0.3):
        assert isinstance(got, Unavailable), got


def test_a_request_over_the_daemons_limit_is_refused_unsent_by_both_faces(router) -> None:
    endpoint, answers = router
    seen: list[dict] = []
    answers[0] = lambda msg: seen.append(msg) or []
    for got in both(endpoint, "add", items=["x" * (5 << 20)]):
        assert isinstance(got, ServiceError) and "exceeds" in str(got) and got.kind == ErrorKind.REFUSED
    assert seen == []
