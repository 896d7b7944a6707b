"""The flags of takes of generated speech that look wrong, and their waveforms: the review dashboard's analysis.

Two independent views of a take:

* ``analyze`` / ``analyze_file`` look at the audio alone: padded silence at either end, clipping, near-silence,
  plus a peak envelope for drawing the waveform.
* ``fit`` learns, from the dataset itself, how long a take of a given text length should be and how fast the voice
  usually speaks; ``Fit.flags`` then marks early stops (far too short), babbling loops (far too long) and takes
  spoken too fast or too slow.

Flags travel as a uint8 bitmask (``BIT``, ``bits``, ``from_bits``) so a million entries fit in one numpy array.
Everything here is a pure function of its inputs, except ``analyze_file``, which reads one file.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np

from statesvc.judge import MAD_SCALE, MIN_RATE_CHARS  # one home: the daemon's judge uses them too

__all__ = ["BIT", "FLAG_LABELS", "Analysis", "Fit", "Flag", "analyze", "analyze_file", "bits", "fit", "from_bits"]


class Flag(enum.StrEnum):
    DURATION = "duration"            # duration far from what the text length predicts
    FAST = "fast"                    # too many characters per second
    SLOW = "slow"                    # too few characters per second
    LEAD_SILENCE = "lead_silence"    # long silence before the speech starts
    TRAIL_SILENCE = "trail_silence"  # long silence after the speech ends
    CLIPPING = "clipping"            # samples pinned at full scale
    QUIET = "quiet"                  # near-silent audio


FLAG_LABELS: dict[Flag, str] = {
    Flag.DURATION: "duration off",
    Flag.FAST: "too fast",
    Flag.SLOW: "too slow",
    Flag.LEAD_SILENCE: "long leading silence",
    Flag.TRAIL_SILENCE: "long trailing silence",
    Flag.CLIPPING: "clipping",
    Flag.QUIET: "near-silent",
}

# Stable on-disk / on-wire values: never renumber, only append.
BIT: dict[Flag, int] = {
    Flag.DURATION: 1,
    Flag.FAST: 2,
    Flag.SLOW: 4,
    Flag.LEAD_SILENCE: 8,
    Flag.TRAIL_SILENCE: 16,
    Flag.CLIPPING: 32,
    Flag.QUIET: 64,
}

# --- audio thresholds -------------------------------------------------------------------------------------------

FRAME_SECONDS = 0.010         # short enough to place a speech onset within a syllable, long enough to average a cycle
SILENCE_DB = -40.0            # frame RMS below this is room tone / dither, well under any voiced speech
MAX_EDGE_SILENCE = 0.75       # natural pauses at the edges stay well under this; more is padding or a stalled start
CLIP_LEVEL = 0.999            # 16-bit PCM full scale reads back as 32767/32768 = 0.99997, so this catches it
# Clipping rule: the fraction of samples at or beyond CLIP_LEVEL exceeds MAX_CLIPPED. A fraction rather than a run
# length because peak-normalised takes legitimately touch full scale at a handful of isolated samples, while real
# overdrive flattens every loud cycle and so pins far more than 1 sample in 1000.
MAX_CLIPPED = 0.001
QUIET_RMS_DB = -45.0          # speech normalised anywhere sensible sits around -30..-15 dBFS RMS
QUIET_PEAK_DB = -30.0         # a take whose loudest sample is this low is inaudible next to its neighbours
FLOOR_DB = -120.0             # what digital silence reports instead of -inf (JSON has no infinities)

# --- dataset-fit thresholds -------------------------------------------------------------------------------------

MIN_FIT_POINTS = 20           # fewer than this and the medians below are not worth trusting
MAX_PAIRS = 20_000            # Theil-Sen on a fixed-seed sample of pairs: deterministic, O(1) in dataset size
FIT_SEED = 0
SPREAD_SIGMAS = 4.0           # outliers are judged in units of the dataset's own typical scatter ...
MIN_DURATION_RATIO = 1.5      # ... but never tighter than 1.5x either way, so a very consistent voice is not nagged
RATE_RATIO = 1.6              # characters per second this far off the dataset's median is audibly rushed / dragged
MIN_PREDICTED = 0.1           # seconds; keeps log(seconds / predicted) finite when a degenerate fit goes negative


def bits(flags: Iterable[Flag]) -> int:
    """The bitmask for ``flags``."""
    out = 0
    for flag in flags:
        out |= BIT[Flag(flag)]
    return out


def from_bits(mask: int) -> frozenset[Flag]:
    """The flags set in ``mask``; unknown bits are ignored (a newer writer may know more flags)."""
    mask = int(mask)
    return frozenset(flag for flag, bit in BIT.items() if mask & bit)


def _db(power: float) -> float:
    """dBFS of a mean-square (power) value, floored so silence stays a finite JSON number."""
    return FLOOR_DB if power <= 10 ** (FLOOR_DB / 10) else max(FLOOR_DB, 10.0 * math.log10(power))


@dataclass(frozen=True)
class Analysis:
    """What the audio alone says about one take."""

    peaks: list[float]      # waveform: per-bucket max |sample|, 0..1, 3 decimals
    lead_silence: float     # seconds below SILENCE_DB before the first sounding frame
    trail_silence: float    # seconds below SILENCE_DB after the last sounding frame
    clipped: float          # fraction of samples with |x| >= CLIP_LEVEL
    rms_db: float
    peak_db: float
    duration: float
    sample_rate: int

    @property
    def flags(self) -> frozenset[Flag]:
        out = set()
        if self.lead_silence > MAX_EDGE_SILENCE:
            out.add(Flag.LEAD_SILENCE)
        if self.trail_silence > MAX_EDGE_SILENCE:
            out.add(Flag.TRAIL_SILENCE)
        if self.clipped > MAX_CLIPPED:
            out.add(Flag.CLIPPING)
        if self.rms_db < QUIET_RMS_DB or self.peak_db < QUIET_PEAK_DB:
            out.add(Flag.QUIET)
        return frozenset(out)

    def to_dict(self) -> dict[str, Any]:
        return {"peaks": self.peaks, "lead_silence": self.lead_silence, "trail_silence": self.trail_silence,
                "clipped": self.clipped, "rms_db": self.rms_db, "peak_db": self.peak_db, "duration": self.duration,
                "sample_rate": self.sample_rate, "flags": sorted(self.flags)}


def _mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim == 2:
        # soundfile's layout is (frames, channels)
        x = x.mean(axis=1, dtype=np.float64)
    elif x.ndim != 1:
        raise ValueError(f"expected 1-D or 2-D (frames, channels) samples, got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        # a damaged float wav can carry NaN/inf; treating them as full scale keeps every statistic finite and
        # makes the take show up as clipping rather than vanish from the review
        x = np.nan_to_num(x, nan=1.0, posinf=1.0, neginf=-1.0)
    return x


def _peaks(mag: np.ndarray, buckets: int) -> list[float]:
    n = mag.size
    if n == 0:
        return [0.0] * buckets
    if n >= buckets:
        # with at least one sample per bucket the edges are strictly increasing, which reduceat needs
        edges = (np.arange(buckets, dtype=np.int64) * n) // buckets
        peaks = np.maximum.reduceat(mag, edges)
    else:
        peaks = mag[(np.arange(buckets, dtype=np.int64) * n) // buckets]
    return np.round(np.minimum(peaks.astype(np.float64), 1.0), 3).tolist()


def _edge_silence(power: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """Seconds of silence before the first and after the last frame louder than SILENCE_DB."""
    n = power.size
    if n == 0:
        return 0.0, 0.0
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    starts = np.arange(0, n, frame, dtype=np.int64)
    lengths = np.diff(np.append(starts, n))
    loud = np.add.reduceat(power, starts) / lengths >= 10 ** (SILENCE_DB / 10)
    if not loud.any():
        # all of it is silence; report it once, as leading, rather than count the same seconds at both ends
        return n / sample_rate, 0.0
    first = int(np.argmax(loud))
    last = loud.size - 1 - int(np.argmax(loud[::-1]))
    return float(starts[first]) / sample_rate, float(n - starts[last] - lengths[last]) / sample_rate


def analyze(samples: np.ndarray, sample_rate: int, buckets: int = 400) -> Analysis:
    """Analyse one take: ``samples`` are float, mono or (frames, channels), nominally within -1..1."""
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if buckets < 1:
        raise ValueError(f"buckets must be positive, got {buckets}")
    x = _mono(samples)
    n = x.size
    mag = np.abs(x)
    power = np.square(x, dtype=np.float64)
    lead, trail = _edge_silence(power, sample_rate)
    peak = float(mag.max()) if n else 0.0
    return Analysis(
        peaks=_peaks(mag, buckets),
        lead_silence=lead,
        trail_silence=trail,
        clipped=float(np.count_nonzero(mag >= CLIP_LEVEL)) / n if n else 0.0,
        rms_db=_db(float(power.mean())) if n else FLOOR_DB,
        peak_db=_db(peak * peak),
        duration=n / sample_rate,
        sample_rate=int(sample_rate),
    )


def analyze_file(path: str | PathLike[str], buckets: int = 400) -> Analysis:
    """``analyze`` a sound file; ``ValueError`` (one line) if it cannot be read as audio."""
    # imported here so that importing this module for the fit alone does not load libsndfile
    import soundfile

    try:
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=False)
    except (RuntimeError, OSError, soundfile.SoundFileError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: unreadable audio: {msg}") from None
    return analyze(data, sample_rate, buckets)


# --- duration against text length -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """seconds ~ intercept + slope * chars, fitted robustly over the dataset, with its typical scatter."""

    slope: float         # seconds per character
    intercept: float     # seconds of fixed overhead (breath, onset, release)
    spread: float        # robust std of log(seconds / predicted)
    median_cps: float    # the dataset's median characters per second
    points: int          # entries the fit was made from

    def predicted(self, chars: float) -> float:
        """Expected seconds for a text of ``chars`` characters."""
        return max(MIN_PREDICTED, self.intercept + self.slope * float(chars))

    def _predicted(self, chars: np.ndarray) -> np.ndarray:
        return np.maximum(MIN_PREDICTED, self.intercept + self.slope * chars)

    @property
    def duration_limit(self) -> float:
        """Largest |log(seconds / predicted)| that is not flagged."""
        return max(SPREAD_SIGMAS * self.spread, math.log(MIN_DURATION_RATIO))

    def flags(self, chars: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """uint8 bitmask per entry: DURATION, FAST, SLOW. Entries without a positive, finite duration get 0.

        A duration of 0 is treated as missing: in the dataset it as often means "not generated yet" as "broken",
        and a real empty take is caught by the audio flags (QUIET).
        """
        c = np.asarray(chars, dtype=np.float64)
        s = np.asarray(seconds, dtype=np.float64)
        limit = math.exp(self.duration_limit)
        with np.errstate(all="ignore"):
            has = np.isfinite(s) & (s > 0) & np.isfinite(c)
            # compare the ratio against exp(limit) rather than take a million logs
            ratio = s / self._predicted(c)
            duration = has & ((ratio > limit) | (ratio < 1 / limit))
            rated = has & (c >= MIN_RATE_CHARS)
            cps = c / s
            fast = rated & (cps > self.median_cps * RATE_RATIO)
            slow = rated & (cps < self.median_cps / RATE_RATIO)
        out = duration.astype(np.uint8) * np.uint8(BIT[Flag.DURATION])
        out |= fast.astype(np.uint8) * np.uint8(BIT[Flag.FAST])
        out |= slow.astype(np.uint8) * np.uint8(BIT[Flag.SLOW])
        return np.asarray(out)

    def to_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "intercept": self.intercept, "spread": self.spread,
                "median_cps": self.median_cps, "points": self.points}


def _theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    n = x.size
    if n * (n - 1) // 2 <= MAX_PAIRS:
        i, j = np.triu_indices(n, k=1)
    else:
        i, j = np.random.default_rng(FIT_SEED).integers(0, n, size=(2, MAX_PAIRS))
    dx = x[j] - x[i]
    ok = dx != 0
    if not ok.any():
        # every text has the same length: the best a line can do is pass through the origin and the median
        return float(np.median(y / x))
    return float(np.median((y[j] - y[i])[ok] / dx[ok]))


def fit(chars: np.ndarray, seconds: np.ndarray) -> Fit | None:
    """Fit duration against text length over the entries that have both; None with fewer than MIN_FIT_POINTS."""
    c = np.asarray(chars, dtype=np.float64).ravel()
    s = np.asarray(seconds, dtype=np.float64).ravel()
    ok = np.isfinite(c) & np.isfinite(s) & (c > 0) & (s > 0)
    c, s = c[ok], s[ok]
    if c.size < MIN_FIT_POINTS:
        return None
    # a longer text cannot take less time; a negative slope only comes from garbage and would predict nonsense
    slope = max(0.0, _theil_sen_slope(c, s))
    intercept = float(np.median(s - slope * c))
    # judged as ratios, so a 2 s error on a 3 s line counts for more than on a 30 s paragraph
    resid = np.log(s / np.maximum(MIN_PREDICTED, intercept + slope * c))
    spread = MAD_SCALE * float(np.median(np.abs(resid - np.median(resid))))
    rated = c >= MIN_RATE_CHARS
    cps = c[rated] / s[rated] if rated.any() else c / s
    return Fit(slope=slope, intercept=intercept, spread=spread, median_cps=float(np.median(cps)), points=int(c.size))
