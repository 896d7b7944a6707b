"""Reading the texts a dataset is made from (.txt, .csv / LJSpeech metadata.csv, .jsonl)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

FILENAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_FILENAME = 200
MAX_TEXT = 10_000


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


def check_text(text: object) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if len(text) > MAX_TEXT:
        return f"text longer than {MAX_TEXT} characters"
    return None


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
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = _jsonl(content, path)
    elif suffix == ".csv":
        items = _csv(content, path)
    else:
        items = [(None, line.strip()) for line in content.splitlines() if line.strip()]
    if not items:
        raise TextsError(f"{path}: no texts in file")
    _check_items(items, path)
    return items


def _csv(content: str, path: Path) -> list[tuple[str | None, str]]:
    items = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 2:
            raise TextsError(f"{path}:{n}: expected filename|text[|normalized]")
        items.append((parts[0].strip(), parts[1].strip()))
    return items


def _jsonl(content: str, path: Path) -> list[tuple[str | None, str]]:
    items = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise TextsError(f"{path}:{n}: not valid JSON") from None
        if not isinstance(obj, dict) or "text" not in obj:
            raise TextsError(f"{path}:{n}: expected an object with 'text'")
        fname = obj.get("filename")
        text = obj["text"]
        items.append((fname, text.strip() if isinstance(text, str) else text))
    return items


def _check_items(items: list[tuple[str | None, str]], path: Path) -> None:
    seen: set[str] = set()
    for n, (fname, text) in enumerate(items, 1):
        why = check_text(text)
        if why:
            raise TextsError(f"{path}: text {n}: {why}")
        if fname is None:
            continue
        why = check_filename(fname)
        if why:
            raise TextsError(f"{path}: text {n}: {why}")
        if fname in seen:
            raise TextsError(f"{path}: text {n}: duplicate filename {fname!r}")
        seen.add(fname)
