"""The journal's two ways out of a conflict or damage, daemon stopped: replay it onto the file, or set it aside.

``statesvc journal replay`` applies the journal's records onto the file as it is now (a hand
edit, or the whole records before a damaged one) and makes that a checkpoint; ``statesvc
journal discard`` moves the journal aside. Nothing is deleted: a journal left behind is kept
under a new name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import journal
from .atomic import fsync_dir, write_atomic
from .codec import build_state, no_gc, read_file
from .journal import Record
from .layout import journal_path, state_path
from .loader import Replay, damaged
from .store import Store


@dataclass
class Replayed:
    """What ``statesvc journal replay`` did."""

    applied: int            # records applied
    versions: int           # entry versions they held
    kept: Path | None = None  # where a damaged journal was kept
    lost: list[Record] = field(default_factory=list)  # whole records after the damage: not applied


def replay_journal(dataset: Path, up_to_damage: bool = False) -> Replayed:
    """Apply every record of the journal onto the file as it is now, and make that a checkpoint.
    A damaged journal is refused, or with ``up_to_damage`` its whole records before the damage
    are applied, the journal kept aside (a hard link, never overwritten) and the whole records
    after it listed. Call only under the writer lock."""
    with no_gc():
        file = read_file(state_path(dataset))
        entries, head = file.entries, file.head
        rp = Replay(entries, head.seq if head.journal_applies(journal.extends_of(dataset)) else 0)
        j = journal.read(dataset, rp)
        state = build_state(entries, rp.sample_rate or file.sample_rate,
                            rp.answers if rp.answers is not None else file.answers)
    done = Replayed(rp.applied, rp.versions)
    if j.damaged:
        if not up_to_damage:
            raise damaged(dataset, j, head)
        done.lost = [r for r in journal.after_damage(dataset, j) if r.seq > rp.after]
        done.kept = journal.aside(dataset, "damaged")
        try:
            os.link(journal_path(dataset), done.kept)  # the checkpoint's new journal then replaces the name only
        except OSError:  # a filesystem without hard links: a durable copy
            write_atomic(done.kept, journal_path(dataset).read_bytes())
        fsync_dir(dataset)
    store = Store(dataset, None, None, max(head.seq, j.last_seq), file.size)
    store.checkpoint(state)
    store.close()
    return done


def discard_journal(dataset: Path) -> tuple[int, Path | None]:
    """Move the journal aside (nothing is deleted); the file alone is the state again.
    Returns (records it held, where it went). Call only under the writer lock."""
    path = journal_path(dataset)
    if not path.exists():
        return 0, None
    j = journal.read(dataset)
    n = j.count + (len(journal.after_damage(dataset, j)) if j.damaged else 0)  # whole records, damage or not
    aside = journal.aside(dataset, "discarded")
    os.replace(path, aside)
    fsync_dir(dataset)
    return n, aside
