"""The `pipeline` command: generate, reconcile, run. Thin wrappers over the library."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import click

from statesvc.client import Client, NoDaemon, ServiceError, Unavailable
from statesvc.endpoints import running

from .synth import PluginError, build

log = logging.getLogger("pipeline")

dataset_opt = click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=".",
                           envvar="STATESVC_DATASET", show_default=True)
endpoint_opt = click.option("--endpoint", default=None, envvar="STATESVC_ENDPOINT",
                            help="Daemon control endpoint (default: the one serving --dataset).")
heartbeat_opt = click.option("--heartbeat-seconds", type=click.FloatRange(0.1, 3600), default=None,
                             help="Seconds between lease heartbeats (default: a fifth of the lease)")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"pipeline: error: {message}", err=True)
    sys.exit(code)


def parse_opts(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--synth-opt")
        out[key] = value
    return out


def endpoint_for(dataset: Path, endpoint: str | None, wait: float) -> str:
    """The endpoint to use; with none given, wait up to ``wait`` s for a daemon on the dataset."""
    if endpoint:
        return endpoint
    deadline = time.monotonic() + wait
    while True:
        rec = running(dataset)
        if rec and rec.get("endpoint"):
            return rec["endpoint"]
        if time.monotonic() > deadline:
            raise NoDaemon(f"no statesvc daemon serves {dataset} (start: statesvc serve --dataset {dataset})")
        time.sleep(0.05)


@click.group()
def main() -> None:
    """Generate TTS audio for a statesvc dataset."""


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--synth", default="espeak", show_default=True, help="Name or package.module:Class.")
@click.option("--synth-opt", "synth_opts", multiple=True, metavar="KEY=VALUE")
@click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--wait", type=float, default=30.0, help="Seconds to wait for a daemon to appear.")
@click.option("--owner", default=None,
              help="Lease owner name; must be new at each process start (default HOST:PID:RANDOM).")
@heartbeat_opt
@click.option("--max-synthesis-seconds", type=click.FloatRange(1, 7 * 86400), default=3600.0, show_default=True,
              help="A synthesis running longer is stuck: its leases are let go (they expire, the text is charged).")
@click.option("--until-done", is_flag=True, envvar="PIPELINE_UNTIL_DONE", show_envvar=True,
              help="Exit 0 once the daemon has nothing pending and nothing generating (a batch job, e.g. a "
                   "Slurm array task, frees its GPU at the end). Without it the generator waits for new texts.")
@click.option("--log-level", default="INFO")
def generate(dataset: Path, endpoint: str | None, synth: str, synth_opts: tuple[str, ...], batch: int,
             wait: float, owner: str | None, heartbeat_seconds: float | None, max_synthesis_seconds: float,
             until_done: bool, log_level: str) -> None:
    """One generator process: claim, synthesize, write wavs, report."""
    from .generator import Generator, install_signals
    setup_logging(log_level)
    try:
        model = build(synth, parse_opts(synth_opts))
        if not (dataset / "wavs").is_dir():
            raise PluginError(f"{dataset / 'wavs'} is not a folder (is {dataset} a dataset?)")
        ep = endpoint_for(dataset, endpoint, wait)
    except (PluginError, NoDaemon) as exc:
        fail(str(exc))
    except Exception as exc:  # a plugin's own constructor failing
        fail(f"synthesizer {synth!r} failed to start: {type(exc).__name__}: {exc}")
    given = {"owner": owner, "heartbeat_seconds": heartbeat_seconds, "max_synthesis_seconds": max_synthesis_seconds}
    gen = Generator(Client(ep), model, dataset, batch=batch, until_done=until_done,
                    **{k: v for k, v in given.items() if v is not None})
    install_signals(gen)
    log.info("generator %s: synth %s at %d Hz, batch %d, daemon %s%s", gen.owner, synth,
             model.sample_rate, batch, ep, ", until done" if until_done else "")
    sys.exit(gen.run())


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--interval", type=click.FloatRange(0.1, 86400), default=30.0, show_default=True)
@click.option("--once", is_flag=True, help="One pass, print what was fixed, exit.")
@click.option("--temp-max-age", type=float, default=300.0, show_default=True,
              help="Remove temp files in wavs/ older than this (seconds; longer than a lease).")
@click.option("--wait", type=float, default=30.0)
def reconcile(dataset: Path, endpoint: str | None, interval: float, once: bool, temp_max_age: float,
              wait: float) -> None:
    """Check wavs/ against the state and report to the daemon."""
    setup_logging()
    try:
        ep = endpoint_for(dataset, endpoint, wait)
    except NoDaemon as exc:
        fail(str(exc))
    from .reconciler import Reconciler, describe  # opening wavs needs soundfile: not for the other commands
    rec = Reconciler(Client(ep, timeout=10.0, retries=6), dataset, temp_max_age)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    failures = 0
    while True:
        try:
            for line in describe(rec.run_pass()):
                click.echo(line)
            sys.stdout.flush()
            failures = 0
            if once:
                return
        except (Unavailable, ServiceError) as exc:
            failures += 1
            if once and failures >= 3:
                fail(str(exc))
            log.warning("reconcile pass failed: %s", exc)
            if once:
                continue
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and not stop:
            time.sleep(min(0.05, interval))  # short: SIGTERM is noticed within it
        if stop:
            return


@main.command()
@dataset_opt
@click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Create the dataset from this file when it has no state yet.")
@click.option("--prefix", default=None)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--synth", default="espeak", show_default=True)
@click.option("--synth-opt", "synth_opts", multiple=True, metavar="KEY=VALUE")
@click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--reconcile-interval", type=click.FloatRange(0.5, 86400), default=30.0, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(1, 86400), default=None)
@click.option("--max-attempts", type=click.IntRange(1, 100), default=None)
@heartbeat_opt
@click.option("--dashboard", "dashboard_port", type=click.IntRange(1, 65535), is_flag=False, flag_value=8321,
              default=None, metavar="[PORT]",
              help="Also serve the review dashboard on 127.0.0.1:PORT (default 8321); the run then stays up "
                   "for review once everything is generated, until Ctrl-C.")
def run(dataset: Path, texts: Path | None, prefix: str | None, workers: int, synth: str,
        synth_opts: tuple[str, ...], batch: int, reconcile_interval: float, lease_seconds: float | None,
        max_attempts: int | None, heartbeat_seconds: float | None, dashboard_port: int | None) -> None:
    """Run a whole dataset locally: daemon, reconciler, N generators (bin/run-pipeline)."""
    from statesvc.dataset import DatasetError, state_path
    from statesvc.store import DamagedState
    from statesvc.texts import TextsError

    from .supervisor import PipelineError, Run, install_signals, plan
    parse_opts(synth_opts)  # a malformed option is a usage error before anything starts
    try:
        new_state = plan(dataset, texts, prefix, synth)
    except (DatasetError, TextsError, PluginError, PipelineError) as exc:
        fail(str(exc))
    if new_state is None and texts is not None:
        click.echo(f"resuming {dataset} (state exists; --texts ignored)", err=True)
    gen_args = ["--synth", synth, "--batch", str(batch)]
    for o in synth_opts:
        gen_args += ["--synth-opt", o]
    if heartbeat_seconds is not None:
        gen_args += ["--heartbeat-seconds", str(heartbeat_seconds)]
    serve_args = []
    if lease_seconds:
        serve_args += ["--lease-seconds", str(lease_seconds)]
    if max_attempts:
        serve_args += ["--max-attempts", str(max_attempts)]
    r = Run(dataset, workers, gen_args, reconcile_interval, serve_args, dashboard_port=dashboard_port)
    install_signals(r)
    try:
        if new_state is not None:
            r.create(new_state)
            click.echo(f"created {state_path(dataset)} with {len(new_state.entries)} entries", err=True)
        code = r.run()
    except (PipelineError, DamagedState) as exc:
        r.clear_bar()
        r.stop_children()
        fail(str(exc))
    except Exception as exc:  # a bug of ours: stop the children cleanly, keep the traceback in the log
        import traceback
        (dataset / "logs").mkdir(exist_ok=True)
        with open(dataset / "logs" / "run-pipeline.log", "a") as f:
            f.write(traceback.format_exc())
        r.clear_bar()
        r.stop_children()
        fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {dataset / 'logs' / 'run-pipeline.log'})")
    sys.exit(code)
