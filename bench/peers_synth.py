"""The synthesizer every system of bench/peers.py runs: the cost shape of a GPU model, and a log of its calls.

Each batch sleeps ``per_call + per_text * n`` seconds (the model) and returns tones (pipeline's
``tone``). Before and after each call it appends one JSON line to ``log`` (one ``write`` on an
O_APPEND file: lines of several processes do not interleave): ``{"pid", "t0"}`` when a call
starts, ``{"pid", "t0", "t1", "texts"}`` when it ends. bench/peers.py reads it for the busy
fraction, for the process to kill mid-synthesis, and for texts synthesized more than once.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from pipeline.synth.tone import Tone


class Logged(Tone):
    """Options: ``log`` (path), ``per_call`` and ``per_text`` seconds (defaults 0.3 and 0.05)."""

    def __init__(self, log: str, per_call: str = "0.3", per_text: str = "0.05", **kw: str):
        super().__init__(**kw)
        self.per_call, self.per_text = float(per_call), float(per_text)
        self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _log(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        t0 = time.time()
        self._log({"pid": os.getpid(), "t0": t0})
        time.sleep(self.per_call + self.per_text * len(texts))
        out = [Tone.synthesize(self, t) for t in texts]
        self._log({"pid": os.getpid(), "t0": t0, "t1": time.time(), "texts": list(texts)})
        return out

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]
