"""The synthesizer every system of bench/peers.py runs: the cost shape of a GPU model, and a log of its calls.

Each batch sleeps ``per_call + per_text * n`` seconds (the model) and returns tones (pipeline's
``tone``). Before and after each call it appends one JSON line to ``log`` (one ``write`` on an
O_APPEND file: lines of several processes do not interleave): ``{"pid", "t0"}`` when a call
starts, ``{"pid", "t0", "t1", "texts"}`` when it ends. bench/peers.py reads it for the busy
fraction and for texts synthesized more than once.

With ``die_at=N`` (and ``marker``, a path that makes it happen once in the whole job) the first
process to start a batch after N texts have been synthesized dies by SIGKILL (a CUDA crash):
``die_in=synthesis`` halfway through that batch's synthesis, ``die_in=write`` ``die_delay``
seconds (default 0.005) after returning that batch, while its wavs are being written. It logs
``{"pid", "killed", "t"}`` first.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np

from pipeline.synth.tone import Tone


class Logged(Tone):
    """Options: ``log`` (path), ``per_call`` and ``per_text`` seconds (defaults 0.3 and 0.05)."""

    def __init__(self, log: str, per_call: str = "0.3", per_text: str = "0.05", die_at: str = "",
                 die_in: str = "synthesis", die_delay: str = "0.005", marker: str = "", **kw: str):
        super().__init__(**kw)
        self.per_call, self.per_text = float(per_call), float(per_text)
        self.log = log
        self.die_at, self.die_in, self.die_delay, self.marker = die_at, die_in, float(die_delay), marker
        self._fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _dies_now(self) -> bool:
        """True once in the whole job: the first call after ``die_at`` texts were synthesized."""
        if not self.die_at or os.path.exists(self.marker):
            return False
        with open(self.log, encoding="utf-8") as f:
            done = sum(len(json.loads(line).get("texts", ())) for line in f if line.endswith("}\n"))
        if done < int(self.die_at):
            return False
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def _die(self) -> None:
        self._log({"pid": os.getpid(), "killed": self.die_in, "t": time.time()})
        os.kill(os.getpid(), signal.SIGKILL)

    def _log(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode())

    def synthesize_batch(self, texts: list[str]) -> list[np.ndarray]:
        dies = self._dies_now()
        t0 = time.time()
        self._log({"pid": os.getpid(), "t0": t0})
        seconds = self.per_call + self.per_text * len(texts)
        if dies and self.die_in == "synthesis":
            time.sleep(seconds / 2)
            self._die()
        time.sleep(seconds)
        out = [Tone.synthesize(self, t) for t in texts]
        self._log({"pid": os.getpid(), "t0": t0, "t1": time.time(), "texts": list(texts)})
        if dies:  # die_in == "write": while the caller writes what this returns
            threading.Timer(self.die_delay, self._die).start()
        return out

    def synthesize(self, text: str) -> np.ndarray:
        return self.synthesize_batch([text])[0]
