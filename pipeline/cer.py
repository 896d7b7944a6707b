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
# Digit groups split by a space, a no-break space or a thin space: "10 000", "1 234 567".
_SPACED_GROUPS = re.compile(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\d.,]?\d)")
# A time of day, h:mm or h.mm with minutes 00-59 ("5:30", "5.30"), not part of a longer number.
_TIME = re.compile(r"(?<![\d.,:])([01]?\d|2[0-4])[:.]([0-5]\d)(?![.,:]?\d)")
_AMOUNT = r"\d+(?:[.,]\d+)*"
# $5, € 5, £1.50 (sign first) and 5 €, 5$, 50 %, 50% (sign after).
_SIGN_FIRST = re.compile(r"([$€£])\s?(" + _AMOUNT + r")")
_SIGN_AFTER = re.compile(r"(" + _AMOUNT + r")\s?([$€£%])")

# How a language says its signs: sign -> (singular, plural) and the sub-unit of each currency.
# Only languages listed here spell signs; in any other the sign is dropped as a symbol, as before.
_SIGN_WORDS: dict[str, dict[str, tuple[str, str]]] = {
    "en": {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds"),
           "%": ("percent", "percent"), "¢": ("cent", "cents")},
    "es": {"$": ("dólar", "dólares"), "€": ("euro", "euros"), "£": ("libra", "libras"),
           "%": ("por ciento", "por ciento"), "¢": ("céntimo", "céntimos")},
}
_AND = {"en": "and", "es": "con"}
_DECIMAL_WORDS = {"es": {",": "coma", ".": "punto"}, "en": {".": "point"}}


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


def _base(lang: str) -> str:
    return lang.split("_")[0].lower()


def _spell(match: re.Match[str], lang: str) -> str:
    return _spell_number(match.group(0), lang)


def _spell_number(token: str, lang: str) -> str:
    groups = re.split(r"[.,]", token)
    seps = re.findall(r"[.,]", token)
    if len(groups) > 1 and all(len(g) == 3 for g in groups[1:]) and len(set(seps)) == 1:
        return _spell_int("".join(groups), lang)  # 3,000 / 3.000: thousands
    if len(groups) == 2:  # 1.5 / 1,5: a decimal, read with the language's word for its separator
        word = _DECIMAL_WORDS.get(_base(lang), {}).get(seps[0])
        if word is None:  # no decimal reading for this separator: each part on its own
            return " ".join(_spell_int(g, lang) for g in groups)
        return f"{_spell_int(groups[0], lang)} {word} {_spell_fraction(groups[1], lang)}"
    # 1.2.3 (a version, a date): each part on its own
    return " ".join(_spell_int(g, lang) for g in groups)


def _spell_fraction(digits: str, lang: str) -> str:
    """The digits after a decimal separator: "5" -> five; "25" -> two five in en (as English says
    2.25), veinticinco in es (as Spanish says 2,25); leading zeros are read one by one."""
    if _base(lang) == "es":
        zeros = len(digits) - len(digits.lstrip("0"))
        rest = digits.lstrip("0")
        return " ".join([_spell_int("0", lang)] * zeros + ([_spell_int(rest, lang)] if rest else []))
    return " ".join(_spell_int(d, lang) for d in digits)


def _spell_int(digits: str, lang: str) -> str:
    from num2words import num2words
    try:
        return str(num2words(int(digits), lang=lang))
    except (NotImplementedError, OverflowError, ValueError, TypeError):
        return digits


def _spell_time(match: re.Match[str], lang: str) -> str:
    """5:30 / 5.30 -> "five thirty"; 5:05 -> "five oh five" in en; 5:00 -> "five". The same rule
    runs on the text and the transcript, so "five thirty" and "5.30" meet."""
    hours, minutes = match.group(1), match.group(2)
    words = [_spell_int(hours, lang)]
    if minutes != "00":
        if minutes[0] == "0" and _base(lang) == "en":
            words.append("oh")
        words.append(_spell_int(minutes, lang))
    return " " + " ".join(words) + " "


def _before_noun(spelled: str, lang: str) -> str:
    """Spanish "uno" before a noun is "un" ("un dólar", "veintiún euros")."""
    if _base(lang) == "es" and spelled.endswith("uno"):
        return spelled[:-3] + ("ún" if spelled.endswith("veintiuno") else "un")
    return spelled


def _spell_amount(amount: str, sign: str, lang: str) -> str:
    """"5" with "$" -> "five dollars"; "1.50" with "€" -> "one euro and fifty cents"; "50" with "%"
    -> "fifty percent". Any other amount is spelled as a number, followed by the plural."""
    words = _SIGN_WORDS[_base(lang)]
    one, many = words[sign]
    groups = re.split(r"[.,]", amount)
    if sign != "%" and len(groups) == 2 and len(groups[1]) == 2:  # units and cents
        cent_one, cent_many = words["¢"]
        units, cents = groups
        out = f"{_before_noun(_spell_int(units, lang), lang)} {one if int(units) == 1 else many}"
        if int(cents):
            out += f" {_AND[_base(lang)]} {_spell_int(cents, lang)} {cent_one if int(cents) == 1 else cent_many}"
        return " " + out + " "
    spelled = _spell_number(amount, lang)
    unit = one if spelled == _spell_int("1", lang) else many
    return f" {_before_noun(spelled, lang) if sign != '%' else spelled} {unit} "


def normalize(text: str, language: str | None) -> str:
    """Casefold, spell numbers out in ``language`` (digits kept if it is unknown), drop punctuation
    (any Unicode punctuation or symbol: ¿ ¡ « » “ ” — - ...), collapse whitespace. Accents stay:
    "año" and "ano" are different words.

    Before numbers are spelled, in a language that says them: currency and percent signs become
    words ("$5" and "5 $" -> "five dollars", "50%" -> "fifty percent"), a time h:mm or h.mm with
    minutes 00-59 is read as a time ("5.30" -> "five thirty", not "five point three"), digit
    groups split by spaces are one number ("10 000"). Invisible format characters (soft hyphen,
    zero-width joiners: Unicode category Cf) are deleted, not turned into spaces."""
    lang = _num2words_lang(language)
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    if lang is not None:
        text = _SPACED_GROUPS.sub(lambda m: re.sub(r"\D", "", m.group(0)), text)
        if _base(lang) in _SIGN_WORDS:
            text = _SIGN_FIRST.sub(lambda m: _spell_amount(m.group(2), m.group(1), lang), text)
            text = _SIGN_AFTER.sub(lambda m: _spell_amount(m.group(1), m.group(2), lang), text)
        text = _TIME.sub(lambda m: _spell_time(m, lang), text)
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
