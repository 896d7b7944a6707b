"""The writer's side of the state on disk: commits appended to the journal, checkpoints, a new state file.

Each group commit appends the entries it changed to ``generation_state.journal`` (see
``journal``), fdatasynced before anything in it is acknowledged. Now and then the whole state is
written as a new ``generation_state.json`` (a checkpoint, see ``checkpoint``), and the journal
starts afresh. Only the holder of the writer lock (see ``lock``) opens a Store.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from . import journal
from .atomic import OutcomeUnknown, SaveFailed, fsync_dir, write_all
from .checkpoint import Checkpointing
from .codec import Head, write_file
from .entry import Entry
from .journal import Record
from .layout import JOURNAL_FILE, STATE_FILE, journal_path, state_path
from .loader import Loaded, damaged, read
from .state import State


class Store:
    """The writer's side of the state on disk: commits appended to the journal, checkpoints.

    ``extends`` is the checkpoint the open journal extends: a checkpoint names it as its
    parent, so a crash between the checkpoint's rename and the new journal's leaves a pair
    that still loads."""

    def __init__(self, dataset: Path, writer: journal.Writer | None, extends: str | None, seq: int,
                 file_bytes: int):
        self.dataset = dataset
        self.writer = writer
        self.extends = extends
        self.seq = seq
        self.file_bytes = file_bytes
        self.checkpoint_seq = seq  # the last commit the file holds: the journal holds the ones after
        self.replayed = self.torn = 0  # what opening found: commits replayed, bytes of a torn tail cut
        self.torn_kept: Path | None = None  # where those bytes were kept
        self.job: Checkpointing | None = None
        self.last_checkpoint_seconds = 0.0

    @classmethod
    def open(cls, dataset: Path, loaded: Loaded) -> Store:
        j, head = loaded.journal, loaded.head
        store = cls(dataset, None, None, max(head.seq, j.last_seq), loaded.file_bytes)
        store.replayed, store.torn = loaded.replayed, j.torn
        if j.damaged:  # ``read`` refuses it: never start a journal over one
            raise damaged(dataset, j, head)
        if j.torn and not head.journal_applies(j.extends):  # about to be replaced: its bytes are kept all the same
            store.torn_kept = journal.keep_tail(dataset, j.good_length)
        if head.checkpoint is None:  # a hand-edited or older file: make it a checkpoint of ours
            store.checkpoint(loaded.state)
            return store
        if head.journal_applies(j.extends):  # the journal goes on (a rollback reopens it: nothing to write)
            if j.torn:  # unacknowledged: a crash mid-append
                store.torn_kept = journal.cut(dataset, j.good_length)
            store.writer, store.extends = journal.Writer(dataset, j.good_length), j.extends
            if j.count:
                store.checkpoint_seq = head.seq
        else:  # none yet, or a stale one without records (its file was replaced by a checkpoint)
            store._new_journal(head.checkpoint)
        return store

    @property
    def journal_bytes(self) -> int:
        return self.writer.length if self.writer else 0

    def commit(self, state: State) -> list[Entry]:
        """Append what changed since the last commit, durably; returns the entries it wrote.
        Raises SaveFailed (nothing of it will load) or OutcomeUnknown (it may)."""
        # Added entries have the highest ids, in the order they were appended: sorted by id, a
        # replay appends them in the file's order (the others are replaced where they are).
        ids = sorted(state.dirty)
        claims = [(i, (e := state.by_id[i]).lease.token, e.lease.owner, e.lease.deadline, e.lease.phase,
                   e.updated_at) for i in sorted(state.claimed)]
        leases = [(i, lease.token, lease.deadline, lease.phase) for i in state.lease_dirty - state.dirty
                  if (lease := state.by_id[i].lease) is not None]
        rec = Record(self.seq + 1, [state.by_id[i] for i in ids if i not in state.claimed], claims, leases,
                     state.sample_rate, state.answers if state.answers_dirty else None)
        line = journal.encode(rec)
        self.writer.append(line)
        self.seq += 1
        written = rec.entries + [state.by_id[c[0]] for c in claims]
        state.dirty.clear()
        state.lease_dirty.clear()
        state.claimed.clear()
        state.answers_dirty = False
        state.unsaved = False
        return written

    def checkpoint(self, state: State) -> None:
        """Write the whole state as the new file, then start a fresh journal extending it (call
        when everything applied is committed). Raises as ``swap_in_checkpoint`` does."""
        self.begin_checkpoint(state)
        self.wait_checkpoint_in_place()

    def wait_checkpoint_in_place(self) -> None:
        """Wait for the checkpoint being written, put it in place and swap in its journal (nothing
        may be uncommitted)."""
        job = self.job
        while not job.encoded.wait(0.05) and job.thread.is_alive():
            pass
        job.let_in_place()
        job.thread.join()
        self.swap_in_checkpoint()

    def begin_checkpoint(self, state: State) -> None:
        """Start writing a checkpoint in a thread (see Checkpointing); ``swap_in_checkpoint`` puts it in place."""
        self.job = Checkpointing(self.dataset, state, Head(secrets.token_hex(8), self.extends, self.seq),
                                 self.journal_bytes, lambda: self.journal_bytes)

    def swap_in_checkpoint(self) -> None:
        """Swap in the journal the checkpoint thread prepared, once it is done: the records
        committed since it copied them, fdatasync, rename, folder fsync. A failure before the
        rename changes nothing that loads (the old journal extends the new file as its parent):
        SaveFailed. OutcomeUnknown only when the new journal's rename may not survive."""
        job, self.job = self.job, None
        try:
            if job.error:
                raise SaveFailed(job.error)
            if job.renamed:
                self.file_bytes = job.size
            try:  # the records committed since the thread copied them
                delta = journal.tail(self.dataset, job.copied, self.journal_bytes) if self.writer else b""
                if delta:
                    write_all(job.jfd, delta, job.jlen)
                    os.fdatasync(job.jfd)
                os.replace(job.jtmp, journal_path(self.dataset))
            except OSError as exc:  # the old journal stays: it extends the new file as its parent
                raise SaveFailed(f"starting a new {JOURNAL_FILE}: {exc.strerror}") from None
        finally:
            job.cleanup()
        try:
            fsync_dir(self.dataset)
        except OSError as exc:
            raise OutcomeUnknown(f"fsync of {self.dataset} after the new journal's rename: {exc.strerror}") from None
        if self.writer is not None:
            self.writer.close()
        self.writer, self.extends = journal.Writer(self.dataset, job.jlen + len(delta)), job.head.checkpoint
        self.checkpoint_seq = job.head.seq
        self.last_checkpoint_seconds = time.monotonic() - job.started

    def let_checkpoint_in_place(self) -> None:
        """Everything applied is committed: a checkpoint written meanwhile may go in place."""
        if self.job is not None:
            self.job.let_in_place()

    def abort_checkpoint(self) -> None:
        """Drop a checkpoint being written (a commit failed: it may hold what was refused)."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()

    def _new_journal(self, ck: str, tail: bytes = b"") -> None:
        length = journal.start(self.dataset, ck, tail)
        if self.writer is not None:
            self.writer.close()
        self.writer, self.extends = journal.Writer(self.dataset, length), ck

    def close(self) -> None:
        self.abort_checkpoint()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def remove_stale_temps(dataset: Path) -> list[str]:
    """Temp copies left by a writer killed mid-save. Call only under the writer lock."""
    removed = []
    for pattern in (f".{STATE_FILE}.*.tmp", f".{JOURNAL_FILE}.*.tmp"):
        for tmp in dataset.glob(pattern):
            try:
                tmp.unlink()
                removed.append(tmp.name)
            except OSError:
                pass
    return removed


def create(dataset: Path, state: State) -> None:
    """Write a new state file (and no journal); refuse when one exists. A journal left without
    its file (the file deleted by hand) is moved aside, never applied to the new one."""
    if state_path(dataset).exists():
        raise FileExistsError(state_path(dataset))
    old = journal_path(dataset)
    if old.exists():
        os.replace(old, journal.aside(dataset, "orphaned"))
    write_file(dataset, state, Head(secrets.token_hex(8), None, 0))
    state.dirty.clear()
    state.unsaved = False


def load_for_writing(dataset: Path) -> tuple[State, Store]:
    """The state and the Store that commits to it. Call only under the writer lock: a torn
    journal tail is cut off, and a file with no usable journal gets a fresh one."""
    loaded = read(dataset)
    return loaded.state, Store.open(dataset, loaded)
