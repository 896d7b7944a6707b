"""The daemon's status reply: the counters, with what only the running daemon knows on top."""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import layout

if TYPE_CHECKING:
    from .daemon import Daemon

STATS_EVERY = 2.0  # seconds between recomputing the audio total for status replies
RATE_SAMPLES = 120  # one a second (the lease expiry's tick): the rate is over the last two minutes


@dataclass
class Commits:
    """How the commits go, for the status and the metrics' gauges."""

    completed_seen: int  # entries completed at the last commit
    failures: int = 0    # in a row; 0 once a commit succeeds
    last_error: str | None = None
    last_completion: float = field(default_factory=time.time)  # a take accepted (the start, until one is)

    def succeeded(self, now: float, completed: int) -> int:
        """A commit is durable: failures are over. Returns how many more entries are completed."""
        self.failures, self.last_error = 0, None
        more = completed - self.completed_seen
        if more > 0:
            self.last_completion = now
        self.completed_seen = completed
        return max(0, more)

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self.last_error = str(exc)


def disk_space(dataset: Path) -> tuple[int, int]:
    """(free for us, total) bytes of the fuller of the state's and wavs/' filesystems (often one,
    not always: wavs/ may be a mount of its own); (-1, 0) if neither can be asked."""
    seen = []
    for folder in (dataset, layout.wavs(dataset)):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        seen.append((st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize))
    return min(seen, default=(-1, 0))


class Report:
    """The ``status`` op's answer: progress, rate and ETA, commits, journal, disk, on top of the
    state's counters. Reads the daemon's parts when asked (a rollback replaces state and store)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.started = time.time()
        self.samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=RATE_SAMPLES)
        self.stats_cache: dict = {}
        self.stats_at = float("-inf")

    def sample(self, now: float, completed: int) -> None:
        self.samples.append((now, completed))

    def rate(self) -> float | None:
        """Entries completed per second over the samples kept; None until there are two."""
        if len(self.samples) < 2:
            return None
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return round((c1 - c0) / (t1 - t0), 3) if t1 > t0 else None

    def status(self, now: float) -> dict:
        d = self.daemon
        s, store, commits = d.state, d.store, d.commits
        done = s.counts["completed"] + s.counts["failed"]
        total = len(s.entries)
        rate = self.rate()
        remaining = s.counts["pending"] + s.counts["generating"]
        disk = disk_space(d.dataset)
        if now - self.stats_at >= STATS_EVERY:  # summing every duration is O(entries): not per poll
            self.stats_cache, self.stats_at = s.stats(), now
        return {**self.stats_cache, **s.counters(), **s.check_counters(), "sample_rate": s.sample_rate,
                "daemon": True, "pid": os.getpid(), "uptime": round(now - self.started, 1),
                "progress": round(done / total, 4) if total else 1.0, "rate_per_second": rate,
                "eta_seconds": round(remaining / rate, 1) if rate else None,
                "leases": len(s.leases), "journal_bytes": store.journal_bytes,
                "checkpoint_bytes": store.file_bytes, "generators": len(s.owner_tokens),
                "commit_failures": commits.failures, "last_commit_error": commits.last_error,
                "last_completion": round(commits.last_completion, 3), "disk_free_bytes": disk[0],
                "disk_total_bytes": disk[1], "disk_pause": d.handlers.disk_pause(now),
                "now": round(now, 3)}
