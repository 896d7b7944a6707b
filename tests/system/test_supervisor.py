"""run-pipeline's supervisor over real processes: deaths told to the daemon, owner ids per start, logs rotated
(its child state table is tested in tests/unit/test_child_states.py)."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline import supervisor
from pipeline.supervisor import (
    Child,
    ChildState,
    PipelineError,
    Run,
)
from tests.support.books import read_state
from tests.support.processes import ROOT, cli, wait_for

S = ChildState
OWNER = re.compile(rf"^{re.escape(socket.gethostname())}:(generate-\d+|gen):[0-9a-f]{{8}}$")


# ---- the supervisor over real processes, no daemon ----------------------------------

@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path, workers=0, gen_args=[], out=io.StringIO())
    # a placeholder that never starts: the supervisor must not start a daemon of its own here
    r.daemon = Child("statesvc", [], tmp_path / "logs" / "statesvc.log")
    yield r
    r.stop_children(why="end of test")


def step_until(r: Run, cond, what: str, timeout: float = 10.0) -> None:
    def stepped() -> object:
        r.supervise()
        return cond()
    wait_for(stepped, timeout, what)


def test_killed_generator_is_reported_and_restarted_under_a_new_owner(run: Run, tmp_path: Path) -> None:
    # prints its own arguments, so the test sees the --owner it was given
    c = run.spawn("gen", [sys.executable, "-c", "import sys, time; print(sys.argv[1:], flush=True); time.sleep(60)"],
                  leases=True)
    first_owner, first_pid = c.owner, c.proc.pid
    assert c.state is S.STARTING and OWNER.match(first_owner)
    step_until(run, lambda: c.state is S.RUNNING, "promoted to RUNNING")
    os.kill(first_pid, signal.SIGKILL)
    step_until(run, lambda: c.state is S.BACKING_OFF, "the death noticed")
    out = run.out.getvalue()
    assert f"gen (pid {first_pid}) exited with signal SIGKILL; restarting in 0.2 s" in out
    assert (f"gen (pid {first_pid}) died (signal SIGKILL); the daemon was not told (no statesvc daemon serves "
            f"{tmp_path}); its leases come back when they expire") in out
    step_until(run, lambda: c.state is S.STARTING, "the restart")
    assert c.owner != first_owner and OWNER.match(c.owner) and c.restarts == 1 and c.pids == [first_pid, c.proc.pid]
    wait_for(lambda: c.log.read_text().count("--owner") == 2, 10, "the second start's arguments in the log")
    assert [f"['--owner', '{first_owner}']", f"['--owner', '{c.owner}']"] == c.log.read_text().splitlines()
    run.stop_children(why="end of test")
    assert c.state is S.STOPPED and c.why == "end of test" and not c.alive()
    run.stop_children(why="again")  # stopping twice is harmless: a stopped child is left alone
    assert c.why == "end of test"


def test_a_child_that_cannot_start_is_given_up(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_MAX", 0.1)  # the crash-loop rule, without the real backoff wait
    c = run.spawn("broken", [sys.executable, "-c", "print('bad option --frobnicate'); raise SystemExit(2)"])
    with pytest.raises(PipelineError, match=r"broken keeps failing at start \(exit 2\): bad option --frobnicate"):
        step_until(run, lambda: False, "a crash loop", timeout=15)
    assert c.state is S.GIVEN_UP and c.restarts == supervisor.CRASH_LOOP - 1
    assert "died" not in run.out.getvalue()  # not a generator: it holds no leases
    run.stop_children(why="end of test")
    assert c.state is S.GIVEN_UP  # terminal


# ---- a whole run: real daemon, reconciler and generators -------------------------------

def test_run_reports_a_killed_generator_to_the_daemon(tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("one\ntwo\nplease KILL me\nfour\nfive\nsix\n")
    ds = tmp_path / "ds"
    r = cli("run", "--dataset", str(ds), "--texts", str(texts), "--workers", "2",
            "--synth", "tests.support.plugins:Flaky",
            "--lease-seconds", "1", "--max-attempts", "1", "--reconcile-interval", "0.5", tool="pipeline",
            env={"PYTHONPATH": str(ROOT)}, timeout=20)
    assert r.returncode == 3, r.stderr
    assert "finished: completed 5/6, failed 1" in r.stderr, r.stderr
    died = re.findall(r"^generate-\d \(pid \d+\) died \(signal SIGKILL\); (.*)$", r.stderr, re.M)
    assert died, r.stderr
    for rest in died:
        # the daemon's answer, or (until its "died" op lands) its refusal; the run goes on either way
        assert re.fullmatch(r"it held no leases|its \d+ leases? (is|are) back(: .*)?"
                            r"|the daemon was not told \(unknown op 'died'\); its leases come back when they expire",
                            rest), rest
    if not any("unknown op" in rest for rest in died):
        assert any(re.search(r"entr(y|ies) [\d, ]*\b3\b.* charged an attempt", rest) for rest in died), died
    assert [e["id"] for e in read_state(ds)["entries"] if e["status"] == "failed"] == [3]
    # every generator start that got as far as logging had its own owner id (a restart may be
    # stopped at the end of the run before it logs)
    owners = [m for log in (ds / "logs").glob("generate-*.log")
              for m in re.findall(r"INFO generator (\S+): synth", log.read_text())]
    starts = 2 + len(re.findall(r"^generate-\d restarted", r.stderr, re.M))
    assert owners and len(owners) == len(set(owners)) <= starts and all(OWNER.match(o) for o in owners), owners


def test_heartbeat_option_is_checked() -> None:
    import pipeline.cli
    bad = CliRunner().invoke(pipeline.cli.main, ["generate", "--heartbeat-seconds", "0"])
    assert bad.exit_code == 2 and "0.1" in bad.output


def test_a_childs_log_is_rotated_by_size_while_it_writes(tmp_path: Path) -> None:
    """A real child writing without pause: its log is rotated past the size, a few files kept,
    and it goes on writing into the fresh file through the descriptor it was given."""
    script = "import sys, itertools\nfor i in itertools.count():\n    print(f'line {i:08d} ' + 'x' * 80, flush=True)\n"
    c = Child("chatty", [sys.executable, "-c", script], tmp_path / "logs" / "chatty.log")
    c.start("test")
    try:
        rotations = 0
        for _ in range(5):
            wait_for(lambda: c.log.stat().st_size > 20_000, 10, "the log to grow")
            rotations += c.rotate_log(max_bytes=20_000, keep=3)
        assert rotations == 5
        wait_for(lambda: c.log.stat().st_size > 0, 10, "the child to write into the fresh file")
        kept = sorted(p.name for p in c.log.parent.iterdir())
        assert kept == ["chatty.log", "chatty.log.1", "chatty.log.2", "chatty.log.3"], kept
        # the fresh file holds whole lines, newer than every rotated one, and has no hole of zeros
        fresh = c.log.read_bytes()
        assert b"\0" not in fresh
        newest_rotated = int(c.log.with_name("chatty.log.1").read_text().strip().splitlines()[-1].split()[1])
        assert int(fresh.decode().splitlines()[-1].split()[1]) > newest_rotated
        assert not c.rotate_log(max_bytes=10**9)  # under the size: left alone
    finally:
        c.signal(signal.SIGKILL)
        c.proc.wait()
