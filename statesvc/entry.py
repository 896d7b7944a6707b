"""One entry of a dataset and the values it holds: status, check stage, lease, check, review, earlier takes.

Plain values, no behaviour beyond their encoding: how they change is ``statesvc.lifecycle``'s tables
and ``statesvc.state.State``'s transitions. A saved line of the state file decodes straight into an
``Entry`` (see there).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import numbers
import secrets
import time

import msgspec

SCHEMA_VERSION = 2  # of the state file: an entry line holds every field ``Entry.to_dict`` gives
DURATION_TOLERANCE = 0.002  # seconds: the one tolerance between a duration recorded and one measured
ADOPTED = "adopted-"  # a take token the daemon gives a wav made by another tool: ADOPTED + 16 hex digits


def adopted_token() -> str:
    """A token of its own for a take the daemon adopts (a wav that records no take): reviews and
    checks are fenced by it like any take's."""
    return ADOPTED + secrets.token_hex(8)


def is_adopted(token: str | None) -> bool:
    """The token names an adopted take: its wav records no take (made by another tool)."""
    return token is not None and token.startswith(ADOPTED)


class Status(enum.StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    COMPLETED = "completed"
    FAILED = "failed"


STATUSES = tuple(s.value for s in Status)
STATUS_OF = {s.value: s for s in Status}


class Stage(enum.StrEnum):
    """Where the check of an entry's current take is: one value, changed only by ``_transition``."""

    NONE = "none"        # no take (the entry is not completed)
    WAITING = "waiting"  # the current take awaits a check
    LEASED = "leased"    # a checker holds it under a check lease
    CHECKED = "checked"  # judged: it says its text
    FLAGGED = "flagged"  # judged wrong and kept: the best of its takes, a deterministic voice, approved,
    #                      or the recognizer failed on it; for the curator


class Phase(enum.StrEnum):
    """Where the work under a lease is, as its generator last said."""

    QUEUED = "queued"              # claimed, not started: given back uncharged if the generator dies
    SYNTHESIZING = "synthesizing"  # under way: the text is charged an attempt if the generator dies
    WRITTEN = "written"            # synthesized, its result not in yet: given back uncharged


class Verdict(enum.StrEnum):
    """What a person who listened to an entry's take made of it."""

    APPROVED = "approved"
    REJECTED = "rejected"


class Review(msgspec.Struct, gc=False, omit_defaults=True):
    """A verdict on one take (``take``: its token; an adopted take has one too, see
    ``adopted_token``; None only in files written before adopted takes had one). A new take, or
    the entry leaving completed, ends it."""

    verdict: Verdict
    take: str | None
    at: str
    note: str | None = None

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "take": self.take, "at": self.at, "note": self.note}


def text_hash(text: str) -> str:
    """What a take records of the text it was made from: 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_duration(a: object, b: object) -> bool:
    """Two durations in seconds agree: both known and within DURATION_TOLERANCE."""
    ok = (isinstance(x, numbers.Real) and not isinstance(x, bool) for x in (a, b))
    return all(ok) and abs(a - b) <= DURATION_TOLERANCE


class Lease(msgspec.Struct, gc=False):
    token: str
    owner: str
    deadline: float
    phase: Phase = Phase.QUEUED

    def to_dict(self) -> dict:
        return {"token": self.token, "owner": self.owner, "deadline": self.deadline, "phase": self.phase}


class Check(msgspec.Struct, gc=False):
    """A check of one take (``take``: its token): what the recognizer heard and the judgement."""

    take: str
    cer: float | None
    wer: float | None
    transcript: str
    model: str
    error: str | None
    wrong: bool = False
    reason: str | None = None      # why it is wrong, in words
    threshold: float | None = None  # the CER threshold applied
    seconds: float | None = None    # the take's duration and its text's length, as the judge learnt them
    chars: int = 0

    def to_dict(self) -> dict:
        return {"cer": self.cer, "wer": self.wer, "transcript": self.transcript, "model": self.model,
                "take": self.take, "error": self.error, "wrong": self.wrong, "reason": self.reason,
                "threshold": self.threshold}


class Earlier(msgspec.Struct, gc=False):
    """A take of an entry that a check set aside (or that a better one replaced): its file under
    requeued/, and what is needed to bring it back (the daemon's, fenced like any take)."""

    file: str   # "requeued/NAME.TIMESTAMP.wav"
    take: str
    rev: int
    duration: float | None
    check: Check | None = None


class Entry(msgspec.Struct, gc=False, omit_defaults=True):
    """One text and what is known of its audio.

    A msgspec Struct: a saved line decodes straight into one, without a dict in between (a
    million of them load in a third of the time), and encodes straight back. Only ``lease``
    and ``suspect`` have defaults, so a line holds every other field, as ``to_dict`` does;
    build new entries with ``Entry.make``. ``gc=False``: entries hold no cycles, so the cyclic
    collector never walks a million of them.
    """

    id: int
    filename: str
    text: str
    status: Status
    duration_seconds: float | None
    sample_rate: int | None
    attempts: int            # syntheses that ended: completed, raised, or died with their generator
    error: str | None
    updated_at: str | None
    text_hash: str
    rev: int                 # bumped by requeue and edit: takes of an older revision never count
    # The token of the take under the entry's name: its lease's, or ADOPTED... for a wav made by
    # another tool. Never None when completed (files written before adopted tokens are given one
    # at the daemon's start: ``repair``).
    take: str | None
    lease: Lease | None = None
    # In flight when its generator died, not charged: synthesized alone next time, its generator's
    # working notice acknowledged first, so a text that kills its generator is found and charged.
    suspect: bool = False
    review: Review | None = None  # of the take under the entry's name; ended by any other take
    take_count: int = 0         # takes of this revision made (a retake is not a failed attempt)
    stage: Stage = Stage.NONE   # the check of the current take
    check: Check | None = None  # of the current take, once checked
    check_lease: Lease | None = None  # while a checker holds the current take (stage leased)
    deterministic: bool = False  # the current take's synthesizer gives the same audio for the same text
    earlier: list[Earlier] = msgspec.field(default_factory=list)  # takes a check set aside, with their checks
    check_expiries: int = 0  # check leases of the current take that expired (checks.MAX_CHECK_EXPIRIES)

    def public(self) -> dict:
        """The entry as `show --json` and `list --json` give it (the contract scripts rely on): its
        line in the file, plus ``check`` (null before the current take is checked), ``take_count``
        and the check ``stage``, always."""
        return {**self.to_dict(), "take_count": self.take_count,
                "check": None if self.check is None else self.check.to_dict(), "stage": self.stage}

    @classmethod
    def make(cls, id: int, filename: str, text: str, status: Status = Status.PENDING,  # noqa: A002
             duration_seconds: float | None = None, sample_rate: int | None = None, attempts: int = 0,
             error: str | None = None, updated_at: str | None = None, rev: int = 0,
             take: str | None = None) -> Entry:
        return cls(id, filename, text, status, duration_seconds, sample_rate, attempts, error, updated_at,
                   text_hash(text), rev, take)

    def to_dict(self) -> dict:
        d = {
            "id": self.id,
            "filename": self.filename,
            "text": self.text,
            "status": self.status,
            "duration_seconds": self.duration_seconds,
            "sample_rate": self.sample_rate,
            "attempts": self.attempts,
            "error": self.error,
            "updated_at": self.updated_at,
            "text_hash": self.text_hash,
            "rev": self.rev,
            "take": self.take,
        }
        if self.lease is not None:
            d["lease"] = self.lease.to_dict()
        if self.suspect:
            d["suspect"] = True
        if self.review is not None:
            d["review"] = self.review.to_dict()
        if self.take_count:
            d["take_count"] = self.take_count
        if self.check is not None:
            d["check"] = self.check.to_dict()
        if self.stage != Stage.NONE:
            d["stage"] = self.stage
        if self.check_lease is not None:
            d["check_lease"] = self.check_lease.to_dict()
        if self.deterministic:
            d["deterministic"] = True
        if self.earlier:
            d["earlier"] = [msgspec.to_builtins(x) for x in self.earlier]
        if self.check_expiries:
            d["check_expiries"] = self.check_expiries
        return d


@functools.lru_cache(maxsize=1)  # every change applied in one loop turn shares one ``now``
def iso(now: float) -> str:
    """An instant as the state writes it (``updated_at``, a review's ``at``): UTC, to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
