"""Whether a checked take says its text: the daemon's judgement, so every checker, the CLI and
the page agree.

Pure and incremental: a ``Judge`` keeps two fixed-size histograms (CER of the checks so far, and
seconds per character of the checked takes), updated once per check; a judgement costs the
histograms' size, never the dataset's, so a million entries are never rescanned.

A take is wrong when any of these holds:

* the checker found it silent (``silent``: no window of sound, cheap, before ASR);
* its CER is over the threshold: ``--max-cer`` when given, else ``max(FLOOR_CER, median + K *
  robust deviation)`` of the dataset's checks so far (the floor alone until ``MIN_CHECKS``), never
  over ``CEILING_CER``: a take reading another sentence gets most of its characters wrong (0.69
  and up measured with both voices and models), and a dataset with many wrong takes must not lift
  the threshold over them (half the takes wrong lifted median + 4 deviations past 2). A
  robotic voice that a recognizer hears badly (espeak: good takes 0.06-0.45) then keeps its good
  takes; a voice it hears well still has a floor that only a take reading half its characters
  wrong crosses;
* its seconds per character are far off the voice's own over every take of the dataset (checked
  or not: generators run ahead of checkers, so the fit is there before the first check; the
  same rule as the page's duration fit, ``review.flags``: ``K`` robust deviations,
  never tighter than ``MIN_RATE_RATIO`` either way; only with ``MIN_CHECKS`` takes and texts
  of at least ``MIN_RATE_CHARS`` characters): a recognizer papers over a repeated tail or a cut
  that a duration shows.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

__all__ = ["CEILING_CER", "FLOOR_CER", "K", "MIN_CHECKS", "Judge", "Judgement"]

# No numpy here: every statesvc command imports the state, and so this module.
MAD_SCALE = 1.4826  # makes the MAD a consistent estimate of a normal standard deviation
FLOOR_CER = 0.5   # half the characters wrong: no good take of any voice we measured comes near
CEILING_CER = 0.65  # under what another sentence scores: the adaptive threshold stops here
K = 4.0            # "far above": as many robust deviations as the page's duration fit (review.flags.SPREAD_SIGMAS)
MIN_RATE_CHARS = 10  # shorter texts: the fixed start/end overhead dominates (review.flags uses this one)
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
        self.lo, self.width, self.counts, self.n = lo, width, [0] * bins, 0

    def _bin(self, v: float) -> int:
        return min(max(int((v - self.lo) / self.width), 0), len(self.counts) - 1)

    def add(self, v: float, sign: int = 1) -> None:
        self.counts[self._bin(v)] += sign
        self.n += sign

    @staticmethod
    def _median(pairs: list[tuple[float, int]], n: int) -> float:
        """The value at the middle of ``n`` counted values, ``pairs`` of (value, count) in order."""
        half = (n + 1) // 2
        for value, total in zip((v for v, _ in pairs), itertools.accumulate(c for _, c in pairs), strict=True):
            if total >= half:
                return value
        return pairs[-1][0]

    def median_mad(self) -> tuple[float, float]:
        pairs = [(self.lo + (i + 0.5) * self.width, c) for i, c in enumerate(self.counts) if c]
        med = self._median(pairs, self.n)
        mad = self._median(sorted((abs(v - med), c) for v, c in pairs), self.n)
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
        return round(min(CEILING_CER, max(FLOOR_CER, med + K * MAD_SCALE * mad)), 4)

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
            spread = max(K * MAD_SCALE * mad, math.log(MIN_RATE_RATIO))
            off = math.log(seconds / chars) - med
            if abs(off) > spread:
                return Judgement(True, f"{seconds / chars:.3f} s per character, the voice's is "
                                       f"{math.exp(med):.3f}" + (" (cut short?)" if off < 0 else " (repeats?)"),
                                 limit)
        return Judgement(False, None, limit)
