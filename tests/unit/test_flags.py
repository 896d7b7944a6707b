"""Take analysis for the review dashboard: audio flags on real wav files, and the duration fit over a dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from review.flags import (
    BIT,
    FLAG_LABELS,
    Analysis,
    Flag,
    analyze,
    analyze_file,
    bits,
    fit,
    from_bits,
)

SR = 22050


def speech_like(seconds: float = 2.0, peak: float = 0.5, sr: int = SR) -> np.ndarray:
    """A 220 Hz tone under a ~4 Hz syllable envelope that starts and ends voiced, scaled to ``peak``."""
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    tone = np.sin(2 * np.pi * 220.0 * t) + 0.3 * np.sin(2 * np.pi * 440.0 * t + 0.7)
    x = envelope * tone
    return (peak * x / np.abs(x).max()).astype(np.float32)


def silence(seconds: float, sr: int = SR) -> np.ndarray:
    return np.zeros(int(seconds * sr), dtype=np.float32)


def write(tmp_path: Path, name: str, x: np.ndarray, subtype: str = "PCM_16") -> Path:
    path = tmp_path / name
    soundfile.write(path, x, SR, subtype=subtype)
    return path


# --- audio --------------------------------------------------------------------------------------------------------


def test_normal_take_has_no_flags(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "ok.wav", speech_like()))
    assert a.flags == frozenset()
    assert a.sample_rate == SR
    assert a.duration == pytest.approx(2.0, abs=1e-3)
    assert a.lead_silence < 0.02 and a.trail_silence < 0.02
    assert a.clipped == 0.0
    assert -20 < a.rms_db < -8
    assert a.peak_db == pytest.approx(20 * math.log10(0.5), abs=0.05)


def test_leading_silence(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "lead.wav", np.concatenate([silence(1.5), speech_like()])))
    assert a.flags == {Flag.LEAD_SILENCE}
    assert a.lead_silence == pytest.approx(1.5, abs=0.02)
    assert a.trail_silence < 0.02


def test_trailing_silence(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "trail.wav", np.concatenate([speech_like(), silence(1.5)])))
    assert a.flags == {Flag.TRAIL_SILENCE}
    assert a.trail_silence == pytest.approx(1.5, abs=0.02)
    assert a.lead_silence < 0.02


def test_short_edge_pauses_are_not_flagged(tmp_path: Path) -> None:
    x = np.concatenate([silence(0.5), speech_like(), silence(0.5)])
    a = analyze_file(write(tmp_path, "pauses.wav", x))
    assert a.flags == frozenset()
    assert a.lead_silence == pytest.approx(0.5, abs=0.02)
    assert a.trail_silence == pytest.approx(0.5, abs=0.02)


def test_low_noise_floor_counts_as_silence(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hiss = (rng.standard_normal(int(1.5 * SR)) * 10 ** (-55 / 20)).astype(np.float32)  # -55 dBFS RMS room tone
    a = analyze_file(write(tmp_path, "hiss.wav", np.concatenate([hiss, speech_like()])))
    assert a.flags == {Flag.LEAD_SILENCE}


def test_hard_clipping(tmp_path: Path) -> None:
    clipped = np.clip(speech_like(peak=1.0) * 4.0, -1.0, 1.0)
    a = analyze_file(write(tmp_path, "clip.wav", clipped))
    assert a.flags == {Flag.CLIPPING}
    assert a.clipped > 0.1


def test_peak_normalised_take_is_not_clipping(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "full.wav", speech_like(peak=1.0)))
    assert a.clipped > 0  # it does touch full scale ...
    assert Flag.CLIPPING not in a.flags  # ... but only at isolated samples


def test_all_zeros_is_quiet(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "zeros.wav", silence(2.0)))
    assert a.flags == {Flag.QUIET, Flag.LEAD_SILENCE}
    assert a.rms_db == -120.0 and a.peak_db == -120.0
    assert a.lead_silence == pytest.approx(2.0) and a.trail_silence == 0.0
    assert a.peaks == [0.0] * 400


def test_very_quiet_take(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "quiet.wav", speech_like(peak=0.02), subtype="FLOAT"))
    assert a.flags == {Flag.QUIET}
    assert a.peak_db == pytest.approx(20 * math.log10(0.02), abs=0.05)


def test_peaks_shape_and_scale(tmp_path: Path) -> None:
    x = speech_like(peak=0.8)
    a = analyze_file(write(tmp_path, "peaks.wav", x, subtype="FLOAT"))
    assert len(a.peaks) == 400
    assert max(a.peaks) == pytest.approx(0.8, abs=1e-3)
    assert all(0.0 <= p <= 1.0 for p in a.peaks)
    assert all(p == round(p, 3) for p in a.peaks)
    b = analyze(x, SR, buckets=37)
    assert len(b.peaks) == 37 and max(b.peaks) == pytest.approx(0.8, abs=1e-3)


def test_peaks_follow_the_waveform() -> None:
    x = np.concatenate([silence(1.0), speech_like(1.0, peak=0.6)])
    a = analyze(x, SR, buckets=10)
    assert a.peaks[:5] == [0.0] * 5
    assert all(p > 0.3 for p in a.peaks[5:])


def test_fewer_samples_than_buckets() -> None:
    a = analyze(np.array([0.0, 0.5, -0.25], dtype=np.float32), SR, buckets=6)
    assert a.peaks == [0.0, 0.0, 0.5, 0.5, 0.25, 0.25]


def test_empty_audio() -> None:
    a = analyze(np.zeros(0, dtype=np.float32), SR)
    assert a.duration == 0.0
    assert a.peaks == [0.0] * 400
    assert a.flags == {Flag.QUIET}


def test_stereo_is_averaged(tmp_path: Path) -> None:
    x = speech_like()
    a = analyze_file(write(tmp_path, "stereo.wav", np.stack([x, x], axis=1), subtype="FLOAT"))
    assert a.flags == frozenset()
    assert max(a.peaks) == pytest.approx(0.5, abs=1e-3)


def test_non_finite_samples_do_not_break_analysis() -> None:
    x = speech_like()
    x[1000:2000] = np.nan
    a = analyze(x, SR)
    assert all(math.isfinite(v) for v in (a.rms_db, a.peak_db, a.clipped))
    assert Flag.CLIPPING in a.flags


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not a RIFF file at all" * 40)
    with pytest.raises(ValueError) as e:
        analyze_file(path)
    assert "\n" not in str(e.value) and "garbage.wav" in str(e.value)
    with pytest.raises(ValueError):
        analyze_file(tmp_path / "missing.wav")


def test_analysis_is_json_friendly(tmp_path: Path) -> None:
    a = analyze_file(write(tmp_path, "lead.wav", np.concatenate([silence(1.5), speech_like()])))
    d = json.loads(json.dumps(a.to_dict()))
    assert d["flags"] == ["lead_silence"]
    assert isinstance(a, Analysis)


def test_analyze_is_fast_enough() -> None:
    x = np.tile(speech_like(), 10)  # 20 s
    a = analyze(x, SR)
    assert a.duration == pytest.approx(20.0, abs=1e-3)


# --- flags as bits ----------------------------------------------------------------------------------------------


def test_bits_round_trip() -> None:
    assert len(set(BIT.values())) == len(Flag) and all(v < 256 for v in BIT.values())
    assert set(FLAG_LABELS) == set(Flag)
    for flag in Flag:
        assert from_bits(bits({flag})) == {flag}
    every = frozenset(Flag)
    assert from_bits(bits(every)) == every
    assert bits(()) == 0 and from_bits(0) == frozenset()
    assert from_bits(bits({Flag.DURATION, Flag.SLOW})) == {Flag.DURATION, Flag.SLOW}


# --- the dataset fit --------------------------------------------------------------------------------------------


def synthetic_dataset(n: int = 500, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    chars = rng.integers(15, 250, size=n).astype(np.float64)
    seconds = 0.3 + chars / 14 * rng.uniform(0.92, 1.08, size=n)
    return chars, seconds


def test_fit_flags_exactly_the_broken_takes() -> None:
    chars, seconds = synthetic_dataset()
    truncated, babbling = 17, 301
    expected = 0.3 + chars / 14
    seconds[truncated] = 0.2 * expected[truncated]
    seconds[babbling] = 3.0 * expected[babbling]

    f = fit(chars, seconds)
    assert f is not None
    assert f.slope == pytest.approx(1 / 14, rel=0.05)
    assert f.intercept == pytest.approx(0.3, abs=0.15)
    assert f.predicted(140) == pytest.approx(10.3, rel=0.05)

    mask = f.flags(chars, seconds)
    assert mask.dtype == np.uint8 and mask.shape == chars.shape
    assert from_bits(mask[truncated]) == {Flag.DURATION, Flag.FAST}
    assert from_bits(mask[babbling]) == {Flag.DURATION, Flag.SLOW}
    assert np.flatnonzero(mask).tolist() == [truncated, babbling]


def test_fit_moderate_deviation_is_tolerated() -> None:
    chars, seconds = synthetic_dataset()
    f = fit(chars, seconds)
    assert f is not None
    c = np.array([100.0, 100.0, 100.0, 100.0])
    p = f.predicted(100)
    mask = f.flags(c, np.array([p * 1.3, p / 1.3, p * 1.7, p / 1.7]))
    assert [from_bits(m) for m in mask] == [set(), set(), {Flag.DURATION, Flag.SLOW}, {Flag.DURATION, Flag.FAST}]


def test_short_texts_are_not_rate_flagged() -> None:
    chars, seconds = synthetic_dataset()
    f = fit(chars, seconds)
    assert f is not None
    # 5 characters in 0.15 s is 33 chars/s, far above the median, but too short a text to judge speaking rate
    mask = f.flags(np.array([5.0, 20.0]), np.array([0.15, 0.6]))
    assert Flag.FAST not in from_bits(mask[0])
    assert Flag.FAST in from_bits(mask[1])


def test_missing_durations_get_no_flags() -> None:
    chars, seconds = synthetic_dataset()
    f = fit(chars, seconds)
    assert f is not None
    mask = f.flags(np.array([100.0, 100.0, 100.0]), np.array([np.nan, 0.0, f.predicted(100) * 5]))
    assert mask.tolist() == [0, 0, BIT[Flag.DURATION] | BIT[Flag.SLOW]]


def test_fit_ignores_missing_entries_and_needs_twenty_points() -> None:
    chars, seconds = synthetic_dataset(n=19)
    assert fit(chars, seconds) is None
    chars, seconds = synthetic_dataset(n=40)
    seconds[:21] = np.nan  # leaves 19 usable
    assert fit(chars, seconds) is None
    seconds[0] = 1.0
    assert fit(chars, seconds) is not None
    assert fit(np.array([]), np.array([])) is None


def test_fit_is_deterministic_and_json_friendly() -> None:
    chars, seconds = synthetic_dataset(n=5000)
    a, b = fit(chars, seconds), fit(chars, seconds)
    assert a is not None and a == b
    d = json.loads(json.dumps(a.to_dict()))
    assert type(a)(**d) == a


def test_fit_with_one_text_length() -> None:
    f = fit(np.full(30, 50.0), np.linspace(3.5, 4.5, 30))
    assert f is not None
    assert f.predicted(50) == pytest.approx(4.0, abs=0.1)


def test_million_entries() -> None:
    chars, seconds = synthetic_dataset(n=1_000_000, seed=3)
    seconds[::1000] = np.nan
    f = fit(chars, seconds)
    assert f is not None and f.points == 999_000
    mask = f.flags(chars, seconds)
    assert mask.shape == (1_000_000,) and mask.dtype == np.uint8
    assert not mask.any()
