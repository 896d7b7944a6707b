"""Loading the state: the file, then its journal's records replayed on top; the refusals of a damaged journal.

Every reader (the daemon, the CLI with no daemon, the reconciler, the supervisor, the page) loads
through ``read`` or ``load``. A journal applies to the file whose id it names, or, after a crash
between a checkpoint's rename and the new journal's, to the file whose parent it names (its
records after ``seq`` only). A file whose checksum fails was changed by hand: alone it is loaded
the long way, with full validation and a warning naming it; with a journal holding records,
nobody can tell which wins, so loading refuses and names the two commands that decide
(``statesvc journal replay`` or ``discard``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from . import journal
from .codec import DamagedState, Head, build_state, decode_entries, no_gc, read_file
from .entry import Entry, Lease, Status
from .journal import Contents, Record
from .layout import JOURNAL_FILE, journal_path, state_path
from .lock import holder_info
from .state import State

log = logging.getLogger("statesvc")


class JournalConflict(DamagedState):
    """The file was changed by hand while the journal holds commits made after it."""


class Replay:
    """Applies journal records to ``entries`` in place, one at a time as they are read: whole
    entries replace theirs by id, new ones are appended; records up to ``after`` (already in the
    file) are skipped."""

    def __init__(self, entries: list[Entry], after: int = 0):
        self.entries, self.after = entries, after
        self.n = len(entries)
        self.at: dict[int, int] | None = None  # id -> index, built only for ids that are not dense
        self.sample_rate: int | None = None
        self.answers: dict | None = None
        self.applied = self.versions = 0

    def index(self, eid: int) -> int | None:
        """Where entry ``eid`` is. Ids are usually 1..n in order (init and add number them so):
        then no index of a million ids needs building."""
        i = eid - 1
        if 0 <= i < self.n and self.entries[i].id == eid:
            return i
        if self.at is None:
            self.at = {e.id: i for i, e in enumerate(self.entries)}
        return self.at.get(eid)

    def __call__(self, rec: Record) -> None:
        if rec.seq <= self.after:
            return
        entries, index = self.entries, self.index
        for e in rec.entries:
            i = index(e.id)
            if i is None:
                if self.at is not None:
                    self.at[e.id] = len(entries)
                entries.append(e)
            else:
                entries[i] = e
        for eid, token, owner, deadline, phase, updated in rec.claims:
            i = index(eid)
            if i is not None:
                e = entries[i]
                e.status, e.lease, e.updated_at = Status.GENERATING, Lease(token, owner, deadline, phase), updated
        for eid, token, deadline, phase in rec.leases:
            i = index(eid)
            lease = entries[i].lease if i is not None else None
            if lease is not None and lease.token == token:  # the same lease: a later one is left alone
                lease.deadline, lease.phase = deadline, phase
        self.sample_rate = rec.sample_rate if rec.sample_rate is not None else self.sample_rate
        self.answers = rec.answers if rec.answers is not None else self.answers
        self.applied += 1
        self.versions += len(rec.entries)


@dataclass
class Loaded:
    state: State
    head: Head
    journal: Contents
    replayed: int  # records applied on top of the file
    file_bytes: int


def _conflict(dataset: Path, j: Contents) -> JournalConflict:
    return JournalConflict(
        f"{state_path(dataset)} was changed (by hand, or replaced) while {JOURNAL_FILE} holds {j.count} "
        f"commits made after the file it extends; nothing was touched. Apply them onto the file: "
        f"statesvc journal replay --dataset {dataset}; or drop them (kept aside): "
        f"statesvc journal discard --dataset {dataset}")


def damaged(dataset: Path, j: Contents, head: Head) -> DamagedState:
    """The one-line refusal of a damaged journal: the file, the first damaged record, the way out."""
    fix = ""
    if j.extends is None and head.checkpoint is not None:  # its header: the records after it may be whole
        fix = f"; or first repair line 1 by hand to read {journal.header(head.checkpoint).decode().strip()}"
    return DamagedState(
        f"{journal_path(dataset)}: {j.damage} is damaged, and a crash tears only the last record (the disk "
        f"or a hand changed it); nothing was touched. Keep a copy of the folder, then apply the {j.count} "
        f"whole records before it (the journal is kept aside): statesvc journal replay --up-to-damage "
        f"--dataset {dataset}{fix}")


def read(dataset: Path, view: type | None = None) -> Loaded:
    """The state: the file, then the journal's records replayed on top, as they are read.

    ``view``: a Struct type with some of Entry's fields, for a reader that shows entries and never
    writes them (the dashboard): the file's entries are decoded into it, so the fields it lacks
    are never allocated (a hundred megabytes at a million). Journal records stay Entries."""
    decode = decode_entries if view is None else msgspec.json.Decoder(list[view]).decode
    with no_gc():
        for attempt in range(4):
            file = read_file(state_path(dataset), decode)
            entries, sr, answers, head = file.entries, file.sample_rate, file.answers, file.head
            extends = journal.extends_of(dataset)
            rp = Replay(entries, head.seq) if head.journal_applies(extends) else None
            try:
                j = journal.read(dataset, rp)
            except OSError as exc:
                raise DamagedState(f"{journal_path(dataset)}: {exc.strerror}") from None
            if j.damaged:
                raise damaged(dataset, j, head)
            if j.extends == extends and (rp is not None or not j.count):
                break
            # A checkpoint may have swapped the file and the journal between our reads.
            if attempt == 3 or holder_info(dataset) is None:
                raise _conflict(dataset, j)
            time.sleep(0.05 * (attempt + 1))
        if rp is not None and rp.applied:
            sr = rp.sample_rate or sr
            answers = rp.answers if rp.answers is not None else answers
        if head.checkpoint is None:
            log.warning("%s: its checksum does not match (edited by hand, or written by an older statesvc): "
                        "loaded as a hand edit, every entry validated", state_path(dataset))
        return Loaded(build_state(entries, sr, answers), head, j, rp.applied if rp else 0, file.size)


def load(dataset: Path) -> State:
    """The state, for reading: the file and its journal."""
    return read(dataset).state
