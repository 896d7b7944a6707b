"""Whether a checked take says its text: the daemon's judgement, so every checker, the CLI and
the page agree.

Pure and incremental: a ``Judge`` keeps two fixed-size histograms (CER of the checks so far, and
seconds per character of the checked takes), updated once per check; a judgement costs the
histograms' size, never the dataset's, so a million entries are never rescanned.

A take is wrong when any of these holds:

* the checker found it silent (``silent``: no window of sound, cheap, before ASR);
* its CER is over the threshold: ``--max-cer`` when given, else ``max(FLOOR_CER, median + K *
  robust deviation)`` of the dataset's checks so far (the floor alone until ``MIN_CHECKS``). A
  robotic voice that a recognizer hears badly (espeak: good takes 0.06-0.45) then keeps its good
  takes; a voice it hears well still has a floor that only a take reading half its characters
  wrong crosses;
* its seconds per character are far off the voice's own over every take of the dataset (checked
  or not: generators run ahead of checkers, so the fit is there before the first check; the
  same rule as the page's duration fit, ``statesvc.takes``: ``SPREAD_SIGMAS`` robust deviations,
  never tighter than ``MIN_RATE_RATIO`` either way; only with ``MIN_CHECKS`` takes and texts
  of at least ``MIN_RATE_CHARS`` characters): a recognizer papers over a repeated tail or a cut
  that a duration shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .takes import MAD_SCALE, MIN_RATE_CHARS, SPREAD_SIGMAS

__all__ = ["FLOOR_CER", "K", "MIN_CHECKS", "Judge", "Judgement"]

FLOOR_CER = 0.5   # half the characters wrong: no good take of any voice we measured comes near
K = SPREAD_SIGMAS  # "far above": as many robust deviations as the duration fit allows
MIN_CHECKS = 20    # fewer checks and the median says little: the floor alone
# A take this far off its voice's seconds per character (either way) is off however consistent the
# voice is: a phrase said again, or a cut, moves a take by more than a quarter; natural variation of
# one voice over texts of 10+ characters stays within (the page's gentler 1.5x only flags).
MIN_RATE_RATIO = 1.25
CER_BIN = 0.005    # histogram resolution: a threshold within half a percent
CER_BINS = 800     # CER 0..4 (a runaway transcript scores more: counted in the last bin)
RATE_BIN = 0.02    # of log(seconds per character)
RATE_LO, RATE_BINS = math.log(0.001), 800  # 1 ms to ~9 s per character


@dataclass(frozen=True)
class Judgement:
    wrong: bool
    reason: str | None   # why it is wrong, in words; None when it is not
    threshold: float     # the CER threshold applied


class _Histogram:
    """Counts of values in fixed bins: median and median absolute deviation in O(bins)."""

    def __init__(self, lo: float, width: float, bins: int):
        self.lo, self.width, self.counts, self.n = lo, width, np.zeros(bins, np.int64), 0

    def _bin(self, v: float) -> int:
        return min(max(int((v - self.lo) / self.width), 0), len(self.counts) - 1)

    def add(self, v: float, sign: int = 1) -> None:
        self.counts[self._bin(v)] += sign
        self.n += sign

    def _quantile_of(self, counts: np.ndarray, n: int, centre: np.ndarray) -> float:
        i = int(np.searchsorted(np.cumsum(counts), (n + 1) // 2))
        return float(centre[min(i, len(centre) - 1)])

    def median_mad(self) -> tuple[float, float]:
        centres = self.lo + (np.arange(len(self.counts)) + 0.5) * self.width
        med = self._quantile_of(self.counts, self.n, centres)
        dev = np.abs(centres - med)
        order = np.argsort(dev, kind="stable")
        mad = self._quantile_of(self.counts[order], self.n, dev[order])
        return med, max(mad, self.width / 2)


class Judge:
    """The judgement of checked takes, and what it has learnt of the dataset so far."""

    def __init__(self, max_cer: float | None = None):
        self.max_cer = max_cer
        self.cers = _Histogram(0.0, CER_BIN, CER_BINS)
        self.rates = _Histogram(RATE_LO, RATE_BIN, RATE_BINS)

    # ---- what it learns: one call per check that counts (and its undoing when a take leaves) ----
    def learn(self, cer: float | None, seconds: float | None, chars: int, sign: int = 1) -> None:
        """``cer``: a check (of a current take); ``seconds``/``chars``: a take of the dataset."""
        if cer is not None:
            self.cers.add(cer, sign)
        if seconds and chars >= MIN_RATE_CHARS:
            self.rates.add(math.log(seconds / chars), sign)

    def threshold(self) -> float:
        if self.max_cer is not None:
            return self.max_cer
        if self.cers.n < MIN_CHECKS:
            return FLOOR_CER
        med, mad = self.cers.median_mad()
        return round(max(FLOOR_CER, med + K * MAD_SCALE * mad), 4)

    def judge(self, cer: float | None, error: str | None, silent: bool, seconds: float | None,
              chars: int) -> Judgement:
        """Judge one check (before ``learn`` of it)."""
        limit = self.threshold()
        if error is not None:
            return Judgement(True, f"the recognizer failed: {error}", limit)
        if silent:
            return Judgement(True, "silent", limit)
        if cer is not None and cer > limit:
            return Judgement(True, f"CER {cer:.2f} over {limit:.2f}", limit)
        if seconds and chars >= MIN_RATE_CHARS and self.rates.n >= MIN_CHECKS:
            med, mad = self.rates.median_mad()
            spread = max(SPREAD_SIGMAS * MAD_SCALE * mad, math.log(MIN_RATE_RATIO))
            off = math.log(seconds / chars) - med
            if abs(off) > spread:
                return Judgement(True, f"{seconds / chars:.3f} s per character, the voice's is "
                                       f"{math.exp(med):.3f}" + (" (cut short?)" if off < 0 else " (repeats?)"),
                                 limit)
        return Judgement(False, None, limit)
