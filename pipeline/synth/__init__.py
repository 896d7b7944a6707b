"""Synthesizers and how a generator finds one: a builtin name, an entry point, or module:Class.

The contract a plugin meets: the constructor takes the --synth-opt values as
string keyword arguments; the instance has ``sample_rate: int`` and
``synthesize(text) -> numpy.ndarray`` (mono, float32 in [-1, 1] or int16), and
optionally ``synthesize_batch(texts) -> list[numpy.ndarray]``. It may declare
``deterministic: bool`` (a class attribute, or an instance attribute when it depends on the
options): True when the same text always gives the same audio, so a wrong take is flagged
rather than retaken (``is_deterministic`` reads it; absent means False).
It may also declare the class
attribute ``batch_cost = "longest"``: a batch costs what its longest text costs (padding), so the
generator groups texts of similar length into a batch (see ``pipeline.batches``); the default,
``"sum"``, keeps claim order. A model that runs out of GPU memory raises ``OutOfMemory`` (or lets
``torch.cuda.OutOfMemoryError`` or onnxruntime's error through): the generator splits the batch
and retries its texts, uncharged (see ``is_out_of_memory``).
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


BATCH_COSTS = ("sum", "longest")


class OutOfMemory(Exception):  # noqa: N818 -- the name plugins raise, as torch's OutOfMemoryError
    """A plugin's GPU (or accelerator) ran out of memory on this batch: not the texts' fault."""


OOM_WORDS = ("out of memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception in its chain of causes, is an accelerator running out of
    memory: ``torch.cuda.OutOfMemoryError`` (told by class name and module, torch is never
    imported here), ``OutOfMemory``, or a message saying "out of memory" or "failed to allocate
    memory" in any case (CUDA's and onnxruntime's wording). A host ``MemoryError`` is not one."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OutOfMemory):
            return True
        cls = type(e)
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.split(".")[0] == "torch":
            return True
        if not isinstance(e, MemoryError) and any(w in str(e).lower() for w in OOM_WORDS):
            return True
        e = e.__cause__ or e.__context__
    return False


def batch_cost(synth: object) -> str:
    """How a plugin's batch costs: "sum" (the default) or "longest" (padded to its longest text)."""
    cost = getattr(synth, "batch_cost", "sum")
    if cost not in BATCH_COSTS:
        raise PluginError(f"batch_cost {cost!r} is not one of {', '.join(BATCH_COSTS)}")
    return cost


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
    batch_cost(synth)
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
