"""Whole runs through bin/run-pipeline, and the seed's check of the books after one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from tests.support.books import read_state
from tests.support.processes import ROOT

RUN = ROOT / "bin" / "run-pipeline"
ENV = {**os.environ, "PIPELINE_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}


def run_pipeline(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUN), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def assert_books_consistent(ds: Path) -> dict:
    """The seed's own verification snippet, plus durations and counters."""
    doc = read_state(ds)
    files = {f.stem for f in (ds / "wavs").glob("*.wav")}
    errors = 0
    for e in doc["entries"]:
        exists = e["filename"] in files
        if (exists and e["status"] != "completed") or (not exists and e["status"] == "completed"):
            errors += 1
    assert errors == 0, "sync errors"
    for k in ("pending", "generating", "completed", "failed"):
        assert doc[k] == sum(e["status"] == k for e in doc["entries"]), k
    assert doc["total"] == len(doc["entries"])
    for e in doc["entries"]:
        if e["status"] == "completed":
            info = sf.info(str(ds / "wavs" / f"{e['filename']}.wav"))
            assert info.frames > 0 and info.channels == 1
            assert abs(info.frames / info.samplerate - e["duration_seconds"]) < 0.002
    assert not [p for p in (ds / "wavs").iterdir() if p.name.startswith((".tmp-", ".take-"))], "temp files left"
    return doc
