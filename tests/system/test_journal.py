"""The journal beside generation_state.json: what every reader sees, torn tails, cuts at every
step of a checkpoint, a file edited by hand after a crash, and when the file alone is the truth."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from statesvc import codec, loader, store
from statesvc.audio import Provenance, encode_wav, take_path
from statesvc.client import Client
from statesvc.entry import Entry
from statesvc.journal import parse
from statesvc.layout import journal_path
from statesvc.state import State
from tests.support.books import make_dataset, read_file, read_state
from tests.support.processes import ROOT, cli, wait_for

NO_CHECKPOINTS = ("--checkpoint-idle", "0", "--checkpoint-bytes", str(1 << 30))


def client(ds: Path) -> Client:
    return Client.for_dataset(ds, timeout=5, retries=1)


def complete(c: Client, ds: Path, item: dict, seconds: float = 0.5) -> None:
    """What a generator does for one claimed text: write its take, then report it."""
    pcm = (np.sin(np.arange(int(16000 * seconds)) / 9) * 8000).astype(np.int16)
    path = take_path(ds, item["filename"], item["token"])
    path.write_bytes(encode_wav(pcm, 16000, Provenance(item["text_hash"], item["rev"], item["token"])))
    c.call("result", id=item["id"], token=item["token"], status="completed", duration_seconds=seconds,
           sample_rate=16000, text_hash=item["text_hash"], rev=item["rev"])


# ---- readers -----------------------------------------------------------------------------------
def test_readers_with_no_daemon_see_what_only_the_journal_holds(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos", "tres", "cuatro"])
    d = start_daemon(ds, *NO_CHECKPOINTS)
    with client(ds) as c:
        for item in c.call("claim", owner="g", n=3)["entries"]:
            complete(c, ds, item)
    d.kill(signal.SIGKILL)  # no checkpoint at a stop: the file still says pending
    assert read_file(ds)["completed"] == 0 and read_state(ds)["completed"] == 3
    st = orjson.loads(cli("status", "--dataset", str(ds), "--json", check=True).stdout)
    assert (st["daemon"], st["completed"], st["generating"]) == (False, 3, 0)
    listed = orjson.loads(cli("list", "--dataset", str(ds), "--status", "completed", "--json", check=True).stdout)
    assert [e["filename"] for e in listed] == ["ds_0001", "ds_0002", "ds_0003"]
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 0 and "0 sync errors" in r.stdout, r.stdout + r.stderr
    rows = cli("export", "--dataset", str(ds), check=True).stdout.splitlines()
    assert [row.split("|")[0] for row in rows] == ["ds_0001", "ds_0002", "ds_0003"]


# ---- when the file alone is the truth ------------------------------------------------------------
def test_an_idle_daemon_checkpoints_and_a_clean_stop_leaves_the_file_whole(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(20)])
    d = start_daemon(ds, "--checkpoint-idle", "0.5")
    with client(ds) as c:
        c.call("claim", owner="g", n=5)
        wait_for(lambda: len(journal_path(ds).read_bytes().splitlines()) == 1, 15, "an idle checkpoint")
        assert read_file(ds)["generating"] == 5  # the file alone: hand-readable, complete
        c.call("claim", owner="g", n=2)
    d.kill(signal.SIGTERM)
    assert read_file(ds)["generating"] == 7 and len(journal_path(ds).read_bytes().splitlines()) == 1


def test_statesvc_checkpoint_with_and_without_a_daemon(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(20)])
    d = start_daemon(ds, *NO_CHECKPOINTS)
    with client(ds) as c:
        c.call("claim", owner="g", n=4)
    assert read_file(ds)["generating"] == 0
    r = cli("checkpoint", "--dataset", str(ds), check=True)
    assert "written by the daemon" in r.stdout and read_file(ds)["generating"] == 4
    with client(ds) as c:
        c.call("claim", owner="g", n=1)
    d.kill(signal.SIGKILL)
    assert read_file(ds)["generating"] == 4 and read_state(ds)["generating"] == 5
    assert "offline" in cli("checkpoint", "--dataset", str(ds), check=True).stdout
    assert read_file(ds)["generating"] == 5


def test_the_journal_stays_near_its_checkpoint_threshold(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(400)])
    start_daemon(ds, "--checkpoint-idle", "0", "--checkpoint-bytes", "8192")
    ids, biggest = set(), 0
    with client(ds) as c:
        for _ in range(60):
            for item in c.call("claim", owner="g", n=3)["entries"]:
                ids.add(read_file(ds)["checkpoint"])
                biggest = max(biggest, journal_path(ds).stat().st_size)
                c.call("release", owner="g", tokens=[item["token"]])
    # Past the threshold a checkpoint starts; commits go on while a child writes it, so the journal
    # may pass the threshold by what they add (a few records on a busy machine), never much more.
    # Without checkpoints it would reach 100 KB here.
    assert biggest < 3 * 8192, f"the journal reached {biggest} bytes"
    assert len(ids) > 5, "checkpoints were written as the journal grew"
    assert read_state(ds)["generating"] == 0


# ---- torn and damaged journals ---------------------------------------------------------------------
def _journalled(ds: Path, commits: int) -> list[dict]:
    """A dataset whose journal holds ``commits`` records; returns the state after each of them."""
    (ds / "wavs").mkdir(parents=True)
    store.create(ds, State([Entry.make(i, f"u_{i:03d}", f"t{i}") for i in range(1, 41)]))
    s, st = store.load_for_writing(ds)
    after = []
    for k in range(commits):
        s.claim(f"g{k}", 2, None, k)
        st.commit(s)
        after.append(s.counters())
    st.close()
    return after


def test_a_torn_tail_is_cut_at_the_first_bad_record_wherever_the_crash_fell(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    after = _journalled(ds, 6)
    raw = journal_path(ds).read_bytes()
    ends = parse(raw).ends
    rng = random.Random(3)
    for cut in sorted({ends[-2] + 1, ends[-1] - 1, *rng.sample(range(ends[-2] + 1, ends[-1]), 20)}):
        journal_path(ds).write_bytes(raw[:cut])
        assert loader.load(ds).counters() == after[-2]  # the torn record was never acknowledged
    journal_path(ds).write_bytes(raw[:ends[-1] - 5] + b"\0" * 3000)  # a crash can also leave zeros
    assert loader.load(ds).counters() == after[-2]
    s, st = store.load_for_writing(ds)  # the writer cuts the tail off, then appends after it
    assert journal_path(ds).stat().st_size == ends[-2]
    s.claim("again", 1, None, 99)
    st.commit(s)
    st.close()
    assert loader.load(ds).counts["generating"] == after[-2]["generating"] + 1


def test_a_damaged_record_with_whole_ones_after_it_is_refused(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    _journalled(ds, 4)
    raw = bytearray(journal_path(ds).read_bytes())
    ends = parse(bytes(raw)).ends
    raw[ends[0] + 30] ^= 0x01  # a bit flipped in the second record; the third and fourth are whole
    journal_path(ds).write_bytes(bytes(raw))
    with pytest.raises(codec.DamagedState, match=r"record 2 \(line 3, at byte \d+\) is damaged"):
        loader.load(ds)


# ---- damage through real processes: every reader refuses, and the way out loses nothing silently ----
def _edited_then_killed(tmp_path: Path, start_daemon, edits: int) -> tuple[Path, bytes]:
    """A dataset whose journal holds ``edits`` acknowledged edits, one record each (entries 1..edits),
    its daemon SIGKILLed; returns it and the journal's bytes."""
    ds = make_dataset(tmp_path, [f"texto {i}" for i in range(1, 7)])
    d = start_daemon(ds, *NO_CHECKPOINTS)
    for i in range(1, edits + 1):
        cli("edit", "--dataset", str(ds), f"ds_{i:04d}", "--text", f"corregido {i}", check=True)
    d.kill(signal.SIGKILL)
    raw = journal_path(ds).read_bytes()
    assert [[e.id for e in r.entries] for r in parse(raw).records] == [[i] for i in range(1, edits + 1)]
    return ds, raw


READERS = (("show", "ds_0001"), ("list",), ("export",), ("verify",), ("status",), ("serve",))


def _refused_by_every_reader(ds: Path, where: str) -> None:
    for cmd, *rest in READERS:
        r = cli(cmd, "--dataset", str(ds), *rest, timeout=30)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, f"{cmd}: {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert f"{journal_path(ds)}: {where} is damaged" in err[0], err[0]
        assert f"statesvc journal replay --up-to-damage --dataset {ds}" in err[0], err[0]


def _refused_by_the_page(ds: Path) -> str:
    from tests.support.page import DashboardProcess, answer
    page = DashboardProcess(ds)
    try:
        return wait_for(lambda: answer(f"{page.url}/api/status").get("load_error"), 20, "the page's load error")
    finally:
        page.stop()


def test_one_damaged_byte_in_the_journals_header_loses_nothing(tmp_path: Path, start_daemon) -> None:
    ds, raw = _edited_then_killed(tmp_path, start_daemon, 2)
    damaged = b"[" + raw[1:]  # byte 0, "{" -> "["
    journal_path(ds).write_bytes(damaged)
    _refused_by_every_reader(ds, "its header (line 1)")
    assert "its header (line 1) is damaged" in _refused_by_the_page(ds)
    assert journal_path(ds).read_bytes() == damaged  # the daemon started no journal over it
    r = cli("journal", "replay", "--dataset", str(ds))
    assert r.returncode == 2 and "its header (line 1) is damaged" in r.stderr
    # the repair the refusal suggests brings both edits back
    line = r.stderr.strip().split("repair line 1 by hand to read ")[1].encode() + b"\n"
    journal_path(ds).write_bytes(line + raw.split(b"\n", 1)[1])
    assert line == raw.split(b"\n", 1)[0] + b"\n"
    assert [e["text"] for e in read_state(ds)["entries"][:3]] == ["corregido 1", "corregido 2", "texto 3"]
    journal_path(ds).write_bytes(damaged)
    # the way out applies nothing it cannot place, keeps the journal aside and says what it holds
    r = cli("journal", "replay", "--up-to-damage", "--dataset", str(ds), check=True)
    kept = [p for p in ds.iterdir() if p.name.startswith("generation_state.journal.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged and str(kept[0]) in r.stdout
    assert "2 acknowledged commits after the damage were not applied" in r.stdout
    assert "commit 1: entries 1" in r.stdout and "commit 2: entries 2" in r.stdout


def test_journal_replay_over_damage_in_the_middle_refuses_or_applies_only_what_comes_before(
        tmp_path: Path, start_daemon) -> None:
    ds, raw = _edited_then_killed(tmp_path, start_daemon, 4)
    ends = parse(raw).ends
    damaged = bytearray(raw)
    damaged[ends[0] + 30] ^= 0x01  # a bit flipped in record 2; records 3 and 4 are whole
    journal_path(ds).write_bytes(bytes(damaged))
    r = cli("journal", "replay", "--dataset", str(ds))
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and f"record 2 (line 3, at byte {ends[0]}) is damaged" in err[0], \
        r.stdout + r.stderr
    assert journal_path(ds).read_bytes() == damaged  # refused: nothing touched
    _refused_by_every_reader(ds, f"record 2 (line 3, at byte {ends[0]})")
    r = cli("journal", "replay", "--up-to-damage", "--dataset", str(ds), check=True)
    assert "replayed 1 commits" in r.stdout
    assert "2 acknowledged commits after the damage were not applied" in r.stdout
    assert "commit 3: entries 3" in r.stdout and "commit 4: entries 4" in r.stdout
    kept = [p for p in ds.iterdir() if p.name.startswith("generation_state.journal.damaged-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # moved aside whole, not overwritten
    texts = [e["text"] for e in read_state(ds)["entries"]]
    assert texts[:5] == ["corregido 1", "texto 2", "texto 3", "texto 4", "texto 5"]
    d = start_daemon(ds)  # the dataset is whole again
    with client(ds) as c:
        assert c.call("status")["total"] == 6
    d.kill(signal.SIGTERM)


def test_a_checkpoint_that_fails_its_checksum_loads_as_a_hand_edit_with_a_warning(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    doc = read_file(ds)
    doc["entries"][1]["text"] = "dos, a mano"
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    r = cli("list", "--dataset", str(ds), "--json", check=True)
    assert [e["text"] for e in orjson.loads(r.stdout)] == ["uno", "dos, a mano"]
    err = r.stderr.strip().splitlines()
    assert err == [f"statesvc: warning: {ds / 'generation_state.json'}: its checksum does not match (edited by "
                   "hand, or written by an older statesvc): loaded as a hand edit, every entry validated"], r.stderr


# ---- process deaths at every step of a commit and a checkpoint -------------------------------------
DIE_AT = {
    # half a record written, then death: a torn tail
    "append": "import statesvc.journal as j, os\n"
              "real = j.write_all\n"
              "def half(fd, data, at=None):\n"
              "    real(fd, data[:len(data) // 2], at); os._exit(9)\n"
              "j.write_all = half\n",
    # the checkpoint file half written (by its forked child), and the writer killed: a temp file left
    "checkpoint": "import statesvc.codec as m, os, signal\n"
                  "real = m.write_all\n"
                  "def half(fd, data, at=None):\n"
                  "    real(fd, data[:len(data) // 2], at); os.kill(os.getppid(), signal.SIGKILL); os._exit(9)\n"
                  "m.write_all = half\n",
    # after the checkpoint's rename, before the new journal exists
    "swap": "import statesvc.journal as j, os\n"
            "j.tail = lambda *a, **k: os._exit(9)\n",
}


def _die_during(ds: Path, where: str, commits: int) -> subprocess.CompletedProcess:
    """A writer that makes ``commits`` commits of two claims each and dies at ``where``: during the
    last commit's append, or during the checkpoint after them (a real process death)."""
    last = "" if where == "append" else "\nst.checkpoint(s)"
    code = ("from pathlib import Path\nfrom statesvc import store\n"
            f"s, st = store.load_for_writing(Path({str(ds)!r}))\n"
            f"for k in range({commits}):\n"
            f"    if k == {commits - 1 if where == 'append' else commits}:\n"
            + "".join(f"        {line}\n" for line in DIE_AT[where].splitlines()) +
            "    s.claim('w' + str(k), 2, None, k)\n    st.commit(s)\n"
            + (f"{DIE_AT[where]}" if where != "append" else "") + f"{last}\nraise SystemExit(0)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("where", ["append", "checkpoint", "swap"])
def test_a_death_at_any_step_loses_no_commit_and_the_daemon_goes_on(tmp_path: Path, start_daemon,
                                                                    where: str) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(200)])
    r = _die_during(ds, where, 5)
    assert r.returncode in (9, -signal.SIGKILL), r.stderr
    # append: the 5th commit was torn (never acknowledged); checkpoint, swap: all 5 were durable
    want = 8 if where == "append" else 10
    assert read_state(ds)["generating"] == want
    if where == "checkpoint":
        assert any(p.name.endswith(".tmp") for p in ds.iterdir())
    if where == "swap":  # the new file is in place, the journal still extends the one before it
        assert read_file(ds)["generating"] == 10 and parse(journal_path(ds).read_bytes()).records
    raw = journal_path(ds).read_bytes()
    d = start_daemon(ds, *NO_CHECKPOINTS)
    assert not any(p.name.endswith(".tmp") for p in ds.iterdir())
    kept = [p for p in ds.iterdir() if p.name.startswith("generation_state.journal.torn-")]
    if where == "append":  # the torn record's bytes are kept, and the log says so
        assert len(kept) == 1 and kept[0].read_bytes() == raw[parse(raw).good_length:]
        assert f"cut its torn last record, {len(kept[0].read_bytes())} bytes" in d.output()
    else:
        assert not kept
    with client(ds) as c:
        assert c.call("status")["generating"] == want
        c.call("claim", owner="after", n=1)
        c.call("checkpoint")
        c.call("claim", owner="after", n=1)
    d.kill(signal.SIGKILL)
    assert read_state(ds)["generating"] == want + 2


# ---- a file edited by hand while the journal holds commits ---------------------------------------
def _hand_edited_after_a_crash(tmp_path: Path, start_daemon) -> Path:
    ds = make_dataset(tmp_path, ["uno", "dos", "tres", "cuatro"])
    d = start_daemon(ds, *NO_CHECKPOINTS)
    with client(ds) as c:
        c.call("claim", owner="g", n=2)  # entries 1 and 2: generating, in the journal only
    d.kill(signal.SIGKILL)
    doc = read_file(ds)  # the file as a person sees it: all pending
    doc["entries"][3]["text"] = "cuatro, corregido a mano"
    doc["entries"][0]["error"] = "a note by hand"
    doc["entries"][1]["status"] = "failed"  # the journal says generating: the journal wins
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return ds


def test_a_hand_edit_after_a_crash_is_refused_and_nothing_is_touched(tmp_path: Path, start_daemon) -> None:
    ds = _hand_edited_after_a_crash(tmp_path, start_daemon)
    before = {p.name: p.read_bytes() for p in ds.iterdir() if p.name.startswith("generation_state")}
    r = subprocess.run([sys.executable, "-m", "statesvc", "serve", "--dataset", str(ds)], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "changed (by hand" in err[0] and "statesvc journal replay" in err[0] and "journal discard" in err[0]
    assert {p.name: p.read_bytes() for p in ds.iterdir() if p.name.startswith("generation_state")} == before
    r = cli("status", "--dataset", str(ds))  # readers refuse the same way
    assert r.returncode != 0 and "journal replay" in r.stderr


def test_journal_replay_applies_the_commits_onto_the_edited_file(tmp_path: Path, start_daemon) -> None:
    ds = _hand_edited_after_a_crash(tmp_path, start_daemon)
    r = cli("journal", "replay", "--dataset", str(ds), check=True)
    assert "replayed 1 commits" in r.stdout
    doc = read_file(ds)
    assert [e["status"] for e in doc["entries"]] == ["generating", "generating", "pending", "pending"]
    assert doc["entries"][3]["text"] == "cuatro, corregido a mano"  # what the journal did not change stays
    assert doc["entries"][0]["error"] == "a note by hand"  # (a claim changes status and lease only)
    start_daemon(ds)


def test_journal_discard_keeps_the_edited_file_and_moves_the_journal_aside(tmp_path: Path, start_daemon) -> None:
    ds = _hand_edited_after_a_crash(tmp_path, start_daemon)
    r = cli("journal", "discard", "--dataset", str(ds), check=True)
    assert "discarded 1 commits" in r.stdout
    aside = [p for p in ds.iterdir() if p.name.startswith("generation_state.journal.discarded-")]
    assert len(aside) == 1 and parse(aside[0].read_bytes()).records
    st = read_state(ds)
    assert st["generating"] == 0 and st["entries"][3]["text"] == "cuatro, corregido a mano"
    d = start_daemon(ds)
    with client(ds) as c:
        assert (c.call("status")["pending"], c.call("status")["failed"]) == (3, 1)  # the file as edited
    d.kill(signal.SIGTERM)


def test_the_recovery_commands_refuse_while_a_daemon_runs(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno"])
    start_daemon(ds)
    for cmd in ("replay", "discard"):
        r = cli("journal", cmd, "--dataset", str(ds))
        assert r.returncode != 0 and "stop it" in r.stderr and "Traceback" not in r.stderr


def test_a_journal_left_without_its_file_is_moved_aside_by_init(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    _journalled(ds, 2)
    os.unlink(ds / "generation_state.json")
    texts = tmp_path / "t.txt"
    texts.write_text("a\nb\n")
    cli("init", "--dataset", str(ds), "--texts", str(texts), check=True)
    assert read_state(ds)["total"] == 2
    assert [p.name for p in ds.iterdir() if ".orphaned-" in p.name]


def test_commands_that_start_afresh_move_a_damaged_journal_aside(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    _journalled(ds, 3)
    damaged = b"[" + journal_path(ds).read_bytes()[1:]
    journal_path(ds).write_bytes(damaged)
    r = cli("journal", "discard", "--dataset", str(ds), check=True)  # the file alone
    aside = [p for p in ds.iterdir() if ".discarded-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged and str(aside[0]) in r.stdout
    assert "discarded 3 commits" in r.stdout  # the whole records after the damaged header count
    journal_path(ds).write_bytes(damaged)
    os.unlink(ds / "generation_state.json")
    texts = tmp_path / "t.txt"
    texts.write_text("a\nb\n")
    cli("init", "--dataset", str(ds), "--texts", str(texts), check=True)  # a new state: the old journal aside
    aside = [p for p in ds.iterdir() if ".orphaned-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged and read_state(ds)["total"] == 2


def test_lease_renewals_and_phases_are_journalled_compactly_and_replayed(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    (ds / "wavs").mkdir(parents=True)
    store.create(ds, State([Entry.make(i, f"u_{i:03d}", f"una frase de prueba {i}") for i in range(1, 9)]))
    s, st = store.load_for_writing(ds)
    items = s.claim("g", 4, None, 100.0)["entries"]
    st.commit(s)
    s.working("g", [items[0]["token"]], 105.0)  # phase and deadline only
    s.heartbeat("g", [items[1]["token"]], 108.0)
    s.claim("h", 1, None, 108.0)  # a real change, so there is a commit to carry them
    size = st.journal_bytes
    st.commit(s)
    st.close()
    rec = parse(journal_path(ds).read_bytes()).records[-1]
    assert rec.entries == [] and [x[0] for x in rec.claims] == [5] and sorted(x[0] for x in rec.leases) == [1, 2]
    assert st.journal_bytes - size < 2 * len(orjson.dumps(s.by_id[5].to_dict())) + 200  # not whole entries
    again = loader.load(ds)
    for i in (1, 2, 3, 5):
        assert again.by_id[i].to_dict() == s.by_id[i].to_dict()
    assert again.by_id[1].lease.phase == "synthesizing" and again.synthesizing == {"g": [items[0]["token"]]}


def _random_change(s: State, rng: random.Random, mine: list[dict], owner: str, op: str, now: float,
                   step: int) -> None:
    from tests.support.books import take
    if op == "claim":
        mine += s.claim(owner, rng.randint(1, 4), None, now)["entries"]
    elif op in ("result", "fail", "release") and mine:
        c = mine.pop(rng.randrange(len(mine)))
        if op == "result":
            s.result(take(c, round(rng.uniform(0.5, 3), 3)), now)
        elif op == "fail":
            s.result({"id": c["id"], "token": c["token"], "status": "failed", "error": "boom"}, now)
        else:
            s.release(owner, [c["token"]], now)
    elif op in ("working", "heartbeat") and mine:
        getattr(s, op)(owner, [c["token"] for c in rng.sample(mine, rng.randint(1, len(mine)))], now)
    elif op == "requeue":
        s.requeue([rng.randint(1, len(s.entries))], False, now)
    elif op == "edit":
        e = s.by_id[rng.randint(1, len(s.entries))]
        if e.status != "generating":
            s.edit(e.id, f"{e.text} v{step}", now)
    elif op == "add":
        s.add([(None, f"added {step}")], "u", now)
    elif op == "expire":
        s.expire(now + rng.choice([0, 20]))


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_what_loads_after_any_commit_is_what_the_daemon_held(tmp_path: Path, seed: int, monkeypatch) -> None:
    """Random claims, results, failures, releases, expiries, requeues, edits, adds, working notices
    and heartbeats, committed at random, with checkpoints written by a thread across later changes
    and commits: after every commit, file plus journal load to exactly the state in memory (whole
    entries, claim rows and lease rows)."""
    rng = random.Random(seed)
    ds = tmp_path / "ds"
    (ds / "wavs").mkdir(parents=True)
    store.create(ds, State([Entry.make(i, f"u_{i:03d}", f"t{i}") for i in range(1, 31)]))
    s, st = store.load_for_writing(ds)
    # a slow checkpoint thread, a few entries at a time, so that it reads entries while they change
    encode = codec._encode
    monkeypatch.setattr(codec, "_CHUNK", 2)
    monkeypatch.setattr(codec, "_encode", lambda e: (time.sleep(0.0002), encode(e))[1])
    held: dict[str, list[dict]] = {"a": [], "b": []}
    now = 1000.0
    for step in range(400):
        now += rng.uniform(0, 3)
        owner = rng.choice("ab")
        op = rng.choice(["claim", "claim", "result", "fail", "release", "working", "heartbeat", "requeue",
                         "edit", "add", "expire", "commit", "commit"])
        if op != "commit":
            _random_change(s, rng, held[owner], owner, op, now, step)
            continue
        held = {o: [c for c in cs if c["token"] in s.leases] for o, cs in held.items()}
        st.commit(s)
        # checkpoints as the daemon writes them: begun after a commit, written by a thread while
        # changes and commits go on, put in place right after a later commit
        if st.job is not None:
            st.let_checkpoint_in_place()  # right after a commit, as the daemon does; commits go on meanwhile
            r = rng.random()
            if r < 0.1:
                st.wait_checkpoint_in_place()
            elif r < 0.6 and st.job.done:
                st.swap_in_checkpoint()
        elif rng.random() < 0.2:
            st.begin_checkpoint(s)
        again = loader.load(ds)
        assert [e.to_dict() for e in again.entries] == [e.to_dict() for e in s.entries], f"step {step}"
        assert again.counters() == s.counters()
    st.close()


def test_a_killed_daemon_leaves_no_lock_behind_in_its_checkpoint_writer(tmp_path: Path, start_daemon) -> None:
    """The checkpoint is written by a forked child; when the daemon is killed meanwhile, the child
    must not keep the writer lock (an inherited descriptor would), so a new daemon starts at once."""
    from statesvc.lock import holder_info
    ds = make_dataset(tmp_path, [f"una frase bastante larga para el texto número {i}" for i in range(150_000)])
    d = start_daemon(ds, *NO_CHECKPOINTS)
    with client(ds) as c:
        c.call("claim", owner="g", n=5)
        c.send("checkpoint")
        wait_for(lambda: any(p.name.endswith(".tmp") for p in ds.iterdir()), 30, "the checkpoint being written")
        d.kill(signal.SIGKILL)
    writer = [p for p in ds.iterdir() if p.name.endswith(".tmp")]
    assert writer, "the checkpoint was already done: the test needs a bigger state"
    assert holder_info(ds) is None, "the checkpoint's child holds the writer lock"
    start_daemon(ds, *NO_CHECKPOINTS)
    assert read_state(ds)["generating"] == 5
