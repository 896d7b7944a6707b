"""What an operator watches a run with: `statesvc health` in each of its states, and the daemon's
Prometheus metrics checked against `status`. Real daemons, real files, a real full tmpfs."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from statesvc.client import Client
from statesvc.endpoints import running
from tests.conftest import cli, fill, make_dataset, take, tmpfs, umount, wait_for
from tests.test_dashboard import free_port


def health(ds: Path, *args: str) -> tuple[int, str]:
    r = cli("health", "--dataset", str(ds), *args)
    out = (r.stdout + r.stderr).strip()
    assert "\n" not in out and "Traceback" not in out, out
    return r.returncode, out


def test_health_healthy_stopped_stalled_and_without_generators(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"frase {i}" for i in range(6)])
    d = start_daemon(ds)
    code, out = health(ds, "--min-free-mb", "1")
    assert code == 0 and out.startswith("healthy: 0/6 completed"), out
    # work left, nobody holds any, nothing completes: after --max-stall, unhealthy
    wait_for(lambda: health(ds, "--min-free-mb", "1", "--max-stall", "0.01")[0] == 1, 10, "a stall")
    assert "no generator holds work: 6 entries left" in health(ds, "--min-free-mb", "1", "--max-stall", "0.01")[1]
    with Client(running(ds)["endpoint"]) as c:
        claimed = c.call("claim", owner="stuck-gpu", n=2, lease_seconds=600)["entries"]
        code, out = health(ds, "--min-free-mb", "1", "--max-stall", "0.01")
        assert code == 1 and "stalled: nothing completed" in out and "1 generators hold 2 leases" in out, out
        c.call("result", **take(claimed[0]))  # progress: healthy again
    code, out = health(ds, "--min-free-mb", "1", "--max-stall", "0.5")
    assert code == 0 and "1/6 completed" in out, out
    # free space under the floor (asked for more than there is)
    code, out = health(ds, "--min-free-mb", str(10**9))
    assert code == 1 and "free disk space" in out, out
    d.kill()
    assert health(ds) == (1, "the daemon does not answer")
    r = cli("health", "--dataset", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no dataset" in r.stderr


def test_health_on_a_full_disk_says_commits_fail(tmp_path: Path, start_daemon) -> None:
    ds = tmp_path / "small"
    tmpfs(ds, "3m")
    try:
        texts = tmp_path / "t.txt"
        texts.write_text("".join(f"frase {i}\n" for i in range(20)))
        cli("init", "--dataset", str(ds), "--texts", str(texts), check=True)
        start_daemon(ds)
        code, out = health(ds, "--min-free-mb", "1")
        assert code == 0, out
        fill(ds)
        code, out = health(ds, "--min-free-mb", "1")  # the default floor is far above a 3 MB disk
        assert code == 1 and "free disk space 0.00 GB" in out, out
        with Client(running(ds)["endpoint"], retries=1) as c:
            try:
                c.call("requeue", keys=list(range(1, 21)))
            except Exception:  # noqa: BLE001 (refused: not saved; what health says is the point)
                pass
        code, out = health(ds, "--min-free-mb", "0")
        assert code == 1 and "commits are failing (1 in a row)" in out, out
    finally:
        umount(ds)


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_agree_with_status(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"frase {i}" for i in range(12)])
    port = free_port()
    start_daemon(ds, "--metrics-port", str(port))
    with Client(running(ds)["endpoint"]) as c:
        claimed = c.call("claim", owner="gpu0", n=5)["entries"]
        for e in claimed[:3]:
            c.call("result", **take(e, 2.0))
        st = c.call("status")
    m = wait_for(lambda: (x := _scrape(port)).get(("tts_takes_completed_total", ())) == 3 and x, 10, "metrics")
    for status in ("pending", "generating", "completed", "failed"):
        assert m[("tts_entries", (("status", status),))] == st[status], status
    assert m[("tts_entries_total", ())] == 12 and m[("tts_generators", ())] == 1 and m[("tts_leases", ())] == 2
    assert m[("tts_updates_applied_total", (("op", "result"),))] == 3
    assert m[("tts_updates_applied_total", (("op", "claim"),))] == 1
    assert m[("tts_ack_seconds_count", ())] >= 4 and m[("tts_commit_seconds_count", ())] >= 4
    assert m[("tts_bytes_written_total", (("file", "journal"),))] > 0
    assert m[("tts_commit_failing", ())] == 0
    assert abs(m[("tts_last_completion_timestamp_seconds", ())] - time.time()) < 60
    # the reconciler's corrections, by kind: a completed entry whose wav is missing goes back to pending
    r = cli("status", "--dataset", str(ds))
    assert r.returncode == 0
    from pipeline.reconciler import Reconciler
    with Client(running(ds)["endpoint"]) as c:
        Reconciler(c, ds).run_pass()
    wait_for(lambda: _scrape(port).get(("tts_reconciler_corrections_total", (("kind", "completed_pending"),))) == 3,
             10, "3 corrections counted")
