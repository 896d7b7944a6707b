"""One handler per op: what a validated message does to the state, and the file moves it needs.

Shared by the daemon and by an offline write made under the writer lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import checks, protocol, reconcile
from .atomic import fsync_dir
from .audio import inspect, read_provenance, take_path
from .entry import Entry, Status, is_adopted
from .layout import QUARANTINE, SET_ASIDE, STALE, set_aside, wav_name, wav_path
from .protocol import STORAGE, VALIDATORS, WRITES, ErrorKind
from .state import Effect, Refused, State

log = logging.getLogger("statesvc")

FOLDERS = {"quarantine": QUARANTINE, "set_aside": SET_ASIDE, "stale": STALE, "settle": SET_ASIDE}
PAUSE_TTL = 10.0  # seconds a generator's disk pause holds unless said again (it says it every 2 s)


class Handlers:
    """Applies validated messages. Moves a take under an entry's name at once (before the save:
    the state must never say completed without its wav) and keeps every other move in
    ``after_save``: the daemon carries those out once the change is durable, so a save that
    fails leaves the files as the state on disk describes them."""

    def __init__(self, dataset: Path, state: State, status: Callable[[float], dict] | None = None):
        self.dataset = dataset
        self.state = state
        self.status = status  # a daemon's own view for the status op (its report.Report), if a daemon answers
        self.after_save: list[Effect] = []
        self.disk_pauses: dict[str, tuple[int, int, float]] = {}  # owner: (free, floor, when said)
        self._moved_in: set[str] = set()  # folders a move touched since the last fsync of them

    def apply(self, op: str, a: dict, now: float) -> tuple[dict, bool]:
        """Apply one validated message; returns (reply body, whether it is a write)."""
        return getattr(self, f"on_{op}")(a, now), op in WRITES

    # ---- writes: the reply goes out once the change is durable ----------
    def on_claim(self, a: dict, now: float) -> dict:
        return self.state.claim(a["owner"], a["n"], a["lease_seconds"], now, a["batch"])

    def on_result(self, a: dict, now: float) -> dict:
        if a["status"] != "completed":
            return self.state.result(a, now)[0]
        ready = self.take_ready(a)
        if a["take_file"] and ready and self.state.counts_take(a):
            self.promote(a)  # first: a rename that fails refuses the result before anything changes
        body, effects = self.state.result(a, now, ready)
        self.after_save.extend(effects)
        return body

    def on_results(self, a: dict, now: float) -> dict:
        return {"replies": [self._one_result(item, now) for item in a["items"]]}

    def on_release(self, a: dict, now: float) -> dict:
        return self.state.release(a["owner"], a["tokens"], now)

    def on_died(self, a: dict, now: float) -> dict:
        """A generator died: its leases end; the whole takes it wrote but could not report still
        count (valid audio is not thrown away), the others go to stale/."""
        self.disk_pauses.pop(a["owner"], None)
        body = self.state.died(a["owner"], now, self.finished(self.state.synthesizing_of(a["owner"])))
        return {**body, "adopted": self.adopt_orphans(now),
                "checks_returned": checks.expire(self.state, now, a["owner"])}

    def expire(self, now: float) -> list[int]:
        """End the leases past their deadline (the daemon's clock); adopt the whole takes they left."""
        expired = self.state.expire(now, self.finished(self.state.expiring(now)))
        self.adopt_orphans(now)
        return expired + checks.expire(self.state, now)

    def finished(self, tokens: list[str]) -> frozenset[str]:
        """Which of these leases under synthesis have their take on disk: they were not under way."""
        return frozenset(t for t in tokens if take_path(self.dataset, self.state.by_id[self.state.leases[t]].filename,
                                                        t).exists())

    def adopt_orphans(self, now: float) -> list[int]:
        """Takes of leases that ended without a result: whole ones count as late results (valid
        audio is not thrown away), the others go to stale/."""
        takes, self.state.orphaned_takes = self.state.orphaned_takes, []
        adopted = []
        for eff in takes:
            msg = self._late_result(eff)
            if msg is not None and self.on_result(msg, now).get("applied"):
                adopted.append(msg["id"])
            else:
                self.after_save.append(eff)
        return adopted

    def _late_result(self, eff: Effect) -> dict | None:
        """The result a dead generator would have sent for the take it left, if the take is whole."""
        path = take_path(self.dataset, eff.filename, eff.token)
        if not path.exists():
            return None
        obs = inspect(path, self.state.sample_rate)
        p = obs.provenance
        if not obs.valid or p is None or p.token != eff.token:
            return None
        e = self.state.by_name[eff.filename]
        return {"id": e.id, "token": eff.token, "status": "completed", "duration_seconds": round(obs.duration, 6),
                "sample_rate": obs.sample_rate, "text_hash": p.text_hash, "rev": p.rev, "take_file": True}

    def on_requeue(self, a: dict, now: float) -> dict:
        body, effects = self.state.requeue(a["keys"], a["failed"], now)
        return {**body, "moved": self.later(effects)}

    def on_edit(self, a: dict, now: float) -> dict:
        body, effects = self.state.edit(a["key"], a["text"], now)
        return {**body, "moved": self.later(effects)}

    def on_check_claim(self, a: dict, now: float) -> dict:
        return checks.claim(self.state, a["owner"], a["n"], a["lease_seconds"], now)

    def on_check_result(self, a: protocol.CheckReport, now: float) -> dict:
        e = self.state.lookup(a.id)  # only an earlier take whose file is there may come back (as promote checks)
        present = frozenset(x.file for x in e.earlier if x.rev == e.rev and (self.dataset / x.file).exists())
        body, effects = checks.result(self.state, a, now, present)
        if body["applied"]:  # one line per check accepted (at debug): what a test counts
            log.debug("check accepted: entry %s take %s by %s: %s", a.id, a.take, a.owner, body["stage"])
        self.after_save.extend(effects)
        return body

    def on_check_release(self, a: dict, now: float) -> dict:
        return checks.release(self.state, a["owner"], a["tokens"], now)

    def on_check_heartbeat(self, a: dict, now: float) -> dict:
        return checks.heartbeat(self.state, a["owner"], a["tokens"], now)

    def on_review(self, a: dict, now: float) -> dict:
        return self.state.review(a["key"], a["verdict"], a["note"], a["take"], now)

    def on_add(self, a: dict, now: float) -> dict:
        return self.state.add(a["items"], a["prefix"], now)

    def on_reconcile(self, a: dict, now: float) -> dict:
        if a["dry_run"]:
            return reconcile.preview(self.state, a["since"], a["epoch"], a["files"], a["missing"], now)
        body, effects = reconcile.apply(self.state, a["since"], a["epoch"], a["files"], a["missing"], now)
        return {**body, "moved": self.later(effects)}

    # ---- reads: answered at once from memory ------------------------------
    def on_heartbeat(self, a: dict, now: float) -> dict:
        return self.state.heartbeat(a["owner"], a["tokens"], now)

    def on_working(self, a: dict, now: float) -> dict:
        return self.state.working(a["owner"], a["tokens"], now)

    def on_paused(self, a: dict, now: float) -> dict:
        if a["paused"]:
            self.disk_pauses[a["owner"]] = (a["free"], a["floor"], now)
        else:
            self.disk_pauses.pop(a["owner"], None)
        return {}

    def disk_pause(self, now: float) -> dict | None:  # its reader: protocol.disk_pause
        """The generators waiting for disk space, for the status: None when none is. A pause not
        said again within PAUSE_TTL is over (its generator died or was stopped while paused)."""
        for owner, (_, _, said) in list(self.disk_pauses.items()):
            if now - said > PAUSE_TTL:
                del self.disk_pauses[owner]
        if not self.disk_pauses:
            return None
        pauses = self.disk_pauses.values()
        return {"generators": len(pauses), "free_bytes": min(p[0] for p in pauses),
                "floor_bytes": max(p[1] for p in pauses)}

    def on_status(self, a: dict, now: float) -> dict:
        """The counters; a daemon answers with its own view on top (progress, rate, commits, disk)."""
        return self.status(now) if self.status is not None else self.state.stats()

    def on_list(self, a: dict, now: float) -> dict:
        st = a["status"]
        return {"entries": [e.public() for e in self.state.entries if st is None or e.status == st]}

    def on_show(self, a: dict, now: float) -> dict:
        return {"entry": self.state.lookup(a["key"]).public()}

    def on_snapshot(self, a: dict, now: float) -> dict:
        return self.state.snapshot()

    def on_ping(self, a: dict, now: float) -> dict:
        return {"pid": os.getpid(), "epoch": self.state.epoch}

    def _one_result(self, a: dict, now: float) -> dict:
        try:
            return {"ok": True, **self.on_result(a, now)}
        except Refused as exc:
            return protocol.failure(ErrorKind.REFUSED, str(exc))

    # ---- files ---------------------------------------------------------------
    def take_ready(self, a: dict) -> bool:
        """The take of this result is on disk: as its take file, or already under the entry's name
        (a resend after a save that failed, or after a restart)."""
        if not a["take_file"]:
            return True
        e = self.state.lookup(a["id"])
        if take_path(self.dataset, e.filename, a["token"]).exists():
            return True
        if any(x.filename == e.filename and (x.token is None or x.kind == "restore") for x in self.after_save):
            return False  # the wav under the name is on its way out (set aside, restored, stale)
        prov = read_provenance(wav_path(self.dataset, e.filename))
        return prov is not None and prov.token == a["token"]

    def promote(self, a: dict) -> None:
        """Move a take that counts under the entry's name, or refuse the result (nothing applied)."""
        e = self.state.lookup(a["id"])
        src = take_path(self.dataset, e.filename, a["token"])
        try:
            os.replace(src, wav_path(self.dataset, e.filename))
        except FileNotFoundError:
            return  # promoted before a failed save or a restart: take_ready saw it under the name
        except OSError as exc:
            raise Refused(f"cannot move the take under {e.filename}.wav: {exc.strerror}") from None
        self.promoted = True
        # a move of the old file queued for after the save (quarantine, set aside) must not carry this take off
        self.after_save = [x for x in self.after_save if x.filename != e.filename or x.token is not None]

    promoted = False  # a take was renamed since the last save: the daemon fsyncs wavs/ before saving

    def later(self, effects: list[Effect]) -> list[str]:
        """Queue moves for after the save; the reply names where each file will go."""
        self.after_save.extend(effects)
        return [f"{FOLDERS[e.kind]}/{e.filename}.wav" for e in effects
                if os.path.lexists(os.path.join(self.dataset, wav_name(e.filename)))]

    def carry_out(self, effects: list[Effect]) -> list[str]:
        """Move bad, set-aside or stale wavs out of wavs/; nothing is ever deleted."""
        moved = []
        for eff in effects:
            if eff.kind == "restore":
                moved += self._restore(eff)
                continue
            if eff.kind == "settle":
                e = self.state.by_name.get(eff.filename)
                moved += self.settle(e, self._aside_listing()) if e is not None else []
                continue
            if eff.dest is not None:  # a retake: the name the state recorded
                src = os.path.join(self.dataset, wav_name(eff.filename))
                if self._move(src, self.dataset / eff.dest):
                    moved.append(eff.dest)
                continue
            if eff.kind == "stale" and eff.token is not None:
                src = str(take_path(self.dataset, eff.filename, eff.token))
            else:  # a str: a requeue of thousands costs a stat each, not more
                src = os.path.join(self.dataset, wav_name(eff.filename))
            if not os.path.lexists(src):
                continue
            folder = self.dataset / FOLDERS[eff.kind]
            dst = folder / f"{eff.filename}.{time.strftime('%Y%m%dT%H%M%S')}.{time.time_ns() % 10**9:09d}.wav"
            try:
                folder.mkdir(exist_ok=True)
                shutil.move(src, dst)
                self._moved_in.update((os.path.dirname(src), str(folder)))
                moved.append(str(dst.relative_to(self.dataset)))
                log.info("moved %s to %s", os.path.basename(src), dst.relative_to(self.dataset))
            except OSError as exc:
                log.error("cannot move %s aside: %s", src, exc)
        self.sync_moves()
        return moved

    def sync_moves(self) -> None:
        """fsync the folders files moved in and out of: the moves a commit implies are durable."""
        folders, self._moved_in = self._moved_in, set()
        for folder in sorted(folders):
            try:
                fsync_dir(Path(folder))
            except OSError as exc:
                log.error("cannot fsync %s: %s", folder, exc)

    def _aside_listing(self) -> list[str]:
        try:
            return os.listdir(set_aside(self.dataset))
        except OSError:
            return []

    def settle_all(self) -> list[str]:
        """At the daemon's start: redo the moves committed retakes and restores imply (see ``settle``)."""
        mine = [e for e in self.state.entries if e.earlier]
        listing = self._aside_listing() if mine else []
        moved = [m for e in mine for m in self.settle(e, listing)]
        self.sync_moves()
        return moved

    def settle(self, e: Entry, listing: list[str]) -> list[str]:
        """The files of ``e`` as its state says, when a crash (or a failed move) came between the
        commit of a retake or restore and its moves: a take a check set aside that sits under the
        entry's name goes to its file under requeued/; the current take, found under requeued/ (its
        token ends the file's name) while nothing is under the entry's name, comes back."""
        wav = wav_path(self.dataset, e.filename)
        moved: list[str] = []
        prov = read_provenance(wav)
        aside = None if prov is None or prov.token == e.take else \
            next((x for x in e.earlier if x.take == prov.token), None)
        if aside is not None:
            dest = self.dataset / aside.file
            if os.path.lexists(dest):  # already there (a copy): this one must not pass for the current take
                dest = self.dataset / STALE / f"{e.filename}.{time.strftime('%Y%m%dT%H%M%S')}.{prov.token[-9:]}.wav"
            if self._move(str(wav), dest):
                moved.append("/".join(dest.parts[-2:]))
        if e.status == Status.COMPLETED and e.take is not None and not os.path.lexists(wav):
            ending = f".{e.take[-9:]}.wav"
            for n in sorted(n for n in listing if n.startswith(f"{e.filename}.") and n.endswith(ending)):
                src = set_aside(self.dataset) / n
                p = read_provenance(src)
                if (p is not None and p.token == e.take) or (p is None and is_adopted(e.take)):
                    if self._move(str(src), wav):
                        moved.append(wav_name(e.filename))
                    break
        if moved:
            log.warning("%s: redid the moves its retake or restore implies: %s", e.filename, ", ".join(moved))
        return moved

    def _restore(self, eff: Effect) -> list[str]:
        """An earlier take back under the entry's name (the state records it): the current take to
        its recorded name under requeued/ first, so nothing is overwritten."""
        wav = wav_path(self.dataset, eff.filename)
        if not (self.dataset / eff.source).exists():
            log.error("cannot bring %s back: it is gone (the reconciler will record the take in wavs/)", eff.source)
            return []
        if os.path.lexists(wav) and not self._move(str(wav), self.dataset / eff.dest):
            return []
        if not self._move(str(self.dataset / eff.source), wav):
            return [eff.dest]
        return [eff.dest, wav_name(eff.filename)]

    def _move(self, src: str, dst: Path) -> bool:
        try:
            dst.parent.mkdir(exist_ok=True)
            os.replace(src, dst)
            self._moved_in.update((os.path.dirname(src), str(dst.parent)))
            log.info("moved %s to %s", os.path.basename(src), "/".join(dst.parts[-2:]))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("cannot move %s to %s: %s", src, dst, exc)
            return False


assert all(hasattr(Handlers, f"on_{op}") for op in VALIDATORS if op not in STORAGE), "every op has a handler"
