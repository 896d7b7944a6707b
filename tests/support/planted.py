"""Bad takes planted among good ones, the way a neural voice fails: another sentence read, the take
cut short, silence, a tail said twice. Shared by the model tests and the checker's end-to-end tests.

Pure functions over audio (float32 mono), plus ``Planted``, a synthesizer plugin that wraps a real
voice and plants a chosen kind of bad take for chosen texts (``--synth tests.support.planted:Planted``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ES_TEXTS = [t for t in (ROOT / "examples" / "texts_es.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
EN_TEXTS = [t for t in (ROOT / "examples" / "texts_en.txt").read_text(encoding="utf-8").splitlines() if t.strip()]
KINDS = ("other", "truncated", "silence", "repeat")


def other_text(texts: list[str], text: str) -> str:
    """Another text of the list, the one half the list away (never ``text`` itself)."""
    i = texts.index(text) if text in texts else 0
    for step in range(len(texts) // 2, len(texts) + len(texts) // 2):
        cand = texts[(i + step) % len(texts)]
        if cand != text:
            return cand
    raise ValueError("no other text to read")


def truncated(audio: np.ndarray, fraction: float = 0.4) -> np.ndarray:
    """The first ``fraction`` of the take: the voice stopped early."""
    return np.asarray(audio[: max(1, int(len(audio) * fraction))])


def silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """As long as the take, nothing in it but a faint hiss (-70 dBFS), as a dead take sounds."""
    rng = np.random.default_rng(len(audio))
    return (rng.standard_normal(len(audio)) * 10 ** (-70 / 20)).astype(np.float32)


def repeated_tail(audio: np.ndarray, fraction: float = 0.4, times: int = 2) -> np.ndarray:
    """The take, then its last ``fraction`` ``times`` more: the voice looped on its last phrase
    (a single repeat of a short phrase hides in a duration's scatter; only the recognizer can
    hear it, and tiny.en does where base on espeak does not)."""
    a = np.asarray(audio)
    return np.concatenate([a] + [a[len(a) - int(len(a) * fraction):]] * times)


def plant(kind: str, audio: np.ndarray, sample_rate: int, other_audio: np.ndarray | None = None) -> np.ndarray:
    """A bad take of ``kind`` (one of KINDS) made from the good ``audio`` (and, for "other", the audio
    of another text)."""
    if kind == "other":
        if other_audio is None:
            raise ValueError("kind 'other' needs the other text's audio")
        return np.asarray(other_audio)
    if kind == "truncated":
        return truncated(audio)
    if kind == "silence":
        return silence(audio, sample_rate)
    if kind == "repeat":
        return repeated_tail(audio)
    raise ValueError(f"unknown planted kind {kind!r} (known: {', '.join(KINDS)})")


class Planted:
    """A real voice that plants bad takes: ``inner`` (a synthesizer name: espeak, piper...),
    ``plan`` (a JSON file: {text: kind}), ``texts`` (the file of texts "other" picks from; default
    the texts in the plan), ``once=DIR`` (plant only the first take of each planted text, across
    processes: a marker file per text in DIR, created exclusively; a retake is then good), and any
    other option goes to the inner voice."""

    def __init__(self, inner: str = "espeak", plan: str = "", texts: str = "", once: str = "", **options: str):
        from pipeline.synth import build
        self._inner = build(inner, options)
        self.sample_rate = self._inner.sample_rate
        self._plan: dict[str, str] = json.loads(Path(plan).read_text(encoding="utf-8")) if plan else {}
        self._texts = ([t for t in Path(texts).read_text(encoding="utf-8").splitlines() if t.strip()]
                       if texts else list(self._plan))
        self._once = Path(once) if once else None
        # planting makes the same text give different audio: never claim determinism
        self.deterministic = False

    def synthesize(self, text: str) -> np.ndarray:
        good = self._inner.synthesize(text)
        kind = self._plan.get(text)
        if kind is None or not self._first_time(text):
            return good
        other = self._inner.synthesize(other_text(self._texts, text)) if kind == "other" else None
        return plant(kind, np.asarray(good, dtype=np.float32), self.sample_rate, other)

    def _first_time(self, text: str) -> bool:
        if self._once is None:
            return True
        import hashlib
        import os
        self._once.mkdir(parents=True, exist_ok=True)
        try:
            marker = self._once / hashlib.sha1(text.encode()).hexdigest()
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True
