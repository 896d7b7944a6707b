"""The daemon's change events and the gap detection every subscriber shares: commits of a real
daemon arrive in order and apply; a subscriber that was away, a commit that came without its
end or its entries, and entries whose commit's end was lost are each said to be missed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from statesvc import events
from statesvc.client import Client
from statesvc.endpoints import running
from statesvc.events import AsyncSubscriber, Beat, Commit, Follow, Subscriber, follow
from tests.support.books import make_dataset
from tests.support.processes import wait_for


def next_commit(sub: Subscriber, timeout: float = 10.0) -> Commit:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = sub.receive(0.2)
        if isinstance(event, Commit):
            return event
    raise AssertionError(f"no commit event within {timeout} s")


def joined(sub: Subscriber, c: Client) -> Commit:
    """The first commit seen: a subscription takes a moment to join, so commit until one arrives."""
    got: list[Commit] = []

    def seen() -> bool:
        c.call("add", items=[[None, "otra"]], prefix="ds")
        event = sub.receive(0.2)
        while event is not None and not isinstance(event, Commit):
            event = sub.receive(0.2)
        if event is not None:
            got.append(event)
        return bool(got)
    wait_for(seen, 15, "a commit event")
    return got[0]


def test_a_daemons_commits_follow_one_another_and_a_subscriber_away_misses_some(tmp_path: Path,
                                                                                start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(6)])
    start_daemon(ds)
    where = running(ds)["events"]
    with Client.for_dataset(ds) as c, Subscriber(where) as sub:
        held = joined(sub, c).seq
        for n in (1, 3):
            c.call("claim", owner="g", n=n)
            commit = next_commit(sub)
            assert follow(held, commit) is Follow.APPLY and commit.whole and len(commit.entries) == n
            held = commit.seq
        assert follow(held, Beat(held, [])) is Follow.HELD
        assert follow(held, commit) is Follow.HELD  # already held: a commit replayed after a reload
    for _ in range(2):  # made while nobody listened
        with Client.for_dataset(ds) as c:
            c.call("claim", owner="g", n=1)
    with Client.for_dataset(ds) as c, Subscriber(where) as sub:
        back = joined(sub, c)
        assert back.seq > held + 1 and follow(held, back) is Follow.MISSED
        assert events.missed(held, back) == f"commit {back.seq} after {held}"
        deadline = time.monotonic() + 10
        while not isinstance(beat := sub.receive(0.5), Beat):  # the daemon beats between commits
            assert time.monotonic() < deadline, "no beat within 10 s"
        assert beat.seq >= back.seq and follow(held, beat) is Follow.MISSED
        assert follow(beat.seq, beat) is Follow.HELD


@pytest.fixture
def publisher(tmp_path: Path):
    """A real PUB socket speaking the daemon's events, for what a daemon cannot be made to do on
    cue: lose a commit's end or some of its entries (a full queue drops them)."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path / 'events.sock'}"
    pub.bind(endpoint)
    yield endpoint, pub
    pub.close(0)
    ctx.term()


def send(pub: zmq.Socket, *messages: tuple[bytes, bytes]) -> None:
    for topic, body in messages:
        pub.send_multipart([topic, body])


TORN = [  # after commit 4 is held, as (messages, what the subscriber receives, what follow says)
    ([(events.ENTRY, b"{}"), (events.COMMIT, events.commit_body(5, 1))], (Commit, 5, 1), Follow.APPLY),
    ([(events.ENTRY, b"{}"), (events.COMMIT, events.commit_body(5, 2))], (Commit, 5, 1), Follow.MISSED),
    ([(events.ENTRY, b"{}"), (events.BEAT, events.beat_body(4))], (Beat, 4, 1), Follow.MISSED),
    ([(events.COMMIT, b"garbled"), (events.BEAT, events.beat_body(4))], (Beat, 4, 0), Follow.HELD),
    ([(b"other", b"{}"), (events.BEAT, events.beat_body(6))], (Beat, 6, 0), Follow.MISSED),
]


def test_torn_commits_are_missed_by_the_sync_subscriber(publisher) -> None:
    endpoint, pub = publisher
    with Subscriber(endpoint) as sub:
        wait_for(lambda: send(pub, (events.BEAT, events.beat_body(4))) or sub.receive(0.1), 10, "a subscription")
        while sub.receive(0.1) is not None:
            pass
        for messages, expected, verdict in TORN:
            send(pub, *messages)
            event = sub.receive(5)
            assert event is not None and shape(event) == expected and follow(4, event) is verdict, messages


def test_torn_commits_are_missed_alike_by_the_async_subscriber(publisher) -> None:
    endpoint, pub = publisher

    async def receive(sub: AsyncSubscriber, timeout: float) -> events.Event | None:
        try:
            return await asyncio.wait_for(sub.receive(), timeout)
        except TimeoutError:
            return None

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sub = AsyncSubscriber(endpoint, ctx)
        try:
            deadline = time.monotonic() + 10
            while send(pub, (events.BEAT, events.beat_body(4))) or await receive(sub, 0.1) is None:
                assert time.monotonic() < deadline, "no subscription within 10 s"
            while await receive(sub, 0.1) is not None:
                pass
            for messages, expected, verdict in TORN:
                send(pub, *messages)
                event = await receive(sub, 5)
                assert event is not None and shape(event) == expected and follow(4, event) is verdict, messages
        finally:
            sub.close()
            ctx.term()
    asyncio.run(main())


def shape(event: events.Event) -> tuple[type, int, int]:
    return type(event), event.seq, len(event.entries if isinstance(event, Commit) else event.unfinished)
