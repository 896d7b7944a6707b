"""A synthesizer with the cost shape of a GPU model: a fixed cost per call, a small cost per text.

``GpuLike`` costs ``per_call + per_text * n`` seconds a batch of n; ``PaddedGpuLike`` pads every
text to the batch's longest, as real models do: ``per_call + per_char * longest * n``, and says
so (``batch_cost = "longest"``); ``PaddedInClaimOrder`` costs the same but does not say so, so
its batches are formed in claim order. With ``log=FILE`` each call appends "pid start end n"
(time.time(), around the whole call), from which bench/gpu_busy.py computes the busy fraction.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipeline.synth.tone import Tone


class GpuLike(Tone):
    """Options: ``per_call`` seconds (default 0.03), ``per_text`` seconds (default 0.001), ``log``."""

    def __init__(self, per_call: str = "0.03", per_text: str = "0.001", log: str = "", **kw: str):
        super().__init__(**kw)
        self.per_call, self.per_text = float(per_call), float(per_text)
        self.log = log

    def cost(self, texts: list[str]) -> float:
        return self.per_call + self.per_text * len(texts)

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        start = time.time()
        time.sleep(self.cost(texts))
        out = [Tone.synthesize(self, t) for t in texts]
        if self.log:
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {start:.6f} {time.time():.6f} {len(texts)}\n".encode())
            finally:
                os.close(fd)
        return out

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]


class PaddedInClaimOrder(GpuLike):
    """Options as GpuLike, plus ``per_char`` seconds (default 0.00005) per character of the padded batch."""

    def __init__(self, per_char: str = "0.00005", **kw: str):
        super().__init__(**kw)
        self.per_char = float(per_char)

    def cost(self, texts: list[str]) -> float:
        return self.per_call + self.per_char * max(len(t) for t in texts) * len(texts)


class PaddedGpuLike(PaddedInClaimOrder):
    batch_cost = "longest"
