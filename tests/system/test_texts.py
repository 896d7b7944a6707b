"""Texts with control characters are refused wherever texts come in (init, add, edit: the CLI, the
daemon's ops, the page), naming the line and the character; stored ones load and verify reports
them. Texts files are cut into lines at LF and CR LF only (reading a texts file alone:
tests/unit/test_read_texts.py)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import orjson
import pytest

from statesvc.client import Client, ServiceError
from tests.support.books import make_dataset, read_file, read_state
from tests.support.processes import cli

NUL_JSONL = ('{"text": "uno"}\n{"text": "dos"}\n{"text": "hola\\u0000 buenos dias"}\n{"text": "cuatro"}\n')


def one_line_error(r, *wanted: str) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in wanted:
        assert w in lines[0], lines[0]
    return lines[0]


def test_a_nul_in_a_jsonl_is_refused_at_init_naming_line_and_character(tmp_path: Path) -> None:
    texts = tmp_path / "texts.jsonl"
    texts.write_text(NUL_JSONL)
    ds = tmp_path / "ds"
    one_line_error(cli("init", "--dataset", str(ds), "--texts", str(texts)),
                   "texts.jsonl line 3: control character U+0000")
    assert not (ds / "generation_state.json").exists()


@pytest.mark.parametrize("daemon", [False, True])
def test_add_of_a_file_with_a_nul_adds_nothing(tmp_path: Path, start_daemon, daemon: bool) -> None:
    ds = make_dataset(tmp_path, ["primera"])
    if daemon:
        start_daemon(ds)
    texts = tmp_path / "more.jsonl"
    texts.write_text(NUL_JSONL)
    one_line_error(cli("add", "--dataset", str(ds), "--texts", str(texts)),
                   "more.jsonl line 3: control character U+0000")
    assert [e["text"] for e in read_state(ds)["entries"]] == ["primera"]


@pytest.mark.parametrize("daemon", [False, True])
def test_edit_with_a_control_character_is_refused(tmp_path: Path, start_daemon, daemon: bool) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    if daemon:
        start_daemon(ds)
    one_line_error(cli("edit", "--dataset", str(ds), "2", "--text", "dos\x1b[31m rojo"), "control character U+001B")
    assert [(e["text"], e["rev"]) for e in read_state(ds)["entries"]] == [("uno", 0), ("dos", 0)]


def test_the_daemon_refuses_add_and_edit_with_control_characters(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno"])
    start_daemon(ds)
    with Client.for_dataset(ds, timeout=5, retries=1) as c:
        with pytest.raises(ServiceError, match="item 2: control character U\\+0000"):
            c.call("add", items=[[None, "bien"], [None, "hola\x00 buenos dias"]], prefix="x")
        with pytest.raises(ServiceError, match="control character U\\+0085"):
            c.call("edit", key="1", text="uno\x85dos", req="r1")
        assert c.call("ping")["pid"]  # the daemon lives on
    assert [(e["text"], e["rev"]) for e in read_state(ds)["entries"]] == [("uno", 0)]


def test_the_page_refuses_an_edit_with_a_control_character(tmp_path: Path, start_daemon) -> None:
    from tests.support.page import DashboardProcess, request
    ds = make_dataset(tmp_path, ["uno"])
    start_daemon(ds)
    dash = DashboardProcess(ds)
    try:
        dash.ready()
        html = urllib.request.urlopen(dash.url + "/", timeout=10).read().decode()
        csrf = html.split('name="csrf" content="')[1].split('"')[0]
        name = read_state(ds)["entries"][0]["filename"]
        status, reply = request("POST", f"{dash.url}/api/edit", orjson.dumps({"filename": name, "text": "hola\x00 x"}),
                                {"X-CSRF-Token": csrf, "Content-Type": "application/json"})
        assert status == 400 and "control character U+0000" in str(reply), (status, reply)
        assert dash.proc.poll() is None
    finally:
        dash.stop()
    assert read_state(ds)["entries"][0]["text"] == "uno"


def test_stored_texts_with_control_characters_load_and_verify_reports_them(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    doc = read_file(ds)
    doc["entries"][1]["text"] = "dos\x00 tres"  # stored before the check (or by hand)
    (ds / "generation_state.json").write_bytes(orjson.dumps(doc))
    shown = orjson.loads(cli("show", "2", "--json", "--dataset", str(ds), check=True).stdout)
    assert shown["text"] == "dos\x00 tres"  # loaded as it is
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 1, (r.stdout, r.stderr)
    out = r.stdout.strip().splitlines()
    assert "2 ds_0002: text holds a control character U+0000" in out[0] and len(out) == 2, out
    assert out[-1] == "0 sync errors, 1 texts with control characters", out


# ---- lines end at LF and CR LF only ---------------------------------------------------------
def test_a_form_feed_in_a_one_line_csv_names_line_1_through_the_cli(tmp_path: Path) -> None:
    texts = tmp_path / "metadata.csv"
    texts.write_text("LJ001-0001|Printing\x0cin the only sense\n")
    one_line_error(cli("init", "--dataset", str(tmp_path / "ds"), "--texts", str(texts)),
                   "metadata.csv line 1: control character U+000C")


