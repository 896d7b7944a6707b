"""The `statesvc` command: thin click wrappers over the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
import orjson
import zmq

from . import dataset as ds
from .atomic import SaveFailed
from .client import ServiceError, Unavailable
from .curve import CurveError
from .curve import keygen as keygen_pair
from .daemon import serve as serve_daemon
from .endpoints import defaults, running
from .export import FORMATS, lines
from .protocol import BadRequest
from .state import STATUSES, Refused
from .store import DamagedState, Locked, load
from .texts import TextsError
from .verify import mismatches

# Exceptions that are the user's or the environment's fault: one line, no traceback.
EXPECTED = (ds.DatasetError, TextsError, BadRequest, DamagedState, Locked, Refused, ServiceError,
            Unavailable, SaveFailed, CurveError, OSError, zmq.ZMQError)


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EXPECTED as exc:
            click.echo(f"statesvc: error: {one_line(exc)}", err=True)
            sys.exit(2 if isinstance(exc, (ds.DatasetError, TextsError, BadRequest, Refused)) else 1)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, Locked):
        return f"another statesvc daemon serves this dataset: {exc}"
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


dataset_opt = click.option("--dataset", "dataset", type=click.Path(file_okay=False, path_type=Path),
                           default=".", envvar="STATESVC_DATASET", show_default=True,
                           help="Dataset folder (holds generation_state.json and wavs/).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
endpoint_opt = click.option(
    "--endpoint", envvar="STATESVC_ENDPOINT", show_envvar=True, expose_value=False, is_eager=True,
    callback=lambda ctx, param, value: ds.use_endpoint(value),
    help="Ask the daemon at this endpoint (e.g. tcp://head:5555, with the CURVE keys of "
         "STATESVC_CLIENT_KEY and STATESVC_SERVER_KEY) instead of the one serving --dataset.")


def emit_json(obj: object) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


@click.group(cls=Group)
def main() -> None:
    """Single-writer state daemon and queries for a TTS dataset."""


@main.command()
@dataset_opt
@click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--prefix", default=None, help="Filename prefix for .txt texts (default: folder name).")
def init(dataset: Path, texts: Path, prefix: str | None) -> None:
    """Create the state from a texts file (.txt, .csv, metadata.csv, .jsonl)."""
    state = ds.init(dataset, texts, prefix)
    click.echo(f"created {dataset / 'generation_state.json'} with {len(state.entries)} entries")
    old = ds.wavs_already_there(dataset)
    if old:
        click.echo(f"note: wavs/ already holds {old} wav files. The reconciler counts a wav only for the entry "
                   "whose text it was made from; a take of another text goes to stale/, and a wav that records "
                   "no text (made by another tool) is adopted and reported as such.")


@main.command()
@dataset_opt
@click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--prefix", default=None)
def add(dataset: Path, texts: Path, prefix: str | None) -> None:
    """Add texts to an existing dataset (through the daemon when one runs)."""
    load(dataset)  # a clear error on a missing or damaged state before anything else
    body = ds.add(dataset, texts, prefix)
    click.echo(f"added {body['added']} entries")


@main.command()
@dataset_opt
@click.option("--endpoint", default=None, envvar="STATESVC_ENDPOINT", show_envvar=True,
              help="Control endpoint (default ipc://DIR/statesvc.sock; tcp://HOST:PORT needs CURVE keys).")
@click.option("--events", default=None, help="PUB endpoint for change events.")
@click.option("--lease-seconds", type=click.FloatRange(1, 86400), default=None)
@click.option("--max-attempts", type=click.IntRange(1, 100), default=None)
@click.option("--curve-secret", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="STATESVC_CURVE_SECRET", help="The daemon's .key_secret file (required on tcp).")
@click.option("--allow", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="STATESVC_ALLOW", help="Folder of client public .key files allowed on tcp.")
@click.option("--checkpoint-bytes", type=click.IntRange(4096, None), default=None,
              help="Write a checkpoint when the journal reaches this many bytes (default: half the size "
                   "of generation_state.json, at least 1 MiB).")
@click.option("--checkpoint-idle", type=click.FloatRange(0, None), default=2.0, show_default=True,
              help="Write a checkpoint after this many seconds without a commit (0: never for idleness).")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, envvar="STATESVC_METRICS_PORT",
              show_envvar=True, help="Serve Prometheus metrics on this port (/metrics); off by default.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar="STATESVC_METRICS_HOST",
              show_envvar=True, help="Address for the metrics (loopback by default).")
def serve(dataset: Path, endpoint: str | None, events: str | None, lease_seconds: float | None,
          max_attempts: int | None, curve_secret: Path | None, allow: Path | None, checkpoint_bytes: int | None,
          checkpoint_idle: float, log_level: str, metrics_port: int | None, metrics_host: str) -> None:
    """Run the daemon: the only writer of generation_state.json and its journal."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s statesvc[%(process)d] %(levelname)s %(message)s")
    if (curve_secret is None) != (allow is None):
        raise click.UsageError("--curve-secret and --allow go together")
    curve = (curve_secret, allow) if curve_secret and allow else None
    sys.exit(serve_daemon(dataset, endpoint, events, lease_seconds, max_attempts, curve, checkpoint_bytes,
                          checkpoint_idle, None if metrics_port is None else (metrics_host, metrics_port)))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--name", required=True, help="Key name, e.g. daemon or gpu-box-1.")
def keygen(out: Path, name: str) -> None:
    """Make a CURVE key pair: NAME.key (public, to share) and NAME.key_secret (keep private)."""
    public, secret = keygen_pair(out, name)
    click.echo(f"public key: {public}\nsecret key: {secret}")


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--max-stall", type=click.FloatRange(0.001, 100_000), default=30.0, show_default=True,
              help="Minutes without a completion, with work left, before the run counts as stalled.")
@click.option("--min-free-mb", type=click.IntRange(0, None), default=None,
              help="Free disk space (MB) under which the run is unhealthy (default: 1 GiB or 2 % of the "
                   "filesystem, whichever is larger).")
def health(dataset: Path, max_stall: float, min_free_mb: int | None) -> None:
    """Exit 0 when the daemon answers and the run is healthy; exit 1 with a one-line reason when
    it does not answer, commits fail, disk space is short, or nothing completes while work is left."""
    import time

    from .health import judge, min_free_bytes
    if not ds.state_path(dataset).exists():
        raise ds.DatasetError(f"no dataset at {dataset} (no {ds.state_path(dataset).name})")
    try:
        st = ds.ask(dataset, "status")
    except (Unavailable, ServiceError):
        st = None
    total = st.get("disk_total_bytes", 0) if st else 0
    v = judge(st, time.time(), max_stall * 60, min_free_bytes(total, min_free_mb))
    click.echo(v.reason, err=not v.healthy)
    sys.exit(0 if v.healthy else 1)


@main.command()
@dataset_opt
@endpoint_opt
@json_opt
def status(dataset: Path, as_json: bool) -> None:
    """Counters, plus progress and rate when the daemon runs."""
    st = ds.status(dataset)
    if as_json:
        emit_json(st)
        return
    total = st["total"] or 1
    click.echo(" ".join(f"{k}={st[k]}" for k in ("total", "pending", "generating", "completed", "failed")))
    done = 100 * (st["completed"] + st["failed"]) / total
    click.echo(f"audio: {st['audio_seconds'] / 3600:.2f} h   done: {done:.1f}%")
    if st.get("daemon"):
        rate, eta = st.get("rate_per_second"), st.get("eta_seconds")
        click.echo(f"daemon pid {st['pid']}, up {st['uptime']:.0f} s, leases {st['leases']}, "
                   f"rate {rate if rate is not None else '-'} /s, eta {eta if eta is not None else '-'} s")
    else:
        click.echo("daemon: not running (read from the file and its journal)")


@main.command(name="list")
@dataset_opt
@endpoint_opt
@click.option("--status", "status_filter", type=click.Choice(STATUSES), default=None)
@json_opt
def list_(dataset: Path, status_filter: str | None, as_json: bool) -> None:
    """List entries, optionally of one status."""
    entries = ds.entries(dataset, status_filter)
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        dur = f"{e['duration_seconds']:.2f}s" if e["duration_seconds"] is not None else "-"
        click.echo(f"{e['id']:>7} {e['filename']:<24} {e['status']:<10} {dur:>8} {e['text'][:60]}")


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("key")
@json_opt
def show(dataset: Path, key: str, as_json: bool) -> None:
    """Show one entry. KEY: its filename, or its id (12 or #12; an exact filename wins, so with
    numeric filenames such as 0001 use #1 for an id)."""
    e = ds.show(dataset, key)
    if as_json:
        emit_json(e)
        return
    for k, v in e.items():
        click.echo(f"{k:>17}: {v}")


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("keys", nargs=-1)
@click.option("--failed", is_flag=True, help="Requeue every failed entry.")
def requeue(dataset: Path, keys: tuple[str, ...], failed: bool) -> None:
    """Put entries back to pending (durable on exit 0); old takes are moved to requeued/.

    KEYS: filenames or ids (#12 for an id when filenames are numbers)."""
    if not keys and not failed:
        raise click.UsageError("give entry ids or filenames, or --failed")
    body = ds.write(dataset, "requeue", keys=list(keys), failed=failed)
    click.echo(f"requeued {len(body['requeued'])} entries" +
               (f"; moved aside: {', '.join(body['moved'])}" if body.get("moved") else ""))


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("key")
@click.option("--text", required=True, help="The new text.")
def edit(dataset: Path, key: str, text: str) -> None:
    """Change the text of an entry that is not being generated (KEY: filename, id or #id).

    Its old take moves to requeued/ and it goes back to pending; takes of the old text never count."""
    body = ds.write(dataset, "edit", key=key, text=text)
    click.echo(f"entry {body['edited']} edited (revision {body['rev']}), pending" +
               (f"; moved aside: {', '.join(body['moved'])}" if body.get("moved") else ""))


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("key")
@click.argument("verdict", type=click.Choice(["approved", "rejected", "none"]))
@click.option("--note", default=None, help="Why (kept with the verdict).")
def review(dataset: Path, key: str, verdict: str, note: str | None) -> None:
    """Record a verdict on an entry's current take (KEY: filename, id or #id); none withdraws it.

    A verdict holds for the take it was given on: a new take of the entry ends it."""
    body = ds.write(dataset, "review", key=key, review=None if verdict == "none" else verdict, note=note)
    click.echo(f"entry {body['reviewed']}: " + (body["review"]["verdict"] if body["review"] else "no verdict"))


@main.command()
@dataset_opt
@endpoint_opt
def verify(dataset: Path) -> None:
    """Check the state against wavs/; exit 0 only with 0 sync errors."""
    st = ds.status(dataset)
    n = 0
    for line in mismatches(dataset, ds.entries(dataset), st.get("sample_rate")):
        click.echo(line)
        n += 1
    click.echo(f"{n} sync errors")
    sys.exit(1 if n else 0)


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ljspeech", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: stdout).")
@click.option("--approved-only", is_flag=True, help="Only the takes a reviewer approved.")
def export(dataset: Path, fmt: str, out: Path | None, approved_only: bool) -> None:
    """Write a training manifest of the completed entries (never a rejected take)."""
    rows = "".join(f"{line}\n" for line in lines(dataset, ds.entries(dataset, "completed"), fmt, approved_only))
    if out is None:
        sys.stdout.write(rows)
    else:
        out.write_text(rows, encoding="utf-8")
        click.echo(f"wrote {rows.count(chr(10))} rows to {out}", err=True)


@main.command()
@dataset_opt
@endpoint_opt
@json_opt
def watch(dataset: Path, as_json: bool) -> None:
    """Stream change events from the running daemon (Ctrl-C to stop)."""
    if ds.endpoint() is not None:
        events = defaults(dataset, ds.endpoint())[1]  # tcp://HOST:P: events on P+1
    else:
        rec = running(dataset)
        if rec is None:
            raise ds.DatasetError(f"no statesvc daemon serves {dataset}")
        events = rec.get("events") or defaults(dataset)[1]
    from .curve import secure_client
    from .endpoints import connectable
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"entry")
    try:
        if events.startswith("tcp://"):
            secure_client(sub)
        sub.connect(connectable(events))
        while True:
            if not sub.poll(1000):
                continue
            _topic, body = sub.recv_multipart()
            if as_json:
                sys.stdout.write(body.decode() + "\n")
            else:
                e = orjson.loads(body)
                click.echo(f"{e['updated_at']} {e['id']:>7} {e['filename']:<24} {e['status']}")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(0)


@main.command()
@dataset_opt
@endpoint_opt
def checkpoint(dataset: Path) -> None:
    """Write the whole state as generation_state.json now and start a fresh journal.

    The daemon does this by itself (journal as big as the file, a moment idle, a clean stop);
    afterwards the file alone is the whole state, for a backup or a look by hand."""
    r = ds.checkpoint(dataset)
    who = "the daemon" if r["daemon"] else "offline"
    click.echo(f"checkpoint written by {who}: {r['bytes']:,} bytes in {r['seconds']:.2f} s; the journal is empty")


@main.group()
def journal() -> None:
    """The journal beside generation_state.json: the commits since the last checkpoint.

    After a crash the daemon replays it by itself. These two commands are for one case only:
    the file was edited by hand while the journal still held commits, and the daemon refused
    to start. Stop the daemon first."""


@journal.command(name="replay")
@dataset_opt
def journal_replay(dataset: Path) -> None:
    """Apply the journal's commits onto the file as it is now (what they changed takes the
    journal's value; your other edits stay), then start a fresh journal."""
    records, entries = ds.journal_replay(dataset)
    click.echo(f"replayed {records} commits ({entries} entry versions) onto {ds.state_path(dataset)}; "
               "the journal is empty")


@journal.command(name="discard")
@dataset_opt
def journal_discard(dataset: Path) -> None:
    """Drop the journal's commits: the file as it is now is the state. The journal is moved
    aside (generation_state.journal.discarded-TIME), not deleted."""
    records, aside = ds.journal_discard(dataset)
    if aside is None:
        click.echo("no journal: nothing to discard")
    else:
        click.echo(f"discarded {records} commits; the journal was moved to {aside}")


@main.command()
@dataset_opt
@click.option("--host", default="127.0.0.1", show_default=True, envvar="STATESVC_DASHBOARD_HOST",
              help="Address to listen on; one that is not loopback needs --token-file.")
@click.option("--port", type=click.IntRange(1, 65535), default=8321, show_default=True,
              envvar="STATESVC_DASHBOARD_PORT", help="Port to listen on.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="STATESVC_DASHBOARD_TOKEN_FILE",
              help="File holding a secret token (16+ characters) every request must carry.")
@click.option("--no-analysis", is_flag=True, help="Do not read the takes for the audio flags.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO",
              show_default=True, help="Log verbosity.")
def dashboard(dataset: Path, host: str, port: int, token_file: Path | None, no_analysis: bool,
              log_level: str) -> None:
    """Serve the review dashboard: watch the run, listen, flag, review, regenerate, sync.

    It never writes the state: actions go to the daemon, and are shown done once it acknowledged
    them. It starts with or without a daemon and follows it through restarts."""
    from .dashboard import Settings, loopback, read_token
    from .dashboard import serve as serve_dashboard
    if not ds.state_path(dataset).exists():
        raise ds.DatasetError(f"no dataset at {dataset} (no {ds.state_path(dataset).name}); "
                              f"create one with: statesvc init --dataset {dataset} --texts FILE")
    if not loopback(host) and token_file is None:
        raise click.UsageError(f"--host {host} is not loopback: give --token-file so only who holds the token gets in")
    try:
        token = read_token(token_file) if token_file else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    click.echo(f"dashboard of {dataset} on {url}", err=True)
    serve_dashboard(Settings(dataset.resolve(), host, port, token, analyze=not no_analysis))
