"""Synthesizers and how a generator finds one: a builtin name, an entry point, or module:Class.

The contract a plugin meets: the constructor takes the --synth-opt values as
string keyword arguments; the instance has ``sample_rate: int`` and
``synthesize(text) -> numpy.ndarray`` (mono, float32 in [-1, 1] or int16), and
optionally ``synthesize_batch(texts) -> list[numpy.ndarray]``. It may declare
``deterministic: bool`` (a class attribute, or an instance attribute when it depends on the
options): True when the same text always gives the same audio, so a wrong take is flagged
rather than retaken (``is_deterministic`` reads it; absent means False).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

GROUP = "pipeline.synthesizers"
BUILTIN = {"espeak": "pipeline.synth.espeak:Espeak", "piper": "pipeline.synth.piper:Piper",
           "tone": "pipeline.synth.tone:Tone"}


class Synthesizer(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray: ...


def is_deterministic(synth: object) -> bool:
    """Whether ``synth`` says the same text always gives the same audio (False unless it says so)."""
    return getattr(synth, "deterministic", False) is True


class PluginError(Exception):
    """The synthesizer cannot be found or built; one line says why."""


def resolve(spec: str) -> type:
    """The synthesizer class for a name (builtin or entry point) or ``package.module:Class``."""
    target = BUILTIN.get(spec)
    if target is None and ":" not in spec:
        from importlib.metadata import entry_points  # 20 ms: only for a plugin's name
        found = [ep for ep in entry_points(group=GROUP) if ep.name == spec]
        if not found:
            names = sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=GROUP)})
            raise PluginError(f"unknown synthesizer {spec!r} (known: {', '.join(names)})")
        target = found[0].value
    module, _, attr = (target or spec).partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load synthesizer {spec!r}: {exc}") from None
    return obj


def build(spec: str, options: dict[str, str]) -> Synthesizer:
    cls = resolve(spec)
    try:
        synth = cls(**options)
    except TypeError as exc:
        raise PluginError(f"synthesizer {spec!r} rejected its options: {exc}") from None
    sr = getattr(synth, "sample_rate", None)
    if not isinstance(sr, int) or sr <= 0:
        raise PluginError(f"synthesizer {spec!r} has no positive integer sample_rate")
    return synth


def to_pcm16(audio: object) -> np.ndarray:
    """Check a synthesizer's output and turn it into mono int16 samples."""
    import numpy as np  # here: the supervisor imports this package only to check a name
    a = np.asarray(audio)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"synthesizer returned shape {a.shape}; expected non-empty mono audio")
    if a.dtype == np.int16:
        return a
    if a.dtype.kind != "f":
        raise ValueError(f"synthesizer returned {a.dtype}; expected float32 or int16")
    if not np.isfinite(a).all():
        raise ValueError("synthesizer returned NaN or infinite samples")
    return (np.clip(a, -1.0, 1.0) * 32767).astype(np.int16)
