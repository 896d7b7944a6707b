"""The entry lifecycle through real processes: daemons, generators, run-pipeline, the CLI and raw sockets.

Each test documents one requirement end to end: re-init over old wavs, a poison text, long syntheses
under short leases, a full disk, resent adds, a dead unsupervised generator, numeric filenames, what a
load repairs, and edits. Nothing of ours is mocked; synchronization is polling with deadlines.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import zmq

from statesvc.audio import read_provenance
from statesvc.client import Client
from statesvc.endpoints import connectable, running
from statesvc.entry import text_hash
from tests.support.books import make_dataset, read_state
from tests.support.processes import BIN, cli, wait_for
from tests.support.runs import ENV, run_pipeline


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """A refusal as the CLI conventions want it: non-zero exit, one line on stderr, no traceback."""
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip()
    assert err and "\n" not in err, f"expected one line on stderr, got:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in err, err


def entries_by_filename(ds: Path) -> dict[str, dict]:
    return {e["filename"]: e for e in read_state(ds)["entries"]}


def assert_takes_match_texts(ds: Path) -> None:
    """Every completed entry's wav records the hash of the entry's current text and its revision."""
    for e in read_state(ds)["entries"]:
        if e["status"] != "completed":
            continue
        prov = read_provenance(ds / "wavs" / f"{e['filename']}.wav")
        assert prov is not None, f"{e['filename']}: no provenance in its wav"
        assert prov.text_hash == e["text_hash"] == text_hash(e["text"]), e
        assert prov.rev == e["rev"], e


def daemon_status(ds: Path) -> dict:
    with Client.for_dataset(ds, timeout=3, retries=1) as c:
        return c.call("status")


# ---- re-init over old wavs: takes of unchanged texts are adopted, takes of changed texts set aside ---
def test_init_over_old_wavs_adopts_same_texts_and_sets_aside_changed_ones(tmp_path: Path, start_daemon) -> None:
    texts_a = [f"frase numero {i} del corpus" for i in range(1, 9)]
    fa = tmp_path / "a.txt"
    fa.write_text("\n".join(texts_a) + "\n")
    ds = tmp_path / "corpus"
    r = run_pipeline("--dataset", str(ds), "--texts", str(fa), "--workers", "2", "--synth", "tone")
    assert r.returncode == 0, r.stderr
    old = entries_by_filename(ds)
    assert len(old) == 8 and all(e["status"] == "completed" for e in old.values())
    old_tokens = {n: read_provenance(ds / "wavs" / f"{n}.wav").token for n in old}

    texts_b = list(texts_a)
    texts_b[2] = "frase numero 3 del corpus corregida"   # a typo fixed: corpus_0003
    texts_b[6] = "frase numero 7 del corpus corregida"   # corpus_0007
    fb = tmp_path / "b.txt"
    fb.write_text("\n".join(texts_b) + "\n")
    (ds / "generation_state.json").unlink()
    init = cli("init", "--dataset", str(ds), "--texts", str(fb))
    assert init.returncode == 0, init.stderr
    assert "8 wav" in init.stdout, init.stdout  # it says the wavs are already there

    d = start_daemon(ds)
    once = cli("reconcile", "--once", "--dataset", str(ds), tool="pipeline", env=ENV)
    assert once.returncode == 0, once.stderr
    changed = {"corpus_0003", "corpus_0007"}
    now = entries_by_filename(ds)
    assert {n: e["status"] for n, e in now.items()} == \
        {n: "pending" if n in changed else "completed" for n in old}, once.stdout
    for name, e in now.items():
        if name in changed:
            assert not (ds / "wavs" / f"{name}.wav").exists(), f"{name}: a take of the old text is still in wavs/"
        else:
            assert e["rev"] == 0 and e["text_hash"] == old[name]["text_hash"], e
            assert e["take"] == old_tokens[name], f"the old take itself is adopted: {e}"
    stale = sorted(p.name.split(".")[0] for p in (ds / "stale").iterdir())
    assert stale == sorted(changed), stale
    v = cli("verify", "--dataset", str(ds))
    assert v.returncode == 0 and v.stdout.strip().endswith("0 sync errors"), v.stdout
    assert d.kill(signal.SIGTERM) == 0

    r = run_pipeline("--dataset", str(ds), "--workers", "2", "--synth", "tone")
    assert r.returncode == 0, r.stderr
    doc = read_state(ds)
    assert doc["completed"] == 8 and all(e["status"] == "completed" for e in doc["entries"])
    assert_takes_match_texts(ds)
    assert {e["filename"]: e["text"] for e in doc["entries"]}["corpus_0003"] == texts_b[2]


# ---- a text that kills its generator fails alone after its attempts; no other entry is charged ----
def test_poison_text_under_run_pipeline_fails_alone_and_quickly(tmp_path: Path) -> None:
    lines = [f"texto normal numero {i}" for i in range(200)]
    lines[123] = "este texto KILL mata al proceso"
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(lines) + "\n")
    ds = tmp_path / "poison"
    started = time.monotonic()
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2",
                     "--synth", "tests.support.plugins:Flaky")
    wall = time.monotonic() - started
    assert r.returncode == 3, r.stderr
    doc = read_state(ds)
    failed = [e for e in doc["entries"] if e["status"] == "failed"]
    assert [e["id"] for e in failed] == [124], failed
    assert failed[0]["attempts"] == 3, failed[0]
    assert "died while synthesizing" in failed[0]["error"], failed[0]["error"]
    others = [e for e in doc["entries"] if e["id"] != 124]
    assert all(e["status"] == "completed" for e in others)
    charged = {e["id"]: e["attempts"] for e in others if e["attempts"] != 1}
    assert not charged, f"entries charged for another text's deaths: {charged}"
    assert wall < 60, f"run took {wall:.1f} s"


@pytest.mark.parametrize("synth", ["tests.support.plugins:Flaky", "tests.support.plugins:BatchedFlaky"])
def test_a_poison_text_in_batches_fails_alone(tmp_path: Path, synth: str) -> None:
    """--batch 4: a text that kills its generator is found and charged, not its batch-mates
    (a batch that dies goes back uncharged and its entries are tried one at a time)."""
    lines = [f"texto normal numero {i}" for i in range(40)]
    lines[10] = "este texto KILL mata al proceso"
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(lines) + "\n")
    ds = tmp_path / "poison-batch"
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2", "--batch", "4", "--synth", synth)
    assert r.returncode == 3, r.stderr
    doc = read_state(ds)
    assert [(e["id"], e["attempts"]) for e in doc["entries"] if e["status"] == "failed"] == [(11, 3)]
    assert all(e["status"] == "completed" and e["attempts"] == 1 for e in doc["entries"] if e["id"] != 11)


# ---- a synthesis longer than the lease keeps its lease: each text is made once --------------------
def test_long_syntheses_keep_their_leases(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("primera frase larga\nsegunda frase larga\ntercera frase larga\n")
    log = tmp_path / "synth.log"
    ds = tmp_path / "long"
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2", "--lease-seconds", "2",
                     "--synth", "tests.support.plugins:Chaotic", "--synth-opt", f"log={log}", "--synth-opt", "delay=6")
    assert r.returncode == 0, r.stderr
    done = collections.Counter(line.split("\t")[1] for line in log.read_text().splitlines())
    assert done == {"primera frase larga": 1, "segunda frase larga": 1, "tercera frase larga": 1}, done
    doc = read_state(ds)
    assert doc["completed"] == 3 and all(e["attempts"] == 1 for e in doc["entries"]), doc["entries"]


# ---- a write refused on a full disk is never applied later; once space is back it applies once ----
def test_add_on_a_full_disk_is_refused_then_applies_once(tmp_path: Path, start_daemon, small_fs) -> None:
    disk = small_fs(tmp_path / "ds", "2m")
    ds = make_dataset(tmp_path, [f"texto {i}" for i in range(50)])
    start_daemon(ds)
    new = tmp_path / "new.txt"
    # big enough that its journal record cannot fit in the slack a full disk leaves in a page
    new.write_text("nuevo uno\nnuevo dos\nnuevo tres\n" + "".join(f"relleno {i} {'x' * 80}\n" for i in range(400)))
    junk = disk.fill()
    r = cli("add", "--dataset", str(ds), "--texts", str(new), timeout=30)
    assert_one_line_error(r, "not saved")
    assert not any(e["text"].startswith("nuevo") for e in read_state(ds)["entries"])
    junk.unlink()
    r = cli("add", "--dataset", str(ds), "--texts", str(new), timeout=30)
    assert r.returncode == 0, r.stderr
    texts = collections.Counter(e["text"] for e in read_state(ds)["entries"])
    assert [texts[t] for t in ("nuevo uno", "nuevo dos", "nuevo tres")] == [1, 1, 1], texts
    assert len(read_state(ds)["entries"]) == 453
    # and the daemon agrees with the file (nothing rolled back appears later)
    assert daemon_status(ds)["total"] == 453


# ---- a resent add (same request id) gets the first answer, even from the next daemon --------------
def _raw_twice(endpoint: str, frame: bytes) -> list[bytes]:
    """Send ``frame`` twice on one DEALER socket (a client's resend) and collect both replies."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(frame)
        sock.send(frame)
        replies: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(replies) < 2 and time.monotonic() < deadline:
            if sock.poll(100, zmq.POLLIN):
                replies.append(sock.recv())
        assert len(replies) == 2, f"got {len(replies)} replies"
        return replies
    finally:
        sock.close(0)
        ctx.term()


def test_a_resent_add_is_applied_once(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["a", "b"], name="resend")
    start_daemon(ds)
    endpoint = connectable(running(ds)["endpoint"])
    msg = {"op": "add", "rid": 7, "req": "same-id", "items": [[None, "x"], [None, "y"]], "prefix": "p"}
    first, second = _raw_twice(endpoint, orjson.dumps(msg))
    assert first == second, (first, second)
    reply = orjson.loads(first)
    assert reply["ok"] and reply["added"] == 2, reply
    texts = collections.Counter(e["text"] for e in read_state(ds)["entries"])
    assert (texts["x"], texts["y"], sum(texts.values())) == (1, 1, 4), texts

    # what ``req`` buys: the same frame without it is two adds
    del msg["req"]
    first, second = _raw_twice(endpoint, orjson.dumps(msg))
    r1, r2 = orjson.loads(first), orjson.loads(second)
    assert r1["ok"] and r2["ok"] and r1["first_id"] != r2["first_id"], (r1, r2)
    texts = collections.Counter(e["text"] for e in read_state(ds)["entries"])
    assert (texts["x"], texts["y"], sum(texts.values())) == (3, 3, 8), texts


def test_a_resend_after_the_daemon_was_killed_gets_the_first_answer(tmp_path: Path, start_daemon) -> None:
    """The answer is saved with the change it answers: a client whose reply was lost when the
    daemon died resends to the next daemon and gets it, instead of adding the texts again."""
    ds = make_dataset(tmp_path, ["a", "b"], name="resend2")
    first_daemon = start_daemon(ds)
    endpoint = connectable(running(ds)["endpoint"])
    msg = orjson.dumps({"op": "add", "rid": 9, "req": "r-1", "items": [[None, "x"]], "prefix": "p"})
    first, _ = _raw_twice(endpoint, msg)
    first_daemon.kill()  # SIGKILL: nothing but the file survives
    start_daemon(ds)
    again, _ = _raw_twice(connectable(running(ds)["endpoint"]), msg)
    assert orjson.loads(again) == orjson.loads(first)
    assert [e["text"] for e in read_state(ds)["entries"]] == ["a", "b", "x"]


# ---- a dead unsupervised generator's leases go to the survivor within 20 s: each entry completed once ---
class Events:
    """The daemon's change events (a SUB socket): how many times each entry became completed."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"entry")
        self.sub.connect(connectable(endpoint))
        self.completed: collections.Counter[int] = collections.Counter()
        self.seen = 0

    def drain(self) -> None:
        while self.sub.poll(0, zmq.POLLIN):
            _topic, body = self.sub.recv_multipart()
            e = orjson.loads(body)
            self.seen += 1
            if e["status"] == "completed":
                self.completed[e["id"]] += 1

    def close(self) -> None:
        self.sub.close(0)
        self.ctx.term()


def test_a_dead_unsupervised_generator_loses_its_leases_to_the_other(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"frase lenta {i}" for i in range(60)], name="units")
    start_daemon(ds)
    events = Events(running(ds)["events"])
    gens, logs = [], []
    try:
        for i in range(2):
            logs.append(open(tmp_path / f"gen{i}.log", "wb"))
            gens.append(subprocess.Popen(
                [str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--synth", "tests.support.plugins:Slow",
                 "--synth-opt", "delay=0.2"], stdout=logs[i], stderr=subprocess.STDOUT, env=ENV))

        def completed() -> int:
            events.drain()
            return daemon_status(ds)["completed"]

        wait_for(lambda: completed() >= 10, 30, "10 entries completed")
        gens[0].kill()
        killed = time.monotonic()
        gens[0].wait(10)

        def finished() -> bool:
            events.drain()
            st = daemon_status(ds)
            return st["pending"] == 0 and st["generating"] == 0

        wait_for(finished, 30, "the survivor finishing every entry")
        took = time.monotonic() - killed
        wait_for(lambda: (events.drain(), len(events.completed) == 60)[1], 5, "every completion event")
        assert gens[1].poll() is None, "the surviving generator exited"
    finally:
        for g in gens:
            if g.poll() is None:
                g.send_signal(signal.SIGTERM)
                g.wait(30)
        for f in logs:
            f.close()
        events.close()
    assert took < 20, f"{took:.1f} s from the kill to pending == generating == 0"
    doc = read_state(ds)
    assert doc["completed"] == 60, doc["completed"]
    twice = {i: n for i, n in events.completed.items() if n != 1}
    assert not twice, f"entries completed more than once: {twice}"
    attempts = collections.Counter(e["attempts"] for e in doc["entries"])
    assert set(attempts) <= {1, 2} and attempts[2] <= 1, attempts
    assert_takes_match_texts(ds)


# ---- numeric filenames and ids: `show NAME` and `show #ID` find the same entry, offline and live ---
def _show(ds: Path, key: str) -> dict:
    r = cli("show", "--dataset", str(ds), key, "--json")
    assert r.returncode == 0, r.stderr
    return orjson.loads(r.stdout)


def _check_numeric_keys(ds: Path, id_of: dict[str, int]) -> None:
    for name, eid in id_of.items():
        e = _show(ds, name)
        assert (e["filename"], e["id"]) == (name, eid), e
        e = _show(ds, f"#{eid}")
        assert (e["filename"], e["id"]) == (name, eid), e
    assert_one_line_error(cli("show", "--dataset", str(ds), "²"), "statesvc: error:")
    assert_one_line_error(cli("show", "--dataset", str(ds), "²", "--json"), "statesvc: error:")


def test_numeric_filenames_and_ids(tmp_path: Path, start_daemon) -> None:
    for name, rows, id_of in (
        ("plain", "0001|uno\n0002|dos\n0003|tres\n", {"0001": 1, "0002": 2, "0003": 3}),
        ("shuffled", "0002|dos\n0001|uno\n0003|tres\n", {"0002": 1, "0001": 2, "0003": 3}),
    ):
        (tmp_path / name).mkdir()
        meta = tmp_path / name / "metadata.csv"
        meta.write_text(rows)
        ds = tmp_path / name / "ds"
        cli("init", "--dataset", str(ds), "--texts", str(meta), check=True)
        _check_numeric_keys(ds, id_of)          # read from the file
        d = start_daemon(ds)
        _check_numeric_keys(ds, id_of)          # answered by the daemon
        d.kill(signal.SIGTERM)


# ---- loading repairs a generating entry without a lease and removes a killed save's temp copy -----
def test_load_repairs_a_lease_less_generating_entry_and_removes_temp_copies(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos", "tres"], name="repair")
    doc = read_state(ds)
    doc["entries"][1]["status"] = "generating"
    doc["entries"][1].pop("lease", None)
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    tmp = ds / ".generation_state.json.12345.tmp"
    tmp.write_bytes(b'{"entries": [')  # half a save
    start_daemon(ds)
    st = orjson.loads(cli("status", "--dataset", str(ds), "--json", check=True).stdout)
    assert (st["generating"], st["pending"]) == (0, 3), st
    assert not tmp.exists(), "the temp copy of a killed save is still there"
    e = orjson.loads(cli("show", "--dataset", str(ds), "#2", "--json", check=True).stdout)
    assert e["status"] == "pending" and e["attempts"] == 0 and "lease" not in e, e


# ---- edit: a completed entry's take is set aside and regenerated; an entry being generated is refused ---
def test_edit_a_completed_entry_and_refuse_one_being_generated(tmp_path: Path, start_daemon) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"texto original {i}\n" for i in range(1, 7)))
    ds = tmp_path / "edits"
    r = run_pipeline("--dataset", str(ds), "--texts", str(texts), "--workers", "2", "--synth", "tone")
    assert r.returncode == 0, r.stderr

    r = cli("edit", "--dataset", str(ds), "2", "--text", "nuevo texto")
    assert r.returncode == 0, r.stderr
    moved = [p.name for p in (ds / "requeued").iterdir()]
    assert len(moved) == 1 and moved[0].startswith("edits_0002."), moved
    assert not (ds / "wavs" / "edits_0002.wav").exists()
    e = entries_by_filename(ds)["edits_0002"]
    assert (e["status"], e["rev"], e["text"]) == ("pending", 1, "nuevo texto"), e

    # an entry being generated cannot be edited: claim it as a generator would, then try
    d = start_daemon(ds)
    with Client.for_dataset(ds) as c:
        got = c.call("claim", owner="x", n=1)["entries"]
        assert [g["id"] for g in got] == [2], got
        r = cli("edit", "--dataset", str(ds), "2", "--text", "otro texto")
        assert_one_line_error(r, "being generated")
        assert entries_by_filename(ds)["edits_0002"]["text"] == "nuevo texto"
        c.call("release", owner="x", tokens=[got[0]["token"]])
    assert d.kill(signal.SIGTERM) == 0

    r = run_pipeline("--dataset", str(ds), "--workers", "2", "--synth", "tone")
    assert r.returncode == 0, r.stderr
    e = entries_by_filename(ds)["edits_0002"]
    assert (e["status"], e["rev"]) == ("completed", 1), e
    prov = read_provenance(ds / "wavs" / "edits_0002.wav")
    assert prov is not None and prov.text_hash == text_hash("nuevo texto") and prov.rev == 1, prov
    assert_takes_match_texts(ds)
