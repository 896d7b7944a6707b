"""The `statesvc` command: thin click wrappers over the library.

Exit codes, the same in every command:
  0    done (a daemon or watcher stopped by SIGTERM or Ctrl-C is done too);
  1    a finding (verify's sync errors, health's verdict), or a failure while carrying the command
       out (a change not saved, an I/O error, a daemon that stopped answering);
  2    not carried out as asked: a usage error, or what the command needs is missing or unreadable
       (the dataset, its state, a daemon, keys); verify and health exit 2 for every "cannot check";
  130  a one-shot command interrupted (Ctrl-C or SIGTERM).
Every error is one line on stderr, ``statesvc: error: ...``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
import zmq

from . import DISTRIBUTION
from . import dataset as ds
from .atomic import SaveFailed
from .client import NoDaemon, ServiceError, Unavailable
from .codec import DamagedState
from .conventions import (
    FAILED,
    LOG_LEVELS,
    OK,
    TEXT,
    USAGE,
    OneLineGroup,
    say_error,
    version_option,
)
from .curve import CurveError
from .curve import keygen as keygen_pair
from .daemon import serve as serve_daemon
from .endpoints import defaults, running
from .entry import STATUSES
from .events import Commit, Subscriber
from .export import FORMATS, lines
from .layout import CONTROL_SOCKET, EVENTS_SOCKET, JOURNAL_FILE, STATE_FILE, WAVS, state_path
from .loader import load
from .lock import Locked
from .notify import log_format
from .protocol import BadRequest, ErrorKind
from .state import Refused
from .texts import TextsError
from .verify import mismatches, unsafe_texts

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

FINDING = FAILED  # verify's sync errors, health's verdict: the same code as a failure, told apart in words

# Not carried out as asked: the request is wrong, or what it needs is missing or unreadable.
CANNOT = (ds.DatasetError, TextsError, BadRequest, Refused, DamagedState, NoDaemon, Locked, CurveError,
          zmq.ZMQError)
# Failed while being carried out.
FAILURES = (SaveFailed, Unavailable, ServiceError, OSError)
EXPECTED = CANNOT + FAILURES  # the user's or the environment's doing: one line, never a traceback
# A path that cannot be used as given (exit 2), unlike an I/O failure on one that can (a full disk: 1).
PATH_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                         errno.ENAMETOOLONG, errno.EEXIST})


class CannotCheck(Exception):
    """verify or health could not look at all: exit 2, so a script tells it from a finding (exit 1)."""


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, (CannotCheck, *CANNOT)):
        return USAGE
    if isinstance(exc, ServiceError):
        # the daemon failed to carry it out (1); else it refused the request, as it would offline (2)
        return USAGE if exc.kind == ErrorKind.REFUSED else FINDING
    if isinstance(exc, OSError) and exc.errno in PATH_ERRNOS:
        return USAGE
    return FINDING


def one_line(exc: BaseException) -> str:
    if isinstance(exc, Locked):
        return f"another statesvc daemon serves this dataset: {exc}"
    return str(exc) or type(exc).__name__


PLUGINS = "statesvc.commands"  # entry-point group: commands other packages add (the page's `dashboard`)


def plugins() -> dict[str, EntryPoint]:
    """The commands other installed packages add to `statesvc`, by name, not loaded."""
    from importlib.metadata import entry_points  # 20 ms: only for a name that is not one of ours
    return {ep.name: ep for ep in entry_points(group=PLUGINS)}


def load_plugin(ep: EntryPoint) -> click.Command:
    """The command an entry point names. When a module it needs is not installed (the extra that
    carries its dependencies), a stand-in that says in one line which extra to install and exits 2,
    whatever the arguments (and `statesvc --help` still lists it, saying so). Any other error in
    loading it is a bug of that package, and raises."""
    try:
        command = ep.load()
    except ModuleNotFoundError as exc:
        dist = ep.dist.name if ep.dist is not None else DISTRIBUTION
        extra = f"[{','.join(ep.extras)}]" if ep.extras else ""
        return _cannot(ep.name, f"`statesvc {ep.name}` needs the {'extra ' + extra if extra else 'package'} "
                                f"installed ({exc}): pip install '{dist}{extra}'")
    if not isinstance(command, click.Command):
        return _cannot(ep.name, f"`statesvc {ep.name}`: the entry point {ep.value} is not a click command")
    return command


def _cannot(name: str, message: str) -> click.Command:
    def refuse() -> None:
        raise click.UsageError(message)
    return click.Command(name, callback=refuse, help=message, add_help_option=False,
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


class Group(OneLineGroup):
    """The `statesvc` group: beside click's usage errors, the library's expected errors as one line
    on stderr with the exit codes above, for every command and sub-group, never a traceback. It
    also holds the commands other packages register (PLUGINS), each loaded only when invoked (or
    when the help lists it)."""

    prog = "statesvc"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *plugins()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and (ep := plugins().get(name)) is not None:
            command = load_plugin(ep)
            self.add_command(command, name)
        return command

    def expected(self, exc: Exception) -> int | None:
        if not isinstance(exc, (CannotCheck, *EXPECTED)):
            return None
        say_error("statesvc", one_line(exc))
        return exit_code(exc)


@contextlib.contextmanager
def cannot_check() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except (CannotCheck, *EXPECTED) as exc:
        raise CannotCheck(one_line(exc)) from None


def need_dataset(dataset: Path, remote_ok: bool = True) -> None:
    """A one-line error (exit 2) for a folder with no state, before anything else is tried; skipped
    when --endpoint names a daemon elsewhere (the dataset is then the daemon's, not a local folder)."""
    if remote_ok and ds.endpoint() is not None:
        return
    if not state_path(dataset).exists():
        raise ds.DatasetError(f"no dataset at {dataset}: no state in it (create one with: "
                              f"statesvc init --dataset {dataset} --texts FILE)")


dataset_opt = click.option("--dataset", "dataset", type=click.Path(file_okay=False, path_type=Path),
                           default=".", envvar="STATESVC_DATASET", show_envvar=True, show_default=True,
                           help=f"Dataset folder (holds {STATE_FILE} and {WAVS}/).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
endpoint_opt = click.option(
    "--endpoint", type=TEXT, envvar="STATESVC_ENDPOINT", show_envvar=True, expose_value=False, is_eager=True,
    callback=lambda ctx, param, value: ds.use_endpoint(value),
    help="Ask the daemon at this endpoint (e.g. tcp://head:5555, with the CURVE keys of "
         "STATESVC_CLIENT_KEY and STATESVC_SERVER_KEY) instead of the one serving --dataset.")
texts_opt = click.option("--texts", type=click.Path(dir_okay=False, path_type=Path), required=True,
                         help="Texts file: .txt (one per line), .csv or LJSpeech metadata.csv "
                              "(filename|text), .jsonl ({\"text\": ..., \"filename\": ...}).")
prefix_opt = click.option("--prefix", type=TEXT, default=None,
                          help="Filename prefix for .txt texts (default: the dataset folder's name).")


def emit_json(obj: object) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2) + b"\n")


@click.group(cls=Group)
@version_option
def main() -> None:
    """Single-writer state daemon and queries for a TTS dataset.

    Exit codes: 0 done; 1 a finding (verify, health) or a failure while carrying a command out;
    2 a usage error or what the command needs is missing or unreadable; 130 interrupted."""
    # A command that sets up no logging (all but serve and dashboard) says the library's warnings
    # as it says errors: "statesvc: warning: ..." on one line.
    logging.lastResort = logging.StreamHandler(sys.stderr)
    logging.lastResort.setLevel(logging.WARNING)
    logging.lastResort.setFormatter(_Said())


class _Said(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"statesvc: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


@main.command()
@dataset_opt
@texts_opt
@prefix_opt
def init(dataset: Path, texts: Path, prefix: str | None) -> None:
    """Create the state from a texts file (.txt, .csv, metadata.csv, .jsonl)."""
    state = ds.init(dataset, texts, prefix)
    click.echo(f"created {state_path(dataset)} with {len(state.entries)} entries")
    old = ds.wavs_already_there(dataset)
    if old:
        click.echo(f"note: wavs/ already holds {old} wav files. The reconciler counts a wav only for the entry "
                   "whose text it was made from; a take of another text goes to stale/, and a wav that records "
                   "no text (made by another tool) is adopted and reported as such.")


@main.command()
@dataset_opt
@texts_opt
@prefix_opt
def add(dataset: Path, texts: Path, prefix: str | None) -> None:
    """Add texts to an existing dataset (through the daemon when one runs)."""
    need_dataset(dataset, remote_ok=False)
    load(dataset)  # a clear error on a damaged state before anything else
    body = ds.add(dataset, texts, prefix)
    click.echo(f"added {body['added']} entries")


@main.command()
@dataset_opt
@click.option("--endpoint", type=TEXT, default=None, envvar="STATESVC_ENDPOINT", show_envvar=True,
              help=f"Control endpoint (default ipc://DIR/{CONTROL_SOCKET}; tcp://HOST:PORT needs CURVE keys).")
@click.option("--events", type=TEXT, default=None,
              help=f"PUB endpoint for change events (default: ipc://DIR/{EVENTS_SOCKET}, or the control "
                   "endpoint's port + 1 on tcp).")
@click.option("--lease-seconds", type=click.FloatRange(1, 86400), default=None,
              help="How long a generator's lease lasts without a heartbeat (default 10).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=None,
              help="Syntheses an entry may fail before it is marked failed (default 3).")
@click.option("--max-cer", type=click.FloatRange(0, None), default=None,
              help="A checked take whose CER is over this is wrong (default: adaptive, see README).")
@click.option("--max-takes", type=click.IntRange(1, 100), default=None,
              help="Takes of one text a check may ask for before the best one is kept, flagged (default 3).")
@click.option("--curve-secret", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="STATESVC_CURVE_SECRET", show_envvar=True,
              help="The daemon's .key_secret file (required on tcp).")
@click.option("--allow", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="STATESVC_ALLOW", show_envvar=True, help="Folder of client public .key files allowed on tcp.")
@click.option("--checkpoint-bytes", type=click.IntRange(4096, None), default=None,
              help="Write a checkpoint when the journal reaches this many bytes (default: half the size "
                   f"of {STATE_FILE}, at least 1 MiB).")
@click.option("--checkpoint-idle", type=click.FloatRange(0, None), default=2.0, show_default=True,
              help="Write a checkpoint after this many seconds without a commit (0: never for idleness).")
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True, help="Log verbosity.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, envvar="STATESVC_METRICS_PORT",
              show_envvar=True, help="Serve Prometheus metrics on this port (/metrics); off by default.")
@click.option("--metrics-host", type=TEXT, default="127.0.0.1", show_default=True, envvar="STATESVC_METRICS_HOST",
              show_envvar=True, help="Address for the metrics (loopback by default).")
def serve(dataset: Path, endpoint: str | None, events: str | None, lease_seconds: float | None,
          max_attempts: int | None, max_cer: float | None, max_takes: int | None, curve_secret: Path | None,
          allow: Path | None, checkpoint_bytes: int | None, checkpoint_idle: float, log_level: str,
          metrics_port: int | None, metrics_host: str) -> None:
    """Run the daemon: the only writer of generation_state.json and its journal.

    SIGTERM or Ctrl-C: it answers what arrived, writes a checkpoint and exits 0."""
    if (curve_secret is None) != (allow is None):
        raise click.UsageError("--curve-secret and --allow go together")
    need_dataset(dataset, remote_ok=False)
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=log_format("%(asctime)s statesvc[%(process)d] %(levelname)s %(message)s",
                                          "%(levelname)s %(message)s"))
    curve = (curve_secret, allow) if curve_secret and allow else None
    try:
        code = serve_daemon(dataset, endpoint, events, lease_seconds, max_attempts, curve, checkpoint_bytes,
                            checkpoint_idle, None if metrics_port is None else (metrics_host, metrics_port),
                            max_cer, max_takes)
    except KeyboardInterrupt:  # a stop while it loads, before it serves: nothing was answered
        logging.getLogger("statesvc").info("stopped before serving")
        code = OK
    sys.exit(code)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the two key files into (created if needed).")
@click.option("--name", type=TEXT, required=True, help="Key name, e.g. daemon or gpu-box-1.")
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
              help="Free disk space (MB) under which the run is unhealthy (default: 1 GiB or 5 % of the "
                   "filesystem, whichever is smaller, and at least the state file's size).")
def health(dataset: Path, max_stall: float, min_free_mb: int | None) -> None:
    """Exit 0 when the daemon answers and the run is healthy; exit 1 with a one-line reason when
    it does not answer, commits fail, disk space is short, or nothing completes while work is left;
    exit 2 when it cannot check (no dataset)."""
    import time

    from .health import judge, min_free_bytes
    with cannot_check():
        need_dataset(dataset)
        try:
            st = ds.ask(dataset, "status")
        except (Unavailable, ServiceError):
            st = None
        total = st.get("disk_total_bytes", 0) if st else 0
        floor = min_free_bytes(total, min_free_mb, st.get("checkpoint_bytes") or 0 if st else 0)
        v = judge(st, time.time(), max_stall * 60, floor)
    click.echo(v.reason, err=not v.healthy)
    sys.exit(OK if v.healthy else FINDING)


@main.command()
@dataset_opt
@endpoint_opt
@json_opt
def status(dataset: Path, as_json: bool) -> None:
    """Counters, plus progress and rate when the daemon runs."""
    need_dataset(dataset)
    st = ds.status(dataset)
    if as_json:
        emit_json(st)
        return
    total = st["total"] or 1
    click.echo(" ".join(f"{k}={st[k]}" for k in ("total", "pending", "generating", "completed", "failed")))
    done = 100 * (st["completed"] + st["failed"]) / total
    click.echo(f"audio: {st['audio_seconds'] / 3600:.2f} h   done: {done:.1f}%")
    if st.get("checked") or st.get("check_waiting"):
        click.echo(f"checks: checked={st['checked']} flagged={st['mismatched']} waiting={st['check_waiting']}")
    if st.get("daemon"):
        rate, eta = st.get("rate_per_second"), st.get("eta_seconds")
        click.echo(f"daemon pid {st['pid']}, up {st['uptime']:.0f} s, leases {st['leases']}, "
                   f"rate {rate if rate is not None else '-'} /s, eta {eta if eta is not None else '-'} s")
    else:
        click.echo("daemon: not running (read from the file and its journal)")


@main.command(name="list")
@dataset_opt
@endpoint_opt
@click.option("--status", "status_filter", type=click.Choice(STATUSES), default=None,
              help="Only the entries of this status.")
@json_opt
def list_(dataset: Path, status_filter: str | None, as_json: bool) -> None:
    """List entries, optionally of one status."""
    need_dataset(dataset)
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
@click.argument("key", type=TEXT)
@json_opt
def show(dataset: Path, key: str, as_json: bool) -> None:
    """Show one entry. KEY: its filename, or its id (12 or #12; an exact filename wins, so with
    numeric filenames such as 0001 use #1 for an id)."""
    need_dataset(dataset)
    e = ds.show(dataset, key)
    if as_json:
        emit_json(e)
        return
    for k, v in e.items():
        click.echo(f"{k:>17}: {v}")


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("keys", nargs=-1, type=TEXT)
@click.option("--failed", is_flag=True, help="Requeue every failed entry.")
def requeue(dataset: Path, keys: tuple[str, ...], failed: bool) -> None:
    """Put entries back to pending (durable on exit 0); old takes are moved to requeued/.

    KEYS: filenames or ids (#12 for an id when filenames are numbers)."""
    if not keys and not failed:
        raise click.UsageError("give entry ids or filenames, or --failed")
    need_dataset(dataset)
    body = ds.write(dataset, "requeue", keys=list(keys), failed=failed)
    click.echo(f"requeued {len(body['requeued'])} entries" +
               (f"; moved aside: {', '.join(body['moved'])}" if body.get("moved") else ""))


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("key", type=TEXT)
@click.option("--text", type=TEXT, required=True, help="The new text.")
def edit(dataset: Path, key: str, text: str) -> None:
    """Change the text of an entry that is not being generated (KEY: filename, id or #id).

    Its old take moves to requeued/ and it goes back to pending; takes of the old text never count."""
    need_dataset(dataset)
    body = ds.write(dataset, "edit", key=key, text=text)
    click.echo(f"entry {body['edited']} edited (revision {body['rev']}), pending" +
               (f"; moved aside: {', '.join(body['moved'])}" if body.get("moved") else ""))


@main.command()
@dataset_opt
@endpoint_opt
@click.argument("key", type=TEXT)
@click.argument("verdict", type=click.Choice(["approved", "rejected", "none"]), metavar="VERDICT")
@click.option("--note", type=TEXT, default=None, help="Why (kept with the verdict).")
@click.option("--take", type=TEXT, default=None,
              help="The token of the take heard (show --json: take); refused if the entry has another take by now.")
def review(dataset: Path, key: str, verdict: str, note: str | None, take: str | None) -> None:
    """Record a verdict on an entry's current take (KEY: filename, id or #id); none withdraws it.

    A verdict holds for the take it was given on: a new take of the entry ends it. With --take,
    it is given only if that take is still the entry's."""
    need_dataset(dataset)
    body = ds.write(dataset, "review", key=key, review=None if verdict == "none" else verdict, note=note,
                    **({"take": take} if take is not None else {}))
    click.echo(f"entry {body['reviewed']}: " + (body["review"]["verdict"] if body["review"] else "no verdict"))


@main.command()
@dataset_opt
@endpoint_opt
def verify(dataset: Path) -> None:
    """Check the state against wavs/ and the texts for control characters; last line "N sync errors"
    (", M texts with control characters" when there are). Exit 0 with none, 1 with some,
    2 when it cannot check (no dataset, an unreadable state, a daemon that does not answer)."""
    n = bad = 0
    with cannot_check():
        need_dataset(dataset)
        st = ds.status(dataset)
        entries = ds.entries(dataset)
        for line in mismatches(dataset, entries, st.get("sample_rate")):
            click.echo(line)
            n += 1
        for line in unsafe_texts(entries):
            click.echo(line)
            bad += 1
    click.echo(f"{n} sync errors" + (f", {bad} texts with control characters" if bad else ""))
    sys.exit(FINDING if n or bad else OK)


@main.command()
@dataset_opt
@endpoint_opt
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="ljspeech", show_default=True,
              help="ljspeech: metadata.csv rows (filename|text|text); jsonl: a NeMo manifest.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: stdout).")
@click.option("--approved-only", is_flag=True, help="Only the takes a reviewer approved.")
@click.option("--max-cer", type=click.FloatRange(0, None), default=None,
              help="Only checked takes whose CER is at most this (unchecked ones are left out).")
def export(dataset: Path, fmt: str, out: Path | None, approved_only: bool, max_cer: float | None) -> None:
    """Write a training manifest of the completed entries (never a rejected take)."""
    need_dataset(dataset)
    rows = "".join(f"{line}\n" for line in lines(dataset, ds.entries(dataset, "completed"), fmt, approved_only,
                                                 max_cer))
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
    """Stream change events from the running daemon; Ctrl-C or SIGTERM stops it (exit 0)."""
    if ds.endpoint() is not None:
        events = defaults(dataset, ds.endpoint())[1]  # tcp://HOST:P: events on P+1
    else:
        need_dataset(dataset)
        rec = running(dataset)
        if rec is None:
            raise ds.DatasetError(f"no statesvc daemon serves {dataset}")
        events = rec.get("events") or defaults(dataset)[1]
    stop: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop.append(signum)  # the loop sees it within a poll

    old_int = signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)  # restored by sigterm_interrupts
    try:
        with Subscriber(events) as sub:
            while not stop:
                event = sub.receive(0.2)
                if event is None:
                    continue
                # every entry received is printed, a commit's or one whose commit's end was lost;
                # a gap is not said: watch prints what arrives, it holds no state to read again
                for body in event.entries if isinstance(event, Commit) else event.unfinished:
                    _print_entry(body, as_json)
    finally:
        signal.signal(signal.SIGINT, old_int)


def _print_entry(body: bytes, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(body.decode() + "\n")
    else:
        e = orjson.loads(body)
        click.echo(f"{e['updated_at']} {e['id']:>7} {e['filename']:<24} {e['status']}")
    sys.stdout.flush()


@main.command()
@dataset_opt
@endpoint_opt
def checkpoint(dataset: Path) -> None:
    """Write the whole state as generation_state.json now and start a fresh journal.

    The daemon does this by itself (journal as big as the file, a moment idle, a clean stop);
    afterwards the file alone is the whole state, for a backup or a look by hand."""
    need_dataset(dataset)
    r = ds.checkpoint(dataset)
    who = "the daemon" if r["daemon"] else "offline"
    click.echo(f"checkpoint written by {who}: {r['bytes']:,} bytes in {r['seconds']:.2f} s; the journal is empty")


@main.group()
def journal() -> None:
    """The journal beside generation_state.json: the commits since the last checkpoint.

    After a crash the daemon replays it by itself. These two commands are for when it refused
    to start: the file was edited by hand while the journal still held commits, or the journal is
    damaged (then replay --up-to-damage). Stop the daemon first."""


@journal.command(name="replay")
@dataset_opt
@click.option("--up-to-damage", is_flag=True,
              help="For a damaged journal: apply only the whole records before the first damaged one, keep "
                   f"the journal aside ({JOURNAL_FILE}.damaged-TIME) and list the records after it.")
def journal_replay(dataset: Path, up_to_damage: bool) -> None:
    """Apply the journal's commits onto the file as it is now (what they changed takes the
    journal's value; your other edits stay), then start a fresh journal. A damaged journal is
    refused (exit 2) unless --up-to-damage."""
    need_dataset(dataset, remote_ok=False)
    r = ds.journal_replay(dataset, up_to_damage)
    click.echo(f"replayed {r.applied} commits ({r.versions} entry versions) onto {state_path(dataset)}; "
               "the journal is empty")
    if r.kept is not None:
        click.echo(f"the damaged journal was kept in {r.kept}; {len(r.lost)} acknowledged commits after the "
                   "damage were not applied" + (":" if r.lost else ""))
        for rec in r.lost:
            ids = sorted({e.id for e in rec.entries} | {c[0] for c in rec.claims} | {x[0] for x in rec.leases})
            click.echo(f"  commit {rec.seq}: entries {', '.join(map(str, ids)) or '(none)'}")


@journal.command(name="discard")
@dataset_opt
def journal_discard(dataset: Path) -> None:
    """Drop the journal's commits: the file as it is now is the state. The journal is moved
    aside (generation_state.journal.discarded-TIME), not deleted."""
    need_dataset(dataset, remote_ok=False)
    records, aside = ds.journal_discard(dataset)
    if aside is None:
        click.echo("no journal: nothing to discard")
    else:
        click.echo(f"discarded {records} commits; the journal was moved to {aside}")
