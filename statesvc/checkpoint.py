"""The forked checkpoint writer: a child writes the whole state file while the daemon goes on committing."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import journal
from .atomic import fsync_dir, unlink_quietly, write_all
from .codec import Head, header_values, write_entries
from .layout import JOURNAL_FILE, STATE_FILE, journal_path, state_path
from .process import die_with_parent
from .state import State

_MAX_FD = os.sysconf("SC_OPEN_MAX") if "SC_OPEN_MAX" in os.sysconf_names else 65536


class Checkpointing:
    """A checkpoint being written while the daemon goes on committing to the journal.

    A forked child writes the file from its copy of the state as it was when the checkpoint began
    (after a commit; if anything applied was not yet committed, each such change is also in a
    later journal record, replayed on top, so file plus journal still load exactly). It must not
    hold a change that is later refused, so once the file is written (``encoded``) the thread
    waits for ``go``: the daemon gives it after a successful commit, when every change the file
    can hold is committed (or at once when nothing is uncommitted); a failed commit cancels it
    instead. Then a thread of the daemon renames the file into place, fsyncs the folder (the old journal
    still applies: it names the new file's parent), and prepares the new journal with the
    records committed since ``seq``. The daemon's loop is left only the swap (``Store.swap_in_checkpoint``):
    the last few records, the rename and one folder fsync."""

    def __init__(self, dataset: Path, state: State, head: Head, journal_at: int, durable: Callable[[], int]):
        self.dataset, self.head, self.journal_at, self.durable = dataset, head, journal_at, durable
        self.path = state_path(dataset)
        self.tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        self.jtmp = journal_path(dataset).with_name(f".{JOURNAL_FILE}.{os.getpid()}.tmp")
        self.size = 0
        self.error: str | None = None
        self.renamed = False
        self.jfd: int | None = None   # the new journal, written up to jlen, holding the old one's up to copied
        self.jlen = self.copied = 0
        self.encoded, self.go = threading.Event(), threading.Event()
        self.cancelled = False
        self.started = time.monotonic()
        self._args = (state.entries, len(state.entries), header_values(state, head))
        # The file is written by a forked child: a copy-on-write snapshot of the state at this
        # commit, encoded without taking the daemon's GIL (Redis's BGSAVE). A thread waits for it.
        self._pipe, w = os.pipe()
        parent = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            die_with_parent(signal.SIGKILL, parent)  # not left writing on its own
            self._child(w)
        os.close(w)
        self._args = None
        self.thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
        self.thread.start()

    def _child(self, w: int) -> None:
        """In the forked child: write the file, report its size (or why not) and exit at once."""
        code = 1
        try:
            # Only the pipe is kept: an inherited descriptor of the writer lock would keep the
            # dataset locked after the daemon died, until this child exits (zmq's are not ours).
            os.closerange(3, w)
            os.closerange(w + 1, _MAX_FD)
            self._write()
            os.write(w, b"%d" % self.size)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the daemon, never raised in a fork
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            try:
                os.write(w, b"!" + why.encode(errors="replace")[:500])
            except OSError:
                pass
        finally:
            os._exit(code)

    def _wait_child(self) -> None:
        out = b""
        while chunk := os.read(self._pipe, 4096):
            out += chunk
        os.close(self._pipe)
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not out or out.startswith(b"!"):
            why = out[1:].decode(errors="replace") if out.startswith(b"!") else f"writer exited ({status})"
            raise OSError(0, f"writing {self.tmp.name}: {why}")
        self.size = int(out)

    def _run(self) -> None:
        try:
            self._wait_child()
            self.encoded.set()
            self.go.wait()
            if self.cancelled:
                return
            self._put_in_place()
            self._prepare_journal()
        except OSError as exc:
            self.error = f"checkpoint: {exc.strerror or exc}"

    def _write(self) -> None:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            self.size = write_entries(*self._args, fd)
            os.fsync(fd)  # a failed fsync is never retried: this temp file is dropped
        finally:
            os.close(fd)
            self._args = None

    def _put_in_place(self) -> None:
        os.replace(self.tmp, self.path)
        self.renamed = True
        fsync_dir(self.dataset)  # failing, either file may survive: the old journal applies to both

    def _prepare_journal(self) -> None:
        self.copied = self.durable()  # records before it are acknowledged: never cut off again
        data = journal.header(self.head.checkpoint) + journal.tail(self.dataset, self.journal_at, self.copied)
        self.jfd = os.open(self.jtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        write_all(self.jfd, data, 0)
        os.fsync(self.jfd)
        self.jlen = len(data)

    def let_in_place(self) -> None:
        """Everything the file can hold is committed: let the thread put it in place."""
        if self.encoded.is_set():
            self.go.set()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def cancel(self) -> None:
        self.cancelled = True
        try:
            os.kill(self.pid, signal.SIGKILL)  # reaped by the thread
        except OSError:
            pass
        self.go.set()
        self.thread.join()
        self.cleanup()

    def cleanup(self) -> None:
        if self.jfd is not None:
            os.close(self.jfd)
            self.jfd = None
        unlink_quietly(self.jtmp)
        if not self.renamed:
            unlink_quietly(self.tmp)
