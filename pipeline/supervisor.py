"""run-pipeline: one command for a whole local run.

Starts the daemon (unless one already serves the dataset), a reconciler and N
generators as separate child commands, the same ones the systemd units run;
restarts any that die; shows progress (progress.py); ends when nothing is pending or
generating after a final reconcile pass.
"""

from __future__ import annotations

import enum
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from statesvc import layout
from statesvc.atomic import SaveFailed
from statesvc.client import Client, NoDaemon, ServiceError, Unavailable
from statesvc.dataset import create_prepared, prepare_init
from statesvc.dataset import entries as dataset_entries
from statesvc.dataset import status as dataset_status
from statesvc.endpoints import running
from statesvc.layout import state_path
from statesvc.process import die_with_parent

from .progress import Progress, fmt_seconds
from .synth import BUILTIN, resolve

if TYPE_CHECKING:  # the supervisor only hands it from prepare_init to create_prepared
    from statesvc.state import State

EXIT_OK, EXIT_FAILED_ENTRIES, EXIT_INTERRUPTED = 0, 3, 130  # a pipeline failure exits 1 (cli.fail)
CRASH_LOOP = 5          # quick error exits in a row that mean a child cannot start at all
QUICK_EXIT = 1.0        # seconds: an exit sooner than this counts as quick
BACKOFF_MAX = 5.0       # seconds between restarts of a child that keeps dying quickly
STOP_GRACE = 20.0
DIED_TIMEOUT = 2.0      # seconds to wait for the daemon's answer to "died"; lease expiry is the fallback
LOG_MAX_BYTES = 10 << 20  # a child's log is rotated past this size...
LOG_KEEP = 3              # ...keeping NAME.log.1 to NAME.log.3


def command(tool: str) -> list[str]:
    """How to run one of our console scripts: beside this Python, else as a module."""
    path = Path(sys.executable).parent / tool
    if path.exists():
        return [str(path)]
    found = shutil.which(tool)
    return [found] if found else [sys.executable, "-m", {"statesvc": "statesvc", "pipeline": "pipeline"}[tool]]


class ChildState(enum.Enum):
    """Where a supervised child is in its life. Changed only by ``Child.change``."""

    STARTING = "starting"        # spawned, not yet seen alive past QUICK_EXIT seconds
    RUNNING = "running"          # seen alive past QUICK_EXIT seconds
    BACKING_OFF = "backing off"  # died; waits for its restart time
    STOPPED = "stopped"          # not started yet, or stopped on purpose (end of run, Ctrl-C)
    GIVEN_UP = "given up"        # a crash loop: it cannot start at all; the run fails


TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    ChildState.STOPPED: frozenset({ChildState.STARTING}),
    ChildState.STARTING: frozenset({ChildState.RUNNING, ChildState.BACKING_OFF, ChildState.GIVEN_UP,
                                    ChildState.STOPPED}),
    ChildState.RUNNING: frozenset({ChildState.BACKING_OFF, ChildState.STOPPED}),
    ChildState.BACKING_OFF: frozenset({ChildState.STARTING, ChildState.STOPPED}),
    ChildState.GIVEN_UP: frozenset(),
}
LIVE = frozenset({ChildState.STARTING, ChildState.RUNNING})  # a process is (or was, until we notice) running
ACTIVE = LIVE | {ChildState.BACKING_OFF}                      # under supervision: what a stop must end


class BadTransition(RuntimeError):
    """A change the table forbids: a bug in the supervisor, not a child's failure."""


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    leases: bool = False    # a generator: takes leases under a fresh owner id at each start
    gpu: str | None = None  # the GPU a generator is given (CUDA_VISIBLE_DEVICES), shown in its owner name
    state: ChildState = ChildState.STOPPED
    why: str = "not started yet"  # the reason for the last change of state
    proc: subprocess.Popen | None = None
    owner: str | None = None  # the lease owner id of the current process (generators)
    started: float = 0.0
    restarts: int = 0
    quick_exits: int = 0    # quick exits in a row, any cause: paces restarts
    quick_errors: int = 0   # quick exits in a row with an error code: a child that cannot start
    restart_at: float = 0.0  # when BACKING_OFF ends
    pids: list[int] = field(default_factory=list)  # every process this child has been

    def change(self, to: ChildState, why: str) -> None:
        if to not in TRANSITIONS[self.state]:
            raise BadTransition(f"{self.name}: {self.state.name} -> {to.name} is not allowed ({why}); "
                                f"it was {self.state.value} because: {self.why}")
        self.state, self.why = to, why

    def start(self, why: str) -> None:
        self.change(ChildState.STARTING, why)
        argv = self.argv
        if self.leases:
            # Unique per process start: the daemon can tell this process's leases from those of
            # the one before it, and give back exactly the dead one's.
            self.owner = f"{socket.gethostname()}:{self.label()}:{secrets.token_hex(4)}"
            argv = [*argv, "--owner", self.owner]
        env = None if self.gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": self.gpu}
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.pids.append(self.proc.pid)
        self.started = time.monotonic()

    def label(self) -> str:
        """The name, with its GPU when it has one: what the owner name, the page and our lines show."""
        if self.gpu is None:
            return self.name
        return f"{self.name}-gpu{self.gpu}" if self.gpu.isdigit() else f"{self.name}-{self.gpu}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def rotate_log(self, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_KEEP) -> bool:
        """Past ``max_bytes``, NAME.log becomes NAME.log.1 (and .1 .2, ...; the oldest beyond ``keep``
        is dropped). The child keeps writing to its descriptor, opened for appending: the file is
        copied, then emptied, so its next line starts the fresh file (a line written between the
        two steps is lost: the price of not restarting the child)."""
        try:
            if self.log.stat().st_size <= max_bytes:
                return False
            for n in range(keep - 1, 0, -1):
                older = self.log.with_name(f"{self.log.name}.{n}")
                if older.exists():
                    os.replace(older, self.log.with_name(f"{self.log.name}.{n + 1}"))
            shutil.copyfile(self.log, self.log.with_name(f"{self.log.name}.1"))
            os.truncate(self.log, 0)
        except OSError:
            return False  # a full disk, a vanished file: the log keeps growing rather than the run failing
        return True

    def last_log_line(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""


@dataclass
class Run:
    dataset: Path
    workers: int
    gen_args: list[str]
    reconcile_interval: float = 30.0
    serve_args: list[str] = field(default_factory=list)
    out: object = sys.stderr
    children: list[Child] = field(default_factory=list)
    daemon: Child | None = None
    stopping: int = 0
    started: float = field(default_factory=time.monotonic)
    dashboard_port: int | None = None  # serve the review dashboard too; the run then lasts until Ctrl-C
    check_args: list[str] | None = None  # --check: checkers run beside the generators with these arguments
    checkers: int = 1
    log_max_bytes: int = LOG_MAX_BYTES
    log_keep: int = LOG_KEEP
    next_rotation: float = 0.0
    gpus: list[str] | None = None  # one GPU per generator (--gpus, --per-gpu): workers is its length
    progress: Progress = field(init=False)  # the terminal's view of the run

    def __post_init__(self) -> None:
        self.progress = Progress(self.out, self.gpus, self.check_args is not None)

    def say(self, text: str) -> None:
        self.progress.say(text)

    # ---- children --------------------------------------------------------
    def spawn(self, name: str, argv: list[str], leases: bool = False, gpu: str | None = None) -> Child:
        c = Child(name, argv, layout.log_path(self.dataset, name), leases=leases, gpu=gpu)
        c.start("first start")
        self.children.append(c)
        return c

    def start_all(self) -> None:
        ds = str(self.dataset)
        if running(self.dataset) is None:
            self.daemon = self.spawn("statesvc", [*command("statesvc"), "serve", "--dataset", ds,
                                                  *self.serve_args])
        else:
            self.say(f"using the statesvc daemon already serving {ds}")
        self.start_generators()
        self.wait_daemon()
        # Not needed before there is work to check: started once the daemon answers, it does
        # not compete with the generators loading their models.
        self.spawn("reconcile", [*command("pipeline"), "reconcile", "--dataset", ds,
                                 "--interval", str(self.reconcile_interval)])
        for i in range(self.checkers if self.check_args is not None else 0):  # leases: told dead like generators
            self.spawn(f"check-{i}", [*command("pipeline"), "check", "--dataset", ds, *self.check_args], leases=True)
        if self.dashboard_port is not None:
            self.spawn("dashboard", [*command("statesvc"), "dashboard", "--dataset", ds,
                                     "--port", str(self.dashboard_port)])
            self.say(f"review dashboard: http://127.0.0.1:{self.dashboard_port}/ (log: "
                     f"{layout.log_path(self.dataset, 'dashboard')})")

    def create(self, state: State) -> None:
        """Write the new state while the generators load their models."""
        layout.wavs(self.dataset).mkdir(parents=True, exist_ok=True)
        self.start_generators()
        try:
            create_prepared(self.dataset, state)
        except (OSError, SaveFailed) as exc:
            raise PipelineError(f"cannot create {state_path(self.dataset)}: {exc}") from None

    def start_generators(self) -> None:
        """Generators load their model while the daemon loads the state, and find it through
        the lock file when it is up."""
        if any(c.name.startswith("generate-") for c in self.children):
            return
        gpus = self.gpus or [None] * self.workers
        for i, gpu in enumerate(gpus):
            self.spawn(f"generate-{i}", [*command("pipeline"), "generate", "--dataset", str(self.dataset),
                                         *self.gen_args], leases=True, gpu=gpu)
        if self.gpus:
            self.say("generators: " + ", ".join(f"{c.name} on GPU {c.gpu} (pid {c.proc.pid})"
                                                for c in self.children if c.gpu is not None))

    def wait_daemon(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon is not None and not self.daemon.alive():
                code = self.daemon.proc.returncode
                raise (CannotStart if code == 2 else PipelineError)(f"statesvc serve exited {code}: "
                                                                     f"{self.daemon.last_log_line()}")
            if self.status(timeout=1.0) is not None:
                return
            time.sleep(0.1)
        raise PipelineError("the statesvc daemon did not answer within 30 s")

    def supervise(self) -> None:
        """One look at every child: promote, notice a death, restart after the backoff."""
        now = time.monotonic()
        if self.daemon is None and running(self.dataset) is None:
            # the daemon we found at start went away: from now on we run our own
            self.say("the statesvc daemon serving the dataset went away; starting one")
            self.daemon = self.spawn("statesvc", [*command("statesvc"), "serve", "--dataset",
                                                  str(self.dataset), *self.serve_args])
        if now >= self.next_rotation:
            self.next_rotation = now + 1.0
            for c in self.children:
                c.rotate_log(self.log_max_bytes, self.log_keep)
        if self.stopping:
            return
        for c in self.children:
            if c.state in LIVE and not c.alive():
                self.exited(c, now)
            elif c.state is ChildState.STARTING and now - c.started >= QUICK_EXIT:
                c.change(ChildState.RUNNING, f"alive {QUICK_EXIT:.0f} s after its start")
            elif c.state is ChildState.BACKING_OFF and now >= c.restart_at:
                c.restarts += 1
                c.start(f"restart #{c.restarts}")
                self.say(f"{c.label()} restarted (restart #{c.restarts}, pid {c.proc.pid})")

    def exited(self, c: Child, now: float) -> None:
        """A child died without being asked to: back off and restart it, or give up on a crash loop."""
        code = c.proc.returncode
        # Quick: it died before it was seen alive past QUICK_EXIT. A child that exits with an error
        # right after starting cannot start at all (a bad option, a damaged state); one killed by
        # a signal is restarted however often.
        quick = c.state is ChildState.STARTING
        c.quick_errors = c.quick_errors + 1 if quick and code > 0 else 0
        c.quick_exits = c.quick_exits + 1 if quick else 0
        if c.quick_errors >= CRASH_LOOP:
            c.change(ChildState.GIVEN_UP, f"{c.quick_errors} quick exits in a row, the last {describe_code(code)}")
            self.report_death(c, code)
            raise PipelineError(f"{c.name} keeps failing at start (exit {code}): {c.last_log_line()}")
        delay = min(BACKOFF_MAX, 0.25 * 2 ** c.quick_exits)
        c.restart_at = now + delay
        c.change(ChildState.BACKING_OFF, f"exited with {describe_code(code)}")
        self.say(f"{c.label()} (pid {c.proc.pid}) exited with {describe_code(code)}; restarting in {delay:.1f} s")
        self.report_death(c, code)

    def report_death(self, c: Child, code: int) -> None:
        """Tell the daemon at once that a generator died, so its leases come back now rather than
        when they expire. Lease expiry stays the fallback: no answer is no failure here."""
        if not c.leases or code == 0 or c.owner is None:
            return  # an exit with 0 released its leases itself
        head = f"{c.name} (pid {c.proc.pid}) died ({describe_code(code)})"
        try:
            reply = self._call("died", timeout=DIED_TIMEOUT, owner=c.owner)
        except (NoDaemon, Unavailable, ServiceError) as exc:
            self.say(f"{head}; the daemon was not told ({exc}); its leases come back when they expire")
            return
        self.say(f"{head}; {leases_back(reply)}")

    def stop_children(self, names_prefix: str = "", why: str = "stopped by run-pipeline") -> None:
        targets = [c for c in self.children if c.name.startswith(names_prefix) and c is not self.daemon]
        self._stop(targets, why)
        if not names_prefix and self.daemon is not None:
            self._stop([self.daemon], why)

    def _stop(self, targets: list[Child], why: str) -> None:
        targets = [c for c in targets if c.state in ACTIVE]
        for c in targets:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for c in targets:
            if c.proc is not None:
                try:
                    c.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    c.signal(signal.SIGKILL)
                    c.proc.wait()
            c.change(ChildState.STOPPED, why)

    # ---- the daemon's view -------------------------------------------------
    _client: Client | None = None
    _client_endpoint: str | None = None

    def _call(self, op: str, timeout: float = 3.0, **fields: object) -> dict:
        """One request to the daemon serving the dataset, on the run's one client (a new one when
        the daemon's endpoint changes). Raises NoDaemon, Unavailable or ServiceError."""
        rec = running(self.dataset)
        if rec is None or not rec.get("endpoint"):
            raise NoDaemon(f"no statesvc daemon serves {self.dataset}")
        if self._client is None or self._client_endpoint != rec["endpoint"]:
            if self._client is not None:
                self._client.close()
            self._client = Client(rec["endpoint"], timeout=timeout, retries=1)
            self._client_endpoint = rec["endpoint"]
        self._client.timeout = timeout
        try:
            return self._client.call(op, **fields)
        except Unavailable:
            self._client.reconnect()  # Lazy Pirate: a fresh socket for the next request
            raise

    def status(self, timeout: float = 3.0) -> dict | None:
        try:
            return self._call("status", timeout=timeout)
        except (NoDaemon, Unavailable, ServiceError):
            return None

    def final_reconcile(self) -> list[str]:
        """One reconcile pass, acknowledged by the daemon, run here (the same library as the child).

        The daemon may be restarting (it may have just died); children keep being supervised
        while we wait for it.
        """
        from .reconciler import Reconciler, describe  # soundfile and numpy: not before the children start
        error: Exception = PipelineError("no daemon")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.stopping:
            self.supervise()
            rec = running(self.dataset)
            if rec is None or not rec.get("endpoint"):
                time.sleep(0.2)
                continue
            try:
                with Client(rec["endpoint"], timeout=5.0, retries=2) as c:
                    return describe(Reconciler(c, self.dataset).run_pass())
            except (Unavailable, ServiceError) as exc:
                error = exc
        raise PipelineError(f"final reconcile failed: {error}")

    # ---- the whole run -------------------------------------------------------
    def run(self) -> int:
        self.start_all()
        st = None
        reviewing = False  # done, and the dashboard stays up for review (regenerations included)
        while not self.stopping:
            self.supervise()
            st = self.status() or st
            if st is not None:
                done = self.done(st)
                if not reviewing:
                    self.progress.show(st)
                if done and not reviewing:
                    for line in self.final_reconcile()[:-1]:
                        self.say(f"final reconcile: {line}")
                    st = self.status() or st
                    if self.done(st):
                        if self.dashboard_port is None:
                            break
                        self.progress.clear()
                        self.say(f"all generated; the dashboard stays up for review at "
                                 f"http://127.0.0.1:{self.dashboard_port}/ (Ctrl-C to stop)")
                        reviewing = True
                elif not done and reviewing:
                    reviewing = False  # a regeneration asked from the page: show its progress
            time.sleep(0.1)
        if self.dashboard_port is not None:  # stopped from review: a finished run unless work was left
            st = self.status() or st
        interrupted = bool(self.stopping) and not (self.dashboard_port is not None and st is not None
                                                   and st["pending"] == 0 and st["generating"] == 0)
        self.progress.clear()
        if interrupted:
            self.stop_children(why="interrupted")  # generators flush their results to the daemon, then it stops
        else:
            self._stop(self.children, "the run is done")  # all acknowledged: stop together
        self.remove_dead_temps()
        return self.summary(interrupted)

    def done(self, st: dict) -> bool:
        """Nothing pending or generating; with --check, every take checked too (a check may send
        an entry back for a retake)."""
        return st["pending"] == 0 and st["generating"] == 0 and \
            (self.check_args is None or st.get("check_waiting", 0) == 0)

    def remove_dead_temps(self) -> None:
        """A generator killed mid-write leaves its temp wav (named with its pid); once every child of
        ours has stopped, those are garbage. Temp files of other writers wait for the reconciler's
        age rule."""
        from statesvc.audio import TMP_PREFIX  # soundfile: not before the children start
        ours = {str(pid) for c in self.children if c.name.startswith("generate-") for pid in c.pids}
        removed = 0
        for path in layout.wavs(self.dataset).glob(f"{TMP_PREFIX}*.wav"):
            if path.name.rsplit(".", 2)[-2] in ours:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            self.say(f"removed {removed} temp file(s) left by killed generators")

    def summary(self, interrupted: bool) -> int:
        st = dataset_status(self.dataset)  # every child has stopped: the file (or a daemon not ours) is the truth
        wall = time.monotonic() - self.started
        self.say(f"{'interrupted' if interrupted else 'finished'}: completed {st['completed']}/{st['total']}, "
                 f"failed {st['failed']}, pending {st['pending']}, audio {fmt_seconds(st['audio_seconds'])}, "
                 f"wall time {fmt_seconds(wall)}")
        if self.check_args is not None:
            flagged = st.get("mismatched", 0)
            self.say(f"checked {st.get('checked', 0)}, flagged {flagged}" + (
                " (completed, kept for the curator: the page's 'says something else', or statesvc list --json: check)"
                if flagged else ""))
        if interrupted:
            self.say("state is consistent; run the same command again to resume")
            return EXIT_INTERRUPTED
        failed = dataset_entries(self.dataset, "failed")
        for e in failed[:50]:
            self.say(f"failed: {e['id']} {e['filename']}: {e.get('error')}")
        if len(failed) > 50:
            self.say(f"... and {len(failed) - 50} more (statesvc list --status failed)")
        if failed:
            self.say("retry them with: statesvc requeue --failed --dataset " + str(self.dataset))
            return EXIT_FAILED_ENTRIES
        return EXIT_OK


class PipelineError(Exception):
    pass


class CannotStart(PipelineError):
    """The daemon refused to start on this dataset (damaged state, another daemon holds it): the
    run cannot check or do anything, as a usage error (exit 2)."""


def plan(dataset: Path, texts: Path | None, prefix: str | None, synth: str) -> State | None:
    """Every check before anything starts: the state to create, or None to resume the one there."""
    if synth not in BUILTIN:
        resolve(synth)  # fail fast on an unknown plugin, without loading a model here
    if state_path(dataset).exists():
        return None
    if texts is None:
        raise PipelineError(f"{dataset} has no state; give --texts FILE to create it")
    return prepare_init(dataset, texts, prefix)  # nothing written yet


def _die_with_parent() -> None:
    """In the child: SIGTERM when run-pipeline itself dies, so no generator outlives it."""
    die_with_parent(signal.SIGTERM)


def leases_back(reply: dict) -> str:
    """The daemon's answer to "died" in words: how many leases came back, which entries paid."""
    returned, charged, failed = (list(reply.get(k) or []) for k in ("returned", "charged", "failed"))
    n = len(returned) + len(charged)
    if n == 0:
        return "it held no leases"
    text = f"its {n} lease{'s are' if n != 1 else ' is'} back"
    if charged:
        text += f": {_entries(charged)} charged an attempt"
    if failed:
        text += f"; {_entries(failed)} reached max attempts and failed"
    return text


def _entries(ids: list, most: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")
    return f"entr{'ies' if len(ids) != 1 else 'y'} {shown}"


def describe_code(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def install_signals(run: Run) -> None:
    def on_signal(signum: int, _frame: object) -> None:
        run.stopping += 1
        if run.stopping > 1:
            for c in run.children:
                c.signal(signal.SIGKILL)
            os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
