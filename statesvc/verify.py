"""The books against the disk: completed if and only if the wav exists and is real audio."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .audio import inspect, wav_path


def mismatches(dataset: Path, entries: list[dict], sample_rate: int | None) -> Iterator[str]:
    """One line per entry whose status disagrees with its wav."""
    for e in entries:
        path = wav_path(dataset, e["filename"])
        exists = os.path.lexists(path)
        if e["status"] == "completed":
            obs = inspect(path, sample_rate)
            if not obs.valid:
                yield f"{e['id']} {e['filename']}: completed but wav {obs.reason}"
            elif e.get("duration_seconds") is not None and abs(obs.duration - e["duration_seconds"]) > 0.002:
                yield (f"{e['id']} {e['filename']}: duration {e['duration_seconds']} in state, "
                       f"{obs.duration:.3f} on disk")
        elif exists and e["status"] != "generating":
            obs = inspect(path, sample_rate)
            yield f"{e['id']} {e['filename']}: {e['status']} but wav exists ({'valid' if obs.valid else obs.reason})"
