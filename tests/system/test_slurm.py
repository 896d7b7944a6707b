"""Batch schedulers: `pipeline generate --until-done`, SIGTERM, and a real Slurm array job.

The fast tests need no Slurm. The slow one starts a single-node Slurm cluster (Debian's
`slurm-wlm` and `munge`, on private ports and files; needs root) and runs
`deploy/slurm/generate.sbatch` as an array against a tcp daemon with CURVE keys, one task
`scancel`ed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from statesvc.client import Client
from tests.support.books import make_dataset, read_state
from tests.support.processes import BIN, ROOT, cli, wait_for

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # tests.support.plugins importable by the generators


def generate(ds: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "pipeline"), "generate", "--dataset", str(ds), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def finish(p: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"generator still running after {timeout}s:\n{err[-3000:]}") from None
    return p.returncode, err


def test_until_done_waits_for_other_generators_leases(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"texto {i}" for i in range(20)])
    start_daemon(ds)  # the default lease (10 s): ours never lapse, even on a loaded machine
    ep = f"ipc://{ds / 'statesvc.sock'}"
    with Client(ep, timeout=5, retries=1) as c:
        # another generator holds two texts and dies (never renews): they come back in about 2 s,
        # and the --until-done generator must wait for them rather than exit with 18 of 20
        ghost = c.call("claim", owner="ghost", n=2, lease_seconds=2)["entries"]
    assert len(ghost) == 2
    started = time.monotonic()
    code, err = finish(generate(ds, "--synth", "tone", "--until-done"), 60)
    assert code == 0, err
    assert "nothing pending or generating" in err and "stopping (done)" in err
    assert time.monotonic() - started > 1.0, "exited before the ghost's leases ended"
    doc = read_state(ds)
    assert (doc["completed"], doc["pending"], doc["generating"]) == (20, 0, 0)
    assert all(e["attempts"] == 1 for e in doc["entries"])
    assert cli("verify", "--dataset", str(ds)).returncode == 0
    # nothing left to do at start: exits 0 at once
    started = time.monotonic()
    code, err = finish(generate(ds, "--synth", "tone", "--until-done"), 30)
    assert code == 0, err
    assert time.monotonic() - started < 15


def test_until_done_exits_with_failed_entries(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "please RAISE", "tres"])
    start_daemon(ds, "--max-attempts", "1")
    code, err = finish(generate(ds, "--synth", "tests.support.plugins:Flaky", "--until-done"), 60)
    assert code == 0, err
    doc = read_state(ds)
    assert (doc["completed"], doc["failed"], doc["pending"], doc["generating"]) == (2, 1, 0, 0)


def test_without_until_done_the_generator_waits(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    start_daemon(ds)
    p = generate(ds, "--synth", "tone")
    try:
        wait_for(lambda: read_state(ds)["completed"] == 2, 30, "both completed")
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=3)  # a service (systemd) waits for new texts
    finally:
        p.send_signal(signal.SIGTERM)
    code, err = finish(p, 30)
    assert code == 0, err


def test_sigterm_gives_work_back_at_once(tmp_path: Path, start_daemon) -> None:
    """What `scancel` sends first: the text under way is finished and reported, the prefetched
    ones are released uncharged; nothing waits for a lease to expire."""
    ds = make_dataset(tmp_path, [f"frase {i}" for i in range(40)])
    start_daemon(ds, "--lease-seconds", "60")  # a lease never expires within this test
    p = generate(ds, "--synth", "tests.support.plugins:Slow", "--synth-opt", "delay=0.3", "--until-done")
    try:
        wait_for(lambda: read_state(ds)["completed"] >= 2 and read_state(ds)["generating"] >= 2, 30,
                 "working with texts in hand")
    finally:
        p.send_signal(signal.SIGTERM)
    code, err = finish(p, 30)
    assert code == 0 and "stopping on SIGTERM" in err, err
    doc = read_state(ds)
    assert doc["generating"] == 0 and 2 <= doc["completed"] < 40
    assert doc["completed"] + doc["pending"] == 40
    assert all(e["attempts"] == 0 for e in doc["entries"] if e["status"] == "pending")
    assert all(e["attempts"] == 1 for e in doc["entries"] if e["status"] == "completed")
    assert cli("verify", "--dataset", str(ds)).returncode == 0



def test_sbatch_script_checks_env_and_passes_arguments(tmp_path: Path) -> None:
    """generate.sbatch run by bash alone (as slurmd would, minus Slurm): one-line errors for what is
    missing, then exactly `pipeline generate --until-done ...` with the arguments after its name."""
    script = ROOT / "deploy" / "slurm" / "generate.sbatch"
    fake = tmp_path / "pipeline"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    key = tmp_path / "k"
    key.write_text("x")
    full = {"STATESVC_DATASET": "/data/ds", "STATESVC_ENDPOINT": "tcp://head:5555", "STATESVC_CLIENT_KEY": str(key),
            "STATESVC_SERVER_KEY": str(key), "PIPELINE": str(fake), "SLURM_ARRAY_JOB_ID": "77",
            "SLURM_ARRAY_TASK_ID": "3"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STATESVC_", "SLURM_", "PIPELINE"))}

    def run(env: dict, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), *args], env={**base, **env}, capture_output=True, text=True,
                              timeout=30)
    for var in ("STATESVC_DATASET", "STATESVC_ENDPOINT", "STATESVC_CLIENT_KEY", "STATESVC_SERVER_KEY"):
        r = run({k: v for k, v in full.items() if k != var})
        assert r.returncode == 2 and var in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run({**full, "STATESVC_SERVER_KEY": str(tmp_path / "nope")})
    assert r.returncode == 2 and "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run({**full, "PIPELINE": str(tmp_path / "absent")})
    assert r.returncode == 2 and "PIPELINE" in r.stderr, r.stderr
    r = run(full, "--synth", "tone", "--synth-opt", "a=b c", "--batch", "4")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()
    owner = argv[argv.index("--owner") + 1]
    assert argv == ["generate", "--until-done", "--dataset", "/data/ds", "--endpoint", "tcp://head:5555",
                    "--owner", owner, "--synth", "tone", "--synth-opt", "a=b c", "--batch", "4"]
    assert owner.startswith("slurm-77-3-")
    again = run(full).stdout.splitlines()
    assert again[again.index("--owner") + 1] != owner, "an owner must be new at each process start"
    assert "#SBATCH --gres" not in script.read_text(), "the GPU request belongs on the sbatch command line"

# ---- a real Slurm cluster -------------------------------------------------------------------
SBATCH = ROOT / "deploy" / "slurm" / "generate.sbatch"
TEXTS = 60


def owners_generating(ds: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in read_state(ds)["entries"]:
        if e["status"] == "generating" and e.get("lease"):
            out[e["lease"]["owner"]] = out.get(e["lease"]["owner"], 0) + 1
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_slurm_array_finishes_a_dataset_with_a_task_scancelled(tmp_path: Path, start_daemon, monkeypatch) -> None:
    from tests.support.slurm_cluster import SlurmCluster, free_port, missing_reason
    if (why := missing_reason()) is not None:
        pytest.skip(why)
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    for name in ("daemon", "gpu"):
        cli("keygen", "--out", str(keys), "--name", name, check=True)
    allow.mkdir()
    (allow / "gpu.key").write_bytes((keys / "gpu.key").read_bytes())
    ds = make_dataset(tmp_path, [f"frase número {i} del conjunto" for i in range(TEXTS)])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    curve = {"STATESVC_CLIENT_KEY": str(keys / "gpu.key_secret"), "STATESVC_SERVER_KEY": str(keys / "daemon.key")}
    for k, v in curve.items():
        monkeypatch.setenv(k, v)  # for this process's own queries (statesvc status over tcp)
    start_daemon(ds, "--endpoint", endpoint, "--curve-secret", str(keys / "daemon.key_secret"), "--allow", str(allow))
    # what a user exports on the head node before sbatch (sbatch passes the environment on)
    env = {**curve, "STATESVC_DATASET": str(ds), "STATESVC_ENDPOINT": endpoint, "PIPELINE": str(BIN / "pipeline"),
           "PYTHONPATH": str(ROOT)}
    cluster = SlurmCluster(tmp_path / "slurm")
    try:
        t0 = time.monotonic()
        cluster.start()
        up = time.monotonic() - t0
        job = cluster.sbatch("--array=0-2", str(SBATCH), "--synth", "tests.support.plugins:Slow",
                             "--synth-opt", "delay=0.2", cwd=tmp_path, env=env)

        def victim() -> str | None:
            """A running task that has done some work and holds leases right now."""
            if read_state(ds)["completed"] < 4:
                return None
            running = {t for t, f in cluster.tasks(job).items() if f.get("JobState") == "RUNNING"}
            for owner, n in owners_generating(ds).items():
                task = owner.split("-")[2] if owner.startswith(f"slurm-{job}-") else None
                if n and task in running:
                    return task
            return None
        task = wait_for(victim, 120, "a running array task holding leases")
        before = read_state(ds)["completed"]
        assert before < TEXTS - 10, "the run is too fast to cancel a task mid-run"
        cluster.run("scancel", f"{job}_{task}")
        wait_for(lambda: cluster.finished(job), 120, "every array task finished")
        tasks = cluster.tasks(job)
        status = orjson.loads(cli("status", "--dataset", str(ds), "--json", check=True).stdout)
    except BaseException:
        dump(cluster, tmp_path, ds)
        raise
    finally:
        cluster.stop()
    assert cluster.ours() == []
    assert sorted(tasks) == ["0", "1", "2"], tasks
    out = {t: (tmp_path / f"tts-generate-{job}_{t}.out").read_text(errors="replace") for t in tasks}
    assert tasks[task]["JobState"] == "CANCELLED", tasks[task]
    assert "stopping on SIGTERM" in out[task] and "Traceback" not in out[task], out[task]  # a clean stop
    for t, f in tasks.items():
        if t != task:
            assert (f["JobState"], f["ExitCode"]) == ("COMPLETED", "0:0"), (t, f, out[t])
            assert "Traceback" not in out[t], out[t]
    assert any("nothing pending or generating" in out[t] for t in tasks if t != task)
    assert (status["completed"], status["pending"], status["generating"], status["failed"]) == (TEXTS, 0, 0, 0)
    assert status["total"] == TEXTS
    assert_books(ds)
    print(f"slurm up in {up:.1f} s; task {task} cancelled at {before}/{TEXTS} completed")


def assert_books(ds: Path) -> None:
    """verify agrees, the counters add up, every entry has its wav and was synthesized once."""
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 0 and r.stdout.strip().endswith("0 sync errors"), r.stdout
    doc = read_state(ds)
    for k in ("pending", "generating", "completed", "failed"):
        assert doc[k] == sum(e["status"] == k for e in doc["entries"]), k
    wavs = {p.stem for p in (ds / "wavs").glob("*.wav")}
    assert all(e["filename"] in wavs for e in doc["entries"])
    assert all(e["attempts"] == 1 for e in doc["entries"]), "the cancelled task's texts were charged"
    assert not [p for p in (ds / "wavs").iterdir() if p.name.startswith((".tmp-", ".take-"))]


def dump(cluster, tmp_path: Path, ds: Path) -> None:
    """What a failure needs to be understood: the cluster's logs, each task's output, the books."""
    print(cluster.output())
    for f in sorted(tmp_path.glob("tts-generate-*.out")):
        print(f"--- {f.name}\n{f.read_text(errors='replace')[-4000:]}")
    print(cli("status", "--dataset", str(ds), timeout=10).stdout, cluster.run("squeue", check=False).stdout)
    print(cluster.run("ps", "-eo", "pid,ppid,stat,etime,cmd", check=False).stdout)
