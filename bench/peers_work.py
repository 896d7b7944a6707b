"""What one task of a peer does (huey, Celery, Ray Data): synthesize a batch, write each wav durably.

The same work as a generator of bin/run-pipeline: the same plugin (peers_synth.Logged), the
same wav bytes (statesvc.audio.encode_wav), each written through a temp file, fsync, rename and
fsync of the folder (statesvc.atomic.write_atomic), so a result counted afterwards is on disk.
Runs in the peers' venv (.venv-peers), where this project is installed too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pipeline.synth import to_pcm16
from statesvc.atomic import write_atomic
from statesvc.audio import encode_wav

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers_synth import Logged  # noqa: E402

_MODEL: dict[str, Logged] = {}


def model(opts: dict[str, str]) -> Logged:
    """Loaded once per process, as a GPU model is."""
    key = json.dumps(opts, sort_keys=True)
    if key not in _MODEL:
        _MODEL[key] = Logged(**opts)
    return _MODEL[key]


def do_batch(folder: str, items: list[list[str]], opts: dict[str, str]) -> list[str]:
    """Synthesize ``items`` ([name, text] pairs) as one batch; write ``folder/NAME.wav`` for each."""
    synth = model(opts)
    audio = synth.synthesize_batch([text for _, text in items])
    for (name, _), a in zip(items, audio, strict=True):
        write_atomic(Path(folder) / f"{name}.wav", encode_wav(to_pcm16(a), synth.sample_rate))
        synth._log({"pid": os.getpid(), "wrote": name})  # bench/peers.py counts wavs written twice
    return [name for name, _ in items]


def load_job(path: str) -> dict:
    """The job a runner is given: folder, items, batch, workers, opts, grace (JSON written by bench/peers.py)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def report(books: dict[str, str], t_last: float | None, extra: dict | None = None) -> None:
    """The runner's answer on stdout: each name's state in the peer's books, when the last result came."""
    print(json.dumps({"books": books, "t_last": t_last, **(extra or {})}), flush=True)
