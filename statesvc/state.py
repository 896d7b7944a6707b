"""The entries of a dataset and their transitions: ``State``, the one writer of their lifecycle.

Pure: nothing here touches a socket, a file or the clock. Every transition takes
the state, a validated message and ``now`` (seconds since the epoch) and returns
a reply; file moves it needs (promoting a take, moving an old take aside) are
returned as ``Effect`` values for the daemon to carry out.

The lifecycle is one table, ``LIFECYCLE`` (``statesvc.lifecycle``): for each cause (claim, result,
failure, expiry, release, requeue, reconcile, edit) the statuses it may move an entry from
and to. ``_transition`` is the only code that changes a status; it refuses anything
the table does not list, keeps the counters, and owns the lease: an entry holds a
lease exactly while it is generating. The entry's values are in ``statesvc.entry``; the check of
takes (``statesvc.checks``) and what the reconciler saw (``statesvc.reconcile``) are ``State``'s
operations too, kept in modules of their own, and change entries only through ``_transition``.

Fencing: every lease has a token, checked on every result and heartbeat. Every
entry has a revision, bumped by requeue and edit, and the hash of its text; a take
(a wav) names the revision, text hash and token it was made under, so a take made
before a requeue or an edit, or over another generator's live lease, never counts.
"""

from __future__ import annotations

import collections
import heapq
import operator
import secrets
from dataclasses import dataclass, field

from .entry import (
    Check,
    Entry,
    Lease,
    Phase,
    Review,
    Stage,
    Status,
    Verdict,
    adopted_token,
    iso,
    text_hash,
)
from .judge import Judge
from .lifecycle import (
    CHECKED,
    COMPLETED,
    FAILED,
    FLAGGED,
    GENERATING,
    LEASED,
    LIFECYCLE,
    NONE_,
    PENDING,
    STAGES,
    WAITING,
    Cause,
)

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_SECONDS = 10.0
DEFAULT_MAX_TAKES = 3
ANSWERS_KEPT = 256  # answers to add/edit kept (and saved) for resends: a client resends within seconds


class Refused(Exception):
    """A request that is well formed but cannot be applied; its text is the reply."""


@dataclass(frozen=True, slots=True)
class Effect:
    """A file move the daemon performs after the save. (A take that counts is moved under the
    entry's name by the daemon before the result is applied: see ``counts_take``.)"""

    kind: str  # "stale" (a take that does not count), "set_aside" (an entry's old take), "quarantine" (a bad file)
    filename: str
    token: str | None = None
    dest: str | None = None  # set_aside, restore: the name under requeued/ the state records for the take leaving
    source: str | None = None  # restore: the earlier take brought back under the entry's name


@dataclass
class State:
    """The entries, their indexes and counters, and the operations that change them: generation
    leases, results, people's requests (the check of takes is ``statesvc.checks``, what the reconciler
    saw ``statesvc.reconcile``). One writer of the lifecycle: ``_transition``."""

    entries: list[Entry]
    sample_rate: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    max_takes: int = DEFAULT_MAX_TAKES
    judge: Judge = field(default_factory=Judge)
    stages: dict[Stage, int] = field(default_factory=dict)      # entries per check stage
    check_leases: dict[str, int] = field(default_factory=dict)  # check lease token -> entry id
    _waiting: collections.deque = field(default_factory=collections.deque)  # ids that were WAITING
    _rate_of: dict[int, tuple[float, int]] = field(default_factory=dict)  # (seconds, chars) the judge learnt
    seq: int = 0
    counts: dict[Status, int] = field(default_factory=dict)
    by_id: dict[int, Entry] = field(default_factory=dict)
    _by_name: dict[str, Entry] | None = field(default=None, repr=False)  # see by_name
    leases: dict[str, int] = field(default_factory=dict)                 # token -> entry id, claim order
    owner_tokens: dict[str, dict[str, None]] = field(default_factory=dict)  # owner -> its tokens; none empty
    synthesizing: dict[str, list[str]] = field(default_factory=dict)  # owner -> what it said it works on
    changed_seq: dict[int, int] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)        # entries changed since the last commit
    lease_dirty: set[int] = field(default_factory=set)  # entries whose lease alone changed (deadline, phase)
    claimed: set[int] = field(default_factory=set)      # dirty only by a claim: journalled as a short row
    # (size, mtime_ns, inode) of a wav as its generator reported it, in memory only: the
    # reconciler need not open a file its generator just wrote and that has not changed since
    wav_sig: dict[int, list[int]] = field(default_factory=dict)
    unsaved: bool = False
    orphaned_takes: list[Effect] = field(default_factory=list)  # of leases that ended without a result
    # "op:req" -> the answer, for writes that are not idempotent (add, edit): a resend gets the first
    # answer. Saved with the state, so a resend after a crash or a failed save is answered right.
    answers: dict[str, dict] = field(default_factory=dict)
    answers_dirty: bool = False  # changed since the last commit: the next journal record carries them
    _pending_heap: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        entries = self.entries  # comprehensions: a million entries are indexed in a fraction of a second
        self.by_id = {e.id: e for e in entries}
        for e in [e for e in entries if e.lease is not None]:
            self.leases[e.lease.token] = e.id
            self.owner_tokens.setdefault(e.lease.owner, {})[e.lease.token] = None
            if e.lease.phase == Phase.SYNTHESIZING:
                self.synthesizing.setdefault(e.lease.owner, []).append(e.lease.token)
        self.recount()
        self._pending_heap = [e.id for e in entries if e.status == PENDING]
        heapq.heapify(self._pending_heap)
        checked = [e for e in entries if e.stage != Stage.NONE]  # one pass at load; incremental after
        self.stages = {st: 0 for st in Stage}
        for e in checked:
            self.stages[e.stage] += 1
            if e.stage == WAITING:
                self._waiting.append(e.id)
            elif e.check_lease is not None:
                self.check_leases[e.check_lease.token] = e.id
            if e.check is not None and e.stage in (CHECKED, FLAGGED):
                self._learn(e, 1)
            self._learn_take(e)
        self.stages[Stage.NONE] = len(entries) - len(checked)

    @property
    def by_name(self) -> dict[str, Entry]:
        """Entries by filename, built at the first lookup by name: a million take 0.4 s, which a
        daemon's start need not wait for (claims and results go by id)."""
        if self._by_name is None:
            self._by_name = {e.filename: e for e in self.entries}
        return self._by_name

    # ---- derived values -------------------------------------------------
    def recount(self) -> None:
        counts = collections.Counter(map(operator.attrgetter("status"), self.entries))  # C loops: fast at 1M
        self.counts = {st: counts[st] for st in Status}

    def counters(self) -> dict[str, int]:
        return {"total": len(self.entries), **{s.value: n for s, n in self.counts.items()}}

    def check_counters(self) -> dict[str, int]:
        """Takes checked (judged, fine or flagged), judged wrong and kept (mismatched), and waiting."""
        return {"checked": self.stages[CHECKED] + self.stages[FLAGGED], "mismatched": self.stages[FLAGGED],
                "check_waiting": self.stages[WAITING] + self.stages[LEASED]}

    # ---- lookups --------------------------------------------------------
    def lookup(self, key: int | str) -> Entry:
        """An entry by id, or by filename; an exact filename wins over an id ("0001" is a
        filename when one is called that), and "#12" is always the id 12."""
        if isinstance(key, int):
            entry = self.by_id.get(key)
        else:
            entry = self.by_name.get(key)
            digits = key[1:] if key.startswith("#") else key
            if entry is None and digits.isascii() and digits.isdigit():
                entry = self.by_id.get(int(digits))
        if entry is None:
            raise Refused(f"no entry {key!r}")
        return entry

    # ---- the single place an entry changes ------------------------------
    def _touch(self, e: Entry, now: float) -> None:
        self.seq += 1
        e.updated_at = iso(now)
        self.changed_seq[e.id] = self.seq
        self.dirty.add(e.id)
        self.claimed.discard(e.id)
        self.unsaved = True

    def _transition(self, e: Entry, cause: Cause, to: Status, now: float, lease: Lease | None = None,
                    stage: Stage | None = None, check_lease: Lease | None = None) -> None:
        """Move ``e`` to ``to`` because of ``cause``, or refuse. The entry holds a lease exactly
        while it is generating: one is given here on entering, dropped here on leaving; and a
        check lease exactly while its check stage is leased. The check stage: ``stage`` for the
        check causes (``STAGES``); any other cause leaves it NONE, or WAITING for a new take."""
        if to not in LIFECYCLE[cause].get(e.status, ()):
            raise Refused(f"entry {e.id} is {e.status}: {cause} cannot make it {to}")
        if (to == GENERATING) != (lease is not None):
            raise Refused(f"entry {e.id}: generating needs a lease, and only generating has one")
        self._set_stage(e, self._next_stage(e, cause, to, stage, check_lease), check_lease)
        if cause not in (Cause.CHECK_CLAIM, Cause.CHECK_EXPIRY):
            e.check_expiries = 0  # a check, or another take: the count starts again
        if e.lease is not None:
            self._drop_lease(e)
        if lease is not None:
            e.lease = lease
            self.leases[lease.token] = e.id
            self.owner_tokens.setdefault(lease.owner, {})[lease.token] = None
        if e.status != to or cause in (Cause.RESULT, Cause.RECONCILE):
            e.review = None  # a verdict is on the take it was given on: any other take, or none, ends it
        if e.status != to:
            self.wav_sig.pop(e.id, None)
            self.counts[e.status] -= 1
            self.counts[to] += 1
            e.status = to
            if to == PENDING:
                heapq.heappush(self._pending_heap, e.id)
        self._touch(e, now)

    def _set_stage(self, e: Entry, stage: Stage, check_lease: Lease | None) -> None:
        """Part of ``_transition``: the check stage and its lease."""
        if e.check_lease is not None:
            self.check_leases.pop(e.check_lease.token, None)
            e.check_lease = None
        if check_lease is not None:
            e.check_lease = check_lease
            self.check_leases[check_lease.token] = e.id
        if stage != e.stage or stage == WAITING:
            if e.stage in (CHECKED, FLAGGED) and e.check is not None:
                self._learn(e, -1)  # its take leaves, or is judged again: the dataset's figures forget it
            if stage in (WAITING, NONE_):
                e.check = None
            self.stages[e.stage] -= 1
            self.stages[stage] += 1
            e.stage = stage
            if stage == WAITING:
                self._waiting.append(e.id)
            self._learn_take(e)

    @staticmethod
    def _next_stage(e: Entry, cause: Cause, to: Status, stage: Stage | None, check_lease: Lease | None) -> Stage:
        """The check stage ``_transition`` moves ``e`` to, or refuse."""
        if cause in STAGES:
            if stage not in STAGES[cause].get(e.stage, ()):
                raise Refused(f"entry {e.id}'s take is {e.stage}: {cause} cannot make it {stage}")
        elif to == COMPLETED:  # a take that enters waits for its check
            stage = WAITING if e.status != COMPLETED or cause in (Cause.RESULT, Cause.RECONCILE) else e.stage
        else:
            stage = NONE_
        if (stage == LEASED) != (check_lease is not None):
            raise Refused(f"entry {e.id}: a check lease exactly while leased")
        return stage

    def _drop_lease(self, e: Entry) -> None:
        lease, e.lease = e.lease, None
        self.leases.pop(lease.token, None)
        tokens = self.owner_tokens.get(lease.owner)
        if tokens is not None:
            tokens.pop(lease.token, None)
            if not tokens:
                del self.owner_tokens[lease.owner]  # an owner holding nothing leaves no trace
                self.synthesizing.pop(lease.owner, None)

    def _charge(self, e: Entry, cause: Cause, error: str, now: float) -> None:
        """A synthesis of ``e`` ended badly: one attempt; failed once the attempts are spent."""
        e.attempts += 1
        e.error = error[:2000]
        self._transition(e, cause, FAILED if e.attempts >= self.max_attempts else PENDING, now)

    def _reset(self, e: Entry, cause: Cause, now: float) -> list[Effect]:
        """A new revision of ``e`` (requeue, edit): no take of an older one will count."""
        effects = [Effect("set_aside", e.filename)] if e.status == COMPLETED else []
        self._prune_earlier(e)
        e.rev += 1
        e.suspect = False
        e.attempts = 0
        e.error = None
        e.duration_seconds = None
        e.take = None
        e.take_count = 0
        e.deterministic = False
        self._transition(e, cause, PENDING, now)
        return effects

    @staticmethod
    def _prune_earlier(e: Entry) -> None:
        """A new revision: earlier takes can no longer come back, so their records keep only what
        is shown (file and CER), not the transcript: the state does not grow by one per take."""
        for x in e.earlier:
            c = x.check
            if c is not None and (c.transcript or c.model or c.reason is not None or c.seconds is not None):
                x.check = Check(c.take, c.cer, None, "", "", c.error, c.wrong)

    def _learn(self, e: Entry, sign: int) -> None:
        """The judge learns (or forgets) the CER of a current take's check."""
        c = e.check
        if c.error is None:
            self.judge.learn(c.cer, None, 0, sign)

    def _learn_take(self, e: Entry) -> None:
        """The judge's seconds-per-character fit follows the current takes of the dataset."""
        old = self._rate_of.pop(e.id, None)
        if old is not None:
            self.judge.learn(None, old[0], old[1], -1)
        if e.stage != NONE_ and e.duration_seconds:
            self._rate_of[e.id] = (e.duration_seconds, len(e.text))
            self.judge.learn(None, e.duration_seconds, len(e.text))

    # ---- leases -----------------------------------------------------------
    def claim(self, owner: str, n: int, lease_seconds: float | None, now: float, batch: int = 1) -> dict:
        seconds = lease_seconds or self.lease_seconds
        out = []
        # Near the end, what is left is shared among the owners holding work, so no generator
        # sits on a queue while another has nothing (every run ends with its slowest generator).
        owners = len(self.owner_tokens) + (owner not in self.owner_tokens)
        n = min(n, max(batch, -(-self.counts[PENDING] // owners)))
        randomness = secrets.token_hex(8 * min(n, self.counts[PENDING]))  # one system call, not one per entry
        while self._pending_heap and len(out) < n:
            eid = heapq.heappop(self._pending_heap)
            e = self.by_id.get(eid)
            if e is None or e.status != PENDING:
                continue  # stale heap item: the entry moved on since it was pushed
            token = randomness[16 * len(out):16 * len(out) + 16]
            clean = e.id not in self.dirty
            self._transition(e, Cause.CLAIM, GENERATING, now, Lease(token, owner, now + seconds))
            if clean:  # nothing else changed it since the last commit: the claim alone is its change
                self.claimed.add(e.id)
            item = {"id": e.id, "filename": e.filename, "text": e.text, "token": token,
                    "text_hash": e.text_hash, "rev": e.rev}
            if e.suspect:
                item["suspect"] = True
            out.append(item)
        return {"entries": out, "lease_seconds": seconds, "sample_rate": self.sample_rate,
                "pending": self.counts[PENDING], "owners": owners}

    def _held(self, owner: str, token: str, kind: str = "lease") -> Entry | None:
        """The entry ``owner`` holds under ``token``, or None when that lease is gone. ``kind``: the
        entry's field the lease is in, "lease" (a text to generate) or "check_lease" (a take to check)."""
        eid = (self.check_leases if kind == "check_lease" else self.leases).get(token)
        e = self.by_id.get(eid) if eid is not None else None
        lease = getattr(e, kind) if e is not None else None
        return e if lease is not None and lease.owner == owner else None

    def _renew(self, owner: str, tokens: list[str], now: float, kind: str) -> dict:
        """Extend ``kind`` leases (see ``_held``); tokens no longer held come back as ``lost``."""
        lost = []
        for token in tokens:
            e = self._held(owner, token, kind)
            if e is None:
                lost.append(token)
                continue
            lease = getattr(e, kind)
            lease.deadline = max(lease.deadline, now + self.lease_seconds)
            self.lease_dirty.add(e.id)  # saved with the next write; a heartbeat needs no fsync
        return {"lost": lost}

    def heartbeat(self, owner: str, tokens: list[str], now: float) -> dict:
        """Extend generation leases; tokens no longer held come back as ``lost``."""
        return self._renew(owner, tokens, now, "lease")

    def working(self, owner: str, tokens: list[str], now: float) -> dict:
        """The generator is about to synthesize exactly ``tokens``: what it was synthesizing
        before is written. Sent (and answered) before the synthesis starts, so a text that kills
        its generator is charged even when it kills at once. Costs the size of a batch, not of
        the owner's prefetched queue."""
        held = self.owner_tokens.get(owner, {})
        for t in self.synthesizing.pop(owner, ()):
            eid = self.leases.get(t)
            if eid is not None and t in held:
                self.by_id[eid].lease.phase = Phase.WRITTEN
                self.lease_dirty.add(eid)  # saved with the next write, like a heartbeat
        now_on = []
        for t in tokens:
            if t in held:
                e = self.by_id[self.leases[t]]
                e.lease.phase = Phase.SYNTHESIZING
                e.lease.deadline = max(e.lease.deadline, now + self.lease_seconds)
                self.lease_dirty.add(e.id)
                now_on.append(t)
        if now_on:
            self.synthesizing[owner] = now_on
        return {"lost": [t for t in tokens if t not in held]}

    def release(self, owner: str, tokens: list[str], now: float) -> dict:
        """Give back leases not started (a generator shutting down): no attempt is spent."""
        released = []
        for token in tokens:
            e = self._held(owner, token)
            if e is not None:
                self._transition(e, Cause.RELEASE, PENDING, now)
                released.append(e.id)
        return {"released": released}

    def _end_lease(self, e: Entry, why: str, now: float, unit: int, finished: frozenset[str]) -> bool:
        """The lease of ``e`` ended without a result: its generator died or went silent.

        Charged: a text its generator said it was synthesizing alone (``unit`` is how many it
        was synthesizing together) and whose take is not on disk (``finished``: it was written,
        so it was not under way; the take is adopted). Every other entry goes back uncharged; the
        ones that may have been under way are marked suspect, to be tried alone and carefully."""
        token, phase = e.lease.token, e.lease.phase
        if phase == Phase.SYNTHESIZING and unit == 1 and token not in finished:
            self._charge(e, Cause.EXPIRY, why, now)
            return True
        e.suspect = e.suspect or phase == Phase.QUEUED or (phase == Phase.SYNTHESIZING and token not in finished)
        self._transition(e, Cause.EXPIRY, PENDING, now)
        return False

    def _unit_sizes(self) -> dict[str, int]:
        """Per owner, how many texts it is synthesizing together right now."""
        return {o: sum(t in self.leases for t in ts) for o, ts in self.synthesizing.items()}

    def expiring(self, now: float) -> list[str]:
        """Tokens of the leases that ``expire(now)`` ends."""
        return [t for t, eid in self.leases.items() if self.by_id[eid].lease.deadline <= now]

    def expire(self, now: float, finished: frozenset[str] = frozenset()) -> list[int]:
        """End the leases past their deadline; the takes of ``finished`` (on disk, whatever the
        lease's phase) are orphans: adopted when whole, else moved aside."""
        expired = [eid for eid in self.leases.values() if self.by_id[eid].lease.deadline <= now]
        units = self._unit_sizes() if expired else {}
        for eid in expired:
            e = self.by_id[eid]
            if e.lease.token in finished:
                self.orphaned_takes.append(Effect("stale", e.filename, e.lease.token))
            self._end_lease(e, "lease expired while synthesizing (generator dead or stuck)", now,
                            units.get(e.lease.owner, 0), finished)
        return expired

    def died(self, owner: str, now: float, finished: frozenset[str] = frozenset()) -> dict:
        """A supervisor saw this generator die: its leases end now, not at expiry. Its takes are
        orphans: adopted when whole, else moved aside."""
        returned, charged = [], []
        unit = self._unit_sizes().get(owner, 0)
        for token in list(self.owner_tokens.get(owner, ())):
            e = self.by_id[self.leases[token]]
            self.orphaned_takes.append(Effect("stale", e.filename, token))  # a dead process reports nothing
            (charged if self._end_lease(e, "the generator died while synthesizing this text", now, unit, finished)
             else returned).append(e.id)
        return {"returned": returned, "charged": charged,
                "failed": [i for i in charged if self.by_id[i].status == FAILED]}

    def synthesizing_of(self, owner: str) -> list[str]:
        return [t for t in self.synthesizing.get(owner, ()) if t in self.leases]

    def grant_grace(self, now: float) -> None:
        """After a restart, live leases get a full lease from now: generators and checkers kept working."""
        for eid in self.leases.values():
            lease = self.by_id[eid].lease
            lease.deadline = max(lease.deadline, now + self.lease_seconds)
        for eid in self.check_leases.values():
            lease = self.by_id[eid].check_lease
            lease.deadline = max(lease.deadline, now + self.lease_seconds)

    def repair(self, now: float) -> list[int]:
        """What a load can safely fix: a generating entry without a lease (a hand edit, an older
        file) goes back to pending, uncharged; a completed entry without a take token (a file
        written before adopted takes had one) is given one, so a review is fenced by it."""
        stuck = [e for e in self.entries if e.status == GENERATING and e.lease is None]
        for e in stuck:
            self._transition(e, Cause.EXPIRY, PENDING, now)
        for e in [e for e in self.entries if e.stage == LEASED and e.check_lease is None]:
            self._transition(e, Cause.CHECK_EXPIRY, COMPLETED, now, stage=WAITING, check_lease=None)
        for e in [e for e in self.entries if e.status == COMPLETED and e.take is None]:
            e.take = adopted_token()
            if e.review is not None:
                e.review.take = e.take  # the verdict was given on this very wav
            self._touch(e, now)
        return [e.id for e in stuck]

    # ---- results ----------------------------------------------------------
    def result(self, msg: dict, now: float, take_ready: bool = True) -> tuple[dict, list[Effect]]:
        """Apply one result. ``take_ready``: the take file is on disk (or already promoted)."""
        e = self.lookup(msg["id"])
        token = msg["token"]
        if msg["status"] == "failed":
            return self._result_failed(e, token, msg.get("error") or "synthesis failed", now), []
        why = self._take_refusal(e, msg, take_ready)
        if why is not None:
            keep = why == "duplicate"
            return ({"applied": False, "status": e.status, "reason": why},
                    [] if keep else [Effect("stale", e.filename, token)])
        sr = msg["sample_rate"]
        if self.sample_rate is not None and sr != self.sample_rate:
            if e.lease is not None and e.lease.token == token:
                self._charge(e, Cause.FAILURE, f"sample rate {sr} differs from the dataset's {self.sample_rate}", now)
            raise Refused(f"sample rate {sr} differs from the dataset's {self.sample_rate}")
        # Under its live lease the synthesis ends now: one attempt. A late take is a synthesis whose
        # lease already ended (and was charged if it was under way): it makes attempts at least 1.
        e.attempts = e.attempts + 1 if e.lease is not None and e.lease.token == msg["token"] else max(e.attempts, 1)
        e.suspect = False
        e.duration_seconds = msg["duration_seconds"]
        e.sample_rate = sr
        e.error = None
        e.take = token
        e.take_count += 1
        e.deterministic = msg.get("deterministic") is True
        if self.sample_rate is None:
            self.sample_rate = sr
        self._transition(e, Cause.RESULT, COMPLETED, now)
        if msg.get("wav"):
            self.wav_sig[e.id] = msg["wav"]
        return {"applied": True, "status": e.status}, []

    def counts_take(self, msg: dict) -> bool:
        """Whether this completed take would count (its file aside): checked before it is moved."""
        e = self.lookup(msg["id"])
        sr = msg["sample_rate"]
        return self._take_refusal(e, msg, True) is None and (self.sample_rate is None or sr == self.sample_rate)

    @staticmethod
    def _take_refusal(e: Entry, msg: dict, take_ready: bool) -> str | None:
        """Why a completed take does not count, or None when it does."""
        token = msg["token"]
        if e.status == COMPLETED and e.take == token:
            return "duplicate"  # a resend of a result already applied
        if any(x.take == token for x in e.earlier):
            return "a check set this take aside"  # never current again through a result (a resend)
        held = e.lease is not None and e.lease.token == token
        if e.status == GENERATING and not held:
            return "another generator holds the entry"
        if e.status == COMPLETED:
            return "the entry is already completed by another take"
        if msg["rev"] != e.rev:
            return "the entry was requeued or edited since this take was claimed"
        if msg["text_hash"] != e.text_hash:
            return "the take was made from another text"
        if not take_ready:
            return "the take's file is not in wavs/"
        return None

    def _result_failed(self, e: Entry, token: str, error: str, now: float) -> dict:
        if e.status != GENERATING or e.lease.token != token:
            return {"applied": False, "status": e.status}
        self._charge(e, Cause.FAILURE, error, now)
        return {"applied": True, "status": e.status}

    # ---- people's requests --------------------------------------------------
    def requeue(self, keys: list, failed: bool, now: float) -> tuple[dict, list[Effect]]:
        targets = [self.lookup(k) for k in keys]  # refuses before changing anything
        if failed:
            targets += [e for e in self.entries if e.status == FAILED]
        effects, done = [], []
        for eid in dict.fromkeys(t.id for t in targets):
            effects += self._reset(self.by_id[eid], Cause.REQUEUE, now)
            done.append(eid)
        return {"requeued": done}, effects

    def edit(self, key: int | str, text: str, now: float) -> tuple[dict, list[Effect]]:
        """A new text for an entry that is not being generated: a new revision, back to pending."""
        e = self.lookup(key)
        if e.status == GENERATING:
            raise Refused(f"entry {e.id} ({e.filename}) is being generated; edit it once its lease ends")
        e.text = text
        e.text_hash = text_hash(text)
        effects = self._reset(e, Cause.EDIT, now)
        return {"edited": e.id, "rev": e.rev}, effects

    def review(self, key: int | str, verdict: Verdict | None, note: str | None, take: str | None,
               now: float) -> dict:
        """A person's verdict on the take they heard (None: withdraw it). ``take``, when given, is
        the token of the take they heard (the page always sends it): a verdict on a take since
        replaced is refused. Without it, the verdict is on the current take."""
        e = self.lookup(key)
        if e.status != COMPLETED:
            raise Refused(f"entry {e.id} ({e.filename}) is {e.status}: only a completed take can be reviewed")
        if take is not None and take != e.take:
            raise Refused(f"entry {e.id} ({e.filename}) has a new take since that one; listen again")
        e.review = None if verdict is None else Review(verdict, e.take, iso(now), note)
        self._touch(e, now)
        return {"reviewed": e.id, "review": None if e.review is None else e.review.to_dict()}

    def add(self, items: list[tuple[str | None, str]], prefix: str, now: float) -> dict:
        """Append texts; ``items`` are (filename or None, text). All or nothing."""
        next_id = max(self.by_id, default=0) + 1
        width = max(4, len(str(next_id + len(items))))
        new: list[Entry] = []
        names = set()
        for i, (fname, text) in enumerate(items):
            eid = next_id + i
            name = fname or f"{prefix}_{eid:0{width}d}"
            if name in self.by_name or name in names:
                raise Refused(f"filename {name!r} already exists")
            names.add(name)
            new.append(Entry.make(eid, name, text, updated_at=iso(now)))
        for e in new:
            self.entries.append(e)
            self.by_id[e.id] = e
            self.by_name[e.filename] = e
            self.counts[PENDING] += 1
            self.stages[NONE_] += 1
            heapq.heappush(self._pending_heap, e.id)
            self._touch(e, now)
        return {"added": len(new), "first_id": next_id if new else None}

    # ---- requests that are not idempotent ---------------------------------------
    def answer_of(self, op: str, req: str) -> dict | None:
        return self.answers.get(f"{op}:{req}")

    def remember(self, op: str, req: str, body: dict) -> None:
        self.answers[f"{op}:{req}"] = body
        while len(self.answers) > ANSWERS_KEPT:
            del self.answers[next(iter(self.answers))]
        self.answers_dirty = True
        self.unsaved = True

    # ---- views ----------------------------------------------------------------
    def snapshot(self) -> dict:
        """What the reconciler needs of every filename: [status, duration, text hash, revision,
        take token, the wav's signature as its generator reported it]."""
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "sample_rate": self.sample_rate,
            "leases": list(self.leases),  # the tokens of live leases: their takes are awaited
            "entries": {e.filename: [e.status, e.duration_seconds, e.text_hash, e.rev, e.take,
                                     self.wav_sig.get(e.id)] for e in self.entries},
        }

    def stats(self) -> dict:
        return {**self.counters(), **self.check_counters(), "sample_rate": self.sample_rate,
                "audio_seconds": round(sum(e.duration_seconds or 0.0 for e in self.entries
                                           if e.status == COMPLETED), 3)}
