"""Full disks for real: small tmpfs mounts under the state file and under wavs/."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from statesvc.audio import inspect
from statesvc.client import Client, ServiceError
from tests.support.books import make_dataset, read_state
from tests.support.processes import BIN, ROOT, cli, wait_for


def test_state_disk_full_refuses_writes_then_catches_up(tmp_path: Path, start_daemon, small_fs) -> None:
    disk = small_fs(tmp_path / "ds", "2m")
    ds = make_dataset(tmp_path, [f"text {i}" for i in range(300)])
    start_daemon(ds)
    before = (ds / "generation_state.json").read_bytes()
    junk = disk.fill()
    with Client.for_dataset(ds, timeout=5, retries=1) as c:
        with pytest.raises(ServiceError, match="not saved"):  # a record too big for a page's slack
            c.call("claim", owner="g", n=200)
        assert (ds / "generation_state.json").read_bytes() == before  # old file intact
        assert not [p for p in ds.iterdir() if p.name.endswith(".tmp")]
        assert c.call("ping")["pid"]                                   # still serving
        junk.unlink()
        got = c.call("claim", owner="g", n=200)["entries"]             # space is back
    # the refused batch was rolled back, never applied: only the second one is saved
    assert len(got) == 200 and read_state(ds)["generating"] == 200


@pytest.mark.timeout(240)
def test_generator_disk_full_pauses_without_partial_wavs_or_charges(tmp_path: Path, start_daemon, small_fs) -> None:
    ds = make_dataset(tmp_path, [f"{'una frase bastante larga ' * 8} {i}" for i in range(40)])
    disk = small_fs(ds / "wavs", "1m")
    start_daemon(ds, "--max-attempts", "10")
    log = open(tmp_path / "gen.log", "w")
    gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--synth", "tone",
                            "--min-free-mb", "0"], stderr=log)  # no guard: this test is of ENOSPC itself
    try:
        wait_for(lambda: "cannot write wavs (No space left on device)" in (tmp_path / "gen.log").read_text(),
                 30, "the generator pausing for a full disk")
        for n in os.listdir(ds / "wavs"):  # every wav under a real name is whole
            if not n.startswith(".tmp-"):     # (a temp file may be mid-write right now)
                obs = inspect(ds / "wavs" / n)  # (a take may have been moved since the listing, even while
                assert obs.valid or not (ds / "wavs" / n).exists(), (n, obs.reason)  # inspect read it)
        disk.resize("50m")
        wait_for(lambda: read_state(ds)["completed"] == 40, 90, "retries after space came back")
        gen.send_signal(signal.SIGTERM)
        assert gen.wait(timeout=30) == 0, (tmp_path / "gen.log").read_text()
        assert not [n for n in os.listdir(ds / "wavs") if n.startswith(".tmp-")], "temp files left behind"
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()
        log.close()
    assert cli("verify", "--dataset", str(ds)).returncode == 0
    # the disk, not the texts, failed: nothing was charged (a take written once counted once)
    assert all(e["attempts"] == 1 for e in read_state(ds)["entries"])


@pytest.mark.timeout(120)
def test_disk_guard_pauses_generators_uncharged_health_says_so_and_they_resume(tmp_path: Path,
                                                                              start_daemon, small_fs) -> None:
    """Under the floor, generators claim nothing and give back what they hold, uncharged; said
    once in their log; `statesvc health` reports it; they resume by themselves when space returns."""
    ds = make_dataset(tmp_path, [f"{'una frase bastante larga ' * 4} {i}" for i in range(60)])
    small_fs(ds / "wavs", "16m")
    log_path = tmp_path / "gen.log"
    start_daemon(ds)
    junk = ds / "wavs" / "junk"
    junk.write_bytes(b"\0" * (12 << 20))  # 4 MB left: under the 8 MB floor before anything is claimed
    with open(log_path, "w") as log:
        gen = subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), "--synth",
                                "tests.support.plugins:Slow", "--synth-opt", "delay=0.05", "--min-free-mb", "8"],
                               stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: "pausing (nothing claimed, nothing charged)" in log_path.read_text(), 30,
                 "the generator to pause for disk space")
        h = cli("health", "--dataset", str(ds), "--min-free-mb", "8")
        assert h.returncode == 1 and "free disk space" in h.stderr, h.stderr
        with Client.for_dataset(ds, timeout=5, retries=1) as c:  # the generator told the daemon
            wait_for(lambda: (c.call("status")["disk_pause"] or {}).get("floor_bytes") == 8 << 20, 10,
                     "the pause in the daemon's status")
        st = read_state(ds)
        assert st["completed"] == 0 and st["generating"] == 0
        assert all(e["attempts"] == 0 for e in st["entries"])
        junk.unlink()  # space returns
        wait_for(lambda: read_state(ds)["completed"] == 60, 60, "the run to resume and finish")
        text = log_path.read_text()
        assert text.count("pausing (nothing claimed") == 1 and text.count("again: resuming") == 1, text
        with Client.for_dataset(ds, timeout=5, retries=1) as c:  # and that the pause is over
            wait_for(lambda: c.call("status")["disk_pause"] is None, 10, "the pause to end in the status")
        assert cli("health", "--dataset", str(ds), "--min-free-mb", "8").returncode == 0
        assert all(e["attempts"] == 1 for e in read_state(ds)["entries"])
        gen.send_signal(signal.SIGTERM)
        assert gen.wait(timeout=30) == 0
    finally:
        if gen.poll() is None:
            gen.kill()
            gen.wait()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
