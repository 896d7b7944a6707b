"""How far a transcript is from its text: normalization, character and word error rates, silence.

Pure: no model, no file. Both sides are normalized the same way (casefold; punctuation, ¿ ¡,
quotes and dashes removed; numbers spelled out in the language with ``num2words``; runs of
whitespace to one space; accents kept), so "¿Tienes 20 años?" and "tienes veinte años" match.
CER is the character edit distance over the length of the normalized text, spaces counted (as
``jiwer.cer``); WER the same on words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# A number as Whisper or a text writes it: 20, 1.5, 3,000 (thousands), 2,5 (a decimal in es).
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Score:
    cer: float
    wer: float


@lru_cache(maxsize=64)
def _num2words_lang(language: str | None) -> str | None:
    """num2words' name for ``language`` ("es", "en-us", "pt_BR"...), or None if it has none."""
    if not language:
        return None
    try:
        from num2words import CONVERTER_CLASSES
    except ImportError:  # the check extra is not installed: digits are kept, as for an unknown language
        return None
    lang = language.replace("-", "_").lower()
    for candidate in (lang, lang.split("_")[0]):
        for known in CONVERTER_CLASSES:
            if known.lower() == candidate:
                return known
    return None


def _spell(match: re.Match[str], lang: str) -> str:
    from num2words import num2words
    token = match.group(0)
    groups = re.split(r"[.,]", token)
    if len(groups) > 1 and all(len(g) == 3 for g in groups[1:]):  # 3,000 / 3.000: thousands
        value: int | float = int("".join(groups))
    elif len(groups) == 2:  # 1.5 / 1,5: a decimal
        value = float(f"{groups[0]}.{groups[1]}")
    else:  # 1.2.3 (a version, a date): each part on its own
        return " ".join(_spell_int(g, lang) for g in groups)
    try:
        return str(num2words(value, lang=lang))
    except (NotImplementedError, OverflowError, ValueError, TypeError):
        return token


def _spell_int(digits: str, lang: str) -> str:
    from num2words import num2words
    try:
        return str(num2words(int(digits), lang=lang))
    except (NotImplementedError, OverflowError, ValueError, TypeError):
        return digits


def normalize(text: str, language: str | None) -> str:
    """Casefold, spell numbers out in ``language`` (digits kept if it is unknown), drop punctuation
    (any Unicode punctuation or symbol: ¿ ¡ « » “ ” — - ...), collapse whitespace. Accents stay:
    "año" and "ano" are different words."""
    lang = _num2words_lang(language)
    text = unicodedata.normalize("NFC", text)
    if lang is not None:
        text = _NUMBER.sub(lambda m: " " + _spell(m, lang) + " ", text)
    out = []
    for ch in text.casefold():
        cat = unicodedata.category(ch)
        if cat[0] in "PS":  # punctuation (incl. dashes, quotes, ¿ ¡) and symbols
            out.append(" ")
        elif cat[0] == "Z" or ch.isspace() or cat[0] == "C":
            out.append(" ")
        else:
            out.append(ch)
    return _SPACES.sub(" ", "".join(out)).strip()


def edit_distance(a: list[str] | str, b: list[str] | str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each 1) between two sequences.

    One row at a time with numpy: the substitution and deletion terms are vector operations and
    the insertion term a running minimum (``np.minimum.accumulate`` of ``row - index``), so a
    300-character pair costs 300 short vector steps, not 90,000 Python steps."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    # integer codes, so the comparisons are vectorised whatever the items are
    codes: dict[str, int] = {}
    av = np.array([codes.setdefault(x, len(codes)) for x in a], dtype=np.int64)
    bv = np.array([codes.setdefault(x, len(codes)) for x in b], dtype=np.int64)
    n = len(bv)
    idx = np.arange(n + 1, dtype=np.int64)
    prev = idx.copy()
    for i, ca in enumerate(av, start=1):
        cur = np.empty(n + 1, dtype=np.int64)
        cur[0] = i
        # substitution (or match) from the diagonal, deletion from above
        cur[1:] = np.minimum(prev[:-1] + (bv != ca), prev[1:] + 1)
        # insertion from the left: cur[j] = min_k<=j (cur[k] + j - k)
        cur = np.minimum.accumulate(cur - idx) + idx
        prev = cur
    return int(prev[-1])


def score(text: str, transcript: str, language: str | None) -> Score:
    """CER and WER of ``transcript`` against ``text``, both normalized. An empty normalized text
    (only punctuation, say) scores 0 against an empty transcript and 1 against anything else."""
    ref, hyp = normalize(text, language), normalize(transcript, language)
    if not ref:
        miss = 0.0 if not hyp else 1.0
        return Score(cer=miss, wer=miss)
    ref_words, hyp_words = ref.split(" "), hyp.split(" ") if hyp else []
    return Score(cer=edit_distance(ref, hyp) / len(ref),
                 wer=edit_distance(ref_words, hyp_words) / len(ref_words))


SILENCE_DBFS = -50.0
WINDOW_SECONDS = 0.05
MIN_SOUND_SECONDS = 0.1


def silent(samples: np.ndarray, sample_rate: int) -> bool:
    """True when the take has nothing to hear: less than 0.1 s of 50 ms windows above -50 dBFS
    (RMS; int16 samples are scaled to [-1, 1]). Cheap, so it runs before the recognizer, which
    invents words for silence."""
    a = np.asarray(samples)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    a = a.astype(np.float64, copy=False).reshape(-1)
    win = max(1, int(round(sample_rate * WINDOW_SECONDS)))
    count = a.size // win
    if count == 0:
        return True
    rms = np.sqrt(np.mean(a[: count * win].reshape(count, win) ** 2, axis=1))
    loud = rms > 10 ** (SILENCE_DBFS / 20)
    return int(loud.sum()) * win < MIN_SOUND_SECONDS * sample_rate
