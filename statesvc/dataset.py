"""A dataset folder seen from outside the daemon: create it, query it, change it.

Queries go to the running daemon when there is one, else read the file. Changes
go through the daemon; with none running, the caller takes the writer lock
itself, so there is still exactly one writer.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from . import layout
from .atomic import SaveFailed
from .client import Client, NoDaemon
from .handlers import Handlers
from .layout import state_path
from .loader import load
from .lock import Locked, WriterLock
from .protocol import NOT_IDEMPOTENT, validate
from .recovery import Replayed, discard_journal, replay_journal
from .state import State
from .store import create, load_for_writing
from .texts import TextsError, read_texts


class DatasetError(Exception):
    """A one-line reason a command cannot be carried out."""


def init(dataset: Path, texts: Path, prefix: str | None = None) -> State:
    return create_prepared(dataset, prepare_init(dataset, texts, prefix))


def prepare_init(dataset: Path, texts: Path, prefix: str | None = None) -> State:
    """Every check and the parsed texts of ``init``, with nothing written yet."""
    if state_path(dataset).exists():
        raise DatasetError(f"{state_path(dataset)} already exists; to add texts use: "
                           f"statesvc add --dataset {dataset} --texts {texts}")
    state = State([])
    state.add(read_texts(texts), _prefix(dataset, prefix), time.time())
    return state


def create_prepared(dataset: Path, state: State) -> State:
    dataset.mkdir(parents=True, exist_ok=True)
    layout.wavs(dataset).mkdir(exist_ok=True)
    create(dataset, state)
    return state


def _prefix(dataset: Path, prefix: str | None) -> str:
    from .texts import check_filename
    p = prefix or dataset.resolve().name or "utt"
    if check_filename(p):
        raise DatasetError(f"prefix: {check_filename(p)}")
    return p


_endpoint: str | None = None  # --endpoint: the daemon to ask (perhaps on another host); no offline fallback


def use_endpoint(endpoint: str | None) -> None:
    """Ask the daemon at ``endpoint`` (``--endpoint``, ``$STATESVC_ENDPOINT``) instead of the one the
    dataset's lock names; then a daemon that does not answer is an error, never a read of the files."""
    global _endpoint
    _endpoint = endpoint or None


def endpoint() -> str | None:
    return _endpoint


def ask(dataset: Path, op: str, **fields: Any) -> dict | None:
    """The running daemon's answer, or None when no daemon serves the dataset."""
    try:
        client = Client(_endpoint) if _endpoint else Client.for_dataset(dataset)
    except NoDaemon:
        return None
    try:
        return client.call(op, **fields)
    finally:
        client.close()


def status(dataset: Path) -> dict:
    reply = ask(dataset, "status")
    if reply is not None:
        reply.pop("rid", None)
        reply.pop("ok", None)
        return reply
    return {**load(dataset).stats(), "daemon": False}


def entries(dataset: Path, status_filter: str | None = None) -> list[dict]:
    reply = ask(dataset, "list", status=status_filter)
    if reply is not None:
        return reply["entries"]
    return [e.public() for e in load(dataset).entries if status_filter in (None, e.status)]


def show(dataset: Path, key: int | str) -> dict:
    """One entry (``Entry.public``) and its ``earlier_takes``: its files in requeued/, oldest first,
    each with the CER its check gave (null when it was not checked: set aside by requeue or edit)."""
    reply = ask(dataset, "show", key=key)
    e = reply["entry"] if reply is not None else load(dataset).lookup(key).public()
    cers = {x["file"]: (x.get("check") or {}).get("cer") for x in e.get("earlier", ())}
    folder = layout.set_aside(dataset)
    try:
        mine = re.compile(re.escape(e["filename"]) + r"\.\d{8}T\d{6}(\.[0-9a-f]{1,9})?\.wav")
        names = sorted(n for n in os.listdir(folder) if mine.fullmatch(n))
    except FileNotFoundError:
        names = []
    files = [layout.set_aside_name(n) for n in names]
    return {**e, "earlier_takes": [{"file": f, "cer": cers.get(f)} for f in files]}


def write(dataset: Path, op: str, **fields: Any) -> dict:
    """Apply one write through the daemon, or offline under the writer lock. Durable on return."""
    if op in NOT_IDEMPOTENT:  # a resend after a timeout gets the first answer, not a second add
        fields.setdefault("req", secrets.token_hex(16))
    reply = ask(dataset, op, **fields)
    if reply is not None:
        return reply
    with _offline(dataset, "statesvc offline write"):
        state, store = load_for_writing(dataset)
        try:
            _, args = validate({"op": op, **fields})
            handlers = Handlers(dataset, state)
            body, _ = handlers.apply(op, args, time.time())
            store.commit(state)
            handlers.carry_out(handlers.after_save)  # once the change is durable, as the daemon does
            try:
                store.checkpoint(state)  # at rest, the file alone is the whole truth
            except SaveFailed:
                pass  # the change is in the journal: durable, and every reader sees it
        finally:
            store.close()
        return body


class _offline:
    """The writer lock, for a change made with no daemon running."""

    def __init__(self, dataset: Path, note: str):
        self.lock, self.note = WriterLock(dataset), note

    def __enter__(self) -> None:
        if not state_path(self.lock.path.parent).exists():
            raise DatasetError(f"no state in {self.lock.path.parent} (create one with: statesvc init --texts FILE)")
        try:
            self.lock.acquire(f'{{"pid": null, "endpoint": null, "note": "{self.note}"}}')
        except Locked as exc:
            raise DatasetError(f"the dataset is locked by {exc}; try again") from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def checkpoint(dataset: Path) -> dict:
    """Write the whole state as generation_state.json and start a fresh journal."""
    reply = ask(dataset, "checkpoint")
    if reply is not None:
        return {"daemon": True, "bytes": reply["bytes"], "seconds": reply["seconds"]}
    with _offline(dataset, "statesvc checkpoint"):
        state, store = load_for_writing(dataset)
        try:
            started = time.monotonic()
            store.checkpoint(state)
            return {"daemon": False, "bytes": store.file_bytes, "seconds": round(time.monotonic() - started, 3)}
        finally:
            store.close()


def _no_daemon(dataset: Path, what: str) -> None:
    if ask(dataset, "ping") is not None:
        raise DatasetError(f"a daemon is serving {dataset}: stop it before {what} (it would not start "
                           f"on a conflict, so its journal is consistent)")


def journal_replay(dataset: Path, up_to_damage: bool = False) -> Replayed:
    """Apply the journal's records onto generation_state.json as it is now; a fresh journal. A
    damaged journal is refused unless ``up_to_damage`` (see ``recovery.replay_journal``)."""
    _no_daemon(dataset, "replaying its journal")
    with _offline(dataset, "statesvc journal replay"):
        return replay_journal(dataset, up_to_damage)


def journal_discard(dataset: Path) -> tuple[int, Path | None]:
    """Move the journal aside: generation_state.json as it is now is the state."""
    _no_daemon(dataset, "discarding its journal")
    with _offline(dataset, "statesvc journal discard"):
        return discard_journal(dataset)


def wavs_already_there(dataset: Path) -> int:
    """How many wavs a new state would find in ``wavs/`` (a re-init over an earlier run)."""
    folder = layout.wavs(dataset)
    return sum(1 for p in folder.glob("*.wav") if not p.name.startswith(".")) if folder.is_dir() else 0


def add(dataset: Path, texts: Path, prefix: str | None = None) -> dict:
    items = read_texts(texts)
    return write(dataset, "add", items=[list(i) for i in items], prefix=_prefix(dataset, prefix))


__all__ = ["DatasetError", "TextsError", "init", "prepare_init", "create_prepared", "status", "entries", "show",
           "write", "add", "wavs_already_there", "checkpoint", "journal_replay", "journal_discard"]
