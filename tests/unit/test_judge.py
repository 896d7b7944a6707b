"""The daemon's judgement of checked takes (statesvc/judge.py) and what a check does to an entry
(retakes, the best take kept, flags): pure, no process."""

from __future__ import annotations

import random

from statesvc import checks
from statesvc.entry import Entry, Stage, Status, Verdict
from statesvc.judge import CEILING_CER, FLOOR_CER, MIN_CHECKS, Judge
from statesvc.protocol import CheckReport
from statesvc.state import State
from tests.support.books import take

SR = 22050


def test_the_floor_holds_until_enough_checks_then_the_threshold_follows_the_dataset() -> None:
    j = Judge()
    assert j.threshold() == FLOOR_CER
    # a robotic voice: good takes' CER spread up to 0.45 (espeak + base); none is judged wrong
    rng = random.Random(1)
    cers = [rng.uniform(0.06, 0.45) for _ in range(200)]
    for i, cer in enumerate(cers):
        assert not j.judge(cer, None, False, None, 0).wrong, f"good take {i} (CER {cer:.2f}) judged wrong"
        j.learn(cer, None, 0)
    assert j.threshold() >= FLOOR_CER
    assert j.judge(0.95, None, False, None, 0).wrong  # another sentence
    # a voice the recognizer hears well: the floor still lets a weak take pass, a cut one not
    k = Judge()
    for _ in range(MIN_CHECKS):
        k.learn(0.02, None, 0)
    assert k.threshold() == FLOOR_CER
    assert k.judge(0.58, None, False, None, 0).wrong


def test_many_wrong_takes_never_lift_the_threshold_over_another_sentence() -> None:
    """Half the takes read another sentence (CER 0.7-1.2): median + 4 deviations would pass them
    all; the ceiling keeps them wrong while the good takes (up to 0.45) stay right."""
    j = Judge()
    rng = random.Random(2)
    for _ in range(100):
        j.learn(rng.uniform(0.06, 0.45), None, 0)
        j.learn(rng.uniform(0.7, 1.2), None, 0)
    assert FLOOR_CER < j.threshold() == CEILING_CER
    assert j.judge(0.69, None, False, None, 0).wrong and not j.judge(0.45, None, False, None, 0).wrong


def test_a_fixed_max_cer_wins_and_silence_or_a_recognizer_error_is_wrong() -> None:
    j = Judge(max_cer=0.1)
    assert j.threshold() == 0.1 and j.judge(0.11, None, False, None, 0).wrong
    assert not j.judge(0.1, None, False, None, 0).wrong
    assert j.judge(0.0, None, True, None, 0).reason == "silent"
    assert "recognizer failed" in j.judge(None, "out of memory", False, None, 0).reason


def test_seconds_per_character_far_off_the_voices_own_is_wrong() -> None:
    """Figures of the issue: good takes 0.056-0.071 s per character, truncations 0.023-0.028,
    repeats 0.099-0.112: a recognizer papers over those, the duration does not."""
    j = Judge()
    rng = random.Random(2)
    for _ in range(40):
        chars = rng.randint(30, 80)
        j.learn(0.1, chars * rng.uniform(0.056, 0.071), chars)
    assert not j.judge(0.1, None, False, 50 * 0.06, 50).wrong
    assert "cut short" in j.judge(0.1, None, False, 50 * 0.025, 50).reason
    assert "repeats" in j.judge(0.1, None, False, 50 * 0.105, 50).reason
    assert not j.judge(0.1, None, False, 5 * 0.2, 5).wrong  # a short text: its rate says little
    # forgetting what was learnt (a take that leaves) brings the judge back
    j2 = Judge()
    j2.learn(0.3, 3.0, 50)
    j2.learn(0.3, 3.0, 50, -1)
    assert j2.cers.n == 0 and j2.rates.n == 0 and not any(j2.cers.counts)


def test_the_judge_counts_deviations_as_the_pages_fit_does() -> None:
    from review import flags
    from statesvc import judge
    assert (judge.K, judge.MAD_SCALE, judge.MIN_RATE_CHARS) == \
        (flags.SPREAD_SIGMAS, flags.MAD_SCALE, flags.MIN_RATE_CHARS)
    h = judge._Histogram(0.0, 0.01, 100)
    for v in (0.105, 0.205, 0.305, 0.405, 0.905):
        h.add(v)
    med, mad = h.median_mad()
    assert abs(med - 0.305) < 1e-9 and abs(mad - 0.1) < 1e-9


# ---- what a check does to an entry -----------------------------------------------------------------
def completed(n: int = 3, max_takes: int = 3, **kw: object) -> State:
    s = State([Entry.make(i, f"utt_{i:04d}", f"texto número {i} de la prueba") for i in range(1, n + 1)])
    s.max_takes = max_takes
    for c in s.claim("g", n, None, 1.0)["entries"]:
        s.result(take(c, 2.0, SR, **kw), 1.0)
    return s


def regenerate(s: State, eid: int, now: float) -> str:
    c = next(c for c in s.claim("g", 10, None, now)["entries"] if c["id"] == eid)
    s.result(take(c, 2.0, SR), now)
    return c["token"]


def report(s: State, eid: int, cer: float | None, now: float, error: str | None = None) -> dict:
    items = checks.claim(s, "k", 1000, None, now)["entries"]
    checks.release(s, "k", [c["token"] for c in items if c["id"] != eid], now)  # the others wait on
    c = next(c for c in items if c["id"] == eid)
    return checks.result(s, CheckReport(eid, "k", c["token"], c["take"], cer, cer, "oído", "base", error, False),
                         now)


def test_a_wrong_take_is_retaken_and_the_best_take_is_kept_flagged_when_all_are_wrong() -> None:
    s = completed(max_takes=3)
    first = s.by_id[1].take
    body, effects = report(s, 1, 0.8, 2.0)
    e = s.by_id[1]
    assert body["retake"] and e.status == Status.PENDING and e.rev == 0 and e.attempts == 0
    assert effects[0].kind == "set_aside" and effects[0].dest.startswith("requeued/utt_0001.")
    assert e.earlier[0].take == first and e.earlier[0].check.cer == 0.8
    second = regenerate(s, 1, 3.0)
    assert s.by_id[1].take_count == 2 and s.by_id[1].stage == Stage.WAITING
    report(s, 1, 0.6, 4.0)  # better, still wrong: retaken again (take 2 of 3)
    third = regenerate(s, 1, 5.0)
    body, effects = report(s, 1, 0.9, 6.0)  # the last take, the worst: the best (take 2) comes back
    e = s.by_id[1]
    assert e.status == Status.COMPLETED and e.stage == Stage.FLAGGED and e.take == second
    assert e.check.cer == 0.6 and e.check.take == second and e.take_count == 3
    assert [k.kind for k in effects] == ["restore"] and effects[0].token == second
    assert {x.take for x in e.earlier} == {first, third}
    assert s.check_counters() == {"checked": 1, "mismatched": 1, "check_waiting": 2}


def test_a_good_retake_is_checked_and_no_other_entry_moves() -> None:
    s = completed()
    report(s, 2, 0.9, 2.0)
    regenerate(s, 2, 3.0)
    body, effects = report(s, 2, 0.05, 4.0)
    assert body["applied"] and not effects and s.by_id[2].stage == Stage.CHECKED
    assert [s.by_id[i].take_count for i in (1, 2, 3)] == [1, 2, 1]


def test_deterministic_approved_and_recognizer_errors_are_flagged_not_retaken() -> None:
    s = completed(deterministic=True)
    body, effects = report(s, 1, 0.9, 2.0)
    assert not effects and s.by_id[1].status == Status.COMPLETED and s.by_id[1].stage == Stage.FLAGGED
    t = completed()
    t.review(2, Verdict.APPROVED, None, None, 1.5)
    report(t, 2, 0.9, 2.0)
    assert t.by_id[2].stage == Stage.FLAGGED and t.by_id[2].review is not None
    report(t, 3, None, 2.0, error="the model failed")
    assert t.by_id[3].stage == Stage.FLAGGED and t.by_id[3].check.error == "the model failed"
    assert [c["id"] for c in checks.claim(t, "k", 10, None, 3.0)["entries"]] == [1], "a judged take is not handed out"


def test_a_check_of_a_replaced_take_or_under_a_lost_lease_is_refused() -> None:
    s = completed()
    items = checks.claim(s, "k", 10, None, 2.0)["entries"]
    checks.release(s, "k", [i["token"] for i in items if i["id"] != 1], 2.0)
    c = next(i for i in items if i["id"] == 1)
    s.requeue([1], False, 2.5)
    regenerate(s, 1, 3.0)
    body, _ = checks.result(s, CheckReport(1, "k", c["token"], c["take"], 0.0, 0.0, "", "m", None, False), 3.5)
    assert not body["applied"] and "no longer" in body["reason"] and s.by_id[1].check is None
    # a lease that expired: the take waits for another checker, the late report is refused
    c2 = next(c for c in checks.claim(s, "k", 10, None, 4.0)["entries"] if c["id"] == 2)
    assert checks.expire(s, 4.0 + s.lease_seconds + 1) and s.by_id[2].stage == Stage.WAITING
    body, _ = checks.result(s, CheckReport(2, "k", c2["token"], c2["take"], 0.0, 0.0, "", "m", None, False), 20.0)
    assert not body["applied"] and s.by_id[2].stage == Stage.WAITING
    # a checker that died: its leases come back at once
    checks.claim(s, "dead", 10, None, 30.0)
    assert checks.expire(s, 30.0, "dead") and not s.check_leases


def test_the_entry_ends_on_its_best_take_when_the_threshold_rose_between_its_takes() -> None:
    """Take 1 (CER 0.52) is judged wrong under the floor and retaken; the dataset's checks lift the
    threshold; take 2 (0.58, worse) passes it: the entry still ends on take 1, judged anew."""
    s = completed(n=30, max_takes=3)
    first = s.by_id[1].take
    assert report(s, 1, 0.52, 2.0)[0]["retake"]
    rng = random.Random(1)
    for i in range(2, 30):
        report(s, i, round(rng.uniform(0.15, 0.45), 3), 3.0)
    assert s.judge.threshold() > 0.58
    second = regenerate(s, 1, 4.0)
    body, effects = report(s, 1, 0.58, 5.0)
    e = s.by_id[1]
    assert e.take == first and e.check.cer == 0.52 and e.stage == Stage.CHECKED and not body["wrong"]
    assert [k.kind for k in effects] == ["restore"] and [(x.take, x.check.cer) for x in e.earlier] == [(second, 0.58)]
    # an earlier take whose file is gone (``present`` names none) never comes back
    t = completed(max_takes=2)
    t.judge.max_cer = 0.2
    assert report(t, 1, 0.3, 2.0)[0]["retake"]
    regenerate(t, 1, 3.0)
    items = checks.claim(t, "k", 10, None, 4.0)["entries"]
    c = next(c for c in items if c["id"] == 1)
    body, effects = checks.result(t, CheckReport(1, "k", c["token"], c["take"], 0.5, 0.5, "x", "m", None, False), 4.0,
                                  frozenset())
    assert not effects and t.by_id[1].take == c["take"] and t.by_id[1].stage == Stage.FLAGGED


def test_a_take_a_check_set_aside_never_comes_back_through_a_result() -> None:
    """A generator's resend of the result of a take since set aside by a check is refused."""
    s = completed()
    e = s.by_id[1]
    first = e.take
    report(s, 1, 0.9, 2.0)
    resent = {"id": 1, "token": first, "status": "completed", "duration_seconds": 2.0, "sample_rate": SR,
              "text_hash": e.text_hash, "rev": e.rev, "take_file": False}
    body, _ = s.result(resent, 3.0)
    assert not body["applied"] and e.status == Status.PENDING and e.take is None and not s.counts_take(resent)


def test_earlier_takes_of_older_revisions_keep_their_file_and_cer_only() -> None:
    """"Regenerate all flagged", again and again: the records of earlier revisions keep what the
    page and ``show`` use (file, CER), not transcripts: the state does not grow by one per take."""
    s = completed(n=1, max_takes=3)
    t = 2.0
    for _ in range(3):
        while True:
            report(s, 1, 0.9, t)
            t += 1
            if s.by_id[1].status != Status.PENDING:
                break
            regenerate(s, 1, t)
            t += 1
        s.requeue([1], False, t)
        regenerate(s, 1, t + 1)
        t += 2
    e = s.by_id[1]
    old = [x for x in e.earlier if x.rev < e.rev]
    assert old and all(x.check.cer == 0.9 and x.check.transcript == "" and x.check.model == "" for x in old)
    assert all(x.file.startswith("requeued/utt_0001.") for x in e.earlier)
