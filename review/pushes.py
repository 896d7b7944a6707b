"""What the open pages are pushed (Server-Sent Events): the overview and the rows changed, or a fresh snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson

from .mirror import Mirror

CLIENT_QUEUE = 64       # pushes a tab may fall behind by before it is sent a fresh snapshot instead


class Pushes:
    """A queue per open page's event stream; a tab that falls behind is sent a fresh snapshot."""

    def __init__(self) -> None:
        self.clients: set[asyncio.Queue] = set()
        self.last = ""  # the overview pushed last: not pushed again unchanged

    def push(self, m: Mirror | None, overview: Callable[[], dict]) -> None:
        """The overview if it changed, and the rows changed since the last push (a snapshot when
        there are many)."""
        if not self.clients:
            if m is not None:
                m.changed.clear()
            return
        ov = orjson.dumps(overview()).decode()
        if ov != self.last:
            self.last = ov
            self.broadcast("overview", ov)
        if m is not None and m.changed:
            ids, m.changed = list(m.changed), set()
            if len(ids) > 200:
                self.broadcast("snapshot", {})
            else:
                self.broadcast("entries", [m.row(m.pos[i]) for i in ids if i in m.pos])

    def broadcast(self, event: str, data: object) -> None:
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        for q in list(self.clients):
            try:
                q.put_nowait((event, text))
            except asyncio.QueueFull:  # a tab that fell behind: drop what it missed, send a fresh start
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(("snapshot", "{}"))

    async def stream(self, overview: Callable[[], dict]) -> AsyncIterator[dict]:
        """One page's events: the overview at once, then what is broadcast."""
        q: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self.clients.add(q)
        try:
            yield {"event": "overview", "data": orjson.dumps(overview()).decode()}
            while True:
                event, data = await q.get()
                yield {"event": event, "data": data}
        finally:
            self.clients.discard(q)
