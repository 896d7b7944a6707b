"""Messages on the wire: names, limits, encoding and validation.

A request is one frame, a JSON object ``{"op": NAME, "rid": N, ...}``; a reply is
one frame ``{"rid": N, "ok": true, ...}`` or ``{"rid": N, "ok": false, "kind": KIND, "error": TEXT}``,
KIND one of ``ErrorKind``: what a client may do about it, where TEXT says what happened.
Validation only checks shape; applying a message is the state's business.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .entry import STATUSES, Verdict
from .texts import check_filename, check_text


class ErrorKind(enum.StrEnum):
    """Why a request failed, as a client acts on it."""

    REFUSED = "refused"                  # the request itself (as it would be offline): sent again, refused again
    NOT_SAVED = "not_saved"              # a commit or checkpoint failed: nothing of it applied; send it again
    OUTCOME_UNKNOWN = "outcome_unknown"  # it may have landed or not: look, then send it again
    INTERNAL = "internal"                # a bug in the daemon: this request failed, the daemon goes on


RETRY = frozenset({ErrorKind.NOT_SAVED, ErrorKind.OUTCOME_UNKNOWN})  # the daemon's trouble, not the request's


def failure(kind: ErrorKind, message: str) -> dict:
    """The body of an error reply."""
    return {"ok": False, "kind": kind.value, "error": message}


def error_kind(reply: dict) -> ErrorKind:
    """The kind of an error reply, decoded at the edge. A reply without one (a daemon older than the
    field) is told by the start of its text, as clients did before."""
    try:
        return ErrorKind(reply.get("kind"))
    except ValueError:
        text = str(reply.get("error", ""))
        for start, kind in (("not saved", ErrorKind.NOT_SAVED), ("checkpoint failed", ErrorKind.NOT_SAVED),
                            ("outcome unknown", ErrorKind.OUTCOME_UNKNOWN),
                            ("checkpoint outcome unknown", ErrorKind.OUTCOME_UNKNOWN),
                            ("internal error", ErrorKind.INTERNAL)):
            if text.startswith(start):
                return kind
        return ErrorKind.REFUSED


MAX_MESSAGE = 4 * 1024 * 1024
MAX_BATCH = 10_000
MAX_OWNER = 200
MAX_ERROR = 4000
MAX_TOKEN = 64

# ops that change the state: their reply is sent only once the change is durable
WRITES = frozenset({"claim", "result", "results", "requeue", "add", "reconcile", "release", "died", "edit",
                    "review", "check_claim", "check_result", "check_release"})
# Writes whose sender waits for the reply before it can go on: committed without pacing.
# A single ``result`` is what a simple client sends and waits on; a generator sends
# ``results`` batches and goes on without waiting, so those are paced (fewer saves),
# unless the message says ``"wait": true`` (a generator flushing before it exits).
URGENT_WRITES = frozenset({"claim", "result", "requeue", "add", "reconcile", "release", "died", "edit", "review",
                           "check_claim", "check_result", "check_release"})
# Answered at once from memory. ``heartbeat`` and ``working`` change only leases in memory
# (saved with the next write): a lost one costs at most an attempt charged or not. ``paused``: a
# generator says it waits for disk space (or no longer), for the status; never saved.
READS = frozenset({"ping", "status", "list", "show", "snapshot", "heartbeat", "working", "paused",
                   "check_heartbeat"})
# Writes that are not idempotent: they carry a request id ``req`` and a resend gets the first answer.
NOT_IDEMPOTENT = frozenset({"add", "edit"})
# About the files, not the entries: a checkpoint (answered once it is written).
STORAGE = frozenset({"checkpoint"})
MAX_REQ = 64
_HASH_ID = re.compile(r"#[0-9]{1,18}")  # "#12": the id 12, even where a filename is "12"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a lease token names a take's file: nothing else gets in


class BadRequest(ValueError):
    """A request that cannot be understood; the text goes back to the client."""


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def decode(frame: bytes) -> dict:
    if len(frame) > MAX_MESSAGE:
        raise BadRequest(f"message of {len(frame)} bytes exceeds {MAX_MESSAGE}")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise BadRequest("not a JSON message") from None
    if not isinstance(msg, dict):
        raise BadRequest("a message must be a JSON object")
    return msg


# ---- field checks: each returns the value or raises BadRequest -------------
def _int(msg: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = msg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be an integer from {lo} to {hi}")
    return v


def _num(msg: dict, key: str, lo: float, hi: float, required: bool = True) -> float | None:
    v = msg.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be a number from {lo} to {hi}")
    return float(v)


def _str(msg: dict, key: str, maxlen: int, required: bool = True) -> str | None:
    v = msg.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > maxlen:
        raise BadRequest(f"{key} must be a non-empty string of at most {maxlen} characters")
    return v


def _token(m: dict) -> str:
    t = m.get("token")
    if not isinstance(t, str) or not _TOKEN.fullmatch(t):
        raise BadRequest("token must be 1 to 64 letters, digits, _ or -")
    return t


def _key(v: object) -> int | str:
    """An entry id (an int, or "#12"), or a filename; an exact filename wins over an id."""
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, str) and (check_filename(v) is None or _HASH_ID.fullmatch(v)):
        return v
    raise BadRequest(f"{str(v)[:60]!r} is neither an entry id nor a safe filename")


def _list(msg: dict, key: str, maxlen: int) -> list:
    v = msg.get(key, [])
    if not isinstance(v, list) or len(v) > maxlen:
        raise BadRequest(f"{key} must be a list of at most {maxlen} items")
    return v


# ---- one validator per op ---------------------------------------------------
def _v_claim(m: dict) -> dict:
    return {"owner": _str(m, "owner", MAX_OWNER), "n": _int(m, "n", 1, 1000, 1),
            "lease_seconds": _num(m, "lease_seconds", 1, 86400, required=False),
            "batch": _int(m, "batch", 1, 1024, 1)}


def _v_heartbeat(m: dict) -> dict:
    tokens = _list(m, "tokens", MAX_BATCH)
    if not all(isinstance(t, str) and _TOKEN.fullmatch(t) for t in tokens):
        raise BadRequest("tokens must be strings of letters, digits, _ and -")
    return {"owner": _str(m, "owner", MAX_OWNER), "tokens": tokens}


def _v_paused(m: dict) -> dict:
    paused = m.get("paused")
    if not isinstance(paused, bool):
        raise BadRequest("paused must be true or false")
    return {"owner": _str(m, "owner", MAX_OWNER), "paused": paused,
            "free": _int(m, "free", 0, 2**62), "floor": _int(m, "floor", 0, 2**62)}


def _v_result(m: dict) -> dict:
    status = m.get("status")
    if status not in ("completed", "failed"):
        raise BadRequest("status must be 'completed' or 'failed'")
    out = {"id": _key(m.get("id")), "token": _token(m), "status": status}
    if status == "completed":
        out["duration_seconds"] = _num(m, "duration_seconds", 0.0, 86400.0)
        out["sample_rate"] = _int(m, "sample_rate", 1000, 768_000)
        # what the take was made from, as the claim gave it: a take of another text or revision never counts
        out["text_hash"] = _str(m, "text_hash", 64)
        out["rev"] = _int(m, "rev", 0, 2**62)
        # True (the default): the audio is wavs/.take-FILENAME.TOKEN.wav and the daemon moves it under
        # the entry's name if it counts. False: no file (a client of the books alone, e.g. a benchmark).
        take_file = m.get("take_file", True)
        if not isinstance(take_file, bool):
            raise BadRequest("take_file must be true or false")
        out["take_file"] = take_file
        deterministic = m.get("deterministic", False)  # the synthesizer gives the same audio for the same text
        if not isinstance(deterministic, bool):
            raise BadRequest("deterministic must be true or false")
        out["deterministic"] = deterministic
        wav = m.get("wav")
        if wav is not None:
            if not (isinstance(wav, list) and len(wav) == 3 and
                    all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64 for x in wav)):
                raise BadRequest("wav must be [size, mtime_ns, inode]")
            out["wav"] = wav
    else:
        err = m.get("error")
        if err is not None and not isinstance(err, str):
            raise BadRequest("error must be a string")
        out["error"] = (err or "synthesis failed")[:MAX_ERROR]
    return out


def _v_results(m: dict) -> dict:
    items = _list(m, "items", 1000)
    if not items or not all(isinstance(i, dict) for i in items):
        raise BadRequest("items must be a non-empty list of result objects")
    return {"items": [_v_result(i) for i in items]}


def _v_requeue(m: dict) -> dict:
    keys = [_key(k) for k in _list(m, "keys", MAX_BATCH)]
    failed = m.get("failed", False)
    if not isinstance(failed, bool):
        raise BadRequest("failed must be true or false")
    if not keys and not failed:
        raise BadRequest("requeue needs keys or failed=true")
    return {"keys": keys, "failed": failed}


def _v_edit(m: dict) -> dict:
    text = m.get("text")
    if check_text(text):
        raise BadRequest(check_text(text))
    return {"key": _key(m.get("key")), "text": text, "req": _req(m)}


MAX_NOTE = 2000


def _v_review(m: dict) -> dict:
    verdict = m.get("review")
    if verdict is not None and verdict not in Verdict.__members__.values():
        raise BadRequest("review must be 'approved', 'rejected' or null")
    note = m.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise BadRequest(f"note must be a string of at most {MAX_NOTE} characters")
    take = m.get("take")
    if take is not None and (not isinstance(take, str) or not _TOKEN.fullmatch(take)):
        raise BadRequest("take must be the token of the take heard: 1 to 64 letters, digits, _ or -")
    return {"key": _key(m.get("key")), "verdict": None if verdict is None else Verdict(verdict),
            "note": note or None, "take": take}


MAX_TRANSCRIPT = 20_000


@dataclass(frozen=True)
class CheckReport:
    """A checker's report on one take: fenced by the take's token and the check lease's."""

    id: int | str
    owner: str
    token: str      # the check lease
    take: str       # the take checked
    cer: float | None
    wer: float | None
    transcript: str
    model: str
    error: str | None  # the recognizer failed on the take: recorded and flagged, never retried forever
    silent: bool       # the cheap pre-check found no sound


def _v_check_claim(m: dict) -> dict:
    return {"owner": _str(m, "owner", MAX_OWNER), "n": _int(m, "n", 1, 1000, 1),
            "lease_seconds": _num(m, "lease_seconds", 1, 86400, required=False)}


def _v_check_result(m: dict) -> CheckReport:
    take = m.get("take")
    if not isinstance(take, str) or not _TOKEN.fullmatch(take):
        raise BadRequest("take must be the token of the take checked")
    error = m.get("error")
    if error is not None and not isinstance(error, str):
        raise BadRequest("error must be a string or null")
    transcript = m.get("transcript", "")
    if not isinstance(transcript, str):
        raise BadRequest("transcript must be a string")
    silent = m.get("silent", False)
    if not isinstance(silent, bool):
        raise BadRequest("silent must be true or false")
    cer = _num(m, "cer", 0.0, 1e6, required=error is None)
    wer = _num(m, "wer", 0.0, 1e6, required=False)
    return CheckReport(_key(m.get("id")), _str(m, "owner", MAX_OWNER), _token(m), take, cer, wer,
                       transcript[:MAX_TRANSCRIPT], _str(m, "model", 200), None if error is None else error[:MAX_ERROR],
                       silent)


def _v_died(m: dict) -> dict:
    return {"owner": _str(m, "owner", MAX_OWNER)}


def _req(m: dict) -> str | None:
    req = m.get("req")
    if req is not None and (not isinstance(req, str) or not 0 < len(req) <= MAX_REQ):
        raise BadRequest(f"req must be a string of 1 to {MAX_REQ} characters")
    return req


def _v_add(m: dict) -> dict:
    items = _list(m, "items", 100_000)
    out = []
    for n, it in enumerate(items, 1):
        if not isinstance(it, list) or len(it) != 2:
            raise BadRequest("items must be [filename or null, text] pairs")
        fname, text = it
        why = (fname is not None and check_filename(fname)) or check_text(text)
        if why:
            raise BadRequest(f"item {n}: {why}")  # the whole add is refused: nothing half-added
        out.append((fname, text))
    if not out:
        raise BadRequest("add needs at least one item")
    prefix = _str(m, "prefix", 100)
    if check_filename(prefix):
        raise BadRequest(f"prefix: {check_filename(prefix)}")
    return {"items": out, "prefix": prefix, "req": _req(m)}


def _v_reconcile(m: dict) -> dict:
    files = m.get("files", {})
    if not isinstance(files, dict) or len(files) > MAX_BATCH:
        raise BadRequest(f"files must be an object of at most {MAX_BATCH} observations")
    clean = {}
    for name, obs in files.items():
        if check_filename(name):
            raise BadRequest(check_filename(name))
        if not isinstance(obs, dict) or not isinstance(obs.get("valid"), bool):
            raise BadRequest(f"observation of {name!r} needs 'valid'")
        o = {"valid": obs["valid"], "reason": str(obs.get("reason", ""))[:200]}
        if obs["valid"]:
            o["duration"] = _num(obs, "duration", 0.0, 86400.0)
            o["sample_rate"] = _int(obs, "sample_rate", 1000, 768_000)
            if obs.get("take") is not None:  # what the wav records of its take; absent: made by another tool
                o["take"] = _take(obs["take"], name)
        clean[name] = o
    missing = _list(m, "missing", MAX_BATCH)
    for name in missing:
        if check_filename(name):
            raise BadRequest(check_filename(name))
    epoch = _str(m, "epoch", 64)
    dry_run = m.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false")
    return {"since": _int(m, "since", 0, 2**62), "epoch": epoch, "files": clean, "missing": missing,
            "dry_run": dry_run}


def _take(t: object, name: str) -> dict:
    if not isinstance(t, dict):
        raise BadRequest(f"take of {name!r} must be an object")
    return {"text_hash": _str(t, "text_hash", 64), "rev": _int(t, "rev", 0, 2**62),
            "token": _str(t, "token", MAX_TOKEN)}


def _v_list(m: dict) -> dict:
    status = m.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
    return {"status": status}


def _v_show(m: dict) -> dict:
    return {"key": _key(m.get("key"))}


def _v_none(m: dict) -> dict:
    return {}


VALIDATORS = {
    "ping": _v_none, "status": _v_none, "snapshot": _v_none,
    "list": _v_list, "show": _v_show, "heartbeat": _v_heartbeat,
    "claim": _v_claim, "release": _v_heartbeat, "result": _v_result, "results": _v_results, "requeue": _v_requeue,
    "add": _v_add, "reconcile": _v_reconcile, "edit": _v_edit, "review": _v_review, "died": _v_died,
    "working": _v_heartbeat, "paused": _v_paused,
    "check_claim": _v_check_claim, "check_result": _v_check_result, "check_release": _v_heartbeat,
    "check_heartbeat": _v_heartbeat,
    "checkpoint": _v_none,
}
assert set(VALIDATORS) == WRITES | READS | STORAGE


def validate(msg: dict) -> tuple[str, dict]:
    """Return (op, clean arguments) or raise BadRequest."""
    op = msg.get("op")
    if not isinstance(op, str) or op not in VALIDATORS:
        raise BadRequest(f"unknown op {str(op)[:40]!r}")
    return op, VALIDATORS[op](msg)


def waits(op: str, msg: dict) -> bool:
    """Whether the sender of this write waits for its reply (see URGENT_WRITES)."""
    wait = msg.get("wait", False)
    if not isinstance(wait, bool):
        raise BadRequest("wait must be true or false")
    return wait or op in URGENT_WRITES


@dataclass(frozen=True)
class DiskPause:
    """Generators waiting for disk space, as the daemon's status carries them (``disk_pause``):
    how many, the least free space one saw, the highest floor one keeps."""

    generators: int
    free_bytes: int
    floor_bytes: int


def disk_pause(status: dict) -> DiskPause | None:
    """The pause in a status reply, or None when none (or a daemon older than the field)."""
    p = status.get("disk_pause")
    try:
        return DiskPause(_int(p, "generators", 1, 2**31), _int(p, "free_bytes", 0, 2**62),
                         _int(p, "floor_bytes", 0, 2**62))
    except (BadRequest, AttributeError):
        return None


def request_id(msg: dict) -> int | None:
    rid = msg.get("rid")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63 else None
