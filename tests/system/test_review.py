"""Reviews: a person's verdict on an entry's take, set through the daemon (the `review` op),
journalled like any change, ended by a new take, and honoured by `export`."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson

from statesvc.client import Client, ServiceError
from statesvc.endpoints import running
from tests.support.books import make_dataset, read_file, read_state, take
from tests.support.processes import cli


def _complete_all(ds: Path) -> dict[str, dict]:
    """Claim and complete every entry (books only, no audio); the claims by filename."""
    with Client(running(ds)["endpoint"]) as c:
        claimed = c.call("claim", owner="t", n=100)["entries"]
        for e in claimed:
            c.call("result", **take(e, 1.5))
    return {e["filename"]: e for e in claimed}


def _entry(ds: Path, name: str) -> dict:
    return next(e for e in read_state(ds)["entries"] if e["filename"] == name)


def test_a_verdict_is_durable_ends_with_a_new_take_and_guards_against_a_replaced_take(
        tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos", "tres"])
    d = start_daemon(ds)
    takes = _complete_all(ds)
    a, b, c = sorted(takes)
    with Client(running(ds)["endpoint"]) as cl:
        body = cl.call("review", key=a, review="approved", note="clean", take=takes[a]["token"])
        assert body["review"]["verdict"] == "approved"
        cl.call("review", key=b, review="rejected", note="babbles at the end")
        try:  # a verdict on a take that is no longer the entry's: refused, nothing changes
            cl.call("review", key=c, review="approved", take="0123456789abcdef")
            raise AssertionError("a verdict on another take was accepted")
        except ServiceError as exc:
            assert "new take" in str(exc)
    assert _entry(ds, a)["review"] == {"verdict": "approved", "take": takes[a]["token"],
                                       "at": _entry(ds, a)["review"]["at"], "note": "clean"}
    assert "review" not in _entry(ds, c)
    # durable: a killed daemon's successor has them, from the journal
    d.kill()
    start_daemon(ds)
    assert _entry(ds, b)["review"]["verdict"] == "rejected"
    # export: never a rejected take; with --approved-only, only approved ones
    plain = cli("export", "--dataset", str(ds), check=True).stdout.splitlines()
    assert sorted(r.split("|")[0] for r in plain) == [a, c]
    approved = cli("export", "--dataset", str(ds), "--approved-only", check=True).stdout.splitlines()
    assert [r.split("|")[0] for r in approved] == [a]
    # a requeue ends the verdict (it was on the take now set aside), and a pending entry cannot be reviewed
    cli("requeue", "--dataset", str(ds), a, check=True)
    assert "review" not in _entry(ds, a)
    r = cli("review", "--dataset", str(ds), a, "approved")
    assert r.returncode != 0 and "only a completed take" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # through the CLI, and withdrawn
    cli("review", "--dataset", str(ds), b, "none", check=True)
    assert "review" not in _entry(ds, b)


def test_a_verdict_set_offline_is_in_the_file_after_its_checkpoint(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    d = start_daemon(ds)
    name = sorted(_complete_all(ds))[0]
    d.kill()
    r = cli("review", "--dataset", str(ds), name, "rejected", "--note", "cut short", check=True)
    assert "rejected" in r.stdout
    entry = next(e for e in read_file(ds)["entries"] if e["filename"] == name)
    assert entry["review"]["verdict"] == "rejected" and entry["review"]["note"] == "cut short"
    bad = cli("review", "--dataset", str(ds), name, "maybe")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_completed_entry_without_a_take_token_in_an_older_file_is_given_one_at_start(
        tmp_path: Path, start_daemon) -> None:
    """Files written before adopted takes had a token hold completed entries with ``take: null``:
    they still load, and the daemon gives each a token of its own at start (a review given on it
    keeps holding), so every review from then on is fenced."""
    ds = make_dataset(tmp_path, ["uno", "dos"])
    d = start_daemon(ds)
    a, b = sorted(_complete_all(ds))
    with Client(running(ds)["endpoint"]) as cl:
        cl.call("review", key=b, review="approved")
    d.kill(signal.SIGTERM)  # a clean stop: the file alone is the state
    state = ds / "generation_state.json"
    old = orjson.loads(state.read_bytes())
    for e in old["entries"]:
        e["take"] = None
        if "review" in e:
            e["review"]["take"] = None
    state.write_bytes(orjson.dumps(old))  # an older file, as a person might also edit one
    assert all(e["take"] is None for e in read_state(ds)["entries"])  # offline readers load it as it is
    start_daemon(ds)
    shown = {e["filename"]: e for e in orjson.loads(cli("list", "--dataset", str(ds), "--json", check=True).stdout)}
    assert all(e["take"].startswith("adopted-") for e in shown.values()), shown
    assert shown[b]["review"]["take"] == shown[b]["take"]
    r = cli("review", "--dataset", str(ds), a, "approved", "--take", "adopted-0123456789abcdef")
    assert r.returncode == 2 and "new take" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    cli("review", "--dataset", str(ds), a, "approved", "--take", shown[a]["take"], check=True)
    cli("review", "--dataset", str(ds), b, "rejected", check=True)  # without --take: the current take
    assert _entry(ds, b)["review"] == {**_entry(ds, b)["review"], "verdict": "rejected", "take": shown[b]["take"]}


def test_another_tools_wav_replaced_under_an_adopted_take_gets_a_new_token(tmp_path: Path, start_daemon) -> None:
    """An adopted take's token names that wav: another tool's wav of another length put in its
    place is a new take (a new token), so a verdict given on the first one does not pass to it."""
    import numpy

    from statesvc.audio import encode_wav

    def tone(seconds: float) -> bytes:
        n = int(22050 * seconds)
        return encode_wav((0.3 * numpy.sin(numpy.arange(n) * 0.06) * 32767).astype(numpy.int16), 22050)

    ds = make_dataset(tmp_path, ["uno"])
    start_daemon(ds)
    name = read_state(ds)["entries"][0]["filename"]
    wav = ds / "wavs" / f"{name}.wav"
    wav.parent.mkdir(exist_ok=True)
    wav.write_bytes(tone(1.0))
    cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
    first = _entry(ds, name)["take"]
    assert first.startswith("adopted-")
    cli("review", "--dataset", str(ds), name, "approved", "--take", first, check=True)
    cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
    assert _entry(ds, name)["take"] == first  # the same wav seen again keeps its token and its verdict
    wav.write_bytes(tone(2.0))
    cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
    now = _entry(ds, name)
    assert now["take"].startswith("adopted-") and now["take"] != first, now
    r = cli("review", "--dataset", str(ds), name, "approved", "--take", first)
    assert r.returncode != 0 and "new take" in r.stderr, r.stderr
    assert name not in cli("export", "--dataset", str(ds), "--approved-only", check=True).stdout
