"""A fast deterministic signal whose length follows the text: for tests and benchmarks."""

from __future__ import annotations

import zlib

import numpy as np


class Tone:
    """Options: ``sample_rate`` (default 22050), ``seconds_per_char`` (default 0.01)."""

    deterministic = True

    def __init__(self, sample_rate: str = "22050", seconds_per_char: str = "0.01"):
        self.sample_rate = int(sample_rate)
        self.seconds_per_char = float(seconds_per_char)
        self._t = np.arange(int(self.sample_rate * 60), dtype=np.float32) / self.sample_rate

    def synthesize(self, text: str) -> np.ndarray:
        n = max(1, int(len(text) * self.seconds_per_char * self.sample_rate))
        freq = 200 + zlib.crc32(text.encode()) % 400
        t = self._t[:n] if n <= len(self._t) else np.arange(n, dtype=np.float32) / self.sample_rate
        return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
