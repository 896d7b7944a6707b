"""ruff (style, complexity limit) over the whole project."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists() and shutil.which("ruff") is None:
        pytest.skip("ruff is not installed")
    r = subprocess.run([str(ruff if ruff.exists() else "ruff"), "check", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
