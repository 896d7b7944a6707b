"""The review page for the tests: a real `statesvc dashboard` process, its HTTP API, Chromium, and
generators feeding a run it shows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from tests.support.processes import BIN, ROOT, free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # tests.support.plugins importable by the generators
SLOW_SYNTH = ["--synth", "tests.support.plugins:BadTakes", "--synth-opt", "delay=0.08",
              "--synth-opt", "seconds_per_char=0.05"]


class DashboardProcess:
    """A real `statesvc dashboard` subprocess."""

    def __init__(self, dataset: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = dataset.parent / f"dashboard-{self.port}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(BIN / "statesvc"), "dashboard", "--dataset", str(dataset),
                                          "--port", str(self.port), *args], stdout=out, stderr=subprocess.STDOUT,
                                         env=ENV)

    def ready(self, headers: dict | None = None) -> DashboardProcess:
        def up() -> bool:
            assert self.proc.poll() is None, f"dashboard exited:\n{self.log.read_text()}"
            try:
                return not get(f"{self.url}/api/status", headers)[1].get("loading", True)
            except OSError:
                return False
        wait_for(up, 20, "the dashboard to answer")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    return request("GET", url, None, headers)


def answer(url: str) -> dict:
    """The JSON at ``url``, or {} while nothing listens there yet."""
    try:
        return get(url)[1]
    except OSError:
        return {}


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return status, {"raw": raw[:200]}


def start_generator(ds: Path, procs: list[subprocess.Popen], *extra: str, synth: list[str] = SLOW_SYNTH
                    ) -> subprocess.Popen:
    with open(ds.parent / f"gen-{len(procs)}.log", "wb") as log:
        p = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), *synth, *extra],
                             stdout=log, stderr=subprocess.STDOUT, env=ENV)
    procs.append(p)
    return p
