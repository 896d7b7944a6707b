"""The daemon's Prometheus metrics (``statesvc serve --metrics-port N``): what an operator graphs
and alerts on. Counters and histograms are kept by the loop as it works; the gauges are read from
the daemon when Prometheus scrapes, in the metrics server's thread (plain reads of numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .entry import Status
from .report import disk_space

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .daemon import Daemon

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.updates = Counter("tts_updates_applied", "Writes applied and committed, by op.", ["op"], registry=r)
        self.ack = Histogram("tts_ack_seconds", "From a write's arrival to its durable acknowledgement.",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.commit = Histogram("tts_commit_seconds", "Duration of one group commit (journal append and "
                                "fdatasync).", buckets=LATENCY_BUCKETS, registry=r)
        self.checkpoint = Histogram("tts_checkpoint_seconds", "Duration of one checkpoint (the whole file).",
                                    buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.bytes = Counter("tts_bytes_written", "Bytes the daemon wrote, by file.", ["file"], registry=r)
        self.save_failures = Counter("tts_save_failures", "Commits and checkpoints that failed (refused, "
                                     "rolled back).", ["what"], registry=r)
        self.corrections = Counter("tts_reconciler_corrections", "Entries the reconciler's reports changed, "
                                   "by kind (from_to).", ["kind"], registry=r)
        self.completed = Counter("tts_takes_completed", "Takes accepted (entries becoming completed).", registry=r)

    def applied(self, op: str, args: dict, body: dict) -> None:
        """One write applied (committed with the next commit)."""
        self.updates.labels(op).inc(len(args["items"]) if op == "results" else 1)
        if op == "reconcile" and not args.get("dry_run"):
            for f in body.get("fixes", ()):
                self.corrections.labels(f"{f.get('from')}_{f.get('to')}").inc()

    def committed(self, took: float, journal_bytes: int, completed: int) -> None:
        """A commit made durable: its duration, the bytes it appended, the entries it completed."""
        if completed:
            self.completed.inc(completed)
        self.commit.observe(took)
        self.bytes.labels("journal").inc(max(0, journal_bytes))

    def checkpointed(self, took: float, file_bytes: int) -> None:
        self.checkpoint.observe(took)
        self.bytes.labels("checkpoint").inc(file_bytes)

    def serve(self, daemon: Daemon, port: int, host: str) -> None:
        self.registry.register(_Gauges(daemon))
        start_http_server(port, addr=host, registry=self.registry)


class _Gauges:
    """Read from the daemon at each scrape."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self.daemon
        s = d.state
        entries = GaugeMetricFamily("tts_entries", "Entries by status.", labels=["status"])
        for st in Status:
            entries.add_metric([st.value], s.counts.get(st, 0))
        yield entries
        yield GaugeMetricFamily("tts_entries_total", "Entries in the dataset.", value=len(s.entries))
        yield GaugeMetricFamily("tts_generators", "Generators holding leases.", value=len(s.owner_tokens))
        yield GaugeMetricFamily("tts_leases", "Leases held.", value=len(s.leases))
        yield GaugeMetricFamily("tts_journal_bytes", "Size of the journal (commits since the last checkpoint).",
                                value=d.store.journal_bytes)
        yield GaugeMetricFamily("tts_last_completion_timestamp_seconds", "When the last take was accepted "
                                "(the daemon's start if none since).", value=d.commits.last_completion)
        yield GaugeMetricFamily("tts_commit_failing", "1 while commits fail (the last one failed).",
                                value=1 if d.commits.failures else 0)
        yield GaugeMetricFamily("tts_disk_free_bytes", "Free space on the dataset's filesystem.",
                                value=disk_space(d.dataset)[0])
