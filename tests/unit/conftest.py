"""The unit tests start none of our processes: a test here that starts the daemon, a generator, a
run or a browser fails, naming what it started (such a test belongs in tests/system/)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.processes import BIN, ROOT

OURS = {str(BIN / "statesvc"), str(BIN / "pipeline"), str(ROOT / "bin" / "run-pipeline")}


def program_of(args: object) -> str:
    """The program a ``subprocess.Popen(args, ...)`` starts."""
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")  # type: ignore[call-overload]
    words = os.fsdecode(first).split()
    return words[0] if words else ""


@pytest.fixture(autouse=True)
def no_process_of_ours(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen, args: object, *rest: object, **kw: object) -> None:
        program = program_of(args)
        if os.path.abspath(program) in OURS or "chromium" in os.path.basename(program):
            raise AssertionError(f"a unit test started {program}: tests that start processes go in tests/system/")
        real(self, args, *rest, **kw)  # type: ignore[arg-type]
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield
