"""What the reconciler saw in wavs/, applied to the entries: takes adopted, durations corrected,
bad or stale files moved out.

The daemon decides, here, from the reconciler's observations (``pipeline.reconciler`` only looks);
every status change goes through ``State._transition`` (cause ``reconcile``). Pure, as ``State``
is: the file moves come back as ``Effect`` values.
"""

from __future__ import annotations

import msgspec

from .entry import Entry, adopted_token, is_adopted, same_duration
from .lifecycle import COMPLETED, FAILED, GENERATING, PENDING, Cause
from .state import Effect, Refused, State


def apply(state: State, since: int, epoch: str, files: dict, missing: list[str], now: float
          ) -> tuple[dict, list[Effect]]:
    """Apply what the reconciler saw on disk at sequence ``since``.

    ``files`` maps filename to an observation ``{"valid": bool, "duration": float,
    "sample_rate": int, "reason": str, "take": {"text_hash", "rev", "token"} or absent}``;
    ``missing`` lists entries the reconciler believed completed and found no wav for.
    Entries that changed after ``since`` are left alone: the observation may predate the change.
    """
    if epoch != state.epoch:
        raise Refused("stale reconcile snapshot (the daemon restarted); scan again")
    fixes: list[dict] = []
    effects: list[Effect] = []
    for name, obs in files.items():
        e = state.by_name.get(name)
        if e is None or e.status == GENERATING or state.changed_seq.get(e.id, 0) > since:
            continue
        before = e.status
        fix, effect = _file(state, e, obs, now)
        if fix:
            fixes.append({"id": e.id, "filename": name, "fix": fix, "from": before, "to": e.status})
        if effect:
            effects.append(Effect(effect, name))
    for name in missing:
        e = state.by_name.get(name)
        if e is None or e.status != COMPLETED or state.changed_seq.get(e.id, 0) > since:
            continue
        _unset(state, e, "audio missing", now)
        fixes.append({"id": e.id, "filename": name, "fix": "completed -> pending (wav missing)",
                      "from": COMPLETED, "to": PENDING})
    return {"fixes": fixes}, effects


def preview(state: State, since: int, epoch: str, files: dict, missing: list[str], now: float) -> dict:
    """What ``apply`` would do, changing nothing: it runs on copies of the entries named."""
    named = list({e.id: e for e in (state.by_name.get(n) for n in (*files, *missing)) if e is not None}.values())
    scratch = State([msgspec.structs.replace(e) for e in named], state.sample_rate,
                    state.max_attempts, state.lease_seconds, state.epoch)
    scratch.changed_seq = {e.id: state.changed_seq[e.id] for e in named if e.id in state.changed_seq}
    return apply(scratch, since, epoch, files, missing, now)[0]


def _file(state: State, e: Entry, obs: dict, now: float) -> tuple[str | None, str | None]:
    """What one wav on disk means for its entry: (the fix made, the file move needed)."""
    before = e.status
    if not obs["valid"] or (state.sample_rate is not None and obs.get("sample_rate") != state.sample_rate):
        reason = obs.get("reason") or f"sample rate {obs.get('sample_rate')}"
        if before == COMPLETED:
            _unset(state, e, f"bad audio: {reason}", now)
        return f"quarantined ({reason}); {before} -> {e.status}", "quarantine"
    take = obs.get("take")
    if take is not None and (take["text_hash"] != e.text_hash or take["rev"] != e.rev):
        if before == COMPLETED:
            _unset(state, e, "the wav on disk is a take of another text or revision", now)
        what = "another text" if take["text_hash"] != e.text_hash else f"revision {take['rev']}"
        return f"moved aside (a take of {what}); {before} -> {e.status}", "stale"
    token = take["token"] if take is not None else None
    if token is not None and token != e.take and any(x.take == token and x.rev == e.rev for x in e.earlier):
        # a take a check set aside, still under the name (a crash before its move): back to its
        # file under requeued/ (the daemon's move, after the commit this touch makes), never adopted
        state._touch(e, now)
        return "a take a check set aside: back to its file in requeued/", "settle"
    if token is None:  # a wav that records no take: the one adopted before (same length), or a new adoption
        same = before == COMPLETED and is_adopted(e.take) and same_duration(e.duration_seconds, obs["duration"])
        token = e.take if same else adopted_token()  # another wav under the name: a verdict on the old one ends
    if before in (PENDING, FAILED):
        e.take, e.duration_seconds, e.sample_rate, e.error = token, obs["duration"], obs["sample_rate"], None
        e.take_count += 1
        if state.sample_rate is None:
            state.sample_rate = obs["sample_rate"]
        state._transition(e, Cause.RECONCILE, COMPLETED, now)
        how = "adopted a wav that records no text (made by another tool)" if is_adopted(token) \
            else "a late take of its text"
        return f"{before} -> completed ({how})", None
    if e.take != token or not same_duration(e.duration_seconds, obs["duration"]):
        old = e.duration_seconds
        e.take, e.duration_seconds = token, obs["duration"]
        state._transition(e, Cause.RECONCILE, COMPLETED, now)
        return f"duration {old} -> {obs['duration']}" + (" (a wav that records no text)" if is_adopted(token)
                                                         else ""), None
    return None, None


def _unset(state: State, e: Entry, error: str, now: float) -> None:
    """A completed entry whose wav is gone, bad or not its take: back to pending with the whole
    --max-attempts budget, as a retake (its synthesis ended well: it was no failed attempt)."""
    e.attempts = 0
    e.duration_seconds = None
    e.take = None
    e.error = error
    state._transition(e, Cause.RECONCILE, PENDING, now)
