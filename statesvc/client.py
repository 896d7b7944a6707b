"""Talking to the daemon: one client with a sync face (Lazy Pirate requests, pipelined sends) and an
async one.

Every request carries a number (``rid``); a reply with another number is a late
answer to something already given up on and is dropped. Updates are idempotent,
so resending after a timeout is always safe. Both faces share the socket set-up
(CURVE on tcp), the request's framing and the decoding of a reply into its body or
a ``ServiceError`` of the daemon's kind; they differ only in how they wait.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import zmq

from . import protocol
from .curve import secure_client
from .endpoints import connectable, running

if TYPE_CHECKING:  # not imported at run time: the generators and the CLI need no asyncio
    import zmq.asyncio


class Unavailable(Exception):
    """No reply from the daemon within the retries."""


class ServiceError(Exception):
    """The daemon answered with an error; the text is its message, ``kind`` what to do about it."""

    def __init__(self, message: str, kind: protocol.ErrorKind = protocol.ErrorKind.REFUSED):
        super().__init__(message)
        self.kind = kind


class NoDaemon(Exception):
    """No daemon serves this dataset."""


# ---- what both faces share ------------------------------------------------------------------
def request_ids() -> Iterator[int]:
    """Request numbers, from a random start: a reply to another process's request, or to one of
    ours given up on, is not taken for the answer."""
    return itertools.count(int.from_bytes(os.urandom(3), "big") << 20)


def endpoint_of(dataset: Path) -> str:
    """The control endpoint of the daemon serving ``dataset``."""
    rec = running(dataset)
    if rec is None or not rec.get("endpoint"):
        raise NoDaemon(f"no statesvc daemon serves {dataset}")
    return rec["endpoint"]


def connect(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    """``sock`` connected to one of the daemon's endpoints, a CURVE client on tcp; closed if it cannot be."""
    try:
        if endpoint.startswith("tcp://"):
            secure_client(sock)
        sock.connect(connectable(endpoint))
    except BaseException:
        sock.close(0)
        raise
    return sock


def open_socket(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A DEALER connected to ``endpoint`` (a CURVE client on tcp); an async one from an async context."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    return connect(s, endpoint)


def frame(op: str, rid: int, fields: dict) -> bytes:
    """A request on the wire; one over the daemon's limit is refused here, unsent."""
    payload = orjson.dumps({"op": op, "rid": rid, **fields})
    if len(payload) > protocol.MAX_MESSAGE:
        raise ServiceError(f"request of {len(payload)} bytes exceeds {protocol.MAX_MESSAGE}")
    return payload


def decode(raw: bytes) -> dict | None:
    """A reply frame as its object; None for what is not a JSON object (skipped, as any late noise)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None


def answer(msg: dict) -> dict:
    """A reply's body, or the daemon's error raised as a ``ServiceError`` of its kind."""
    if not msg.get("ok"):
        raise ServiceError(str(msg.get("error")), protocol.error_kind(msg))
    return msg


# ---- the sync face --------------------------------------------------------------------------
class Client:
    """One socket kept for the client's life; ``call`` resends on a fresh socket after a timeout."""

    def __init__(self, endpoint: str, timeout: float = 5.0, retries: int = 3,
                 ctx: zmq.Context | None = None):
        self.endpoint = connectable(endpoint)
        self.timeout = timeout
        self.retries = retries
        self.ctx = ctx or zmq.Context.instance()
        self._rids = request_ids()
        self.sock: zmq.Socket = open_socket(self.ctx, self.endpoint)

    @classmethod
    def for_dataset(cls, dataset: Path, **kw: object) -> Client:
        return cls(endpoint_of(dataset), **kw)  # type: ignore[arg-type]

    def reconnect(self) -> None:
        self.sock.close(0)
        self.sock = open_socket(self.ctx, self.endpoint)

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- pipelined use (generators) --------------------------------------
    def send(self, op: str, **fields: object) -> int:
        rid = next(self._rids)
        self.resend(rid, op, **fields)
        return rid

    def resend(self, rid: int, op: str, **fields: object) -> None:
        try:
            self.sock.send(orjson.dumps({"op": op, "rid": rid, **fields}), zmq.NOBLOCK)
        except zmq.Again:
            pass  # queue full while the daemon is away: the caller's resend covers it

    def replies(self, timeout: float) -> list[dict]:
        """Every reply that arrives within ``timeout`` seconds (at least one poll)."""
        out = []
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            while True:
                try:
                    raw = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if (msg := decode(raw)) is not None:
                    out.append(msg)
        return out

    # ---- one request, one reply (Lazy Pirate) -----------------------------
    def call(self, op: str, **fields: object) -> dict:
        rid = next(self._rids)
        payload = frame(op, rid, fields)
        for attempt in range(self.retries):
            deadline = time.monotonic() + self.timeout
            try:
                self.sock.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                pass
            while (left := deadline - time.monotonic()) > 0:
                for msg in self.replies(left):
                    if msg.get("rid") == rid:
                        return answer(msg)
            if attempt + 1 < self.retries:
                self.reconnect()  # the zguide's Lazy Pirate: a fresh socket for the resend
        raise Unavailable(f"no reply from {self.endpoint} after {self.retries} tries")


# ---- the async face -------------------------------------------------------------------------
class AsyncClient:
    """Requests over zmq.asyncio, one socket per request and no resend: the endpoint is looked up
    at each request, so a daemon that restarted (or moved endpoint) is found again at the next one."""

    def __init__(self, endpoint: str | Callable[[], str], ctx: zmq.asyncio.Context, timeout: float = 5.0):
        self._where = endpoint if callable(endpoint) else (lambda: endpoint)
        self.ctx = ctx
        self.timeout = timeout
        self._rids = request_ids()

    @classmethod
    def for_dataset(cls, dataset: Path, ctx: zmq.asyncio.Context, timeout: float = 5.0) -> AsyncClient:
        """A client of whichever daemon serves ``dataset`` at each request (``NoDaemon`` when none does)."""
        return cls(lambda: endpoint_of(dataset), ctx, timeout)

    async def call(self, op: str, timeout: float | None = None, **fields: object) -> dict:
        timeout = self.timeout if timeout is None else timeout
        endpoint = self._where()
        sock = open_socket(self.ctx, endpoint)
        try:
            rid = next(self._rids)
            await sock.send(frame(op, rid, fields))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not await sock.poll(left * 1000):
                    break
                msg = decode(await sock.recv())
                if msg is not None and msg.get("rid") == rid:
                    return answer(msg)
            raise Unavailable(f"no reply from {connectable(endpoint)} within {timeout:g} s")
        finally:
            sock.close(0)
