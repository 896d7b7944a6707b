"""One handler per op: what a validated message does to the state, and the file moves it needs.

Shared by the daemon and by an offline write made under the writer lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from .protocol import VALIDATORS, WRITES
from .state import Effect, Refused, State

log = logging.getLogger("statesvc")

QUARANTINE = "quarantine"
SET_ASIDE = "requeued"


class Handlers:
    def __init__(self, dataset: Path, state: State):
        self.dataset = dataset
        self.state = state

    def apply(self, op: str, a: dict, now: float) -> tuple[dict, bool]:
        """Apply one validated message; returns (reply body, whether it is a write)."""
        return getattr(self, f"on_{op}")(a, now), op in WRITES

    # ---- writes: the reply goes out once the change is durable ----------
    def on_claim(self, a: dict, now: float) -> dict:
        return self.state.claim(a["owner"], a["n"], a["lease_seconds"], now, a["batch"])

    def on_result(self, a: dict, now: float) -> dict:
        return self.state.result(a, now)

    def on_results(self, a: dict, now: float) -> dict:
        return {"replies": [self._one_result(item, now) for item in a["items"]]}

    def on_release(self, a: dict, now: float) -> dict:
        return self.state.release(a["owner"], a["tokens"], now)

    def on_requeue(self, a: dict, now: float) -> dict:
        body, effects = self.state.requeue(a["keys"], a["failed"], now)
        return {**body, "moved": self.carry_out(effects)}

    def on_add(self, a: dict, now: float) -> dict:
        return self.state.add(a["items"], a["prefix"], now)

    def on_reconcile(self, a: dict, now: float) -> dict:
        body, effects = self.state.reconcile(a["since"], a["epoch"], a["files"], a["missing"], now)
        return {**body, "moved": self.carry_out(effects)}

    # ---- reads: answered at once from memory ------------------------------
    def on_heartbeat(self, a: dict, now: float) -> dict:
        return self.state.heartbeat(a["owner"], a["tokens"], now)

    def on_status(self, a: dict, now: float) -> dict:
        return self.state.stats()

    def on_list(self, a: dict, now: float) -> dict:
        st = a["status"]
        return {"entries": [e.to_dict() for e in self.state.entries if st is None or e.status == st]}

    def on_show(self, a: dict, now: float) -> dict:
        return {"entry": self.state.lookup(a["key"]).to_dict()}

    def on_snapshot(self, a: dict, now: float) -> dict:
        return self.state.snapshot()

    def on_ping(self, a: dict, now: float) -> dict:
        return {"pid": os.getpid(), "epoch": self.state.epoch}

    def _one_result(self, a: dict, now: float) -> dict:
        try:
            return {"ok": True, **self.state.result(a, now)}
        except Refused as exc:
            return {"ok": False, "error": str(exc)}

    def carry_out(self, effects: list[Effect]) -> list[str]:
        """Move bad or set-aside wavs out of wavs/; nothing is ever deleted."""
        moved = []
        wavs = os.path.join(self.dataset, "wavs")
        for eff in effects:
            src = os.path.join(wavs, f"{eff.filename}.wav")  # a str: a requeue of thousands costs a stat each, not more
            if not os.path.lexists(src):
                continue
            folder = self.dataset / (QUARANTINE if eff.kind == "quarantine" else SET_ASIDE)
            folder.mkdir(exist_ok=True)
            dst = folder / f"{eff.filename}.{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 10**9:09d}.wav"
            try:
                shutil.move(src, dst)
                moved.append(str(dst.relative_to(self.dataset)))
                log.info("moved %s to %s", os.path.basename(src), dst.relative_to(self.dataset))
            except OSError as exc:
                log.error("cannot move %s aside: %s", src, exc)
        return moved



assert all(hasattr(Handlers, f"on_{op}") for op in VALIDATORS), "every op has a handler"
