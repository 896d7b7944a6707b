"""run-pipeline's supervisor, the pure part: the child state table (every allowed transition, every other
refused) and, in words, the leases a dead generator gave back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.supervisor import (
    TRANSITIONS,
    BadTransition,
    Child,
    ChildState,
    leases_back,
)

S = ChildState
ALLOWED = {
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.RUNNING), (S.STARTING, S.BACKING_OFF), (S.STARTING, S.GIVEN_UP), (S.STARTING, S.STOPPED),
    (S.RUNNING, S.BACKING_OFF), (S.RUNNING, S.STOPPED),
    (S.BACKING_OFF, S.STARTING), (S.BACKING_OFF, S.STOPPED),
}


def child_in(state: ChildState) -> Child:
    c = Child("gen", ["true"], Path("/nonexistent/gen.log"))
    c.state = state
    return c


def test_the_table_is_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED
    assert set(TRANSITIONS) == set(ChildState)
    assert Child("x", [], Path("x.log")).state is S.STOPPED  # before its first start


@pytest.mark.parametrize(("frm", "to"), sorted(ALLOWED, key=lambda t: (t[0].name, t[1].name)))
def test_allowed_transition(frm: ChildState, to: ChildState) -> None:
    c = child_in(frm)
    c.change(to, "because")
    assert (c.state, c.why) == (to, "because")


@pytest.mark.parametrize(("frm", "to"), sorted({(a, b) for a in S for b in S} - ALLOWED,
                                               key=lambda t: (t[0].name, t[1].name)))
def test_disallowed_transition_is_a_bug(frm: ChildState, to: ChildState) -> None:
    c = child_in(frm)
    with pytest.raises(BadTransition, match=f"{frm.name} -> {to.name} is not allowed"):
        c.change(to, "because")
    assert c.state is frm  # refused: nothing changed


def test_leases_back_in_words() -> None:
    assert leases_back({"ok": True, "returned": [], "charged": [], "failed": []}) == "it held no leases"
    assert leases_back({"returned": [1]}) == "its 1 lease is back"
    assert (leases_back({"returned": [1, 2, 3, 4, 5, 6], "charged": [42], "failed": []})
            == "its 7 leases are back: entry 42 charged an attempt")
    assert (leases_back({"returned": [], "charged": [4, 5], "failed": [5]})
            == "its 2 leases are back: entries 4, 5 charged an attempt; entry 5 reached max attempts and failed")
    assert leases_back({"charged": list(range(12))}).endswith("entries 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more "
                                                             "charged an attempt")
