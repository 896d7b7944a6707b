"""The transcript's word diff the page shows under a checked take: words of the text not heard, words heard
that the text does not hold, hostile, empty and runaway transcripts."""

from __future__ import annotations

from review.words import MAX_WORDS, word_diff

HOSTILE = 'frase </script><script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> para la voz'


def kinds(diff: object, kind: str) -> list[str]:
    return [w for k, w in diff.words if k == kind]


def test_the_word_diff_marks_missing_and_extra_words() -> None:
    d = word_diff("¿Dónde está el coche rojo?", "donde esta el coche azul rojo")
    assert kinds(d, "missing") == ["dónde", "está"], "accents kept: 'esta' is another word"
    assert kinds(d, "extra") == ["donde", "esta", "azul"]
    assert kinds(d, "same") == ["el", "coche", "rojo"] and d.cut == 0
    assert [w for _k, w in word_diff("Uno, dos.", "uno dos").words] == ["uno", "dos"]


def test_the_word_diff_of_hostile_empty_and_runaway_transcripts() -> None:
    hostile = word_diff("a <b> & c", HOSTILE)
    assert all(isinstance(w, str) and w for _k, w in hostile.words)
    assert not any(c in w for _k, w in hostile.words for c in "<>&\"'"), "punctuation is not a word"
    empty = word_diff("Nadie sabía dónde", "")
    assert empty.words == [("missing", "nadie"), ("missing", "sabía"), ("missing", "dónde")] and empty.cut == 0
    assert word_diff("", "").words == [] and word_diff("", "hola").words == [("extra", "hola")]
    runaway = word_diff("Nadie sabía dónde había dejado las llaves.", "a mí " * 4000)  # all a daemon keeps
    assert runaway.cut == 8000 - MAX_WORDS and len(runaway.words) <= 7 + MAX_WORDS
