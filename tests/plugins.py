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


class Chaotic(Tone):
    """Slow enough to be killed mid-run; raises on RAISE, kills itself on KILL; logs each synthesis.

    Each synthesis appends "pid text start end" to ``log`` so a test can check that no text
    was being synthesized by two processes at the same moment.
    """

    def __init__(self, log: str, delay: str = "0.02", **kw: str):
        super().__init__(**kw)
        self.log = log
        self.delay = float(delay)

    def synthesize(self, text: str) -> np.ndarray:
        start = time.time()
        if "KILL" in text:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.delay)
        if "RAISE" in text:
            raise RuntimeError(f"model cannot say {text!r}")
        audio = super().synthesize(text)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\t{text}\t{start:.6f}\t{time.time():.6f}\n".encode())
        finally:
            os.close(fd)
        return audio


class BatchedFlaky(Tone):
    """A batch model (synthesize_batch) that kills its own process when a batch holds a KILL text."""

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        if any("KILL" in t for t in texts):
            os.kill(os.getpid(), signal.SIGKILL)
        return [Tone.synthesize(self, t) for t in texts]

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]


class BadTakes(Slow):
    """Takes of the usual failures of generated speech, on cue: SILENCIO pads 2 s of silence before
    the speech, CORTADO stops early (a fifth of the take), MUDO is near-silent."""

    def synthesize(self, text: str) -> np.ndarray:
        audio = super().synthesize(text)
        if "SILENCIO" in text:
            return np.concatenate([np.zeros(2 * self.sample_rate, np.float32), audio])
        if "CORTADO" in text:
            return audio[:max(1, len(audio) // 5)]
        if "MUDO" in text:
            return audio * 0.001
        return audio


class Worsening:
    """A real voice (``inner``, default espeak; other options go to it) whose takes get worse: the
    first take of each text is cut to its first 40 %, every later one is silence. Takes are
    counted per text across processes in ``count=DIR`` (a marker file per take)."""

    deterministic = False

    def __init__(self, count: str, inner: str = "espeak", **options: str):
        from pipeline.synth import build
        self._inner = build(inner, options)
        self.sample_rate = self._inner.sample_rate
        self._count = count

    def synthesize(self, text: str) -> np.ndarray:
        import hashlib
        from pathlib import Path
        folder = Path(self._count) / hashlib.sha1(text.encode()).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            try:
                os.close(os.open(folder / str(n), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                n += 1
        good = np.asarray(self._inner.synthesize(text), dtype=np.float32)
        return good[: int(len(good) * 0.4)] if n == 0 else np.zeros(len(good), dtype=np.float32)
