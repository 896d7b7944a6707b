"""One handler per op: what a validated message does to the state, and the file moves it needs.

Shared by the daemon and by an offline write made under the writer lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from .state import Effect, State

log = logging.getLogger("statesvc")

QUARANTINE = "quarantine"
SET_ASIDE = "requeued"


class Handlers:
    def __init__(self, dataset: Path, state: State):
        self.dataset = dataset
        self.state = state

    def apply(self, op: str, a: dict, now: float) -> tuple[dict, bool]:
        s = self.state
        if op == "claim":
            return s.claim(a["owner"], a["n"], a["lease_seconds"], now, a["batch"]), True
        if op == "result":
            return s.result(a, now), True
        if op == "release":
            return s.release(a["owner"], a["tokens"], now), True
        if op == "heartbeat":
            return s.heartbeat(a["owner"], a["tokens"], now), False
        if op == "requeue":
            body, effects = s.requeue(a["keys"], a["failed"], now)
            body["moved"] = self.carry_out(effects)
            return body, True
        if op == "add":
            return s.add(a["items"], a["prefix"], now), True
        if op == "reconcile":
            body, effects = s.reconcile(a["since"], a["epoch"], a["files"], a["missing"], now)
            body["moved"] = self.carry_out(effects)
            return body, True
        if op == "status":
            return s.stats(), False
        if op == "list":
            st = a["status"]
            return {"entries": [e.to_dict() for e in s.entries if st is None or e.status == st]}, False
        if op == "show":
            return {"entry": s.lookup(a["key"]).to_dict()}, False
        if op == "snapshot":
            return s.snapshot(), False
        return {"pid": os.getpid(), "epoch": s.epoch}, False  # ping

    def carry_out(self, effects: list[Effect]) -> list[str]:
        """Move bad or set-aside wavs out of wavs/; nothing is ever deleted."""
        moved = []
        for eff in effects:
            src = self.dataset / "wavs" / f"{eff.filename}.wav"
            folder = self.dataset / (QUARANTINE if eff.kind == "quarantine" else SET_ASIDE)
            if not os.path.lexists(src):
                continue
            folder.mkdir(exist_ok=True)
            dst = folder / f"{eff.filename}.{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 10**9:09d}.wav"
            try:
                shutil.move(src, dst)
                moved.append(str(dst.relative_to(self.dataset)))
                log.info("moved %s to %s", src.name, dst.relative_to(self.dataset))
            except OSError as exc:
                log.error("cannot move %s aside: %s", src, exc)
        return moved

