"""The reconciler: looks at wavs/ and tells the daemon what it saw. It never writes the state.

A pass takes a snapshot (sequence number and every entry's status), scans the
folder, and reports only what disagrees with the snapshot. The daemon decides,
and ignores entries that changed after the snapshot. Unchanged files (same size,
mtime and inode) are not opened again.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from statesvc import layout
from statesvc.audio import TAKE_PREFIX, TMP_PREFIX, Observation, Provenance, inspect, is_adopted, not_its_take
from statesvc.client import Client

log = logging.getLogger("pipeline.reconcile")

CHUNK = 5000
CHECK_STOP_EVERY = 1000  # files scanned between two looks at whether a stop was asked


class Interrupted(Exception):
    """A stop was asked mid-scan: the pass ends without reporting (the next one starts afresh)."""


@dataclass
class PassResult:
    scanned: int = 0
    opened: int = 0
    fixes: list[dict] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temp_removed: list[str] = field(default_factory=list)


@dataclass
class Reconciler:
    client: Client
    dataset: Path
    temp_max_age: float = 300.0
    cache: dict[str, tuple[tuple, Observation]] = field(default_factory=dict)
    cache_rate: int | None = None
    dry_run: bool = False  # report what a pass would change; change nothing, move nothing
    should_stop: Callable[[], bool] = lambda: False  # a scan of 100,000 files ends within 1,000 of a stop

    def scan(self, sample_rate: int | None, now: float, result: PassResult,
             known: dict[str, list] | None = None, live: frozenset[str] = frozenset()) -> dict[str, Observation]:
        seen: dict[str, Observation] = {}
        folder = layout.wavs(self.dataset)
        if sample_rate != self.cache_rate:  # every observation was judged against the old rate
            self.cache.clear()
            self.cache_rate = sample_rate
        cache = self.cache
        cached = cache.get  # the loop runs once per file: every lookup saved shows at 100,000 files
        with os.scandir(folder) as it:
            for n, d in enumerate(it):
                if n % CHECK_STOP_EVERY == 0 and self.should_stop():
                    raise Interrupted
                name = d.name
                if name.startswith(TMP_PREFIX):
                    self._old_temp(d, now, result)
                    continue
                if name.startswith(TAKE_PREFIX):
                    if name[:-4].rsplit(".", 1)[-1] not in live:  # a take under a live lease is awaited
                        self._old_take(d, now, result)
                    continue
                if not name.endswith(".wav"):
                    continue
                st = d.stat(follow_symlinks=False)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)  # a replaced or rewritten file changes one
                hit = cached(name)
                if hit is not None and hit[0] == key:
                    obs = hit[1]
                elif (info := (known or {}).get(name[:-4])) and info[5] == [st.st_size, st.st_mtime_ns, st.st_ino] \
                        and info[0] == "completed" and info[4] and not is_adopted(info[4]) and stat.S_ISREG(st.st_mode):
                    # written by a generator and unchanged since: what it reported still holds
                    obs = Observation(True, "", info[1], sample_rate or 0, 1, Provenance(info[2], info[3], info[4]))
                    cache[name] = (key, obs)
                else:
                    obs = inspect(Path(d.path), sample_rate, st)
                    result.opened += 1
                    cache[name] = (key, obs)
                seen[name[:-4]] = obs
        result.scanned = len(seen)
        if len(cache) > len(seen):  # every name seen is cached: only then did some file go away
            for name in set(cache) - {f"{s}.wav" for s in seen}:
                del cache[name]
        return seen

    def _old_temp(self, d: os.DirEntry, now: float, result: PassResult) -> None:
        if self.dry_run:
            return
        try:
            if now - d.stat(follow_symlinks=False).st_mtime > self.temp_max_age:
                os.unlink(d.path)
                result.temp_removed.append(d.name)
        except FileNotFoundError:
            pass

    def _old_take(self, d: os.DirEntry, now: float, result: PassResult) -> None:
        """A whole take whose lease is gone and that nobody reported within the age: to stale/."""
        if self.dry_run:
            return
        try:
            if now - d.stat(follow_symlinks=False).st_mtime > self.temp_max_age:
                (self.dataset / layout.STALE).mkdir(exist_ok=True)
                os.replace(d.path, self.dataset / layout.STALE / d.name[1:])
                result.moved.append(f"{layout.STALE}/{d.name[1:]}")
        except FileNotFoundError:
            pass

    def run_pass(self) -> PassResult:
        result = PassResult()
        snap = self.client.call("snapshot")
        entries: dict[str, list] = snap["entries"]
        seen = self.scan(snap["sample_rate"], time.time(), result, entries, frozenset(snap.get("leases", ())))
        files: dict[str, dict] = {}
        for name, obs in seen.items():
            info = entries.get(name)
            if info is None:
                result.orphans.append(name)
            elif info[0] != "generating" and disagrees(info, obs):
                files[name] = obs.to_wire()
        missing = [n for n, (status, *_) in entries.items() if status == "completed" and n not in seen]
        self.report(snap, files, missing, result)
        return result

    def report(self, snap: dict, files: dict, missing: list[str], result: PassResult) -> None:
        names = list(files)
        for i in range(0, max(len(names), len(missing), 1), CHUNK):
            chunk = {n: files[n] for n in names[i:i + CHUNK]}
            reply = self.client.call("reconcile", since=snap["seq"], epoch=snap["epoch"],
                                     files=chunk, missing=missing[i:i + CHUNK], dry_run=self.dry_run)
            result.fixes += reply["fixes"]
            result.moved += reply.get("moved", [])


def disagrees(info: list, obs: Observation) -> bool:
    """Whether a wav on disk differs from what the snapshot says of its entry:
    [status, duration, text hash, revision, take token, signature]."""
    status, duration, text_hash, rev, take, _ = info
    return status != "completed" or not_its_take(obs, duration, text_hash, rev, take) is not None


def describe(r: PassResult) -> list[str]:
    lines = [f"fixed {f['filename']} (id {f['id']}): {f['fix']}" for f in r.fixes]
    lines += [f"quarantined/moved: {m}" for m in r.moved]
    lines += [f"orphan wav with no entry (left alone): {o}.wav" for o in r.orphans]
    lines += [f"removed stale temp file {t}" for t in r.temp_removed]
    lines.append(f"reconcile: {r.scanned} wavs scanned, {r.opened} opened, {len(r.fixes)} fixes, "
                 f"{len(r.orphans)} orphans")
    return lines
