"""The check of takes: a completed entry's current take handed out to checkers under a check
lease, as generation work is, and the checker's report judged.

The check stage of an entry (``Stage``) changes only through ``State._transition``, with the
``STAGES`` table (``statesvc.lifecycle``); these are ``State``'s operations on it, kept apart
because they are one concern: claim, renew, give back, expire, and the result (judged fine;
wrong and retaken; or kept, on the best take of the revision by CER, flagged when wrong). Pure,
as ``State`` is: the file moves they need come back as ``Effect`` values.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING

from .entry import Check, Earlier, Entry, Lease, Verdict
from .layout import set_aside_name
from .lifecycle import CHECKED, COMPLETED, FLAGGED, LEASED, NONE_, PENDING, WAITING, Cause
from .state import Effect, State

if TYPE_CHECKING:
    from .protocol import CheckReport

# A take whose check lease expired this many times (its checker hung, or died, on it each time) is
# recorded as a check with an error and flagged, not handed out for ever.
MAX_CHECK_EXPIRIES = 3
log = logging.getLogger("statesvc.state")  # the name its lines have always carried


def claim(state: State, owner: str, n: int, lease_seconds: float | None, now: float) -> dict:
    """Hand out up to ``n`` takes awaiting a check, each under an exclusive check lease."""
    seconds = lease_seconds or state.lease_seconds
    out = []
    while state._waiting and len(out) < n:
        e = state.by_id.get(state._waiting.popleft())
        if e is None or e.stage != WAITING:
            continue  # moved on since it was queued
        token = secrets.token_hex(8)
        state._transition(e, Cause.CHECK_CLAIM, COMPLETED, now, stage=LEASED,
                          check_lease=Lease(token, owner, now + seconds))
        out.append({"id": e.id, "filename": e.filename, "text": e.text, "take": e.take, "token": token,
                    "duration_seconds": e.duration_seconds})
    return {"entries": out, "lease_seconds": seconds, "waiting": state.stages[WAITING]}


def heartbeat(state: State, owner: str, tokens: list[str], now: float) -> dict:
    """Extend check leases; tokens no longer held come back as ``lost``."""
    return state._renew(owner, tokens, now, "check_lease")


def release(state: State, owner: str, tokens: list[str], now: float) -> dict:
    released = []
    for token in tokens:
        e = state._held(owner, token, "check_lease")
        if e is not None:
            state._transition(e, Cause.CHECK_EXPIRY, COMPLETED, now, stage=WAITING)
            released.append(e.id)
    return {"released": released}


def expire(state: State, now: float, owner: str | None = None) -> list[int]:
    """End the check leases past their deadline (or all of ``owner``'s: it died): the takes
    wait for another checker; nothing is lost."""
    leases = [(eid, state.by_id[eid].check_lease) for eid in state.check_leases.values()]
    ended = [eid for eid, lease in leases if (lease.owner == owner if owner is not None else lease.deadline <= now)]
    for eid in ended:
        e = state.by_id[eid]
        e.check_expiries += 1
        if e.check_expiries >= MAX_CHECK_EXPIRIES:  # it hangs or kills its checkers: a failed check
            _failed(state, e, f"no checker finished this take: its check lease expired {e.check_expiries} times",
                    now)
        else:
            state._transition(e, Cause.CHECK_EXPIRY, COMPLETED, now, stage=WAITING)
    return ended


def _failed(state: State, e: Entry, error: str, now: float) -> None:
    """Record a check with ``error`` on the current take, flagged, as a recognizer error is."""
    j = state.judge.judge(None, error, False, e.duration_seconds, len(e.text))
    e.check = Check(e.take, None, None, "", "", error, j.wrong, j.reason, j.threshold, e.duration_seconds,
                    len(e.text))
    state._transition(e, Cause.CHECK_RESULT, COMPLETED, now, stage=FLAGGED)
    state._learn(e, 1)
    log.warning("entry %d take %s: %s: recorded as a failed check, flagged", e.id, e.take, error)


def result(state: State, msg: CheckReport, now: float, present: frozenset[str] | None = None
           ) -> tuple[dict, list[Effect]]:
    """A check of a take, fenced by the take's token AND the check lease: a check of a take
    that is no longer current, or not under this live lease, is refused and discarded. The
    judgement is the daemon's: fine; wrong and retaken (back to pending, the take to
    requeued/ with its check); or kept (checked, or flagged when wrong), on the best take of
    its revision by CER, whatever the threshold was when the others were judged. ``present``:
    the files of the entry's earlier takes that are on disk (None: all), the only ones that
    may come back."""
    e = state.lookup(msg.id)
    if e.status != COMPLETED or e.take != msg.take:
        return {"applied": False, "reason": "the take is no longer the entry's current take"}, []
    if e.check_lease is None or e.check_lease.token != msg.token or e.check_lease.owner != msg.owner:
        return {"applied": False, "reason": "no live check lease of this take under that token"}, []
    j = state.judge.judge(msg.cer, msg.error, msg.silent, e.duration_seconds, len(e.text))
    check = Check(e.take, msg.cer, msg.wer, msg.transcript, msg.model, msg.error, j.wrong,
                  j.reason, j.threshold, e.duration_seconds, len(e.text))
    approved = e.review is not None and e.review.verdict == Verdict.APPROVED
    if j.wrong and msg.error is None and not e.deterministic and not approved and \
            e.take_count < state.max_takes:
        return _retake(state, e, check, now)
    effects: list[Effect] = []
    if msg.error is None and not approved:  # the final judgement: the best take of this revision by CER
        best = _best_earlier(e, check, present)
        if best is not None:
            effects = _restore(state, e, check, best, now)
            check = e.check
            j2 = state.judge.judge(check.cer, None, False, check.seconds, check.chars)
            check.wrong, check.reason, check.threshold = j2.wrong, j2.reason, j2.threshold
    state._transition(e, Cause.CHECK_RESULT, COMPLETED, now, stage=FLAGGED if check.wrong else CHECKED)
    e.check = check
    state._learn(e, 1)
    return {"applied": True, "stage": e.stage, "wrong": check.wrong, "reason": check.reason}, effects


def _aside_name(e: Entry, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return set_aside_name(f"{e.filename}.{stamp}.{e.take[-9:]}.wav")


def _retake(state: State, e: Entry, check: Check, now: float) -> tuple[dict, list[Effect]]:
    """Another take of the same text and revision: the wrong one to requeued/, with its check."""
    dest = _aside_name(e, now)
    e.earlier.append(Earlier(dest, e.take, e.rev, e.duration_seconds, check))
    e.take = None
    e.duration_seconds = None
    e.deterministic = False
    e.attempts = 0  # a retake is not a failed attempt: the new take has the whole --max-attempts budget
    state._transition(e, Cause.RETAKE, PENDING, now, stage=NONE_)
    return ({"applied": True, "stage": e.stage, "wrong": True, "reason": check.reason, "retake": True},
            [Effect("set_aside", e.filename, dest=dest)])


def _best_earlier(e: Entry, check: Check, present: frozenset[str] | None) -> Earlier | None:
    """An earlier take of this revision with a lower CER than the current one, the lowest."""
    mine = [x for x in e.earlier if x.rev == e.rev and x.check is not None and x.check.cer is not None
            and x.check.error is None and (present is None or x.file in present)]
    best = min(mine, key=lambda x: x.check.cer, default=None)
    return best if best is not None and (check.cer is None or best.check.cer < check.cer) else None


def _restore(state: State, e: Entry, check: Check, best: Earlier, now: float) -> list[Effect]:
    """Bring ``best`` back under the entry's name; the current take goes to requeued/ with its check."""
    dest = _aside_name(e, now)
    e.earlier.remove(best)
    e.earlier.append(Earlier(dest, e.take, e.rev, e.duration_seconds, check))
    e.take, e.duration_seconds, e.check = best.take, best.duration, best.check
    e.review = None  # on the take that left
    state.wav_sig.pop(e.id, None)
    state._learn_take(e)
    return [Effect("restore", e.filename, token=best.take, dest=dest, source=best.file)]
