"""The books against the disk: completed if and only if the wav under the entry's name is real
audio and the take the state recorded (made from the entry's current text and revision)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .audio import Observation, inspect, same_duration, wav_path


def mismatches(dataset: Path, entries: list[dict], sample_rate: int | None) -> Iterator[str]:
    """One line per entry whose status disagrees with its wav."""
    for e in entries:
        path = wav_path(dataset, e["filename"])
        if e["status"] == "completed":
            why = _not_its_take(e, inspect(path, sample_rate))
            if why:
                yield f"{e['id']} {e['filename']}: completed but {why}"
        elif e["status"] != "generating" and os.path.lexists(path):
            obs = inspect(path, sample_rate)
            yield f"{e['id']} {e['filename']}: {e['status']} but wav exists ({'valid' if obs.valid else obs.reason})"


def _not_its_take(e: dict, obs: Observation) -> str | None:
    if not obs.valid:
        return f"wav {obs.reason}"
    if not same_duration(obs.duration, e.get("duration_seconds")):
        return f"duration {e.get('duration_seconds')} in state, {obs.duration:.3f} on disk"
    p = obs.provenance
    if p is not None and p.text_hash != e.get("text_hash"):
        return "the wav is a take of another text"
    if p is not None and p.rev != e.get("rev"):
        return f"the wav is a take of revision {p.rev}, the entry is at {e.get('rev')}"
    if e.get("take") and (p is None or p.token != e["take"]):
        return "the wav is not the take the state recorded"
    return None
