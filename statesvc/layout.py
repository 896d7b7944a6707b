"""Where a dataset's files are: the one module that spells their names (state, journal, lock, sockets, wavs/...)."""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "generation_state.json"       # the last checkpoint: the whole state
JOURNAL_FILE = "generation_state.journal"  # the commits since that checkpoint
LOCK_FILE = "statesvc.lock"                # the writer lock; it names the daemon's endpoints
CONTROL_SOCKET = "statesvc.sock"           # the daemon's control endpoint by default (ipc://)
EVENTS_SOCKET = "statesvc-events.sock"     # its change events by default (ipc://)
WAVS = "wavs"                              # one take per entry that has one: NAME.wav (and takes being made)
SET_ASIDE = "requeued"                     # an entry's earlier takes (requeue, edit, a check's retake)
STALE = "stale"                            # takes that never counted: late, of another text or revision
QUARANTINE = "quarantine"                  # files that are not valid audio
LOGS = "logs"                              # run-pipeline's children's logs


def state_path(dataset: Path) -> Path:
    return dataset / STATE_FILE


def journal_path(dataset: Path) -> Path:
    return dataset / JOURNAL_FILE


def lock_path(dataset: Path) -> Path:
    return dataset / LOCK_FILE


def wavs(dataset: Path) -> Path:
    return dataset / WAVS


def wav_path(dataset: Path, filename: str) -> Path:
    """The entry's take: what counts."""
    return dataset / WAVS / f"{filename}.wav"


def wav_name(filename: str) -> str:
    """The entry's take, relative to the dataset: as replies and the page name it."""
    return f"{WAVS}/{filename}.wav"


def set_aside(dataset: Path) -> Path:
    return dataset / SET_ASIDE


def set_aside_name(name: str) -> str:
    """A file of requeued/, relative to the dataset: as the state records an earlier take."""
    return f"{SET_ASIDE}/{name}"


def logs(dataset: Path) -> Path:
    return dataset / LOGS


def log_path(dataset: Path, name: str) -> Path:
    """The log of one of run-pipeline's children (or its own, ``run-pipeline``)."""
    return dataset / LOGS / f"{name}.log"
