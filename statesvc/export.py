"""Training manifests of the completed entries: LJSpeech metadata.csv or a NeMo jsonl manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from .layout import wav_path

FORMATS = ("ljspeech", "jsonl")


def lines(dataset: Path, entries: list[dict], fmt: str, approved_only: bool = False,
          max_cer: float | None = None) -> Iterator[str]:
    """Rows of the completed entries; a rejected take is never exported, an unreviewed one unless
    ``approved_only``; with ``max_cer``, only checked takes whose CER is at most it (unchecked ones
    are left out). The jsonl manifest carries the check's ``cer`` and ``transcript`` (null when unchecked)."""
    for e in entries:
        verdict = (e.get("review") or {}).get("verdict")
        if e["status"] != "completed" or verdict == "rejected" or (approved_only and verdict != "approved"):
            continue
        check = e.get("check") or {}
        if max_cer is not None and (check.get("cer") is None or check.get("error") is not None
                                    or check["cer"] > max_cer or check.get("take") != e.get("take")):
            continue
        text = " ".join(e["text"].split())  # no newline or stray whitespace may split a row
        if fmt == "ljspeech":
            yield f"{e['filename']}|{text.replace('|', ' ')}|{text.replace('|', ' ')}"
        else:
            path = wav_path(dataset, e["filename"]).resolve()
            yield orjson.dumps({"audio_filepath": str(path), "text": text, "duration": e["duration_seconds"],
                                "cer": check.get("cer"), "transcript": check.get("transcript")}).decode()
