"""Reading the texts a dataset is made from (.txt, .csv / LJSpeech metadata.csv, .jsonl).

Lines end at LF or CR LF only: U+2028, U+0085 or a form feed inside a line is part of
that line (``str.splitlines()`` would cut there), and the text check then judges it.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

FILENAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_FILENAME = 200
MAX_TEXT = 10_000
# C0 but tab, DEL and C1: a synthesizer may stop at one (espeak ends at a NUL, so the take is
# short yet counts as completed), and an exported row would not read back as the same text.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

Item = tuple[int, str | None, object]  # (line number, filename or None, text as read)


class TextsError(ValueError):
    """The texts file cannot be used; the message says why in one line."""


def check_filename(name: object) -> str | None:
    """Return why ``name`` is not a safe wav stem, or None when it is."""
    if not isinstance(name, str) or not name:
        return "filename must be a non-empty string"
    if len(name) > MAX_FILENAME:
        return f"filename longer than {MAX_FILENAME} characters"
    if ".." in name or not FILENAME_RE.fullmatch(name):
        return f"unsafe filename {name!r} (only A-Z a-z 0-9 . _ -, no leading dot, no '..')"
    return None


def control_character(text: str) -> str | None:
    """Name the first control character in ``text`` (tab allowed), or None when it has none."""
    m = _CONTROL.search(text)
    return f"control character U+{ord(m.group()):04X}" if m else None


def check_text(text: object) -> str | None:
    """Return why ``text`` cannot be synthesized, or None when it can."""
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if len(text) > MAX_TEXT:
        return f"text longer than {MAX_TEXT} characters"
    return control_character(text)


def lines(content: str) -> list[str]:
    """``content`` cut at LF and CR LF only, so line numbers are the ones an editor shows."""
    out = content.split("\n")
    if out and out[-1] == "":
        out.pop()  # the file's last newline ends a line, it does not start one
    return [line[:-1] if line.endswith("\r") else line for line in out]


def read_texts(path: Path) -> list[tuple[str | None, str]]:
    """Parse a texts file into (filename or None, text) pairs, or raise TextsError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TextsError(f"{path}: no such file") from None
    except OSError as exc:
        raise TextsError(f"{path}: {exc.strerror}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextsError(f"{path}: not UTF-8 (byte {exc.start})") from None
    parse = {".jsonl": _jsonl, ".csv": _csv}.get(path.suffix.lower(), _txt)
    items = [(n, *parse(line, f"{path} line {n}")) for n, line in enumerate(lines(content), 1) if line.strip()]
    if not items:
        raise TextsError(f"{path}: no texts in file")
    return _checked(items, path)


def _txt(line: str, where: str) -> tuple[str | None, object]:
    return None, line


def _csv(line: str, where: str) -> tuple[str | None, object]:
    parts = line.split("|")
    if len(parts) < 2:
        raise TextsError(f"{where}: expected filename|text[|normalized]")
    return parts[0].strip(), parts[1]


def _jsonl(line: str, where: str) -> tuple[str | None, object]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise TextsError(f"{where}: not valid JSON") from None
    if not isinstance(obj, dict) or "text" not in obj:
        raise TextsError(f"{where}: expected an object with 'text'")
    return obj.get("filename"), obj["text"]


def _checked(items: list[Item], path: Path) -> list[tuple[str | None, str]]:
    """The (filename, stripped text) pairs, or TextsError naming the first bad line. The text is
    judged as read, before stripping: a control character at its end is refused too."""
    seen: set[str] = set()
    out: list[tuple[str | None, str]] = []
    for n, fname, text in items:
        why = check_text(text) or (None if fname is None else check_filename(fname))
        if not why and fname is not None and fname in seen:
            why = f"duplicate filename {fname!r}"
        if why:
            raise TextsError(f"{path} line {n}: {why}")
        if fname is not None:
            seen.add(fname)
        out.append((fname, str(text).strip()))
    return out
