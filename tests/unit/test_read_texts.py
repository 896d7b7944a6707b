"""Reading a texts file: a control character (C0 but tab, DEL, C1) is refused naming the file's line and
its code; lines end at LF and CR LF only (the commands, the daemon and the page: tests/system/test_texts.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from statesvc.texts import TextsError, read_texts


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\r", "\x7f", "\x85", "\x9f"])
def test_every_kind_of_control_character_is_refused_with_its_code(tmp_path: Path, char: str) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_bytes(b'{"text": "uno"}\n' + orjson.dumps({"text": f"a{char}b"}) + b"\n")
    with pytest.raises(TextsError, match=f"t.jsonl line 2: control character U\\+{ord(char):04X}$"):
        read_texts(texts)


def test_tab_and_line_separators_are_text(tmp_path: Path) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_bytes(orjson.dumps({"text": "a\tb\u2028c\u2029d"}) + b"\n")
    assert read_texts(texts) == [(None, "a\tb\u2028c\u2029d")]


# ---- lines end at LF and CR LF only ---------------------------------------------------------
def test_txt_lines_holding_unicode_line_boundaries_are_one_entry(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("uno\u2028dos\r\ntres\u2029cuatro\ncinco\x1cseis\n", encoding="utf-8")
    with pytest.raises(TextsError, match="t.txt line 3: control character U\\+001C"):
        read_texts(texts)
    texts.write_text("uno\u2028dos\r\ntres\u2029cuatro\n\ncinco\n", encoding="utf-8")
    assert read_texts(texts) == [(None, "uno\u2028dos"), (None, "tres\u2029cuatro"), (None, "cinco")]


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
@pytest.mark.parametrize("char", ["\x85", "\x0c", "\x00"])
def test_nel_form_feed_and_nul_stay_in_their_line_and_are_refused_there(tmp_path: Path, suffix: str,
                                                                          char: str) -> None:
    texts = tmp_path / f"t{suffix}"
    rows = ["primera", f"hola{char} buenos dias", "tercera"]
    if suffix == ".csv":
        rows = [f"a_{i}|{r}" for i, r in enumerate(rows)]
    texts.write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
    with pytest.raises(TextsError, match=f"t{suffix} line 2: control character U[+]{ord(char):04X}$"):
        read_texts(texts)


def test_jsonl_line_numbers_count_lf_and_crlf_only(tmp_path: Path) -> None:
    texts = tmp_path / "t.jsonl"
    texts.write_bytes('{"text": "uno\u2028dos"}\r\n{"text": "tres\u0085"}\n'.encode())
    with pytest.raises(TextsError, match="t.jsonl line 2: control character U\\+0085$"):
        read_texts(texts)
    texts.write_bytes('{"text": "uno\u2028dos"}\r\n\n{"text": "tres"}\r\n'.encode())
    assert read_texts(texts) == [(None, "uno\u2028dos"), (None, "tres")]
