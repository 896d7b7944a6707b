"""The table's queries of the copy: a view (filters, search, sort, page), its rows, an entry's neighbours in it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statesvc.entry import STATUSES, Entry, Stage

from .columns import STAGE_CODE, STATUS_CODE
from .flags import BIT, Flag

SORTS = ("id", "-id", "duration", "-duration", "cps", "-cps", "updated", "-updated", "cer", "-cer")
MISMATCH = "mismatch"  # the flag filter's value for a take the judge found saying something else
MAX_LIMIT = 500


class QueryError(ValueError):
    """A query that cannot be answered as asked; the text says why."""


@dataclass(frozen=True)
class Query:
    status: str | None = None
    flag: str | None = None       # a Flag value, "any" (some flag) or "none"
    review: str | None = None     # approved, rejected, unreviewed
    q: str = ""
    sort: str = "id"
    offset: int = 0
    limit: int = 50

    def check(self) -> Query:
        if self.status is not None and self.status not in STATUSES:
            raise QueryError(f"status must be one of {', '.join(STATUSES)}")
        if self.flag is not None and self.flag not in ("any", "none", MISMATCH, *Flag.__members__.values()):
            raise QueryError(f"flag must be any, none, {MISMATCH} or one of {', '.join(Flag.__members__.values())}")
        if self.review is not None and self.review not in ("approved", "rejected", "unreviewed"):
            raise QueryError("review must be approved, rejected or unreviewed")
        if self.sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}")
        if not 0 <= self.offset <= 10**9 or not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"offset must be 0 or more and limit from 1 to {MAX_LIMIT}")
        if len(self.q) > 200:
            raise QueryError("q must be at most 200 characters")
        return self


class Queries:
    """The queries of a Mirror, over its columns: a Mirror is one (it inherits them), and they read
    its columns below, its ``by_name``, its rows (``row``), flags (``bits``) and search (``_search``)."""

    entries: list[Entry]
    status: np.ndarray
    stage: np.ndarray
    verdict: np.ndarray
    duration: np.ndarray
    chars: np.ndarray
    cer: np.ndarray
    updated: np.ndarray

    def select(self, query: Query) -> tuple[int, list[dict]]:
        """(how many entries match, the page asked for)."""
        q = query.check()
        idx = self.matching(q)
        page = self._page(idx, q.sort, q.offset, q.limit)
        return len(idx), [self.row(int(i)) for i in page]

    def matching(self, q: Query) -> np.ndarray:
        n = len(self.entries)
        mask = np.ones(n, bool)
        if q.status is not None:
            mask &= self.status[:n] == STATUS_CODE[q.status]
        if q.flag is not None:
            bits = self.bits()[:n]
            mismatch = self.stage[:n] == STAGE_CODE[Stage.FLAGGED]
            if q.flag == "any":
                mask &= (bits != 0) | mismatch
            elif q.flag == "none":
                mask &= (bits == 0) & ~mismatch
            elif q.flag == MISMATCH:
                mask &= mismatch
            else:
                mask &= (bits & BIT[Flag(q.flag)]) != 0
        if q.review is not None:
            mask &= self.verdict[:n] == {"unreviewed": 0, "approved": 1, "rejected": 2}[q.review]
        idx = np.flatnonzero(mask)
        if q.q:
            idx = idx[self._search(q.q.lower())[idx]]
        return idx

    def neighbours(self, filename: str, query: Query) -> tuple[str | None, str | None]:
        """The entries before and after ``filename`` in a view of the table (its filters and sort):
        the next and previous keys of a review go through the same list the table shows."""
        i = self.by_name.get(filename)
        if i is None:
            return None, None
        idx = self.matching(query.check())
        if query.sort not in ("id", "-id"):  # the entry's rank by its key, not a sort of the whole view
            keys = self._keys(idx, query.sort)
            k = int(np.searchsorted(idx, i))
            if k == len(idx) or idx[k] != i:  # no longer in the view: go on from its start
                return None, self._name(first(keys, idx))
            v = keys[k]
            before = (keys < v) | ((keys == v) & (idx < i))
            after = (keys > v) | ((keys == v) & (idx > i))
            return self._name(last(keys[before], idx[before])), self._name(first(keys[after], idx[after]))
        order = self._page(idx, query.sort, 0, len(idx))
        at = np.flatnonzero(order == i)
        if len(at) == 0:  # no longer in the view (reviewed, requeued): go on from where it would be
            k = int(np.searchsorted(idx, i)) if query.sort == "id" else 0
            prev = order[k - 1] if 0 < k <= len(order) else None
            nxt = order[k] if k < len(order) else None
        else:
            k = int(at[0])
            prev = order[k - 1] if k > 0 else None
            nxt = order[k + 1] if k + 1 < len(order) else None
        return (None if prev is None else self.entries[int(prev)].filename,
                None if nxt is None else self.entries[int(nxt)].filename)

    def _name(self, i: int | None) -> str | None:
        return None if i is None else self.entries[int(i)].filename

    def _page(self, idx: np.ndarray, sort: str, offset: int, limit: int) -> np.ndarray:
        if sort in ("id", "-id"):
            return (idx[::-1] if sort == "-id" else idx)[offset:offset + limit]
        values = self._keys(idx, sort)
        end = offset + limit
        if end < len(idx) // 4:  # the first pages of a big set: a partial sort
            part = np.argpartition(values, end)[:end]
            order = part[np.lexsort((idx[part], values[part]))]
        else:
            order = np.lexsort((idx, values))
        return idx[order[offset:end]]

    def _keys(self, idx: np.ndarray, sort: str) -> np.ndarray:
        """What a view sorted by ``sort`` (not by id) is ordered on, ascending; ties go by id."""
        key = sort.lstrip("-")
        desc = sort.startswith("-")
        if key == "duration":
            values = self.duration[idx]
        elif key == "cps":
            with np.errstate(divide="ignore", invalid="ignore"):
                values = self.chars[idx] / self.duration[idx]
        elif key == "cer":
            values = self.cer[idx].astype(np.float64)
        else:
            values = self.updated[idx]
        values = np.where(np.isnan(values), np.inf if not desc else -np.inf, values)  # unknown last
        return -values if desc else values


def first(keys: np.ndarray, idx: np.ndarray) -> int | None:
    """The position that comes first in (key, id) order."""
    if len(idx) == 0:
        return None
    return int(idx[keys == keys.min()].min())


def last(keys: np.ndarray, idx: np.ndarray) -> int | None:
    if len(idx) == 0:
        return None
    return int(idx[keys == keys.max()].max())
