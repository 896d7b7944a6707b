"""The statesvc CLI: init and its refusals, queries with and without a daemon, verify, export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson
import pytest
import soundfile as sf
from click.testing import CliRunner

from statesvc.cli import main
from tests.support.books import make_dataset, read_file, read_state
from tests.support.processes import cli


def one_line_error(r) -> None:
    assert r.returncode != 0, r.stdout
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("statesvc: warning: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr


def test_init_txt_ids_and_filenames(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["Hola.", "", "  Adiós.  "], name="voz")
    doc = read_state(ds)
    assert [(e["id"], e["filename"], e["text"]) for e in doc["entries"]] == [
        (1, "voz_0001", "Hola."), (2, "voz_0002", "Adiós.")]
    assert (doc["total"], doc["pending"], doc["completed"]) == (2, 2, 0)
    assert read_file(ds)["schema_version"] == 2 and (ds / "wavs").is_dir()


def test_init_wide_ids(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, [f"t{i}" for i in range(10_001)])
    names = [e["filename"] for e in read_state(ds)["entries"]]
    assert names[0] == "ds_00001" and names[-1] == "ds_10001"


def test_init_csv_and_jsonl(tmp_path: Path) -> None:
    meta = tmp_path / "metadata.csv"
    meta.write_text("LJ001-0001|Printing, in the only sense|Printing, in the only sense\nLJ001-0002|In being\n")
    cli("init", "--dataset", str(tmp_path / "a"), "--texts", str(meta), check=True)
    assert [e["filename"] for e in read_state(tmp_path / "a")["entries"]] == ["LJ001-0001", "LJ001-0002"]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "uno", "filename": "x_1"}\n{"text": "dos"}\n')
    cli("init", "--dataset", str(tmp_path / "b"), "--texts", str(jl), "--prefix", "p", check=True)
    assert [e["filename"] for e in read_state(tmp_path / "b")["entries"]] == ["x_1", "p_0002"]


@pytest.mark.parametrize("name,content", [
    ("missing.txt", None),
    ("empty.txt", b""),
    ("latin1.txt", "años\n".encode("latin-1")),
    ("dup.csv", b"a|x\na|y\n"),
    ("slash.csv", b"a/b|x\n"),
    ("dots.csv", b"..|x\n"),
    ("hidden.csv", b".a|x\n"),
    ("emptytext.csv", b"a|  \n"),
    ("bad.jsonl", b'{"text": ""}\n'),
    ("notjson.jsonl", b"{nope\n"),
])
def test_init_refusals_write_nothing(tmp_path: Path, name: str, content: bytes | None) -> None:
    f = tmp_path / name
    if content is not None:
        f.write_bytes(content)
    ds = tmp_path / "ds"
    one_line_error(cli("init", "--dataset", str(ds), "--texts", str(f)))
    assert not (ds / "generation_state.json").exists()


def test_init_refuses_existing_state_and_add_works(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a"])
    before = (ds / "generation_state.json").read_bytes()
    more = tmp_path / "more.txt"
    more.write_text("b\nc\n")
    r = cli("init", "--dataset", str(ds), "--texts", str(more))
    one_line_error(r)
    assert "statesvc add" in r.stderr
    assert (ds / "generation_state.json").read_bytes() == before
    cli("add", "--dataset", str(ds), "--texts", str(more), check=True)
    assert [e["filename"] for e in read_state(ds)["entries"]] == ["ds_0001", "ds_0002", "ds_0003"]


def _complete_by_hand(ds: Path, fid: str, seconds: float = 0.5, sr: int = 22050) -> None:
    sf.write(ds / "wavs" / f"{fid}.wav", np.zeros(int(seconds * sr), dtype=np.int16), sr)
    doc = read_state(ds)
    for e in doc["entries"]:
        if e["filename"] == fid:
            e.update(status="completed", duration_seconds=seconds, sample_rate=sr)
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))


def test_queries_without_and_with_daemon(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos", "tres"])
    _complete_by_hand(ds, "ds_0001")
    for running in (False, True):
        if running:
            start_daemon(ds)
        st = orjson.loads(cli("status", "--json", "--dataset", str(ds), check=True).stdout)
        assert (st["total"], st["completed"], st["pending"]) == (3, 1, 2)
        assert st["daemon"] is running
        listed = orjson.loads(cli("list", "--status", "pending", "--json", "--dataset", str(ds), check=True).stdout)
        assert [e["id"] for e in listed] == [2, 3]
        shown = orjson.loads(cli("show", "ds_0002", "--json", "--dataset", str(ds), check=True).stdout)
        assert shown["text"] == "dos"
        assert "uno" in cli("show", "1", "--dataset", str(ds), check=True).stdout
        one_line_error(cli("show", "99", "--dataset", str(ds)))
        assert cli("verify", "--dataset", str(ds)).stdout.strip().endswith("0 sync errors")


def test_verify_finds_the_seeds_desyncs(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a", "b", "c", "d"])
    _complete_by_hand(ds, "ds_0001")
    _complete_by_hand(ds, "ds_0002")
    (ds / "wavs" / "ds_0002.wav").unlink()                  # completed, audio missing
    sf.write(ds / "wavs" / "ds_0003.wav", np.zeros(100, dtype=np.int16), 22050)  # audio, pending
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 1
    assert r.stdout.strip().splitlines()[-1] == "2 sync errors"
    assert "ds_0002" in r.stdout and "ds_0003" in r.stdout


def test_export_ljspeech_and_jsonl(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["Hola | mundo", "dos"])
    _complete_by_hand(ds, "ds_0001", 0.75)
    out = tmp_path / "metadata.csv"
    cli("export", "--dataset", str(ds), "--out", str(out), check=True)
    rows = list(csv.reader(out.read_text(encoding="utf-8").splitlines(), delimiter="|", quoting=csv.QUOTE_NONE))
    assert rows == [["ds_0001", "Hola   mundo", "Hola   mundo"]]
    manifest = cli("export", "--dataset", str(ds), "--format", "jsonl", check=True).stdout
    item = orjson.loads(manifest.splitlines()[0])
    assert item["duration"] == 0.75 and Path(item["audio_filepath"]).exists()
    assert sf.info(item["audio_filepath"]).duration == pytest.approx(0.75, abs=1e-3)


def test_requeue_offline_and_failed(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a", "b"])
    doc = read_state(ds)
    doc["entries"][1].update(status="failed", attempts=3, error="boom")
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    r = cli("requeue", "--failed", "--dataset", str(ds))
    assert r.returncode == 0, r.stderr
    e = read_state(ds)["entries"][1]
    assert (e["status"], e["attempts"], e["error"]) == ("pending", 0, None)


def test_cli_runner_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["requeue", "--dataset", str(tmp_path)])
    assert r.exit_code == 2
    r = runner.invoke(main, ["status", "--dataset", str(tmp_path / "none")])
    assert r.exit_code == 2 and "no state" in r.output


def test_env_dataset(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["a"])
    r = cli("status", "--json", env={"STATESVC_DATASET": str(ds)}, check=True)
    assert orjson.loads(r.stdout)["total"] == 1


@pytest.mark.parametrize("daemon", [False, True])
def test_edit_offline_and_through_the_daemon(tmp_path: Path, start_daemon, daemon: bool) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    if daemon:
        start_daemon(ds)
    r = cli("edit", "--dataset", str(ds), "2", "--text", "dos, corregido")
    assert r.returncode == 0 and "entry 2 edited (revision 1), pending" in r.stdout, r.stderr
    e = orjson.loads(cli("show", "--dataset", str(ds), "#2", "--json", check=True).stdout)
    assert (e["text"], e["rev"], e["status"]) == ("dos, corregido", 1, "pending")
    for bad in (["9", "--text", "x"], ["1", "--text", "   "]):  # no such entry; an empty text
        r = cli("edit", "--dataset", str(ds), *bad)
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert read_state(ds)["entries"][0]["text"] == "uno"
