"""The pure transitions: invariants under any sequence of messages (hypothesis) and the rules."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statesvc.state import Entry, Refused, State
from statesvc.store import Store, parse_state


def fresh(n: int = 5, max_attempts: int = 3) -> State:
    s = State([Entry(i, f"utt_{i:04d}", f"text {i}") for i in range(1, n + 1)], max_attempts=max_attempts)
    return s


def check_invariants(s: State, reported: set[int]) -> None:
    counted = {k: 0 for k in ("pending", "generating", "completed", "failed")}
    for e in s.entries:
        counted[e.status] += 1
    assert s.counts == counted
    assert sum(s.counters()[k] for k in counted) == s.counters()["total"] == len(s.entries)
    live = [e for e in s.entries if e.lease_token is not None]
    assert all(e.status == "generating" for e in live)
    assert all(e.lease_token is not None for e in s.entries if e.status == "generating")
    assert len({e.lease_token for e in live}) == len(live)  # one lease per entry, no token shared
    assert set(s.leases) == {e.lease_token for e in live}
    assert s.owner_leases == collections.Counter(e.lease_owner for e in live)
    for e in s.entries:
        if e.status == "completed":
            assert e.id in reported, "completed without audio reported"
            assert e.duration_seconds is not None
        assert e.attempts <= s.max_attempts or e.status != "generating"


OWNERS = st.sampled_from(["g1", "g2", "g3"])
IDS = st.integers(1, 6)  # 6 does not exist: refusals are part of the sequence
ops = st.one_of(
    st.tuples(st.just("claim"), OWNERS, st.integers(1, 3)),
    st.tuples(st.just("complete"), IDS, st.integers(0, 4)),
    st.tuples(st.just("fail"), IDS, st.integers(0, 4)),
    st.tuples(st.just("heartbeat"), OWNERS, st.integers(0, 4)),
    st.tuples(st.just("tick"), st.floats(0, 300), st.none()),
    st.tuples(st.just("requeue"), IDS, st.booleans()),
    st.tuples(st.just("reconcile"), IDS, st.sampled_from(["valid", "invalid", "missing"])),
)


class Model:
    """Drives a State with generated operations, remembering every token handed out."""

    def __init__(self) -> None:
        self.s = fresh()
        self.now = 1000.0
        self.tokens: list[tuple[int, str, str]] = []
        self.reported: set[int] = set()

    def claim(self, owner: str, n: int) -> None:
        for c in self.s.claim(owner, n, None, self.now)["entries"]:
            self.tokens.append((c["id"], c["token"], owner))

    def complete(self, eid: int, i: int) -> None:
        if self.tokens:
            real, token, _ = self.tokens[i % len(self.tokens)]
            msg = {"id": real if eid != 6 else 6, "token": token, "status": "completed",
                   "duration_seconds": 1.0, "sample_rate": 22050}
            if self.s.result(msg, self.now)["applied"]:
                self.reported.add(msg["id"])

    def fail(self, eid: int, i: int) -> None:
        if self.tokens:
            real, token, _ = self.tokens[i % len(self.tokens)]
            self.s.result({"id": real if eid != 6 else 6, "token": token, "status": "failed", "error": "x"}, self.now)

    def heartbeat(self, owner: str, i: int) -> None:
        self.s.heartbeat(owner, [t for _, t, _ in self.tokens[: i + 1]], self.now)

    def tick(self, seconds: float, _: None) -> None:
        self.now += seconds
        self.s.expire(self.now)

    def requeue(self, eid: int, failed: bool) -> None:
        self.s.requeue([eid], failed, self.now)

    def reconcile(self, eid: int, seen: str) -> None:
        name = f"utt_{eid:04d}"
        if seen == "missing":
            self.s.reconcile(self.s.seq, self.s.epoch, {}, [name], self.now)
            return
        obs = {"valid": seen == "valid", "duration": 1.0, "sample_rate": 22050, "reason": "bad"}
        self.s.reconcile(self.s.seq, self.s.epoch, {name: obs}, [], self.now)
        if seen == "valid":
            self.reported.add(eid)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_any_sequence_keeps_invariants(seq: list) -> None:
    m = Model()
    for op, a, b in seq:
        try:
            getattr(m, op)(a, b)
        except Refused:
            pass
        check_invariants(m.s, m.reported)
    # what is saved reads back as the same state
    again = parse_state(Store(Path("/nonexistent"), m.s).render(m.s))
    assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in m.s.entries]


def test_resent_result_changes_nothing() -> None:
    s = fresh()
    c = s.claim("g", 1, None, 0)["entries"][0]
    msg = {"id": c["id"], "token": c["token"], "status": "completed", "duration_seconds": 2.5, "sample_rate": 16000}
    assert s.result(msg, 1)["applied"] is True
    seq = s.seq
    assert s.result(msg, 2)["applied"] is False
    assert s.seq == seq


def test_late_result_after_expiry_still_counts() -> None:
    s = fresh(1)
    c = s.claim("g", 1, 10, 0)["entries"][0]
    assert s.expire(11) == [c["id"]]
    assert s.by_id[1].status == "pending"
    r = s.result({"id": 1, "token": c["token"], "status": "completed", "duration_seconds": 1.0,
                  "sample_rate": 22050}, 12)
    assert r["applied"] and s.by_id[1].status == "completed"


def test_late_result_when_reclaimed_by_another_counts_once() -> None:
    s = fresh(1)
    old = s.claim("a", 1, 10, 0)["entries"][0]
    s.expire(11)
    new = s.claim("b", 1, 10, 12)["entries"][0]
    done = {"status": "completed", "duration_seconds": 1.0, "sample_rate": 22050}
    assert s.result({"id": 1, "token": old["token"], **done}, 13)["applied"]
    assert s.leases == {}
    assert not s.result({"id": 1, "token": new["token"], **done}, 14)["applied"]


def test_attempts_limit_fails_with_last_error() -> None:
    s = fresh(1, max_attempts=3)
    for i in range(3):
        c = s.claim("g", 1, None, i)["entries"][0]
        s.result({"id": 1, "token": c["token"], "status": "failed", "error": f"err {i}"}, i)
    e = s.by_id[1]
    assert (e.status, e.attempts, e.error) == ("failed", 3, "err 2")
    assert s.claim("g", 1, None, 10)["entries"] == []


def test_expired_leases_count_as_attempts() -> None:
    s = fresh(1, max_attempts=2)
    s.claim("g1", 1, 5, 0)
    s.expire(6)
    s.claim("g2", 1, 5, 7)
    s.expire(13)
    assert s.by_id[1].status == "failed" and s.by_id[1].error == "lease expired"


def test_a_dead_generators_prefetched_entries_cost_no_attempt() -> None:
    s = fresh(4)
    s.claim("dead", 2, 5, 0)
    s.claim("dead", 1, 5, 1)  # prefetched later, expires in a later sweep
    assert s.expire(5.5) == [1, 2]
    assert s.expire(6.5) == [3]
    assert [s.by_id[i].attempts for i in (1, 2, 3)] == [1, 0, 0]
    assert all(s.by_id[i].status == "pending" for i in (1, 2, 3))


def test_requeued_entry_ignores_wav_on_disk_until_generated_again() -> None:
    s = fresh(1)
    c = s.claim("g", 1, None, 0)["entries"][0]
    s.result({"id": 1, "token": c["token"], "status": "completed", "duration_seconds": 1.0, "sample_rate": 22050}, 1)
    _, effects = s.requeue([1], False, 2)
    assert [e.kind for e in effects] == ["set_aside"]
    s.reconcile(s.seq, s.epoch, {"utt_0001": {"valid": True, "duration": 1.0, "sample_rate": 22050}}, [], 3)
    assert s.by_id[1].status == "pending"
    c = s.claim("g", 1, None, 4)["entries"][0]
    assert s.by_id[1].requeued is False
    s.expire(10_000)  # the generator died after writing the wav: now the wav counts
    s.reconcile(s.seq, s.epoch, {"utt_0001": {"valid": True, "duration": 1.2, "sample_rate": 22050}}, [], 10_001)
    assert s.by_id[1].status == "completed" and s.by_id[1].duration_seconds == 1.2


def test_reconcile_ignores_entries_changed_after_the_scan() -> None:
    s = fresh(1)
    since = s.seq
    c = s.claim("g", 1, None, 0)["entries"][0]
    s.result({"id": 1, "token": c["token"], "status": "completed", "duration_seconds": 1.0, "sample_rate": 22050}, 1)
    body, _ = s.reconcile(since, s.epoch, {}, ["utt_0001"], 2)  # the scan began before the wav existed
    assert body["fixes"] == [] and s.by_id[1].status == "completed"


def test_reconcile_from_another_daemon_run_is_refused() -> None:
    s = fresh(1)
    with pytest.raises(Refused, match="stale"):
        s.reconcile(0, "other", {}, [], 0)


def test_wrong_sample_rate_is_refused() -> None:
    s = fresh(2)
    a, b = s.claim("g", 2, None, 0)["entries"]
    s.result({"id": a["id"], "token": a["token"], "status": "completed", "duration_seconds": 1.0,
              "sample_rate": 22050}, 1)
    with pytest.raises(Refused, match="sample rate"):
        s.result({"id": b["id"], "token": b["token"], "status": "completed", "duration_seconds": 1.0,
                  "sample_rate": 16000}, 2)
    assert s.by_id[b["id"]].status == "pending"


def test_add_refuses_duplicates_without_changing_anything() -> None:
    s = fresh(2)
    with pytest.raises(Refused):
        s.add([("new_1", "x"), ("utt_0001", "y")], "utt", 0)
    assert len(s.entries) == 2 and s.counts["pending"] == 2
    s.add([(None, "x")], "utt", 0)
    assert s.entries[-1].filename == "utt_0003"


def test_the_last_entries_are_shared_among_the_owners_holding_work() -> None:
    s = fresh(20)
    assert len(s.claim("g1", 8, None, 0)["entries"]) == 8  # alone: what it asks
    reply = s.claim("g2", 8, None, 0)
    assert len(reply["entries"]) == 6 and reply["owners"] == 2  # 12 left, two owners: half each
    assert reply["pending"] == 6
    assert len(s.claim("g1", 8, None, 0)["entries"]) == 3
    assert len(s.claim("g3", 8, None, 0)["entries"]) == 1  # 3 left, three owners
