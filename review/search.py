"""The search of the entries' filenames and texts: every row in one byte buffer, scanned with numpy."""

from __future__ import annotations

from array import array
from collections.abc import Iterable

import numpy as np

from statesvc.entry import Entry

from .view import ViewEntry


def searchable(e: Entry | ViewEntry) -> str:
    """What a search looks in: the filename and the text, lowercased (the needle is too)."""
    return f"{e.filename}\t{e.text}".lower()


class Haystack:
    """Every entry's searchable row as one UTF-8 buffer, each row ended by 0xFF (a byte UTF-8
    never holds, so no needle does either), and where each row ends. Half the memory of a string
    per row (134 MB against 210 MB at a million). A search scans the buffer a block of whole rows
    at a time (a match never crosses a row's end, so never a block's edge): numpy finds the
    needle's rarest byte, then checks its other bytes at the places found. Rows changed or added
    since the build are kept aside as strings, and searched as such, until there are enough of
    them to build it again."""

    BLOCK = 1 << 22      # bytes scanned at a time: bounds the scan's temporary arrays
    REBUILD_AT = 50_000  # rows kept aside

    def __init__(self, rows: Iterable[str]):
        buf, ends, at = bytearray(), array("q"), 0
        for row in rows:
            b = row.encode()
            buf += b
            buf += b"\xff"
            at += len(b) + 1
            ends.append(at)
        self.buf = buf  # never resized after this: numpy views of it are taken
        self.ends = np.frombuffer(ends, np.int64)
        self.rows = len(self.ends)
        self.bytes = np.frombuffer(self.buf, np.uint8)
        # blocks of whole rows, about BLOCK bytes each: (first row, row after the last)
        cuts = np.unique(np.searchsorted(self.ends, np.arange(self.BLOCK, at, self.BLOCK), side="left") + 1)
        bounds = [0, *(int(c) for c in cuts if c < self.rows), self.rows]
        self.blocks = [(r0, r1) for r0, r1 in zip(bounds, bounds[1:], strict=False) if r1 > r0]
        self.frequency = np.zeros(256, np.int64)
        for r0, r1 in self.blocks:
            self.frequency += np.bincount(self._segment(r0, r1)[1], minlength=256)
        self.aside: dict[int, str] = {}

    def set(self, i: int, row: str) -> None:
        self.aside[i] = row

    def stale(self) -> bool:
        return len(self.aside) > self.REBUILD_AT

    def _segment(self, r0: int, r1: int) -> tuple[int, np.ndarray]:
        lo = int(self.ends[r0 - 1]) if r0 else 0
        return lo, self.bytes[lo:int(self.ends[r1 - 1])]

    def find(self, needle: str, n: int) -> np.ndarray:
        """A mask of the first ``n`` rows: True where the row holds ``needle`` (lowercased)."""
        if not needle:
            return np.ones(n, bool)
        hits = np.zeros(max(n, self.rows), bool)
        aside = dict(self.aside)  # a copy in one step: the event loop may set a row meanwhile
        nb = needle.encode()
        width = len(nb)
        k = min(range(width), key=lambda j: self.frequency[nb[j]])  # the rarest byte: fewest places
        for r0, r1 in self.blocks:
            lo, seg = self._segment(r0, r1)
            eq = seg == nb[k]
            if width == 1:  # a row holds it when any of its bytes is it
                starts = np.empty(r1 - r0, np.int64)
                starts[0] = 0
                starts[1:] = self.ends[r0:r1 - 1] - lo
                hits[r0:r1] |= np.logical_or.reduceat(eq, starts)
                continue
            pos = np.flatnonzero(eq)
            pos -= k
            pos = pos[(pos >= 0) & (pos <= len(seg) - width)]
            for j in range(width):
                if j != k and len(pos):
                    pos = pos[seg[pos + j] == nb[j]]
            hits[r0 + np.searchsorted(self.ends[r0:r1] - lo, pos, side="right")] = True
        for i, row in aside.items():
            if i < len(hits):
                hits[i] = needle in row
        return hits[:n]
