"""A private single-node Slurm cluster for tests: munged, slurmctld and slurmd on private ports and
files, started as subprocesses (as root; Debian's `slurm-wlm` and `munge`), stopped in `stop()`.

Every process of the cluster, the jobs included, carries ``SLURM_CONF`` pointing to this
cluster's own slurm.conf in its environment; `stop()` ends exactly those (by pid) after the
daemons, so a failed test leaves nothing running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port

NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "sinfo")
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING",
          "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"}


def missing_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a private Slurm cluster needs root (slurmd launches jobs as their user)"
    absent = [n for n in NEEDED if shutil.which(n, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    return None


def which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        # unix sockets (munge's, slurmstepd's in the spool) must fit in 108 bytes: a short folder
        self.short = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):  # in case the tests run in a job
            self.env.pop(k, None)
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    # ---- start ---------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        munge = self.short / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = munge / "sock"
        for d in ("state", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.short / "spool").mkdir()
        # -f: the folders are private (0700) rather than world-traversable; munged would refuse
        self.spawn("munged", [which("munged"), "-F", "-f", f"--socket={sock}", f"--key-file={key}",
                              f"--pid-file={munge / 'pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                              f"--seed-file={munge / 'seed'}"])
        self.wait(lambda: sock.exists(), timeout, "munged's socket")
        self.conf.write_text(self.config(sock))
        self.spawn("slurmctld", [which("slurmctld"), "-D", "-f", str(self.conf)])
        self.spawn("slurmd", [which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf)])
        self.wait(self.node_idle, timeout, "the node idle in sinfo")
        return self

    def config(self, munge_socket: Path) -> str:
        r, s = self.root, self.short
        return f"""\
ClusterName=ttstest
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={s / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=15
MinJobAge=3600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.logs.append(log)
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           cwd=self.root, start_new_session=True))

    def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited {p.returncode} while waiting for {what}:\n"
                                       + self.output())
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout}s waiting for {what}:\n" + self.output())
            time.sleep(0.1)

    def node_idle(self) -> bool:
        r = self.run("sinfo", "-h", "-o", "%T", check=False)
        return r.returncode == 0 and r.stdout.split() == ["idle"]

    # ---- use -----------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        r = subprocess.run([which(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
                           env={**self.env, **(env or {})}, cwd=cwd or self.root)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} -> {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def sbatch(self, *argv: str, cwd: Path, env: dict | None = None) -> str:
        out = self.run("sbatch", "--parsable", *argv, cwd=cwd, env=env).stdout.strip()
        return out.split(";")[0]

    def tasks(self, job: str) -> dict[str, dict[str, str]]:
        """Array task id (or range, while pending) -> the fields `scontrol show job` gives it."""
        r = self.run("scontrol", "show", "job", "-o", job, check=False)
        out = {}
        for line in r.stdout.splitlines():
            fields = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))
            if fields.get("ArrayJobId") == job:
                out[fields.get("ArrayTaskId", "")] = fields
        return out

    def finished(self, job: str) -> bool:
        t = self.tasks(job)
        return bool(t) and not any(f.get("JobState") in ACTIVE for f in t.values())

    def output(self) -> str:
        parts = []
        for name in ("munged.out", "slurmctld.out", "slurmd.out", "slurmctld.log", "slurmd.log"):
            p = self.root / "log" / name
            if p.exists():
                parts.append(f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)

    # ---- stop ----------------------------------------------------------------
    def ours(self) -> list[int]:
        """Pids of every process started under this cluster's slurm.conf (daemons, slurmstepd, jobs)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if marker in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons, then end whatever of ours is left. Never raises."""
        try:
            if any(p.poll() is None for p in self.procs):
                self.run("scancel", "--user=root", check=False, timeout=10)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    r = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.2)
        except Exception:
            pass
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (left := self.ours()) and time.monotonic() < deadline:  # a job or slurmstepd left behind
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        for f in self.logs:
            f.close()
        shutil.rmtree(self.short, ignore_errors=True)
