"""The books against the disk: completed if and only if the wav under the entry's name is real
audio and the take the state recorded (made from the entry's current text and revision)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .audio import inspect, not_its_take
from .layout import wav_path
from .texts import control_character


def mismatches(dataset: Path, entries: list[dict], sample_rate: int | None) -> Iterator[str]:
    """One line per entry whose status disagrees with its wav."""
    for e in entries:
        path = wav_path(dataset, e["filename"])
        if e["status"] == "completed":
            why = not_its_take(inspect(path, sample_rate), e.get("duration_seconds"), e.get("text_hash"),
                               e.get("rev"), e.get("take"))
            if why:
                yield f"{e['id']} {e['filename']}: completed but {why}"
        elif e["status"] != "generating" and os.path.lexists(path):
            obs = inspect(path, sample_rate)
            yield f"{e['id']} {e['filename']}: {e['status']} but wav exists ({'valid' if obs.valid else obs.reason})"


def unsafe_texts(entries: list[dict]) -> Iterator[str]:
    """One line per entry whose text holds a control character: stored before texts were checked
    for them (or by hand), kept as they are, shown so someone edits them."""
    for e in entries:
        why = control_character(e["text"])
        if why:
            yield f"{e['id']} {e['filename']}: text holds a {why}; fix it with statesvc edit {e['id']} --text ..."
