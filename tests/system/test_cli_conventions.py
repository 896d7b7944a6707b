"""The CLI conventions of `statesvc` and `pipeline`: one-line errors with exit 2 for every bad
argument and every "cannot" (a missing dataset first of all), 1 for a finding, --version, help text
and the environment variable for every option, and clean stops on SIGTERM and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import click
import numpy as np
import pytest
import soundfile as sf

import pipeline.cli
import statesvc.cli
from tests.support.books import make_dataset
from tests.support.processes import BIN, cli, free_port, wait_for

S, P = "statesvc", "pipeline"

# (tool, argv, needle in the one line on stderr). Every case exits 2. Placeholders: {ds} a dataset,
# {none} a folder that does not exist, {new} an empty folder, {bad} and {badserve} folders with an
# unreadable state, {texts} a texts file.
BAD = [
    # unknown commands and options
    (S, ["nope"], "No such command 'nope'"),
    (S, ["journal", "nope"], "No such command 'nope'"),
    (S, ["status", "--bogus"], "No such option '--bogus'"),
    (S, ["journal", "replay", "--bogus"], "No such option '--bogus'"),
    (P, ["nope"], "No such command 'nope'"),
    (P, ["run", "--bogus"], "No such option '--bogus'"),
    (P, ["reconcile", "--bogus"], "No such option '--bogus'"),
    # choices
    (S, ["list", "--dataset", "{ds}", "--status", "x"], "'x' is not one of 'pending', 'generating'"),
    (S, ["export", "--dataset", "{ds}", "--format", "csv"], "'csv' is not one of 'ljspeech', 'jsonl'"),
    (S, ["review", "--dataset", "{ds}", "1", "maybe"], "'maybe' is not one of 'approved', 'rejected', 'none'"),
    (S, ["serve", "--dataset", "{ds}", "--log-level", "bogus"], "'bogus' is not one of 'DEBUG'"),
    (S, ["dashboard", "--dataset", "{ds}", "--log-level", "bogus"], "'bogus' is not one of 'DEBUG'"),
    (P, ["generate", "--dataset", "{ds}", "--log-level", "bogus"], "'bogus' is not one of 'DEBUG'"),
    (P, ["reconcile", "--dataset", "{ds}", "--log-level", "bogus"], "'bogus' is not one of 'DEBUG'"),
    # numbers
    (S, ["serve", "--dataset", "{ds}", "--lease-seconds", "0"], "--lease-seconds"),
    (S, ["serve", "--dataset", "{ds}", "--max-attempts", "x"], "'x' is not a valid integer"),
    (S, ["serve", "--dataset", "{ds}", "--checkpoint-bytes", "1"], "--checkpoint-bytes"),
    (S, ["serve", "--dataset", "{ds}", "--metrics-port", "70000"], "--metrics-port"),
    (S, ["health", "--dataset", "{ds}", "--max-stall", "-1"], "--max-stall"),
    (S, ["health", "--dataset", "{ds}", "--min-free-mb", "lots"], "'lots' is not a valid integer"),
    (S, ["dashboard", "--dataset", "{ds}", "--port", "x"], "'x' is not a valid integer"),
    (P, ["generate", "--dataset", "{ds}", "--batch", "0"], "--batch"),
    (P, ["generate", "--dataset", "{ds}", "--heartbeat-seconds", "0"], "0.1<=x<=3600"),
    (P, ["generate", "--dataset", "{ds}", "--max-synthesis-seconds", "x"], "'x' is not a valid float"),
    (P, ["generate", "--dataset", "{ds}", "--wait", "-1"], "--wait"),
    (P, ["reconcile", "--dataset", "{ds}", "--interval", "abc"], "'abc' is not a valid float"),
    (P, ["reconcile", "--dataset", "{ds}", "--temp-max-age", "-5"], "--temp-max-age"),
    (P, ["run", "--dataset", "{ds}", "--workers", "0"], "--workers"),
    (P, ["run", "--dataset", "{ds}", "--reconcile-interval", "0.1"], "--reconcile-interval"),
    (P, ["run", "--dataset", "{ds}", "--dashboard", "0"], "--dashboard"),
    # missing arguments, arguments that do not go together
    (S, ["init", "--dataset", "{new}"], "Missing option '--texts'"),
    (S, ["keygen", "--name", "x"], "Missing option '--out'"),
    (S, ["show", "--dataset", "{ds}"], "Missing argument 'KEY'"),
    (S, ["edit", "--dataset", "{ds}", "1"], "Missing option '--text'"),
    (S, ["review", "--dataset", "{ds}", "1"], "Missing argument 'VERDICT'"),
    (S, ["requeue", "--dataset", "{ds}"], "give entry ids or filenames, or --failed"),
    (S, ["serve", "--dataset", "{ds}", "--curve-secret", "k"], "--curve-secret and --allow go together"),
    (S, ["serve", "--dataset", "{ds}", "--endpoint", "tcp://127.0.0.1:1"], "requires --curve-secret"),
    (S, ["dashboard", "--dataset", "{ds}", "--host", "0.0.0.0"], "--token-file"),
    (S, ["dashboard", "--dataset", "{ds}", "--token-file", "{none}"], "token"),
    (S, ["init", "--dataset", "{ds}", "--texts", "{texts}"], "already exists"),
    (S, ["init", "--dataset", "{new}", "--texts", "{none}"], "{none}"),
    (P, ["generate", "--dataset", "{ds}", "--synth", "nope"], "unknown synthesizer 'nope'"),
    (P, ["generate", "--dataset", "{ds}", "--synth", "nomodule:X"], "cannot load synthesizer"),
    (P, ["generate", "--dataset", "{ds}", "--synth-opt", "novalue"], "'novalue' is not KEY=VALUE"),
    (P, ["generate", "--dataset", "{ds}", "--synth", "tone", "--endpoint", "garbage"], "cannot use endpoint"),
    (P, ["run", "--dataset", "{new}"], "give --texts FILE"),
    (P, ["run", "--dataset", "{new}", "--texts", "{texts}", "--synth", "nope"], "unknown synthesizer 'nope'"),
    # text that is not UTF-8 (a Latin-1 terminal), and a superscript digit that is no id
    (S, ["show", "--dataset", "{ds}", "\udcb2"], "not valid UTF-8"),
    (S, ["edit", "--dataset", "{ds}", "1", "--text", "\udcb2"], "not valid UTF-8"),
    (S, ["show", "--dataset", "{ds}", "²"], "no entry '²'"),
    (P, ["generate", "--dataset", "{ds}", "--owner", "\udcb2"], "not valid UTF-8"),
    # no daemon where one is required
    (S, ["watch", "--dataset", "{ds}"], "no statesvc daemon serves"),
    (P, ["reconcile", "--dataset", "{ds}", "--wait", "0"], "no statesvc daemon serves"),
    (P, ["generate", "--dataset", "{ds}", "--synth", "tone", "--wait", "0"], "no statesvc daemon serves"),
    # a state that cannot be read
    (S, ["status", "--dataset", "{bad}"], "not valid JSON"),
    (S, ["verify", "--dataset", "{bad}"], "not valid JSON"),
    (S, ["export", "--dataset", "{bad}"], "not valid JSON"),
    (S, ["serve", "--dataset", "{badserve}"], "not valid JSON"),  # its own: a serve holds the lock a moment
]
# A dataset that is not there, for every command that needs one.
MISSING = [
    (S, ["status"]), (S, ["list"]), (S, ["show", "1"]), (S, ["requeue", "1"]), (S, ["edit", "1", "--text", "x"]),
    (S, ["review", "1", "approved"]), (S, ["verify"]), (S, ["export"]), (S, ["watch"]), (S, ["checkpoint"]),
    (S, ["health"]), (S, ["journal", "replay"]), (S, ["journal", "discard"]), (S, ["serve"]), (S, ["dashboard"]),
    (S, ["add", "--texts", "{texts}"]), (P, ["generate"]), (P, ["reconcile"]),
]
CASES = BAD + [(tool, [*argv, "--dataset", "{none}"], "no dataset at") for tool, argv in MISSING] + [
    (P, ["run", "--dataset", "{none}"], "has no state; give --texts")]


def _id(case: tuple) -> str:
    return f"{case[0]} {' '.join(case[1])}".replace("\udcb2", "\\xb2")


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("conventions")
    ds = make_dataset(root, ["uno", "dos", "tres"])
    (root / "new").mkdir()
    for bad in ("bad", "badserve"):
        (root / bad / "wavs").mkdir(parents=True)
        (root / bad / "generation_state.json").write_text("garbage\n")
    return {"ds": str(ds), "none": str(root / "none"), "new": str(root / "new"), "bad": str(root / "bad"),
            "badserve": str(root / "badserve"), "texts": str(root / "ds-texts.txt")}


@pytest.fixture(scope="module")
def outcomes(places: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    """Every case run at once, as real processes: the table costs a few seconds, not a minute.
    None writes: each fails before it takes the dataset's lock."""
    def run(case: tuple) -> subprocess.CompletedProcess:
        tool, argv, _ = case
        return cli(*[a.format(**places) for a in argv], tool=tool, timeout=60)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(map(_id, CASES), pool.map(run, CASES), strict=True))


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bad_arguments_are_one_line_and_exit_2(case: tuple, places: dict, outcomes: dict) -> None:
    r = outcomes[_id(case)]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr and "Usage:" not in r.stderr, r.stderr
    assert lines[0].startswith(f"{case[0]}: error: "), lines[0]
    assert case[2].format(**places) in lines[0], lines[0]


def test_refusals_exit_2_offline_and_through_the_daemon(tmp_path: Path, start_daemon) -> None:
    """The same request refused the same way, whether the daemon answers or the files do."""
    ds = make_dataset(tmp_path, ["uno"])
    refused = [["show", "99"], ["requeue", "99"], ["edit", "99", "--text", "x"], ["review", "99", "approved"],
               ["review", "1", "approved"]]  # the last: nothing to approve on an entry not yet generated
    for daemon in (False, True):
        if daemon:
            start_daemon(ds)
        for argv in refused:
            r = cli(*argv, "--dataset", str(ds))
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (daemon, argv, r.stderr)


def test_verify_tells_a_finding_from_cannot_check(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, ["uno", "dos"])
    assert cli("verify", "--dataset", str(ds)).returncode == 0
    sf.write(ds / "wavs" / "ds_0001.wav", np.zeros(2205, dtype=np.int16), 22050)  # audio of a pending entry
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 1 and r.stdout.strip().splitlines()[-1] == "1 sync errors", r.stdout
    r = cli("verify", "--dataset", str(tmp_path / "elsewhere"))
    assert r.returncode == 2 and r.stdout == "" and "no dataset at" in r.stderr, r.stderr
    (ds / "generation_state.json").write_text("{")
    r = cli("verify", "--dataset", str(ds))
    assert r.returncode == 2 and "sync errors" not in r.stdout and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("tool", [S, P])
def test_version(tool: str) -> None:
    r = cli("--version", tool=tool, check=True)
    assert r.stdout.strip() == f"{tool} {version('tts-dataset-pipeline')}"


def _commands(group: click.Group, path: str) -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = [(path, group)]
    ctx = click.Context(group, info_name=path)
    for name in group.list_commands(ctx):  # the commands other packages register (the page's) too
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"{path} {name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{path} {name}")
        else:
            out.append((f"{path} {name}", cmd))
    return out


COMMANDS = _commands(statesvc.cli.main, S) + _commands(pipeline.cli.main, P)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_env_var(path: str, cmd: click.Command) -> None:
    ctx = click.Context(cmd, info_name=path)
    assert cmd.help, f"{path} has no help"
    text = cmd.get_help(ctx)
    for opt in cmd.get_params(ctx):
        if not isinstance(opt, click.Option):
            continue
        assert opt.help and opt.help.strip(), f"{path} {opt.opts[0]} has no help text"
        if opt.envvar:
            assert opt.show_envvar, f"{path} {opt.opts[0]} does not show ${opt.envvar}"
            assert f"env var: {opt.envvar}" in " ".join(text.split()), f"{path} --help lacks ${opt.envvar}"


def _spawn(tmp_path: Path, name: str, *argv: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=o, stderr=e, env=os.environ.copy())
    return proc, out, err


def test_reconcile_and_watch_stop_cleanly_on_sigterm_and_ctrl_c(tmp_path: Path, start_daemon) -> None:
    ds = make_dataset(tmp_path, [f"frase {i}" for i in range(20)])
    start_daemon(ds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc, out, err = _spawn(tmp_path, f"reconcile-{sig.name}", P, "reconcile", "--dataset", str(ds),
                                "--interval", "0.5")
        try:  # at least two passes: it is running its loop when the signal comes
            wait_for(lambda out=out: out.read_text().count("reconcile:") >= 2, 20, "two reconcile passes")
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "Traceback" not in err.read_text() and f"stopping on {sig.name}" in err.read_text(), err.read_text()
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc, out, err = _spawn(tmp_path, f"watch-{sig.name}", S, "watch", "--dataset", str(ds))
        try:  # it shows a change made once it is subscribed
            def seen(out: Path = out) -> bool:
                cli("requeue", "1", "--dataset", str(ds), check=True)
                return "ds_0001" in out.read_text()
            wait_for(seen, 20, "watch to show a change")
            proc.send_signal(sig)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert err.read_text().strip() == "", err.read_text()


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False


def test_dashboard_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """uvicorn stops gracefully, then raises the signal again: still a clean exit 0, no traceback."""
    ds = make_dataset(tmp_path, ["uno"])
    port = free_port()
    proc, _out, err = _spawn(tmp_path, "dashboard", S, "dashboard", "--dataset", str(ds), "--port", str(port))
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/status"), 30, "the dashboard to answer")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err.read_text(), err.read_text()
