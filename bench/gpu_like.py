"""A synthesizer with the cost shape of a GPU model: a fixed cost per call, a small cost per text."""

from __future__ import annotations

import time

import numpy as np

from pipeline.synth.tone import Tone


class GpuLike(Tone):
    """Options: ``per_call`` seconds (default 0.03), ``per_text`` seconds (default 0.001)."""

    def __init__(self, per_call: str = "0.03", per_text: str = "0.001", **kw: str):
        super().__init__(**kw)
        self.per_call, self.per_text = float(per_call), float(per_text)

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        time.sleep(self.per_call + self.per_text * len(texts))
        return [Tone.synthesize(self, t) for t in texts]

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]
