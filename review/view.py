"""The entries and checks as the page holds them: only the fields it shows, checks compressed in blocks.

A load decodes the state's file straight into these (``collecting``), so the objects the page
never shows are never made: a hundred megabytes less at a million entries.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from array import array
from collections.abc import Iterator
from typing import ClassVar

import msgspec
import numpy as np

from statesvc.entry import Check, Earlier, Entry, Lease, Review, Stage, Status

from .columns import grown


class ViewCheck(msgspec.Struct, gc=False):
    """A check as the page sees it: Check's fields but its take (the entry's own: a check is of the
    current take) and what the judge learnt from it (seconds, characters); 160 bytes less a check,
    100 MB at 700,000 checks."""

    cer: float | None
    wer: float | None
    transcript: str
    model: str
    error: str | None
    wrong: bool = False
    reason: str | None = None
    threshold: float | None = None


def check_dict(check: Check | ViewCheck | None, take: str | None) -> dict | None:
    if check is None:
        return None
    return {"cer": check.cer, "wer": check.wer, "transcript": check.transcript, "model": check.model,
            "take": take, "error": check.error, "wrong": check.wrong, "reason": check.reason,
            "threshold": check.threshold}


def stage_of(e: Entry | ViewEntry) -> Stage:
    """An entry's check stage: a ViewEntry keeps it under another name (see ViewEntry)."""
    return e.check_stage if isinstance(e, ViewEntry) else e.stage


def _nan(x: float | None) -> float:
    return np.nan if x is None else x


def cer_of(check: Check | ViewCheck | None) -> float:
    return np.nan if check is None or check.cer is None else check.cer


class Checks:
    """The checks of the current takes, held compressed rather than as a struct, three float
    objects and a string each (200 MB at 700,000 checks). One row per check, appended: rows go
    by BLOCK_ROWS into a block (msgpack, then zlib: a few bytes a figure, transcripts a third of
    their size), the rows after the last block are kept as they are; ``row_of`` gives an entry
    position's row (-1: no check) and ``cer`` each row's CER for the table's column. Reading one
    check decompresses its block (tens of microseconds). A check replaced appends a row: they
    grow by what the run checks, and a reload starts them afresh. A load fills it as the file is
    decoded (``Mirror.load``), so the checks are never Python objects all at once."""

    BLOCK_ROWS = 256
    LEVEL = 1  # zlib's fastest: a load compresses every check of the dataset

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.tail: list[tuple] = []
        self.cer = array("d")  # each row's CER as written (NaN: none): the table shows it without its block
        self.rows = 0
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()  # a block made and the tail emptied at once, for a reader in a thread
        self.row_of = np.full(0, -1, np.int32)

    def add(self, check: Check | ViewCheck) -> int:
        model = self._models.setdefault(check.model, check.model)
        row = (check.cer, check.wer, check.threshold, check.wrong, model, check.error, check.reason,
               check.transcript)
        self.cer.append(_nan(check.cer))
        r = self.rows
        if len(self.tail) + 1 < self.BLOCK_ROWS:
            self.tail.append(row)
        else:
            block = zlib.compress(_pack([*self.tail, row]), self.LEVEL)
            with self._lock:
                self.blocks.append(block)
                self.tail = []
        self.rows += 1
        return r

    def set(self, i: int, check: Check | ViewCheck | None) -> None:
        if i >= len(self.row_of):
            self.row_of = grown(self.row_of, max(16, i + 1, 2 * len(self.row_of)), -1)
        self.row_of[i] = -1 if check is None else self.add(check)  # after the row: a reader sees it whole

    def get(self, i: int) -> ViewCheck | None:
        r = int(self.row_of[i]) if i < len(self.row_of) else -1
        if r < 0:
            return None
        b, k = divmod(r, self.BLOCK_ROWS)
        with self._lock:
            block = self.blocks[b] if b < len(self.blocks) else None
            row = self.tail[k] if block is None else None
        if block is not None:
            row = _unpack(zlib.decompress(block))[k]
        cer, wer, threshold, wrong, model, error, reason, transcript = row
        return ViewCheck(cer, wer, transcript, model, error, wrong, reason, threshold)

    def cers(self, n: int) -> np.ndarray:
        """The CER of each of the first ``n`` positions, float32 (the table's column), NaN: none."""
        out = np.full(n, np.nan, np.float32)
        rows = self.row_of[:n]
        has = rows >= 0
        out[:len(rows)][has] = np.frombuffer(self.cer, np.float64)[rows[has]]
        return out

    def brief(self, i: int) -> dict | None:
        """What the table shows of a position's check: its CER (None: the recognizer failed), no block read."""
        r = int(self.row_of[i]) if i < len(self.row_of) else -1
        if r < 0:
            return None
        cer = self.cer[r]
        return {"cer": None if np.isnan(cer) else cer}


_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[tuple[float | None, float | None, float | None, bool, str, str | None,
                                             str | None, str]]).decode


class _Loading(threading.local):
    """Where a load in this thread puts the checks it decodes (``Mirror.load``); None: nowhere."""

    checks: Checks | None = None
    ids: array | None = None


_loading = _Loading()


class ViewEntry(msgspec.Struct, gc=False, omit_defaults=True):
    """An entry as the page sees it: Entry's fields but those it never shows (the text's hash, the
    sample rate, suspect), so a load decodes the file straight into these and never allocates
    them (``loader.read(dataset, view=ViewEntry)``; 100 MB at a million)."""

    id: int
    filename: str
    text: str
    status: Status
    duration_seconds: float | None
    attempts: int
    error: str | None
    updated_at: str | None
    rev: int
    take: str | None
    lease: Lease | None = None
    review: Review | None = None
    take_count: int = 0
    # The check stage under another attribute name: the state's load (State.__post_init__) sees
    # every ViewEntry as unchecked (the class attribute ``stage``), so it builds no judge's index
    # of them (a tuple per checked take, a hundred megabytes at 700,000 checks, that the page drops).
    # The page reads the stage from its column (Mirror.stage), never from an entry.
    check_stage: Stage = msgspec.field(default=Stage.NONE, name="stage")
    check: ViewCheck | None = None  # moved into the mirror's Checks at the load, then None
    earlier: list[Earlier] | None = None  # None, not an empty list per entry, when it has none
    # What the state's load reads (State.__post_init__) and the page never shows: class attributes,
    # not fields, so no slot per entry (16 MB at a million).
    stage: ClassVar[Stage] = Stage.NONE
    check_lease: ClassVar[Lease | None] = None
    deterministic: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # Decoded by a Mirror's load: the check goes into its columns at once, so its objects are
        # freed as each is made (their memory reused by the next) instead of all held to the end.
        if self.check is not None and (sink := _loading.checks) is not None:
            sink.add(self.check)
            _loading.ids.append(self.id)
            self.check = None


@contextlib.contextmanager
def collecting() -> Iterator[tuple[Checks, array]]:
    """Around a load in this thread: the checks its ViewEntry decode are moved into a Checks as
    they are decoded, and the id of each entry they came from into an array."""
    checks, ids = Checks(), array("q")
    _loading.checks, _loading.ids = checks, ids
    try:
        yield checks, ids
    finally:
        _loading.checks = _loading.ids = None


def slim(e: Entry | ViewEntry) -> Entry | ViewEntry:
    """Drop what the page never shows of an entry (its text's hash, its sample rate): an Entry
    from the journal or a change event; a ViewEntry never had them."""
    if isinstance(e, Entry):
        e.text_hash = ""
        e.sample_rate = None
    return e


def slim_columns(e: Entry, stamped: bool) -> None:
    """What the columns hold need not be held twice: the duration, and the update time once it
    parsed (formatted back for the page exactly as it was written, to the millisecond)."""
    e.duration_seconds = None
    if stamped:
        e.updated_at = None
