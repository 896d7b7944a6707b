"""A whole run on a small disk: the free-space floor fits the disk, and a pause of the generators
for disk space shows on run-pipeline's progress line and on the page, not only in a child's log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from statesvc.health import GB, MB, judge, min_free_bytes, paused_line
from tests.support.books import read_state
from tests.support.page import answer
from tests.support.processes import BIN, ROOT, free_port, wait_for

ENV = {**os.environ, "PIPELINE_PYTHON": str(BIN / "python"), "PYTHONPATH": str(ROOT)}


def test_the_default_floor_fits_the_disk() -> None:
    assert min_free_bytes(96 * MB, None) == 96 * MB // 20          # 5 % of a small disk, not 1 GiB
    assert min_free_bytes(4000 * GB, None) == GB                   # 1 GiB of a big one, not 2 %
    assert min_free_bytes(96 * MB, None, checkpoint=20 * MB) == 20 * MB  # room for one more checkpoint
    assert min_free_bytes(4000 * GB, 100) == 100 * MB and min_free_bytes(96 * MB, 0) == 0  # as asked
    st = {"disk_free_bytes": 80 * MB, "pending": 0, "generating": 0}
    assert not judge(st, 0.0, 60, min_free_bytes(96 * MB, 100)).healthy
    assert judge(st, 0.0, 60, min_free_bytes(96 * MB, None)).healthy
    assert paused_line({"disk_pause": {"generators": 1, "free_bytes": 80 * MB, "floor_bytes": 100 * MB}}) == \
        "paused: 80 MB free, under the 100 MB floor; --min-free-mb"
    for odd in ({}, {"disk_pause": None}, {"disk_pause": []}, {"disk_pause": {"free_bytes": "x"}}, None):
        assert paused_line(odd) == ""  # no pause, a daemon older than the field, a malformed one


def start_run(ds: Path, texts: Path, out: Path, *args: str) -> subprocess.Popen:
    with open(out, "wb") as f:
        return subprocess.Popen([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(ds), "--texts", str(texts),
                                 "--synth", "tone", "--reconcile-interval", "1", *args],
                                stdout=f, stderr=subprocess.STDOUT, env=ENV)


def stop(run: subprocess.Popen) -> None:
    if run.poll() is None:
        run.kill()
        run.wait()


@pytest.fixture
def small_disk(tmp_path: Path, small_fs):
    """A 100 MB filesystem holding the whole dataset, and 20 texts for it."""
    ds = tmp_path / "ds"
    small_fs(ds, "100m")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"Frase número {i} para la voz nueva.\n" for i in range(20)), encoding="utf-8")
    return ds, texts


@pytest.mark.timeout(120)
def test_run_pipeline_completes_on_a_100_mb_disk_with_the_default_floor(tmp_path: Path, small_disk) -> None:
    ds, texts = small_disk
    out = tmp_path / "run.out"
    run = start_run(ds, texts, out)
    try:
        assert run.wait(90) == 0, out.read_text()
    finally:
        stop(run)
    assert "finished: completed 20/20" in out.read_text(), out.read_text()
    assert "paused" not in out.read_text()


@pytest.mark.timeout(120)
def test_a_pause_for_disk_space_shows_on_the_console_and_the_page_until_space_returns(
        tmp_path: Path, small_disk, page) -> None:
    ds, texts = small_disk
    junk = ds / "junk"
    junk.write_bytes(b"\0" * (60 * MB))  # about 40 MB left: under a 50 MB floor
    out, port = tmp_path / "run.out", free_port()
    run = start_run(ds, texts, out, "--min-free-mb", "50", "--dashboard", str(port))
    try:
        line = re.compile(r"paused: \d+ MB free, under the 50 MB floor; --min-free-mb")
        wait_for(lambda: line.search(out.read_text()), 60, "the paused line on the console")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: line.search(answer(f"{url}/api/status").get("paused") or ""), 30,
                 "the pause in the page's status")
        page.goto(url + "/")
        page.wait_for_function("() => { const p = document.querySelector('[data-paused]');"
                               " return !p.hidden && /under the 50 MB floor/.test(p.textContent); }")
        assert read_state(ds)["completed"] == 0  # paused: nothing claimed, nothing charged
        junk.unlink()  # space returns: the generators resume, the page drops the line as it goes
        page.wait_for_function("() => document.querySelector('[data-paused]').hidden")
        wait_for(lambda: "stays up for review" in out.read_text(), 60, "the run to finish")
        run.send_signal(signal.SIGINT)
        assert run.wait(60) == 0, out.read_text()
    finally:
        stop(run)
    assert "finished: completed 20/20" in out.read_text(), out.read_text()
    assert all(e["attempts"] == 1 for e in read_state(ds)["entries"])


def test_statesvc_health_uses_the_same_floor_on_a_small_disk(small_disk, start_daemon) -> None:
    ds, texts = small_disk
    r = subprocess.run([str(BIN / "statesvc"), "init", "--dataset", str(ds), "--texts", str(texts)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    start_daemon(ds)
    health = [str(BIN / "statesvc"), "health", "--dataset", str(ds)]
    r = subprocess.run(health, capture_output=True, text=True)  # the default floor: 5 MB of 100
    assert r.returncode == 0 and r.stdout.startswith("healthy"), (r.stdout, r.stderr)
    (ds / "junk").write_bytes(b"\0" * (97 * MB))  # under 5 MB left
    r = subprocess.run(health, capture_output=True, text=True)
    assert r.returncode == 1 and "under the 5 MB floor" in r.stderr, (r.stdout, r.stderr)
