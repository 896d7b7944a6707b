"""Synthesizer plugins for tests: the shape of real models, misbehaving on purpose."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from pipeline.synth.tone import Tone


class Flaky(Tone):
    """Raises on texts containing RAISE; kills its own process (like a CUDA crash) on KILL."""

    def synthesize(self, text: str) -> np.ndarray:
        if "KILL" in text:
            os.kill(os.getpid(), signal.SIGKILL)
        if "RAISE" in text:
            raise RuntimeError(f"model cannot say {text!r}")
        return super().synthesize(text)


class Slow(Tone):
    """Takes ``delay`` seconds per text."""

    def __init__(self, delay: str = "0.05", **kw: str):
        super().__init__(**kw)
        self.delay = float(delay)

    def synthesize(self, text: str) -> np.ndarray:
        time.sleep(self.delay)
        return super().synthesize(text)


class Batched(Tone):
    """A fixed cost per call and a small cost per text; counts calls in a file for the test."""

    def __init__(self, calls_file: str, per_call: str = "0.02", **kw: str):
        super().__init__(**kw)
        self.calls_file = calls_file
        self.per_call = float(per_call)

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        time.sleep(self.per_call)
        with open(self.calls_file, "a") as f:
            f.write(f"{len(texts)}\n")
        return [super(Batched, self).synthesize(t) for t in texts]

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]
