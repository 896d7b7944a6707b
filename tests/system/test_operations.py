"""What an operator watches a run with: `statesvc health` in each of its states, and the daemon's
Prometheus metrics checked against `status`. Real daemons, real files, a real full tmpfs."""

from __future__ import annotations

import os
import select
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from statesvc.client import Client
from statesvc.endpoints import running
from tests.support.books import curve_keys, make_dataset, take
from tests.support.processes import BIN, cli, free_port, wait_for


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


def test_health_on_a_full_disk_says_commits_fail(tmp_path: Path, start_daemon, small_fs) -> None:
    disk = small_fs(tmp_path / "small", "3m")
    ds = make_dataset(tmp_path, [f"frase {i}" for i in range(20)], name="small")
    start_daemon(ds)
    code, out = health(ds, "--min-free-mb", "1")
    assert code == 0, out
    disk.fill()
    code, out = health(ds, "--min-free-mb", "1")  # the default floor is far above a 3 MB disk
    assert code == 1 and "free disk space 0 MB" in out, out
    with Client(running(ds)["endpoint"], retries=1) as c:
        try:
            c.call("requeue", keys=list(range(1, 21)))
        except Exception:  # noqa: BLE001 (refused: not saved; what health says is the point)
            pass
    code, out = health(ds, "--min-free-mb", "0")
    assert code == 1 and "commits are failing (1 in a row)" in out, out


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


def test_every_query_command_reaches_a_tcp_curve_daemon_and_says_so_without_keys(tmp_path: Path, start_daemon,
                                                                                 monkeypatch) -> None:
    """From "another box": the commands get the daemon's answers over tcp with CURVE keys, never
    the local files (moved away here), and without keys say so in one line at once."""
    keys, allow = curve_keys(tmp_path, allowed=("laptop",))
    ds = make_dataset(tmp_path, ["uno", "dos", "tres"])
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    with_keys = {"STATESVC_CLIENT_KEY": str(keys / "laptop.key_secret"),
                 "STATESVC_SERVER_KEY": str(keys / "daemon.key")}
    for k, v in with_keys.items():
        monkeypatch.setenv(k, v)  # the fixture's own readiness check talks tcp too
    start_daemon(ds, "--endpoint", ep, "--curve-secret", str(keys / "daemon.key_secret"), "--allow", str(allow))
    elsewhere = tmp_path / "elsewhere"  # the commands' --dataset: not the daemon's folder
    elsewhere.mkdir()
    name = orjson.loads(cli("list", "--dataset", str(ds), "--json", env=with_keys, check=True).stdout)[0]["filename"]
    commands = [("status", "--json"), ("list", "--json"), ("show", name), ("requeue", name),
                ("edit", name, "--text", "uno bis"), ("health", "--min-free-mb", "0"), ("export",),
                ("checkpoint",), ("verify",)]
    for args in commands:
        r = cli(args[0], "--dataset", str(elsewhere), "--endpoint", ep, *args[1:], env=with_keys, timeout=30)
        # verify checks the daemon's books against --dataset's wavs/: here none, and nothing completed
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert '"pending":3' in cli("status", "--dataset", str(elsewhere), "--json", env={**with_keys,
                                "STATESVC_ENDPOINT": ep}, check=True).stdout.replace(" ", "")
    assert "uno bis" in cli("show", "--dataset", str(elsewhere), "--endpoint", ep, name, env=with_keys).stdout
    # watch: the change events over tcp too
    w = subprocess.Popen([str(BIN / "statesvc"), "watch", "--dataset", str(elsewhere), "--endpoint", ep],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **with_keys})
    try:
        def seen() -> bool:
            cli("requeue", "--dataset", str(elsewhere), "--endpoint", ep, name, env=with_keys, check=True)
            return bool(select.select([w.stdout], [], [], 0.5)[0])
        wait_for(seen, 20, "a change event over tcp")
        assert name in w.stdout.readline()
    finally:
        w.kill()
        w.communicate()
    # no keys: one line, at once
    no_keys = {"STATESVC_CLIENT_KEY": "", "STATESVC_SERVER_KEY": ""}
    for args in commands + [("watch",)]:
        t0 = time.monotonic()
        r = cli(args[0], "--dataset", str(elsewhere), "--endpoint", ep, *args[1:], env=no_keys, timeout=30)
        err = r.stderr.strip()
        assert r.returncode != 0 and "needs CURVE keys" in err and "\n" not in err, (args, r.returncode, err)
        assert time.monotonic() - t0 < 5, (args, "not at once")


def test_logs_carry_no_timestamp_of_their_own_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """journald stamps time and pid itself: a line must not carry them twice. Told by $JOURNAL_STREAM
    naming stderr (a child of run-pipeline inherits the variable but logs to a file: stamps kept)."""
    ds = make_dataset(tmp_path, ["uno"])
    for journal in (True, False):
        err = tmp_path / f"stderr-{journal}.log"
        with open(err, "wb") as f:
            st = os.fstat(f.fileno())
            env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else "1:1"}
            p = subprocess.Popen([str(BIN / "statesvc"), "serve", "--dataset", str(ds)], stderr=f, env=env)
        try:
            wait_for(lambda e=err: "serving" in e.read_text(), 15, "the daemon's first line")
        finally:
            p.terminate()
            p.wait(15)
        first = err.read_text().splitlines()[0]
        assert first.startswith("INFO serving") == journal, first
        assert first[:4].isdigit() != journal, first
