"""statesvc: the single-writer state daemon of a text-to-speech dataset."""

from __future__ import annotations

DISTRIBUTION = "tts-dataset-pipeline"


def version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written), or
    "unknown" for a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version  # 30 ms: only when asked, not at every start
    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":  # computed on first use, for the same reason
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
