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


class GpuSeen(Tone):
    """Records, at load, which GPU its process was given: one line "pid CUDA_VISIBLE_DEVICES" in
    ``log``. Synthesizes nothing before ``expect`` processes have recorded theirs (up to 60 s), so a
    run lasts until every generator has loaded."""

    def __init__(self, log: str, expect: str = "1", **kw: str):
        super().__init__(**kw)
        self.log, self.expect = log, int(expect)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\n")

    def synthesize(self, text: str) -> np.ndarray:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.log) as f:
                if len(f.readlines()) >= self.expect:
                    break
            time.sleep(0.01)
        return super().synthesize(text)


class OomAbove(Tone):
    """A GPU model that runs out of memory on batches above ``limit`` texts during its first
    ``refuse`` calls, and on any batch holding a HUGE text (in torch's words, as a RuntimeError).
    Logs each call: "size ok|oom"."""

    def __init__(self, log: str, limit: str = "4", refuse: str = "10", **kw: str):
        super().__init__(**kw)
        self.log, self.limit, self.refuse, self.calls = log, int(limit), int(refuse), 0

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        from pipeline.synth import OutOfMemory
        self.calls += 1
        huge = any("HUGE" in t for t in texts)
        over = len(texts) > self.limit and self.calls <= self.refuse
        with open(self.log, "a") as f:
            f.write(f"{len(texts)} {'oom' if huge or over else 'ok'}\n")
        if huge:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")
        if over:
            raise OutOfMemory(f"{len(texts)} texts do not fit")
        return [Tone.synthesize(self, t) for t in texts]

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]


class Padded(Tone):
    """A model that pads a batch to its longest text (``batch_cost = "longest"``); logs each batch's
    texts, one batch a line, joined by "|"."""

    batch_cost = "longest"

    def __init__(self, log: str, per_call: str = "0.01", **kw: str):
        super().__init__(**kw)
        self.log, self.per_call = log, float(per_call)

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        time.sleep(self.per_call)
        with open(self.log, "a") as f:
            f.write("|".join(texts) + "\n")
        return [Tone.synthesize(self, t) for t in texts]

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]


class _HeldAudio:
    """Audio whose conversion (in the generator's writer thread) waits while ``gate`` exists, after
    saying so in ``mark``: a take held mid-write."""

    def __init__(self, audio: np.ndarray, gate: str, mark: str):
        self.audio, self.gate, self.mark = audio, gate, mark

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        with open(self.mark, "w") as f:
            f.write(str(os.getpid()))
        while os.path.exists(self.gate):
            time.sleep(0.01)
        return self.audio


class HeldWriter(Tone):
    """While the file ``gate`` exists: the take of a text holding WRITEHOLD is held mid-write (its
    writer waits), and a batch holding SYNTHHOLD waits in synthesis (while ``synth_gate`` exists,
    when given); each says so first in ``DIR/writing`` and ``DIR/synthesizing`` (the pid). A text
    holding KILL kills the process at once, like a CUDA crash."""

    def __init__(self, gate: str, marks: str, synth_gate: str = "", **kw: str):
        super().__init__(**kw)
        self.gate, self.marks, self.synth_gate = gate, marks, synth_gate or gate

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        if any("KILL" in t for t in texts):
            os.kill(os.getpid(), signal.SIGKILL)
        if any("SYNTHHOLD" in t for t in texts) and os.path.exists(self.synth_gate):
            with open(os.path.join(self.marks, "synthesizing"), "w") as f:
                f.write(str(os.getpid()))
            while os.path.exists(self.synth_gate):
                time.sleep(0.01)
        out: list = [Tone.synthesize(self, t) for t in texts]
        if os.path.exists(self.gate):
            out = [_HeldAudio(a, self.gate, os.path.join(self.marks, "writing")) if "WRITEHOLD" in t else a
                   for t, a in zip(texts, out, strict=True)]
        return out

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]

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
