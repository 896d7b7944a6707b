"""Where a dataset's daemon listens, and how a client finds the one that runs."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from .layout import CONTROL_SOCKET, EVENTS_SOCKET
from .lock import holder_info


def defaults(dataset: Path, endpoint: str | None = None, events: str | None = None) -> tuple[str, str]:
    """The control and events endpoints: ipc sockets in the dataset unless tcp is asked for."""
    d = Path(os.path.abspath(dataset))
    control = endpoint or f"ipc://{d / CONTROL_SOCKET}"
    if events is None:
        if control.startswith("tcp://") and control.rsplit(":", 1)[-1].isdigit():
            base, port = control.rsplit(":", 1)
            events = f"{base}:{int(port) + 1}"
        else:
            events = f"ipc://{d / EVENTS_SOCKET}"
    return control, events


def running(dataset: Path) -> dict | None:
    """The running daemon's lock record ({pid, endpoint, events}), or None when none runs."""
    info = holder_info(dataset)
    if info is None:
        return None
    try:
        rec = orjson.loads(info)
    except orjson.JSONDecodeError:
        return {"pid": None, "endpoint": None, "events": None, "raw": info}
    return rec if isinstance(rec, dict) else None


def connectable(endpoint: str) -> str:
    """A bind address made connectable: tcp://0.0.0.0:P and tcp://*:P become 127.0.0.1."""
    for wild in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wild):
            return "tcp://127.0.0.1:" + endpoint[len(wild):]
    return endpoint
