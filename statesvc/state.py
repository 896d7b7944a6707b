"""The entries of a dataset and their transitions.

Pure: nothing here touches a socket, a file or the clock. Every transition takes
the state, a validated message and ``now`` (seconds since the epoch) and returns
a reply; file moves it needs (quarantine, moving an old take aside) are returned
as ``Effect`` values for the daemon to carry out.

Counters are derived: ``counts`` changes only inside ``_set_status``, which moves
one entry from one bucket to another, and ``recount`` rebuilds it from the
entries (the tests check the two always agree).
"""

from __future__ import annotations

import collections
import functools
import heapq
import operator
import secrets
import time
from dataclasses import dataclass, field

STATUSES = ("pending", "generating", "completed", "failed")
SCHEMA_VERSION = 1
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_SECONDS = 120.0
DURATION_TOLERANCE = 0.002


class Refused(Exception):
    """A request that is well formed but cannot be applied; its text is the reply."""


@dataclass(slots=True)
class Entry:
    id: int
    filename: str
    text: str
    status: str = "pending"
    duration_seconds: float | None = None
    sample_rate: int | None = None
    attempts: int = 0
    error: str | None = None
    updated_at: str | None = None
    lease_token: str | None = None
    lease_owner: str | None = None
    lease_deadline: float | None = None
    # Set by requeue: a wav seen on disk must not flip the entry back to
    # completed until a generator has claimed it again.
    requeued: bool = False

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
        }
        if self.lease_token is not None:
            d["lease"] = {
                "token": self.lease_token,
                "owner": self.lease_owner,
                "deadline": self.lease_deadline,
            }
        if self.requeued:
            d["requeued"] = True
        return d


@dataclass(frozen=True, slots=True)
class Effect:
    """A file move the daemon performs before the change is saved."""

    kind: str  # "quarantine" or "set_aside"
    filename: str


@functools.lru_cache(maxsize=1)  # every change applied in one loop turn shares one ``now``
def iso(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@dataclass
class State:
    entries: list[Entry]
    sample_rate: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    by_id: dict[int, Entry] = field(default_factory=dict)
    by_name: dict[str, Entry] = field(default_factory=dict)
    index_of: dict[int, int] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)
    owner_leases: collections.Counter = field(default_factory=collections.Counter)  # owner -> leases held
    changed_seq: dict[int, int] = field(default_factory=dict)
    dirty: set[int] = field(default_factory=set)
    changes: list[int] = field(default_factory=list)
    # An owner whose leases expire is dead or stuck; only the entries it was working
    # on (its batch, the first claimed) are charged an attempt, not its prefetched ones.
    owner_batch: dict[str, int] = field(default_factory=dict)
    owner_charged: dict[str, int] = field(default_factory=dict)
    # (size, mtime_ns, inode) of a wav as its generator reported it, in memory only: the
    # reconciler need not open a file its generator just wrote and that has not changed since
    wav_sig: dict[int, list[int]] = field(default_factory=dict)
    unsaved: bool = False
    _pending_heap: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        entries = self.entries  # comprehensions: a million entries are indexed in a fraction of a second
        self.by_id = {e.id: e for e in entries}
        self.by_name = {e.filename: e for e in entries}
        self.index_of = {e.id: i for i, e in enumerate(entries)}
        for e in [e for e in entries if e.lease_token is not None]:
            self.leases[e.lease_token] = e.id
            self.owner_leases[e.lease_owner] += 1
        self.recount()
        self._pending_heap = [e.id for e in entries if e.status == "pending"]
        heapq.heapify(self._pending_heap)

    # ---- derived values -------------------------------------------------
    def recount(self) -> None:
        counts = collections.Counter(map(operator.attrgetter("status"), self.entries))
        self.counts = {s: counts[s] for s in STATUSES}

    def counters(self) -> dict[str, int]:
        return {"total": len(self.entries), **self.counts}

    # ---- lookups --------------------------------------------------------
    def lookup(self, key: int | str) -> Entry:
        entry = self.by_id.get(key) if isinstance(key, int) else self.by_name.get(key)
        if entry is None and isinstance(key, str) and key.isdigit():
            entry = self.by_id.get(int(key))
        if entry is None:
            raise Refused(f"no entry {key!r}")
        return entry

    # ---- the single place an entry changes ------------------------------
    def _touch(self, e: Entry, now: float) -> None:
        self.seq += 1
        e.updated_at = iso(now)
        self.changed_seq[e.id] = self.seq
        self.dirty.add(e.id)
        self.changes.append(e.id)
        self.unsaved = True

    def _set_status(self, e: Entry, status: str, now: float) -> None:
        if e.status != status:
            self.wav_sig.pop(e.id, None)
            self.counts[e.status] -= 1
            self.counts[status] += 1
            e.status = status
            if status == "pending":
                heapq.heappush(self._pending_heap, e.id)
        self._touch(e, now)

    def _drop_lease(self, e: Entry) -> None:
        if e.lease_token is not None and self.leases.pop(e.lease_token, None) is not None:
            self.owner_leases[e.lease_owner] -= 1
            if not self.owner_leases[e.lease_owner]:
                del self.owner_leases[e.lease_owner]
        e.lease_token = e.lease_owner = e.lease_deadline = None

    def _complete(self, e: Entry, duration: float, sample_rate: int, now: float) -> None:
        self._drop_lease(e)
        e.duration_seconds = duration
        e.sample_rate = sample_rate
        e.error = None
        e.requeued = False
        if self.sample_rate is None:
            self.sample_rate = sample_rate
        self._set_status(e, "completed", now)

    def _retry_or_fail(self, e: Entry, error: str, now: float) -> None:
        self._drop_lease(e)
        e.error = error
        self._set_status(e, "failed" if e.attempts >= self.max_attempts else "pending", now)

    # ---- transitions ----------------------------------------------------
    def claim(self, owner: str, n: int, lease_seconds: float | None, now: float, batch: int = 1) -> dict:
        seconds = lease_seconds or self.lease_seconds
        self.owner_batch[owner] = batch
        out = []
        # Near the end, what is left is shared among the owners holding work, so no generator
        # sits on a queue while another has nothing (every run ends with its slowest generator).
        owners = len(self.owner_leases) + (owner not in self.owner_leases)
        n = min(n, max(batch, -(-self.counts["pending"] // owners)))
        randomness = secrets.token_hex(8 * min(n, self.counts["pending"]))  # one system call, not one per entry
        while self._pending_heap and len(out) < n:
            eid = heapq.heappop(self._pending_heap)
            e = self.by_id.get(eid)
            if e is None or e.status != "pending":
                continue  # stale heap item: the entry moved on since it was pushed
            token = randomness[16 * len(out):16 * len(out) + 16]
            e.lease_token, e.lease_owner, e.lease_deadline = token, owner, now + seconds
            e.attempts += 1
            e.requeued = False
            self.leases[token] = e.id
            self.owner_leases[owner] += 1
            self._set_status(e, "generating", now)
            out.append({"id": e.id, "filename": e.filename, "text": e.text, "token": token})
        return {"entries": out, "lease_seconds": seconds, "sample_rate": self.sample_rate,
                "pending": self.counts["pending"], "owners": owners}

    def heartbeat(self, owner: str, tokens: list[str], now: float) -> dict:
        """Extend leases; tokens no longer held come back as ``lost``."""
        lost = []
        for token in tokens:
            e = self._held(owner, token)
            if e is None:
                lost.append(token)
                continue
            e.lease_deadline = now + self.lease_seconds
            self.dirty.add(e.id)  # saved with the next write; a heartbeat needs no fsync
        return {"lost": lost}

    def release(self, owner: str, tokens: list[str], now: float) -> dict:
        """Give back leases not started (a generator shutting down): no attempt is spent."""
        released = []
        for token in tokens:
            e = self._held(owner, token)
            if e is not None:
                self._give_back(e, now)
                released.append(e.id)
        return {"released": released}

    def _held(self, owner: str, token: str) -> Entry | None:
        """The entry ``owner`` holds under ``token``, or None when that lease is gone."""
        eid = self.leases.get(token)
        e = self.by_id.get(eid) if eid is not None else None
        return e if e is not None and e.lease_owner == owner else None

    def _give_back(self, e: Entry, now: float) -> None:
        """A lease whose work never started: back to pending, its attempt refunded."""
        self._drop_lease(e)
        e.attempts = max(0, e.attempts - 1)
        self._set_status(e, "pending", now)

    def grant_grace(self, now: float) -> None:
        """After a restart, live leases get a full lease from now: generators kept working."""
        for eid in self.leases.values():
            e = self.by_id[eid]
            e.lease_deadline = max(e.lease_deadline or 0.0, now + self.lease_seconds)

    def result(self, msg: dict, now: float) -> dict:
        e = self.lookup(msg["id"])
        token = msg["token"]
        if msg["status"] == "completed":
            reply = self._result_completed(e, token, msg["duration_seconds"], msg["sample_rate"], now)
            if reply["applied"] and msg.get("wav"):
                self.wav_sig[e.id] = msg["wav"]
            return reply
        return self._result_failed(e, token, msg.get("error") or "synthesis failed", now)

    def _result_completed(self, e: Entry, token: str, duration: float, sr: int, now: float) -> dict:
        if self.sample_rate is not None and sr != self.sample_rate:
            if e.lease_token == token:
                self._retry_or_fail(e, f"sample rate {sr} differs from the dataset's {self.sample_rate}", now)
            raise Refused(f"sample rate {sr} differs from the dataset's {self.sample_rate}")
        if e.status == "completed":
            # A resend, or somebody else finished first: nothing changes.
            return {"applied": False, "status": e.status}
        if e.requeued and e.lease_token != token:
            return {"applied": False, "status": e.status, "reason": "requeued"}
        # Own live lease, an expired lease (pending/failed), or another live lease:
        # valid audio is never thrown away.
        if e.status == "generating" and e.lease_token != token:
            self._drop_lease(e)
        self._complete(e, duration, sr, now)
        return {"applied": True, "status": "completed"}

    def _result_failed(self, e: Entry, token: str, error: str, now: float) -> dict:
        if e.status != "generating" or e.lease_token != token:
            return {"applied": False, "status": e.status}
        self._retry_or_fail(e, error[:2000], now)
        return {"applied": True, "status": e.status}

    def expire(self, now: float) -> list[int]:
        # self.leases keeps claim order, so an owner's first expired lease is the one it was on
        expired = [
            eid
            for eid in self.leases.values()
            if (d := self.by_id[eid].lease_deadline) is not None and d <= now
        ]
        for eid in expired:
            e = self.by_id[eid]
            owner = e.lease_owner or ""
            charged = self.owner_charged.get(owner, 0)
            if charged < self.owner_batch.get(owner, 1):
                self.owner_charged[owner] = charged + 1
                self._retry_or_fail(e, "lease expired", now)
            else:
                self._give_back(e, now)  # prefetched, never started
        return expired

    def requeue(self, keys: list, failed: bool, now: float) -> tuple[dict, list[Effect]]:
        targets = [self.lookup(k) for k in keys]  # refuses before changing anything
        if failed:
            targets += [e for e in self.entries if e.status == "failed"]
        effects, done = [], []
        for e in dict.fromkeys(t.id for t in targets):
            entry = self.by_id[e]
            if entry.status == "completed":
                effects.append(Effect("set_aside", entry.filename))
            self._drop_lease(entry)
            entry.attempts = 0
            entry.error = None
            entry.duration_seconds = None
            entry.requeued = True
            self._set_status(entry, "pending", now)
            done.append(entry.id)
        return {"requeued": done}, effects

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
            new.append(Entry(id=eid, filename=name, text=text, updated_at=iso(now)))
        for e in new:
            self.index_of[e.id] = len(self.entries)
            self.entries.append(e)
            self.by_id[e.id] = e
            self.by_name[e.filename] = e
            self.counts["pending"] += 1
            heapq.heappush(self._pending_heap, e.id)
            self._touch(e, now)
        return {"added": len(new), "first_id": next_id if new else None}

    def reconcile(self, since: int, epoch: str, files: dict, missing: list[str], now: float
                  ) -> tuple[dict, list[Effect]]:
        """Apply what the reconciler saw on disk at sequence ``since``.

        ``files`` maps filename to an observation ``{"valid": bool, "duration":
        float, "sample_rate": int, "reason": str}``; ``missing`` lists entries the
        reconciler believed completed and found no wav for. Entries that changed
        after ``since`` are left alone: the observation may predate the change.
        """
        if epoch != self.epoch:
            raise Refused("stale reconcile snapshot (the daemon restarted); scan again")
        fixes: list[dict] = []
        effects: list[Effect] = []
        for name, obs in files.items():
            e = self.by_name.get(name)
            if e is None or self.changed_seq.get(e.id, 0) > since:
                continue
            fix = self._reconcile_file(e, obs, now)
            if fix:
                fixes.append({"id": e.id, "filename": name, "fix": fix})
                if fix.startswith("quarantined"):
                    effects.append(Effect("quarantine", name))
        for name in missing:
            e = self.by_name.get(name)
            if e is None or e.status != "completed" or self.changed_seq.get(e.id, 0) > since:
                continue
            e.duration_seconds = None
            e.error = "audio missing"
            self._set_status(e, "pending", now)
            fixes.append({"id": e.id, "filename": name, "fix": "completed -> pending (wav missing)"})
        return {"fixes": fixes}, effects

    def _reconcile_file(self, e: Entry, obs: dict, now: float) -> str | None:
        if e.status == "generating" or e.requeued:
            return None
        if not obs["valid"] or (
            self.sample_rate is not None and obs.get("sample_rate") != self.sample_rate
        ):
            reason = obs.get("reason") or f"sample rate {obs.get('sample_rate')}"
            before = e.status
            if before == "completed":
                e.duration_seconds = None
                e.error = f"bad audio: {reason}"
                self._set_status(e, "pending", now)
            return f"quarantined ({reason}); {before} -> {e.status}"
        duration = obs["duration"]
        if e.status in ("pending", "failed"):
            before = e.status
            self._complete(e, duration, obs["sample_rate"], now)
            return f"{before} -> completed (valid wav on disk)"
        if e.duration_seconds is None or abs(e.duration_seconds - duration) > DURATION_TOLERANCE:
            old = e.duration_seconds
            e.duration_seconds = duration
            self._touch(e, now)
            return f"duration {old} -> {duration}"
        return None

    def snapshot(self) -> dict:
        """What the reconciler needs: the status and duration of every filename."""
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "sample_rate": self.sample_rate,
            "entries": {e.filename: [e.status, e.duration_seconds, e.requeued, self.wav_sig.get(e.id)]
                        for e in self.entries},
        }

    def stats(self) -> dict:
        return {**self.counters(), "sample_rate": self.sample_rate,
                "audio_seconds": round(sum(e.duration_seconds or 0.0 for e in self.entries
                                           if e.status == "completed"), 3)}
