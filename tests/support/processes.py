"""Real processes of ours for the tests: the console scripts, a daemon's handle, polling with a deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def wait_for(cond: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    """Poll ``cond`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cli(*args: str, env: dict | None = None, check: bool = False, timeout: float = 60,
        tool: str = "statesvc") -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """A real `statesvc serve` subprocess (the test's handle on it; the daemon itself is
    ``statesvc.daemon.Daemon``)."""

    def __init__(self, dataset: Path, *args: str, env: dict | None = None):
        self.dataset = dataset
        self.log = dataset.parent / f"serve-{time.monotonic_ns()}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen([str(BIN / "statesvc"), "serve", "--dataset", str(dataset), *args],
                                     stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 15.0) -> DaemonProcess:
        from statesvc.client import Client, Unavailable
        from statesvc.endpoints import running

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            rec = running(self.dataset)
            if not rec or rec.get("pid") != self.proc.pid:
                return False
            c = Client(rec["endpoint"], timeout=0.5, retries=1)
            try:
                return c.call("ping")["pid"] == self.proc.pid
            except Unavailable:
                return False
            finally:
                c.close()
        wait_for(ready, timeout, "daemon ready")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self._logf.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")
