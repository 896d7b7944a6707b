"""The pure lifecycle: a stateful model (hypothesis) that any sequence of messages keeps the
invariants, and the rules one by one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statesvc import checks, reconcile
from statesvc.codec import Head, write_file
from statesvc.entry import Entry, Phase, Stage, Status, text_hash
from statesvc.judge import MIN_RATE_CHARS
from statesvc.layout import STATE_FILE
from statesvc.lifecycle import LIFECYCLE, Cause
from statesvc.loader import load
from statesvc.protocol import CheckReport
from statesvc.state import Refused, State
from tests.support.books import take

SR = 22050
SHM = "/dev/shm" if Path("/dev/shm").is_dir() else None  # real files, without a disk's fsyncs at every step


def saved(s: State, folder: Path) -> bytes:
    """``s`` written as ``folder``'s state file, over the one there (a fixed identity: the same
    state makes the same bytes); the file's bytes."""
    write_file(folder, s, Head("0" * 16))
    return (folder / STATE_FILE).read_bytes()


def fresh(n: int = 5, max_attempts: int = 3) -> State:
    return State([Entry.make(i, f"utt_{i:04d}", f"text {i}") for i in range(1, n + 1)], max_attempts=max_attempts)


def check_invariants(s: State) -> None:
    """What must hold of any state, whatever happened to it."""
    counted = dict.fromkeys(Status, 0)
    for e in s.entries:
        counted[e.status] += 1
    assert s.counts == counted, "counters are derived from the entries"
    assert s.counters()["total"] == len(s.entries)
    live = [e for e in s.entries if e.lease is not None]
    assert all(e.status == Status.GENERATING for e in live), "a lease only while generating"
    assert all(e.lease is not None for e in s.entries if e.status == Status.GENERATING), "no generating without lease"
    assert len({e.lease.token for e in live}) == len(live), "one lease per entry, no token shared"
    assert s.leases == {e.lease.token: e.id for e in live}
    owners: dict[str, set] = {}
    for e in live:
        owners.setdefault(e.lease.owner, set()).add(e.lease.token)
    assert {o: set(t) for o, t in s.owner_tokens.items()} == owners, "owner tables hold exactly the live leases"
    assert set(s.synthesizing) <= set(owners), "an owner holding nothing leaves no trace"
    for tokens in s.synthesizing.values():
        for t in tokens:
            if t in s.leases:
                assert s.by_id[s.leases[t]].lease.phase == Phase.SYNTHESIZING
    for e in s.entries:
        assert e.attempts <= s.max_attempts
        assert e.text_hash == text_hash(e.text)
        if e.status == Status.COMPLETED:
            assert e.duration_seconds is not None and e.error is None
            assert e.take_count >= 1, f"entry {e.id}: completed, so at least one take was made"
        assert (e.stage == Stage.NONE) == (e.status != Status.COMPLETED), "a check stage exactly while completed"
        assert (e.stage == Stage.LEASED) == (e.check_lease is not None), "a check lease exactly while leased"
        assert (e.check is not None) == (e.stage in (Stage.CHECKED, Stage.FLAGGED)), "a check exactly once judged"
        if e.check is not None:
            assert e.check.take == e.take, f"entry {e.id}: its check is of its current take"
    leased = [e for e in s.entries if e.check_lease is not None]
    assert s.check_leases == {e.check_lease.token: e.id for e in leased}
    assert s.stages == {st: sum(e.stage == st for e in s.entries) for st in Stage}, "stage counters derived"
    # the judge's figures, kept incrementally, equal a rescan: the CER of current takes' checks, and
    # seconds per character of current takes
    assert s.judge.cers.n == sum(e.check is not None and e.check.error is None and e.check.cer is not None
                                 for e in s.entries)
    assert s.judge.rates.n == sum(e.stage != Stage.NONE and bool(e.duration_seconds) and len(e.text) >= MIN_RATE_CHARS
                                  for e in s.entries)


OWNERS = st.sampled_from(["g1", "g2", "g3"])


class Lifecycle(RuleBasedStateMachine):
    """Drives a real State with interleaved claims, working notices, results (on time, late,
    duplicated, from dead owners, of old revisions), heartbeats, expiries, deaths, releases,
    requeues, edits, reconcile reports and failed saves; checks after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.s = fresh()
        self.now = 1000.0
        self.handed: list[dict] = []            # every claim item ever handed out (with its owner)
        self.phase: dict[str, Phase] = {}       # token -> phase, as the generator told the state
        self.ended: dict[int, int] = dict.fromkeys(self.s.by_id, 0)  # syntheses that ended, per entry
        self.unit: dict[str, list[str]] = {}    # owner -> the tokens it said it synthesizes together
        self.owner_of: dict[str, str] = {}
        self.checks_out: list[dict] = []        # every check item ever handed out (with its owner)
        self.folder = Path(tempfile.mkdtemp(prefix="lifecycle-", dir=SHM))  # the disk: real files
        (self.folder / "disk").mkdir()
        (self.folder / "again").mkdir()
        self.disk = saved(self.s, self.folder / "disk")
        self.disk_model = self._model()

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _model(self) -> tuple:
        return dict(self.phase), dict(self.ended), {o: list(t) for o, t in self.unit.items()}

    def _pick(self, i: int) -> dict | None:
        return self.handed[i % len(self.handed)] if self.handed else None

    def _units(self) -> dict[str, int]:
        return {o: sum(t in self.s.leases for t in ts) for o, ts in self.unit.items()}

    def _end_leases(self, before: dict[str, int], units: dict[str, int]) -> set[int]:
        """Leases that disappeared without a result: a synthesis under way is charged when it was
        alone; a batch under way goes back uncharged, each of its entries to be tried alone."""
        charged = set()
        for token, eid in before.items():
            if token in self.s.leases or self.phase.get(token) != Phase.SYNTHESIZING:
                continue
            if units.get(self.owner_of[token], 0) == 1:
                self.ended[eid] += 1
                charged.add(eid)
            else:
                assert self.s.by_id[eid].suspect, "a batch that died is retried one text at a time"
        return charged

    # ---- generators -----------------------------------------------------------
    @rule(owner=OWNERS, n=st.integers(1, 3))
    def claim(self, owner: str, n: int) -> None:
        for c in self.s.claim(owner, n, None, self.now)["entries"]:
            self.handed.append({**c, "owner": owner})
            self.phase[c["token"]] = Phase.QUEUED
            self.owner_of[c["token"]] = owner

    @rule(owner=OWNERS)
    def generate_at_once(self, owner: str) -> None:
        """A generator that claims one entry and reports its take at once: takes are made (and
        retaken) often."""
        if self.s.counts[Status.PENDING]:
            self.claim(owner, 1)
            self.complete(len(self.handed) - 1, True, False)

    @rule(owner=OWNERS, k=st.integers(0, 2))
    def working(self, owner: str, k: int) -> None:
        mine = list(self.s.owner_tokens.get(owner, {}))
        chosen = mine[:k]
        self.s.working(owner, chosen, self.now)
        self.unit[owner] = chosen
        for t in mine:
            if t in chosen:
                self.phase[t] = Phase.SYNTHESIZING
            elif self.phase.get(t) == Phase.SYNTHESIZING:
                self.phase[t] = Phase.WRITTEN
        for t in chosen:
            assert self.s.by_id[self.s.leases[t]].lease.phase == Phase.SYNTHESIZING

    @rule(i=st.integers(0, 50), ready=st.booleans(), stale_hash=st.booleans())
    def complete(self, i: int, ready: bool, stale_hash: bool) -> None:
        c = self._pick(i)
        if c is None:
            return
        e = self.s.by_id[c["id"]]
        held = e.lease is not None and e.lease.token == c["token"]
        unheld_current = e.lease is None and e.status in (Status.PENDING, Status.FAILED) and e.rev == c["rev"]
        msg = take(c, 1.0, SR, take_file=True)
        if stale_hash:
            msg["text_hash"] = "0" * 16
        counts = self.s.counts_take(msg)  # what the daemon asks before it moves the take under the name
        body, effects = self.s.result(msg, self.now, take_ready=ready)
        assert body["applied"] == (counts and ready), "a take is moved under the name exactly when it counts"
        if body["applied"]:
            assert held or unheld_current, "a take counts only under its lease, or late over nobody"
            assert c["token"] not in [x.take for x in e.earlier], "a take set aside never returns"
            assert ready and not stale_hash and e.take == c["token"] and e.rev == c["rev"]
            assert effects == []
            self.ended[e.id] = self.ended[e.id] + 1 if held else max(self.ended[e.id], 1)
        elif held and ready and not stale_hash:
            raise AssertionError("a take under its own live lease must count")
        if not body["applied"] and body.get("reason") != "duplicate":
            assert all(f.kind == "stale" for f in effects), "a take that does not count goes aside"

    @rule(i=st.integers(0, 50))
    def fail(self, i: int) -> None:
        c = self._pick(i)
        if c is None:
            return
        before = self.s.by_id[c["id"]].lease
        body, _ = self.s.result({"id": c["id"], "token": c["token"], "status": "failed", "error": "x"}, self.now)
        assert body["applied"] == (before is not None and before.token == c["token"])
        if body["applied"]:
            self.ended[c["id"]] += 1

    @rule(owner=OWNERS)
    def heartbeat(self, owner: str) -> None:
        tokens = [c["token"] for c in self.handed if c["owner"] == owner]
        lost = set(self.s.heartbeat(owner, tokens, self.now)["lost"])
        assert lost == {t for t in tokens if self.s.leases.get(t) is None or
                        self.s.by_id[self.s.leases[t]].lease.owner != owner}

    @rule(seconds=st.floats(0, 30))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        before, units = dict(self.s.leases), self._units()
        self.s.expire(self.now)
        checks.expire(self.s, self.now)
        assert all(self.s.by_id[eid].lease.deadline > self.now for eid in self.s.leases.values())
        assert all(self.s.by_id[eid].check_lease.deadline > self.now for eid in self.s.check_leases.values())
        self._end_leases(before, units)

    @rule(owner=OWNERS)
    def died(self, owner: str) -> None:
        before, units = dict(self.s.leases), self._units()
        body = self.s.died(owner, self.now)
        checks.expire(self.s, self.now, owner)
        assert owner not in self.s.owner_tokens
        assert set(body["charged"]) == self._end_leases(before, units)

    @rule(owner=OWNERS, k=st.integers(0, 3))
    def release(self, owner: str, k: int) -> None:
        self.s.release(owner, list(self.s.owner_tokens.get(owner, {}))[:k], self.now)

    # ---- checkers -------------------------------------------------------------------
    @rule(owner=OWNERS, n=st.integers(1, 3))
    def check_claim(self, owner: str, n: int) -> None:
        items = checks.claim(self.s, owner, n, None, self.now)["entries"]
        assert len({c["id"] for c in items}) == len(items)
        for c in items:
            assert c["id"] not in {h["id"] for h in self.checks_out if self.s.check_leases.get(h["token"]) == h["id"]
                                   and h["token"] != c["token"]}, "a take is handed to one checker at a time"
            self.checks_out.append({**c, "owner": owner})

    @rule(i=st.integers(0, 50), cer=st.sampled_from([0.0, 0.1, 0.4, 0.9, 2.0]), error=st.booleans(),
          stale_take=st.booleans(), live_only=st.booleans())
    def check_result(self, i: int, cer: float, error: bool, stale_take: bool, live_only: bool) -> None:
        out = [c for c in self.checks_out if self.s.check_leases.get(c["token"]) == c["id"]] if live_only \
            else self.checks_out  # half the time a report under a live check lease: retakes and restores happen
        if out:
            self._report(out[i % len(out)], cer, error, stale_take)

    @rule(owner=OWNERS, cer=st.sampled_from([0.1, 0.4, 0.6, 0.9, 2.0]))
    def check_at_once(self, owner: str, cer: float) -> None:
        """A checker that reports at once: takes are judged, retaken and restored often."""
        for c in checks.claim(self.s, owner, 1, None, self.now)["entries"]:
            self.checks_out.append({**c, "owner": owner})
            self._report(self.checks_out[-1], cer, False, False)

    def _report(self, c: dict, cer: float, error: bool, stale_take: bool) -> None:
        e = self.s.by_id[c["id"]]
        take_now, status, takes = e.take, e.status, e.take_count
        live = e.check_lease is not None and e.check_lease.token == c["token"] and e.check_lease.owner == c["owner"]
        report = CheckReport(c["id"], c["owner"], c["token"], "0" * 16 if stale_take else c["take"],
                             None if error else cer, None, "x", "m", "boom" if error else None, False)
        body, _ = checks.result(self.s, report, self.now)
        assert body["applied"] == (live and not stale_take and status == Status.COMPLETED and take_now == c["take"]), \
            "a check counts only for the current take under its live check lease"
        if body["applied"] and body.get("retake"):
            assert e.status == Status.PENDING and takes < self.s.max_takes and not error
            self.ended[e.id] = 0  # a retake is not a failed attempt: the new take's budget is whole
            assert e.earlier[-1].take == c["take"] and e.earlier[-1].check.cer == cer
        elif body["applied"] and not error and e.review is None:  # a final judgement: the best take by CER
            assert all(e.check.cer <= x.check.cer for x in e.earlier if x.rev == e.rev and x.check.error is None)

    # ---- people -----------------------------------------------------------------
    @rule(eid=st.integers(1, 6), failed=st.booleans())
    def requeue(self, eid: int, failed: bool) -> None:
        try:
            body, _ = self.s.requeue([eid], failed, self.now)
        except Refused:
            assert eid == 6
            return
        for i in body["requeued"]:
            self.ended[i] = 0
            assert self.s.by_id[i].attempts == 0

    @rule(eid=st.integers(1, 5), text=st.sampled_from(["otra cosa", "text 1", "nueva", "una frase más larga"]))
    def edit(self, eid: int, text: str) -> None:
        e = self.s.by_id[eid]
        rev = e.rev
        try:
            self.s.edit(eid, text, self.now)
        except Refused:
            assert e.status == Status.GENERATING
            return
        assert e.rev == rev + 1 and e.status == Status.PENDING and e.text == text
        self.ended[eid] = 0

    @rule(eid=st.integers(1, 5), seen=st.sampled_from(["current", "old-rev", "foreign", "invalid", "missing",
                                                         "set-aside"]), i=st.integers(0, 50))
    def reconcile(self, eid: int, seen: str, i: int) -> None:
        e = self.s.by_id[eid]
        before = (e.status, e.rev)
        aside = [x for x in e.earlier if x.rev == e.rev]
        if seen == "set-aside":  # a take a check set aside, still under the name: moved back, never adopted
            if aside:
                was = (e.status, e.take, e.take_count)
                obs = {"valid": True, "duration": 1.0, "sample_rate": SR,
                       "take": {"text_hash": e.text_hash, "rev": e.rev, "token": aside[i % len(aside)].take}}
                _, effects = reconcile.apply(self.s, self.s.seq, self.s.epoch, {e.filename: obs}, [], self.now)
                settled = [] if was[0] == Status.GENERATING else ["settle"]  # a generating entry is left alone
                assert (e.status, e.take, e.take_count) == was and [f.kind for f in effects] == settled
            return
        if seen == "missing":
            reconcile.apply(self.s, self.s.seq, self.s.epoch, {}, [e.filename], self.now)
            return
        obs: dict = {"valid": seen != "invalid", "duration": 1.0, "sample_rate": SR, "reason": "bad"}
        if seen in ("current", "old-rev"):
            obs["take"] = {"text_hash": e.text_hash, "rev": e.rev - (seen == "old-rev"), "token": f"t{i}"}
        reconcile.apply(self.s, self.s.seq, self.s.epoch, {e.filename: obs}, [], self.now)
        if e.status == Status.COMPLETED and before[0] != Status.COMPLETED:
            assert seen in ("current", "foreign"), "only a take of the current text and revision is adopted"
            assert before[0] in (Status.PENDING, Status.FAILED)

    # ---- the daemon's saves ---------------------------------------------------------
    @rule()
    def save(self) -> None:
        self.disk = saved(self.s, self.folder / "disk")
        self.disk_model = self._model()

    @rule()
    def failed_save(self) -> None:
        """A save failed: memory goes back to what is on disk (the daemon reloads the file)."""
        self.s = load(self.folder / "disk")
        self.s.max_attempts = 3
        self.phase, self.ended, self.unit = (dict(x) for x in self.disk_model)
        assert saved(self.s, self.folder / "again") == self.disk, "nothing unsaved survives"

    @precondition(lambda self: True)
    @invariant()
    def invariants(self) -> None:
        check_invariants(self.s)
        for e in self.s.entries:
            assert e.attempts == self.ended[e.id], f"entry {e.id}: attempts equal the syntheses that ended"
            if e.status == Status.COMPLETED:  # a take token always: a lease's, or an adopted wav's own
                assert e.take is not None, f"entry {e.id}: completed without a take token"
            assert all(x.check is None or not x.check.transcript for x in e.earlier if x.rev < e.rev), \
                "an earlier take of an older revision keeps no transcript"
            if e.status == Status.COMPLETED and not e.take.startswith(("t", "adopted-")):
                assert any(c["id"] == e.id and c["token"] == e.take and c["rev"] == e.rev for c in self.handed)
        saved(self.s, self.folder / "again")
        again = load(self.folder / "again")
        assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in self.s.entries]


Lifecycle.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_lifecycle = Lifecycle.TestCase


# ---- the table ------------------------------------------------------------------
def test_every_status_change_goes_through_the_table() -> None:
    s = fresh(1)
    e = s.by_id[1]
    with pytest.raises(Refused, match="claim cannot make it completed"):
        s._transition(e, Cause.CLAIM, Status.COMPLETED, 0)
    with pytest.raises(Refused, match="edit cannot make it pending"):
        s.claim("g", 1, None, 0)
        s._transition(e, Cause.EDIT, Status.PENDING, 0)
    assert set(LIFECYCLE) == set(Cause)


def test_a_take_under_another_live_lease_never_counts() -> None:
    s = fresh(1)
    old = s.claim("a", 1, 10, 0)["entries"][0]
    s.expire(11)
    new = s.claim("b", 1, 10, 12)["entries"][0]
    body, effects = s.result(take(old), 13)
    assert not body["applied"] and body["reason"] == "another generator holds the entry"
    assert [f.kind for f in effects] == ["stale"]
    assert s.by_id[1].lease.token == new["token"], "the live holder keeps its lease"
    assert s.result(take(new), 14)[0]["applied"]


def test_a_late_take_counts_when_nobody_holds_the_entry() -> None:
    s = fresh(1)
    c = s.claim("g", 1, 10, 0)["entries"][0]
    s.expire(11)
    body, _ = s.result(take(c), 12)
    assert body["applied"] and s.by_id[1].status == "completed" and s.by_id[1].take == c["token"]


def test_the_requeue_guard_holds_after_another_claim() -> None:
    """Bug 2 of the issue: a take from before a requeue was accepted once the entry was claimed again."""
    s = fresh(1)
    old = s.claim("a", 1, 10, 0)["entries"][0]
    s.requeue([1], False, 1)
    assert s.result(take(old), 2)[0]["reason"] == "the entry was requeued or edited since this take was claimed"
    s.claim("b", 1, 10, 3)
    s.expire(20)  # nobody holds it again
    assert not s.result(take(old), 21)[0]["applied"]
    assert s.by_id[1].status == "pending"


def test_a_take_of_an_edited_text_never_counts() -> None:
    s = fresh(1)
    c = s.claim("a", 1, 10, 0)["entries"][0]
    s.expire(11)
    s.edit(1, "un texto nuevo", 12)
    assert not s.result(take(c), 13)[0]["applied"]
    fresh_claim = s.claim("a", 1, 10, 14)["entries"][0]
    assert fresh_claim["text_hash"] == text_hash("un texto nuevo") and fresh_claim["rev"] == 1


def test_edit_refuses_an_entry_being_generated() -> None:
    s = fresh(1)
    s.claim("a", 1, 10, 0)
    with pytest.raises(Refused, match="being generated"):
        s.edit(1, "x", 1)


def test_resent_result_changes_nothing() -> None:
    s = fresh()
    c = s.claim("g", 1, None, 0)["entries"][0]
    assert s.result(take(c, 2.5, 16000), 1)[0]["applied"] is True
    seq = s.seq
    body, effects = s.result(take(c, 2.5, 16000), 2)
    assert body == {"applied": False, "status": "completed", "reason": "duplicate"} and effects == []
    assert s.seq == seq


def test_only_the_text_under_way_is_charged_when_its_generator_dies() -> None:
    s = fresh(4)
    got = s.claim("dead", 4, 10, 0)["entries"]
    s.working("dead", [got[0]["token"]], 1)
    s.working("dead", [got[1]["token"]], 2)  # the first is written, its result still buffered
    body = s.died("dead", 3)
    assert body == {"returned": [1, 3, 4], "charged": [2], "failed": []}
    assert [s.by_id[i].attempts for i in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert s.by_id[2].error == "the generator died while synthesizing this text"
    assert s.owner_tokens == {}


def test_a_poison_text_fails_after_max_attempts_and_nothing_else_is_charged() -> None:
    s = fresh(2, max_attempts=3)
    for i in range(3):
        got = s.claim(f"g{i}", 2, 10, i)["entries"]
        poison = next(c for c in got if c["id"] == 1)
        s.working(f"g{i}", [poison["token"]], i)
        s.died(f"g{i}", i)
    assert s.by_id[1].status == "failed" and s.by_id[1].attempts == 3
    assert s.by_id[2].status == "pending" and s.by_id[2].attempts == 0


def test_a_batch_that_dies_is_retried_one_text_at_a_time_and_only_the_culprit_is_charged() -> None:
    s = fresh(3, max_attempts=2)
    got = s.claim("g1", 3, 10, 0)["entries"]
    s.working("g1", [c["token"] for c in got], 0)  # one batch of three
    assert s.died("g1", 1) == {"returned": [1, 2, 3], "charged": [], "failed": []}
    again = s.claim("g2", 3, 10, 2)["entries"]
    assert all(c["suspect"] for c in again) and all(s.by_id[i].attempts == 0 for i in (1, 2, 3))
    s.working("g2", [again[1]["token"]], 3)  # alone now: entry 2 kills it again
    assert s.died("g2", 4)["charged"] == [2]


def test_expiry_charges_only_a_synthesis_under_way() -> None:
    s = fresh(2, max_attempts=2)
    a, b = s.claim("g1", 2, 5, 0)["entries"]
    s.working("g1", [a["token"]], 0)  # renews that lease for the state's lease (10 s)
    s.expire(11)
    assert [s.by_id[i].attempts for i in (1, 2)] == [1, 0]
    assert s.by_id[1].error == "lease expired while synthesizing (generator dead or stuck)"


def test_heartbeats_keep_leases_through_a_long_synthesis() -> None:
    s = fresh(1)
    c = s.claim("g", 1, 2, 0)["entries"][0]
    for t in range(1, 600):
        assert s.heartbeat("g", [c["token"]], t) == {"lost": []}
        s.expire(t + 0.5)
    assert s.by_id[1].status == "generating"


def test_a_generating_entry_without_a_lease_is_repaired_on_load() -> None:
    s = State([Entry.make(1, "a", "x", Status.GENERATING), Entry.make(2, "b", "y")])
    assert s.repair(0) == [1]
    assert s.by_id[1].status == "pending" and s.counts[Status.PENDING] == 2


def test_numeric_filenames_win_over_ids() -> None:
    s = State([Entry.make(1, "0002", "x"), Entry.make(2, "0001", "y")])
    assert s.lookup("0001").id == 2 and s.lookup("#1").id == 1 and s.lookup(1).id == 1
    assert s.lookup("2").id == 2  # no such filename: the id
    with pytest.raises(Refused):
        s.lookup("²")


def test_owner_tables_are_pruned() -> None:
    s = fresh(3)
    for i in range(3):
        c = s.claim(f"o{i}", 1, 10, 0)["entries"][0]
        s.result(take(c), 1)
    assert s.owner_tokens == {}


def test_reconcile_adopts_a_current_take_moves_an_old_one_aside_and_adopts_a_foreign_wav() -> None:
    s = fresh(3)
    s.requeue([2], False, 0)  # entry 2 is at revision 1
    files = {
        "utt_0001": {"valid": True, "duration": 1.0, "sample_rate": SR,
                     "take": {"text_hash": text_hash("text 1"), "rev": 0, "token": "t1"}},
        "utt_0002": {"valid": True, "duration": 1.0, "sample_rate": SR,
                     "take": {"text_hash": text_hash("text 2"), "rev": 0, "token": "t2"}},
        "utt_0003": {"valid": True, "duration": 1.0, "sample_rate": SR},
    }
    body, effects = reconcile.apply(s, s.seq, s.epoch, files, [], 1)
    fixes = {f["filename"]: f["fix"] for f in body["fixes"]}
    assert fixes["utt_0001"] == "pending -> completed (a late take of its text)"
    assert fixes["utt_0002"].startswith("moved aside (a take of revision 0)")
    assert "adopted a wav that records no text" in fixes["utt_0003"]
    assert [(f.kind, f.filename) for f in effects] == [("stale", "utt_0002")]
    assert [s.by_id[i].status for i in (1, 2, 3)] == ["completed", "pending", "completed"]


def test_reconcile_of_a_take_of_another_text_unsets_a_completed_entry() -> None:
    """Bug 1 of the issue: a re-init over old wavs must not mark new texts completed with old audio."""
    s = fresh(1)
    c = s.claim("g", 1, None, 0)["entries"][0]
    s.result(take(c), 1)
    files = {"utt_0001": {"valid": True, "duration": 1.0, "sample_rate": SR,
                          "take": {"text_hash": text_hash("something else"), "rev": 0, "token": "zz"}}}
    reconcile.apply(s, s.seq, s.epoch, files, [], 2)
    assert s.by_id[1].status == "pending" and "another text" in s.by_id[1].error


def test_reconcile_ignores_entries_changed_after_the_scan() -> None:
    s = fresh(1)
    since = s.seq
    c = s.claim("g", 1, None, 0)["entries"][0]
    s.result(take(c), 1)
    body, _ = reconcile.apply(s, since, s.epoch, {}, ["utt_0001"], 2)  # the scan began before the wav existed
    assert body["fixes"] == [] and s.by_id[1].status == "completed"


def test_reconcile_from_another_daemon_run_is_refused() -> None:
    s = fresh(1)
    with pytest.raises(Refused, match="stale"):
        reconcile.apply(s, 0, "other", {}, [], 0)


def test_wrong_sample_rate_is_refused_and_charged() -> None:
    s = fresh(2)
    a, b = s.claim("g", 2, None, 0)["entries"]
    s.result(take(a), 1)
    with pytest.raises(Refused, match="sample rate"):
        s.result(take(b, sample_rate=16000), 2)
    assert s.by_id[b["id"]].status == "pending" and s.by_id[b["id"]].attempts == 1


def test_add_refuses_duplicates_without_changing_anything() -> None:
    s = fresh(2)
    with pytest.raises(Refused):
        s.add([("new_1", "x"), ("utt_0001", "y")], "utt", 0)
    assert len(s.entries) == 2 and s.counts[Status.PENDING] == 2
    s.add([(None, "x")], "utt", 0)
    assert s.entries[-1].filename == "utt_0003"
    check_invariants(s)  # the check stage counters too


def test_the_last_entries_are_shared_among_the_owners_holding_work() -> None:
    s = fresh(20)
    assert len(s.claim("g1", 8, None, 0)["entries"]) == 8  # alone: what it asks
    reply = s.claim("g2", 8, None, 0)
    assert len(reply["entries"]) == 6 and reply["owners"] == 2  # 12 left, two owners: half each
    assert reply["pending"] == 6
    assert len(s.claim("g1", 8, None, 0)["entries"]) == 3
    assert len(s.claim("g3", 8, None, 0)["entries"]) == 1  # 3 left, three owners
