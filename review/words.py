"""What a take's transcript says against its text, word by word: the entry page's diff.

Both sides are normalized as the checker scored them (``pipeline.cer.normalize``: case,
punctuation, runs of spaces), then aligned with difflib. The result is a list of (kind, word)
with kind ``same``, ``missing`` (in the text, not heard) or ``extra`` (heard, not in the text):
plain strings, escaped by whoever renders them. A runaway transcript (a recognizer looping on
one phrase) is cut to a bound before the alignment, which is quadratic at worst.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pipeline.cer import normalize

MAX_WORDS = 400     # words of either side aligned; a transcript longer than this is a runaway
MAX_CHARS = 20_000  # characters of either side normalized (the daemon keeps transcripts to this)


@dataclass(frozen=True)
class WordDiff:
    words: list[tuple[str, str]]  # (same | missing | extra, word), in reading order
    cut: int                      # transcript words left out (a runaway transcript), of its first MAX_CHARS

    def to_dict(self) -> dict:
        return {"words": [list(w) for w in self.words], "cut": self.cut}


def word_diff(text: str, transcript: str, language: str | None = None) -> WordDiff:
    """The words of ``text`` and of ``transcript`` aligned: what is the same, missing, extra."""
    ref = normalize(text[:MAX_CHARS], language).split()
    hyp = normalize(transcript[:MAX_CHARS], language).split()
    cut = max(0, len(hyp) - MAX_WORDS)
    ref, hyp = ref[:MAX_WORDS], hyp[:MAX_WORDS]
    out: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(None, ref, hyp, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            out += [("same", w) for w in ref[i1:i2]]
        else:  # replace, delete, insert: what the text says, then what was heard instead
            out += [("missing", w) for w in ref[i1:i2]]
            out += [("extra", w) for w in hyp[j1:j2]]
    return WordDiff(out, cut)
