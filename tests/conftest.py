"""The fixtures: real daemon, dashboard and generator processes stopped after each test, Chromium,
small real filesystems, the packaged speech models. The helpers they use are in tests/support/."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.disks import Tmpfs, Unmountable
from tests.support.page import CHROMIUM, CHROMIUM_ARGS, DashboardProcess
from tests.support.processes import DaemonProcess


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def start_daemon(daemons: list[DaemonProcess]) -> Callable[..., DaemonProcess]:
    def start(dataset: Path, *args: str, env: dict | None = None, ready: bool = True) -> DaemonProcess:
        d = DaemonProcess(dataset, *args, env=env)
        daemons.append(d)
        return d.wait_ready() if ready else d
    return start


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, str], Tmpfs]]:
    """Mount a real filesystem of a given size (a tmpfs, ``small_fs(folder, "2m")``) on a folder, to
    fill it to the last byte (``.fill()``) or grow it (``.resize("50m")``); unmounted after the test.
    Skips the test without root or where mounts are not allowed."""
    mounted: list[Tmpfs] = []

    def mount(point: Path, size: str) -> Tmpfs:
        try:
            disk = Tmpfs(point, size)
        except Unmountable as exc:
            pytest.skip(str(exc))
        mounted.append(disk)
        return disk
    yield mount
    for disk in reversed(mounted):
        disk.umount()


@pytest.fixture
def start_dashboard() -> Iterator[Callable[..., DashboardProcess]]:
    """Start a dashboard on a dataset and wait until it has loaded it; stopped after the test."""
    started: list[DashboardProcess] = []

    def start(dataset: Path, *args: str, headers: dict | None = None) -> DashboardProcess:
        d = DashboardProcess(dataset, *args)
        started.append(d)
        return d.ready(headers)
    yield start
    for d in started:
        d.stop()


@pytest.fixture
def generators(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Generator processes a test starts (``tests.support.page.start_generator``), killed after it."""
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium through Playwright, one per test module."""
    if not os.path.exists(CHROMIUM):
        # A headline test: without its browser it fails loudly rather than skipping unseen.
        pytest.fail("no chromium at /usr/bin/chromium: apt-get install chromium (bin/run-tests does it as root)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A page in its own browser context; the test fails if the page raised."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="session")
def asr_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The packaged Whisper models as folders, {"base": PATH, "tiny.en": PATH}: what a user passes
    as ``--asr-model PATH`` after ``pipeline asr-model --from-package NAME``. Built once a session
    in a temp cache (not the user's ~/.cache)."""
    from pipeline.asr import packaged_model
    cache = tmp_path_factory.mktemp("asr-cache")
    return {name: packaged_model(name, cache) for name in ("base", "tiny.en")}
