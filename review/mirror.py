"""The dashboard's copy of a dataset's state: loaded from the files, kept current by the daemon's
change events, and indexed for the queries of a review page at a million entries.

It never writes anything. Every column a query filters or sorts on is a numpy array beside the
entries (status, duration, characters, flags, verdict), so a filter is a mask and a page of a
sort is a partial sort: tens of milliseconds at 1,000,000 entries, where a Python loop over the
entries takes seconds.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np

from statesvc.entry import STATUSES, Entry, Stage, Status
from statesvc.loader import Loaded, read

from .columns import STAGE_CODE, STAGES, STATUS_CODE, VERDICT_CODE, Names, Positions, grown
from .flags import BIT, Fit, Flag, fit
from .query import Queries
from .search import Haystack, searchable
from .stamps import iso_of, stamp, stamps
from .stats import char_counts, check_rate, histograms, rate
from .view import Checks, ViewEntry, cer_of, check_dict, collecting, slim, slim_columns, stage_of

SEARCHES_KEPT = 8      # needles whose hits are kept
FIT_EVERY = 5.0        # seconds between refits of seconds against characters (a run changes it slowly)
AUDIO_FLAGS = Flag.LEAD_SILENCE, Flag.TRAIL_SILENCE, Flag.CLIPPING, Flag.QUIET
_AUDIO_MASK = sum(BIT[f] for f in AUDIO_FLAGS)
_decode_entry = msgspec.json.Decoder(Entry).decode


class Mirror(Queries):
    """Entries by position, their columns, and what the overview shows."""

    @classmethod
    def load(cls, dataset: Path, now: float | None = None) -> Mirror:
        """A dataset's state read as the page shows it: entries decoded into ViewEntry, their
        checks into columns as they are decoded."""
        with collecting() as decoded:
            loaded = read(dataset, view=ViewEntry)
        return cls(loaded, now, decoded)

    def __init__(self, loaded: Loaded, now: float | None = None, decoded: tuple[Checks, array] | None = None):
        """``decoded``: the checks the load took out of the entries, and the id of each."""
        state = loaded.state
        self.seq = max(loaded.head.seq, loaded.journal.last_seq)  # the last commit it holds
        self.sample_rate = state.sample_rate
        self.entries: list[Entry] = list(state.entries)
        for e in self.entries:
            slim(e)
        n = len(self.entries)
        self.pos = Positions([e.id for e in self.entries], range(n))
        self.by_name = Names({e.filename: e.id for e in self.entries}, self.pos)
        self.status = np.fromiter((STATUS_CODE[e.status] for e in self.entries), np.int8, n)
        self.duration = np.fromiter((np.nan if e.duration_seconds is None else e.duration_seconds
                                     for e in self.entries), np.float64, n)
        self.chars = np.fromiter((len(e.text) for e in self.entries), np.int32, n)
        self.updated = stamps([e.updated_at for e in self.entries])
        for e, known in zip(self.entries, ~np.isnan(self.updated), strict=True):
            slim_columns(e, known)  # now in the columns
        self.verdict = np.fromiter((VERDICT_CODE[e.review.verdict if e.review else None] for e in self.entries),
                                   np.int8, n)
        self.stage = np.fromiter((STAGE_CODE[stage_of(e)] for e in self.entries), np.int8, n)
        self.check = Checks() if decoded is None else decoded[0]
        self.check.row_of = np.full(n, -1, np.int32)
        if decoded is not None:
            for row, eid in enumerate(decoded[1]):
                i = self.pos.get(eid)
                # the file's entry (a journal record replaces it with an Entry, its check its own;
                # a load tried again decodes it again: the last row is the one kept)
                if i is not None and isinstance(self.entries[i], ViewEntry):
                    self.check.row_of[i] = row
        for i, e in enumerate(self.entries):
            if e.check is not None:
                self.check.set(i, e.check)
                e.check = None  # now in the columns
        self.cer = self.check.cers(n)  # NaN: not checked
        self.checks: collections.deque[float] = collections.deque()  # when checks were reported (the rate)
        self.audio_bits = np.zeros(n, np.uint8)    # from the takes' analysis, filled in as it comes
        self.fit_bits = np.zeros(n, np.uint8)      # from the dataset's fit of seconds against characters
        self.fit: Fit | None = None
        self.fitted_at = 0.0
        self._haystack: Haystack | None = None     # built at the first search
        self._hits: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()  # needle -> rows holding it
        self.generating = {self.entries[i].id for i in np.flatnonzero(self.status == STATUS_CODE[Status.GENERATING])}
        failed = np.flatnonzero(self.status == STATUS_CODE[Status.FAILED])
        last = failed[np.argsort(np.nan_to_num(self.updated[failed], nan=-np.inf), kind="stable")[-20:]]
        self.failures: collections.deque[int] = collections.deque((self.entries[i].id for i in last), maxlen=20)
        self._coverage: collections.Counter[str] | None = None  # texts holding each character: at the first ask
        # Searches and the coverage are asked from worker threads (seconds at a million the first
        # time: not on the event loop), one at a time (_lock). Their indexes are built from a
        # snapshot of the entries; the texts changed since it are recorded (_since) and applied at
        # the hand-over. _swap, held for microseconds, makes a change and a snapshot or a hand-over
        # happen one after the other.
        self._lock = threading.Lock()
        self._swap = threading.Lock()
        self._since: list[tuple[int, str, Entry]] | None = None
        self.text_version = 0
        self.completions: collections.deque[tuple[float, int]] = collections.deque()
        self.changed: set[int] = set()  # ids changed since the page was last told
        self.refit(now or time.time())

    # ---- keeping current --------------------------------------------------------------------
    def apply(self, raw: bytes) -> Entry:
        """One change event: the entry as the daemon committed it."""
        e = slim(_decode_entry(raw))
        i = self.pos.get(e.id)
        if i is None:
            i = self._append(e)
        old = self.entries[i]
        with self._swap:  # the entry and its text's change at once, for a snapshot taken meanwhile
            self.entries[i] = e
            if e.text != old.text:
                self._text_changed(i, old.text, e)
        code = STATUS_CODE[e.status]
        if e.status == Status.COMPLETED and old.status != Status.COMPLETED:
            self.completions.append((time.monotonic(), 1))
        if e.status == Status.FAILED and old.status != Status.FAILED:
            self.failures.append(e.id)
        self.status[i] = code
        new_take = e.take != old.take or e.duration_seconds != self.duration_of(i)
        self.duration[i] = np.nan if e.duration_seconds is None else e.duration_seconds
        if e.text != old.text:
            self.chars[i] = len(e.text)
        self.updated[i] = stamp(e.updated_at)
        slim_columns(e, not np.isnan(self.updated[i]))
        self.verdict[i] = VERDICT_CODE[e.review.verdict if e.review else None]
        old_stage = STAGES[self.stage[i]]
        self.stage[i] = STAGE_CODE[stage_of(e)]
        self.cer[i] = cer_of(e.check)
        self.check.set(i, e.check)
        e.check = None
        if _checked(old_stage, old, e):
            self.checks.append(time.monotonic())
        if new_take:
            self.audio_bits[i] = 0  # another take: its analysis is to come
        if e.status == Status.GENERATING:
            self.generating.add(e.id)
        else:
            self.generating.discard(e.id)
        self.changed.add(e.id)
        self.unfitted = True
        return e

    def _append(self, e: Entry) -> int:
        i = len(self.entries)
        for name in ("status", "duration", "chars", "updated", "verdict", "audio_bits", "fit_bits", "stage", "cer"):
            col = getattr(self, name)  # first: a query in a worker thread never sees a row without columns
            if i >= len(col):
                setattr(self, name, grown(col, max(16, 2 * len(col)), np.nan if name == "cer" else 0))
        with self._swap:
            self.entries.append(e)
            self._text_changed(i, "", e)
        self.pos[e.id] = i
        self.by_name[e.filename] = e.id
        return i

    def _text_changed(self, i: int, old: str, e: Entry) -> None:
        """Keep the search and the coverage current for one text (a row of the haystack, not all of
        it), and tell a build in progress. Called under ``_swap``."""
        self.text_version += 1
        if self._since is not None:
            self._since.append((i, old, e))
        if self._coverage is not None:
            self._coverage.subtract(set(old.lower()))
            self._coverage.update(set(e.text.lower()))
        haystack = self._haystack
        if haystack is not None:
            haystack.set(i, searchable(e))
        self._hits.clear()

    def set_audio_flags(self, filename: str, take: str | None, bits: int) -> bool:
        """The analysis of an entry's take; ignored if the entry has another take by now."""
        i = self.by_name.get(filename)
        if i is None or self.entries[i].take != take or self.entries[i].status != Status.COMPLETED:
            return False
        self.audio_bits[i] = bits & _AUDIO_MASK
        return True

    def refit(self, now: float) -> None:
        """Fit seconds against characters over the completed takes; flag the ones far off it."""
        n = len(self.entries)
        done = self.status[:n] == STATUS_CODE[Status.COMPLETED]
        self.fit = fit(self.chars[:n][done], self.duration[:n][done])
        self.fit_bits = np.zeros(len(self.status), np.uint8)
        if self.fit is not None:
            self.fit_bits[:n] = np.where(done, self.fit.flags(self.chars[:n], self.duration[:n]), 0)
        self.fitted_at = now
        self.unfitted = False

    def refit_due(self, now: float) -> bool:
        # no fit yet (the first takes of a run): soon; afterwards the fit moves slowly
        return self.unfitted and now - self.fitted_at >= (1.0 if self.fit is None else FIT_EVERY)

    # ---- what the page asks -----------------------------------------------------------------
    def counters(self) -> dict:
        n = len(self.entries)
        counts = np.bincount(self.status[:n], minlength=len(STATUSES))
        done = self.status[:n] == STATUS_CODE[Status.COMPLETED]
        stages = np.bincount(self.stage[:n], minlength=len(STAGE_CODE))
        mismatched = int(stages[STAGE_CODE[Stage.FLAGGED]])
        return {"total": n, **{s: int(counts[i]) for i, s in enumerate(STATUSES)},
                "audio_seconds": round(float(np.nansum(self.duration[:n][done])), 3),
                "approved": int(np.count_nonzero(self.verdict[:n] == 1)),
                "rejected": int(np.count_nonzero(self.verdict[:n] == 2)),
                "flagged": int(np.count_nonzero(done & ((self.bits()[:n] != 0)
                                                        | (self.stage[:n] == STAGE_CODE[Stage.FLAGGED])))),
                "checked": int(stages[STAGE_CODE[Stage.CHECKED]]) + mismatched, "mismatched": mismatched,
                "check_waiting": int(stages[STAGE_CODE[Stage.WAITING]]),
                "checking": int(stages[STAGE_CODE[Stage.LEASED]])}

    def bits(self) -> np.ndarray:
        return self.audio_bits | self.fit_bits

    def overview(self, now_mono: float) -> dict:
        c = self.counters()
        rate = self.rate(now_mono)
        left = c["pending"] + c["generating"]
        return {**c, "rate": round(rate, 2), "eta_seconds": round(left / rate) if rate > 0 and left else None,
                "check_rate": round(self.check_rate(now_mono), 1),
                "generators": self.generators(), "failures": [self.row(self.pos[i]) for i in reversed(self.failures)
                                                              if i in self.pos and
                                                              self.entries[self.pos[i]].status == Status.FAILED]}

    def generators(self) -> list[dict]:
        held: dict[str, list[str]] = {}
        for eid in self.generating:
            e = self.entries[self.pos[eid]]
            if e.lease is not None:
                held.setdefault(e.lease.owner, []).append(e.filename)
        return [{"owner": o, "holding": len(names), "entries": sorted(names)[:8]} for o, names in sorted(held.items())]

    def _search(self, needle: str) -> np.ndarray:
        """Rows holding ``needle``; the last few needles are kept (paging, sorting and the review's next and
        previous ask the same one again), until a text changes."""
        with self._lock:
            with self._swap:
                hits = self._hits.get(needle)
                if hits is not None and len(hits) == len(self.entries):
                    self._hits.move_to_end(needle)
                    return hits
            if self._haystack is None or self._haystack.stale():
                with self._swap:
                    self._haystack = None  # not two of them while the next one is built
                with self._building():
                    haystack = Haystack(map(searchable, self._snapshot()))
                    with self._swap:
                        for i, _old, e in self._since or ():
                            haystack.set(i, searchable(e))
                        self._haystack = haystack
                    del haystack
            with self._swap:
                version = self.text_version
            hits = self._haystack.find(needle, len(self.entries))
            with self._swap:
                if version == self.text_version:  # else a text changed during the scan: not kept
                    self._hits[needle] = hits
                    while len(self._hits) > SEARCHES_KEPT:
                        self._hits.popitem(last=False)
            return hits

    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        """Around a build from ``_snapshot``: the changes recorded for it are dropped at its end,
        whether it handed its index over or failed (else they would pile up until the next build)."""
        try:
            yield
        finally:
            with self._swap:
                self._since = None

    def _snapshot(self) -> list[Entry]:
        """The entries as of now; every text changed from now on is recorded in ``_since``."""
        with self._swap:
            self._since = []
            return list(self.entries)

    def duration_of(self, i: int) -> float | None:
        d = float(self.duration[i])
        return None if np.isnan(d) else d

    def row(self, i: int) -> dict:
        e = self.entries[i]
        dur = self.duration_of(i)
        bits = int(self.audio_bits[i] | self.fit_bits[i])
        return {"id": e.id, "filename": e.filename, "text": e.text, "status": e.status, "duration_seconds": dur,
                "cps": round(len(e.text) / dur, 2) if dur else None, "attempts": e.attempts, "error": e.error,
                "updated_at": e.updated_at or iso_of(float(self.updated[i])), "take": e.take, "rev": e.rev,
                "review": e.review.to_dict() if e.review else None,
                "take_count": e.take_count, "stage": STAGES[self.stage[i]],
                "check": self.check.brief(i),  # the table's; the entry's view has all of it
                "owner": e.lease.owner if e.lease else None,
                "flags": [f.value for f in Flag if bits & BIT[f]]}

    def entry(self, filename: str) -> dict | None:
        i = self.by_name.get(filename)
        if i is None:
            return None
        row = self.row(i)
        row["check"] = check_dict(self.check.get(i), self.entries[i].take)
        if self.fit is not None:
            row["expected_seconds"] = round(self.fit.predicted(len(self.entries[i].text)), 2)
        row["earlier_checks"] = {x.file: x.check.to_dict() for x in self.entries[i].earlier or () if x.check}
        return row

    def coverage(self, alphabet: str = "ñáéíóúü¿¡") -> dict:
        """How many texts hold each character of ``alphabet`` (Spanish by default), and every
        character seen with its count of texts."""
        with self._lock:
            if self._coverage is None:
                with self._building():
                    counts = char_counts(e.text for e in self._snapshot())
                    with self._swap:
                        for _i, old, e in self._since or ():
                            counts.subtract(set(old.lower()))
                            counts.update(set(e.text.lower()))
                        self._coverage = counts
            with self._swap:  # a copy: the event loop's thread updates it
                counts = collections.Counter(self._coverage)
        return {"watched": {c: counts.get(c, 0) for c in alphabet},
                "characters": {c: n for c, n in counts.most_common() if n > 0}}


    def rate(self, now_mono: float) -> float:
        """Completions per second over the last minute."""
        return rate(self.completions, now_mono)

    def check_rate(self, now_mono: float) -> float:
        """Checks reported per minute over the last minute."""
        return check_rate(self.checks, now_mono)

    def histograms(self, bins: int = 30) -> dict:
        n = len(self.entries)
        done = (self.status[:n] == STATUS_CODE[Status.COMPLETED]) & ~np.isnan(self.duration[:n])
        dur = self.duration[:n][done]
        with np.errstate(divide="ignore", invalid="ignore"):
            cps = self.chars[:n][done] / dur
        return histograms(dur, cps, self.cer[:n][done], bins)


def _checked(old_stage: Stage, old: Entry | ViewEntry, new: Entry | ViewEntry) -> bool:
    """Whether this change is a check reported: a leased take judged (kept, or set aside for a retake)."""
    if old_stage != Stage.LEASED:
        return False
    return stage_of(new) in (Stage.CHECKED, Stage.FLAGGED) or len(new.earlier or ()) > len(old.earlier or ())
