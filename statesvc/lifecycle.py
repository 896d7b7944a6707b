"""The lifecycle of an entry as two tables: which cause may move its status, and its check stage, from what to what.

``statesvc.state.State._transition`` is the only code that changes a status or a check stage, and it
refuses any move these tables do not list.
"""

from __future__ import annotations

import enum

from .entry import Stage, Status


class Cause(enum.StrEnum):
    CLAIM = "claim"          # a generator takes a pending entry under a lease
    RESULT = "result"        # a take is accepted: its lease's, or a late one nobody else holds
    FAILURE = "failure"      # the synthesizer raised on the text
    EXPIRY = "expiry"        # the lease ended without a result: its generator died or went silent
    RELEASE = "release"      # a generator gives back a lease it never started
    REQUEUE = "requeue"      # a person asks for a new take
    RECONCILE = "reconcile"  # what the reconciler saw in wavs/
    EDIT = "edit"            # a person changes the text
    # the check of takes: the status stays, the check stage (``Stage``) changes
    CHECK_CLAIM = "check_claim"      # a checker takes the current take under a check lease
    CHECK_RESULT = "check_result"    # a check is in: judged fine, or wrong and kept (flagged)
    CHECK_EXPIRY = "check_expiry"    # the check lease ended without a check (checker dead, stopped, gave it back)
    RETAKE = "retake"                # a check judged the take wrong: another take of the same text and revision


# Module names for the four statuses: read on the daemon's hot path, where a global costs a
# seventh of an enum member's lookup (Status.PENDING).
PENDING, GENERATING, COMPLETED, FAILED = Status.PENDING, Status.GENERATING, Status.COMPLETED, Status.FAILED
# cause -> {from: allowed targets}. Anything else is refused.
LIFECYCLE: dict[Cause, dict[Status, frozenset[Status]]] = {
    Cause.CLAIM: {PENDING: frozenset({GENERATING})},
    Cause.RESULT: {GENERATING: frozenset({COMPLETED}), PENDING: frozenset({COMPLETED}),
                   FAILED: frozenset({COMPLETED})},
    Cause.FAILURE: {GENERATING: frozenset({PENDING, FAILED})},
    Cause.EXPIRY: {GENERATING: frozenset({PENDING, FAILED})},
    Cause.RELEASE: {GENERATING: frozenset({PENDING})},
    Cause.REQUEUE: {PENDING: frozenset({PENDING}), GENERATING: frozenset({PENDING}),
                    COMPLETED: frozenset({PENDING}), FAILED: frozenset({PENDING})},
    Cause.RECONCILE: {PENDING: frozenset({COMPLETED}), FAILED: frozenset({COMPLETED}),
                      COMPLETED: frozenset({PENDING, COMPLETED})},
    Cause.EDIT: {PENDING: frozenset({PENDING}), COMPLETED: frozenset({PENDING}), FAILED: frozenset({PENDING})},
    Cause.CHECK_CLAIM: {COMPLETED: frozenset({COMPLETED})},
    Cause.CHECK_RESULT: {COMPLETED: frozenset({COMPLETED})},
    Cause.CHECK_EXPIRY: {COMPLETED: frozenset({COMPLETED})},
    Cause.RETAKE: {COMPLETED: frozenset({PENDING})},
}
NONE_, WAITING, LEASED, CHECKED, FLAGGED = Stage.NONE, Stage.WAITING, Stage.LEASED, Stage.CHECKED, Stage.FLAGGED
# The check stage, beside the status, for the check causes: cause -> {from: allowed targets}. Every
# other cause leaves it at NONE (an entry that is not completed), or WAITING for a take that enters.
STAGES: dict[Cause, dict[Stage, frozenset[Stage]]] = {
    Cause.CHECK_CLAIM: {WAITING: frozenset({LEASED})},
    Cause.CHECK_RESULT: {LEASED: frozenset({CHECKED, FLAGGED})},
    Cause.CHECK_EXPIRY: {LEASED: frozenset({WAITING})},
    Cause.RETAKE: {LEASED: frozenset({NONE_})},
}
