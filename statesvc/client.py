"""Talking to the daemon: Lazy Pirate requests and pipelined sends over a DEALER socket.

Every request carries a number (``rid``); a reply with another number is a late
answer to something already given up on and is dropped. Updates are idempotent,
so resending after a timeout is always safe.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import orjson
import zmq

from . import protocol
from .curve import secure_client
from .endpoints import connectable, running


class Unavailable(Exception):
    """No reply from the daemon within the retries."""


class ServiceError(Exception):
    """The daemon answered with an error; the text is its message, ``kind`` what to do about it."""

    def __init__(self, message: str, kind: protocol.ErrorKind = protocol.ErrorKind.REFUSED):
        super().__init__(message)
        self.kind = kind


class NoDaemon(Exception):
    """No daemon serves this dataset."""


class Client:
    def __init__(self, endpoint: str, timeout: float = 5.0, retries: int = 3,
                 ctx: zmq.Context | None = None):
        self.endpoint = connectable(endpoint)
        self.timeout = timeout
        self.retries = retries
        self.ctx = ctx or zmq.Context.instance()
        self._rids = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)
        self.sock: zmq.Socket = self._connect()

    @classmethod
    def for_dataset(cls, dataset: Path, **kw: object) -> Client:
        rec = running(dataset)
        if rec is None or not rec.get("endpoint"):
            raise NoDaemon(f"no statesvc daemon serves {dataset}")
        return cls(rec["endpoint"], **kw)  # type: ignore[arg-type]

    def _connect(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            if self.endpoint.startswith("tcp://"):
                secure_client(s)
            s.connect(self.endpoint)
        except BaseException:
            s.close(0)
            raise
        return s

    def reconnect(self) -> None:
        self.sock.close(0)
        self.sock = self._connect()

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- pipelined use (generators) --------------------------------------
    def send(self, op: str, **fields: object) -> int:
        rid = next(self._rids)
        try:
            self.sock.send(orjson.dumps({"op": op, "rid": rid, **fields}), zmq.NOBLOCK)
        except zmq.Again:
            pass  # queue full while the daemon is away: the caller's resend covers it
        return rid

    def resend(self, rid: int, op: str, **fields: object) -> None:
        try:
            self.sock.send(orjson.dumps({"op": op, "rid": rid, **fields}), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def replies(self, timeout: float) -> list[dict]:
        """Every reply that arrives within ``timeout`` seconds (at least one poll)."""
        out = []
        if self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            while True:
                try:
                    frame = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = orjson.loads(frame)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(msg, dict):
                    out.append(msg)
        return out

    # ---- one request, one reply (Lazy Pirate) -----------------------------
    def call(self, op: str, **fields: object) -> dict:
        rid = next(self._rids)
        payload = orjson.dumps({"op": op, "rid": rid, **fields})
        if len(payload) > protocol.MAX_MESSAGE:
            raise ServiceError(f"request of {len(payload)} bytes exceeds {protocol.MAX_MESSAGE}")
        for attempt in range(self.retries):
            deadline = time.monotonic() + self.timeout
            try:
                self.sock.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                pass
            while (left := deadline - time.monotonic()) > 0:
                for msg in self.replies(left):
                    if msg.get("rid") == rid:
                        if not msg.get("ok"):
                            raise ServiceError(str(msg.get("error")), protocol.error_kind(msg))
                        return msg
            if attempt + 1 < self.retries:
                self.reconnect()  # the zguide's Lazy Pirate: a fresh socket for the resend
        raise Unavailable(f"no reply from {self.endpoint} after {self.retries} tries")
