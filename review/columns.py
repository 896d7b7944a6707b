"""The numpy columns beside the page's entries: their codes, growing them, an entry's position by id or filename."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from statesvc.entry import STATUSES, Stage, Verdict

STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
VERDICT_CODE = {None: 0, Verdict.APPROVED: 1, Verdict.REJECTED: 2}
STAGE_CODE = {s: i for i, s in enumerate(Stage)}
STAGES = list(Stage)


class Names:
    """Filename -> position, through the entry's id: the dict's values are the id objects the
    entries hold, not an int object per position (28 MB at a million)."""

    def __init__(self, ids: dict[str, int], pos: Positions):
        self.ids = ids
        self.pos = pos

    def get(self, name: str, default: int | None = None) -> int | None:
        eid = self.ids.get(name)
        return default if eid is None else self.pos.get(eid, default)

    def __getitem__(self, name: str) -> int:
        i = self.get(name)
        if i is None:
            raise KeyError(name)
        return i

    def __contains__(self, name: str) -> bool:
        return name in self.ids

    def __setitem__(self, name: str, eid: int) -> None:
        self.ids[name] = eid

    def __len__(self) -> int:
        return len(self.ids)


class Positions:
    """Entry id -> position: an array when ids are dense (as ``add`` makes them), not a dict of a
    million ints (40 MB at a million)."""

    def __init__(self, ids: list[int], at: Iterable[int]):
        top = max(ids, default=0)
        self.sparse: dict[int, int] | None = None  # ids far apart (a hand-made file): a dict after all
        if top > 4 * len(ids) + 100_000:
            self.sparse, self.array = dict(zip(ids, at, strict=True)), np.empty(0, np.int64)
            return
        self.array = np.full(top + 1, -1, np.int64)
        self.array[np.array(ids, np.int64)] = np.fromiter(at, np.int64, len(ids))

    def get(self, eid: int, default: int | None = None) -> int | None:
        if self.sparse is not None:
            return self.sparse.get(eid, default)
        if 0 <= eid < len(self.array) and (i := int(self.array[eid])) >= 0:
            return i
        return default

    def __getitem__(self, eid: int) -> int:
        i = self.get(eid)
        if i is None:
            raise KeyError(eid)
        return i

    def __contains__(self, eid: int) -> bool:
        return self.get(eid) is not None

    def __setitem__(self, eid: int, i: int) -> None:
        if self.sparse is None and eid > 4 * len(self.array) + 100_000:
            self.sparse = {int(k): int(v) for k, v in enumerate(self.array) if v >= 0}
        if self.sparse is not None:
            self.sparse[eid] = i
            return
        if eid >= len(self.array):
            self.array = grown(self.array, max(eid + 1, 2 * len(self.array)), -1)
        self.array[eid] = i


def grown(col: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """A column of ``size`` rows holding ``col``'s, the new ones ``fill``."""
    out = np.full(size, fill, col.dtype)
    out[:len(col)] = col
    return out
