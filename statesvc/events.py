"""The daemon's change events: their topics, encoding and decoding, and subscribers that notice missed
events.

After each commit the daemon publishes each entry it wrote (topic ``entry``, the entry as JSON),
then the commit's end (``commit``: its number and how many entries it wrote); between commits, now
and then, the number of its last commit (``beat``). Events are dropped when a subscriber's queue is
full, so a subscriber holding the state up to commit N applies commit N+1 only if it came whole;
anything else after N (``follow`` says ``MISSED``) means it must read the state again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import zmq

from .client import connect

if TYPE_CHECKING:  # not imported at run time: the daemon and the CLI need no asyncio
    import zmq.asyncio

ENTRY = b"entry"    # one entry a commit wrote, whole, as JSON
COMMIT = b"commit"  # a commit's end: {"seq": N, "entries": how many it wrote}
BEAT = b"beat"      # between commits: {"seq": N}, the last commit's number
HWM = 100_000       # events a subscriber's queue holds before the daemon's newest are dropped


def commit_body(seq: int, entries: int) -> bytes:
    return orjson.dumps({"seq": seq, "entries": entries})


def beat_body(seq: int) -> bytes:
    return orjson.dumps({"seq": seq})


@dataclass(frozen=True)
class Commit:
    """A commit's events: the entries received before its end, and how many it said it wrote."""

    seq: int
    entries: list[bytes]
    declared: int

    @property
    def whole(self) -> bool:
        return self.declared == len(self.entries)


@dataclass(frozen=True)
class Beat:
    """The daemon's last commit; ``unfinished`` the entries received whose commit's end never came."""

    seq: int
    unfinished: list[bytes]


Event = Commit | Beat


class Follow(enum.Enum):
    """What an event means to a subscriber holding the state up to a commit."""

    APPLY = "apply"    # the next commit, whole: apply its entries
    HELD = "held"      # nothing new: a commit already held, or a beat at the commit held
    MISSED = "missed"  # events were lost: read the state again


def follow(held: int, event: Event) -> Follow:
    """The gap detection, by the commits' numbers: what ``event`` means after commit ``held``."""
    if isinstance(event, Beat):
        return Follow.MISSED if event.unfinished or event.seq > held else Follow.HELD
    if event.seq <= held:
        return Follow.HELD
    return Follow.APPLY if event.seq == held + 1 and event.whole else Follow.MISSED


def missed(held: int, event: Event) -> str:
    """Which events were missed, for a log line."""
    if isinstance(event, Beat):
        return f"the daemon is at commit {event.seq}, we at {held}"
    return f"commit {event.seq} after {held}"


class Assembler:
    """Frames into events: a commit's entries are kept until its end arrives."""

    def __init__(self) -> None:
        self.batch: list[bytes] = []

    def feed(self, frames: list[bytes]) -> Event | None:
        """The event that ``frames`` (one message: topic, body) completes, if any; what is not an
        event of ours is skipped."""
        if len(frames) != 2:
            return None
        topic, body = frames
        if topic == ENTRY:
            self.batch.append(body)
            return None
        if topic not in (COMMIT, BEAT):
            return None
        try:
            marker = orjson.loads(body)
            seq = int(marker["seq"])
            declared = int(marker["entries"]) if topic == COMMIT else 0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        batch, self.batch = self.batch, []
        return Commit(seq, batch, declared) if topic == COMMIT else Beat(seq, batch)


def subscribe(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """A SUB socket on the daemon's events (a CURVE client on tcp), every topic; async from an async context."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, HWM)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    return connect(sub, endpoint)


class Subscriber:
    """The daemon's events as ``Commit`` and ``Beat`` values, waiting with a timeout."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None):
        self.sock = subscribe(ctx or zmq.Context.instance(), endpoint)
        self.frames = Assembler()

    def receive(self, timeout: float) -> Event | None:
        """The next event, or None when none is complete within ``timeout`` seconds of waiting."""
        while self.sock.poll(int(timeout * 1000)):
            event = self.frames.feed(self.sock.recv_multipart())
            if event is not None:
                return event
        return None

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSubscriber:
    """The daemon's events as ``Commit`` and ``Beat`` values, over zmq.asyncio."""

    def __init__(self, endpoint: str, ctx: zmq.asyncio.Context):
        self.sock = subscribe(ctx, endpoint)
        self.frames = Assembler()

    async def receive(self) -> Event:
        """The next event; a ``zmq.ZMQError`` once the subscriber is closed."""
        while True:
            event = self.frames.feed(await self.sock.recv_multipart())
            if event is not None:
                return event

    def close(self) -> None:
        self.sock.close(0)
