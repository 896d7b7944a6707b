"""The page's statistics: rates over the last minute, histograms, which characters the texts hold."""

from __future__ import annotations

import collections

import numpy as np

RATE_WINDOW = 60.0     # seconds of completions the rate is measured over


def rate(completions: collections.deque[tuple[float, int]], now_mono: float) -> float:
    """Completions per second over the last minute (``completions``: when each was seen; older ones are dropped)."""
    while completions and completions[0][0] < now_mono - RATE_WINDOW:
        completions.popleft()
    if not completions:
        return 0.0
    span = max(now_mono - completions[0][0], 5.0)
    return len(completions) / span


def check_rate(checks: collections.deque[float], now_mono: float) -> float:
    """Checks reported per minute over the last minute (``checks``: when each was seen; older ones are dropped)."""
    while checks and checks[0] < now_mono - RATE_WINDOW:
        checks.popleft()
    if not checks:
        return 0.0
    return len(checks) * 60.0 / max(now_mono - checks[0], 5.0)


def histograms(duration: np.ndarray, cps: np.ndarray, cer: np.ndarray, bins: int) -> dict:
    """Of the completed takes: durations, characters per second, and the CERs of those checked."""
    return {"duration": hist(duration, bins), "cps": hist(cps[np.isfinite(cps)], bins),
            "cer": hist(cer[np.isfinite(cer)].astype(np.float64), bins)}


def hist(values: np.ndarray, bins: int) -> dict:
    if len(values) == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(x), 3) for x in edges], "counts": counts.tolist()}


def char_counts(texts: object) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for t in texts:
        counts.update(set(t.lower()))
    return counts
