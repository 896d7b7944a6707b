"""The same TTS job with bin/run-pipeline and with the tools a user would pick instead, side by side.

The job: N texts, W workers (one process per GPU, the model loaded once per process), batches of
B texts, the synthesizer bench/peers_synth.py:Logged (a GPU model's cost shape: ``per_call +
per_text * n`` seconds a batch; it logs each call), each wav written through a temp file, fsync,
rename (and, for the peers, fsync of the folder), and counted only once it is on disk. Systems:

- ``run-pipeline``: ``bin/run-pipeline --workers W --batch B`` (daemon, reconciler, generators).
- ``huey``: ``SqliteHuey(fsync=True)``, ``huey_consumer -w W -k process`` (bench/peers_huey.py).
- ``celery``: Redis (Debian's redis-server on a private port, ``appendfsync always``), ``acks_late``,
  prefetch 1, ``celery worker -c W``; once with Celery's default on a lost worker and once with
  ``task_reject_on_worker_lost``, and once as W ``--pool solo`` workers, one per GPU, restarted
  when they die (bench/peers_celery.py).
- ``ray``: Ray Data ``map_batches`` with a pool of W actors, where Ray installs (bench/peers_ray.py).

Each system runs the job three times: clean (whole-job time; busy fraction: synthesis time
summed over the workers / (W x first-to-last synthesis span)), then twice with one worker
process SIGKILLed once 40 % of the texts are synthesized (a CUDA crash; the plugin does it to its
own process, once per job): halfway through a batch's synthesis, and just after a batch's
synthesis, while its wavs are written. Then its books are read: **lost** (counted done with no
valid wav, or dropped: failed for good, or in no queue and with no result: nobody will make it),
**written twice** (a whole wav written again for a text that had one), **re-synthesized** (texts
whose synthesis completed more than once: GPU time spent twice), **stuck** (held in flight or
queued when the job gave up: nothing more came for ``--grace`` seconds), and whether the job
finished by itself. A peer's books are its result store as its user reads it (each runner's
docstring says its settings and why).

The peers run in their own venv, ``.venv-peers`` (made here from bench/requirements-peers.txt and
bench/requirements-peers-ray.txt, plus this project, editable), never in the project's. Run:

    .venv/bin/python bench/peers.py                 # 400 texts, 2 workers, batch 4: ~20 min
    .venv/bin/python bench/peers.py --systems run-pipeline --no-doc     # ours alone, printed
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
PEERS = ROOT / ".venv-peers"
REQS = [BENCH / "requirements-peers.txt", BENCH / "requirements-peers-ray.txt"]
RUNNERS = {"huey": ("peers_huey.py", {}), "celery": ("peers_celery.py", {"reject_on_worker_lost": False}),
           "celery+reject": ("peers_celery.py", {"reject_on_worker_lost": True}),
           "celery-solo": ("peers_celery.py", {"solo": True}), "ray": ("peers_ray.py", {})}
SYSTEMS = ["run-pipeline", *RUNNERS]
LABELS = {"run-pipeline": "`bin/run-pipeline` (ours)", "huey": "huey, SQLite (`fsync=True`)",
          "celery": "Celery + Redis, `acks_late`", "celery+reject": "Celery + Redis, `acks_late` + "
          "`task_reject_on_worker_lost`", "celery-solo": "Celery + Redis, `acks_late`, a `--pool solo` "
          "worker per GPU", "ray": "Ray Data, `map_batches` actor pool"}
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{BENCH}", "PIPELINE_PYTHON": sys.executable}

WORDS = ("el sol brilla sobre la montaña nevada mientras los niños juegan en el parque y la música "
         "suena por la ventana abierta de la biblioteca donde mi abuela lee un libro antiguo").split()


def make_texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 9)]
        out.append(" ".join(words).capitalize() + f", número {i}.")
    return out


def ensure_peers() -> str:
    """Make or update .venv-peers; return why Ray is missing ("" when it installed)."""
    py = PEERS / "bin" / "python"
    stamp = PEERS / ".bench-peers-stamp"
    want = "\n".join(r.read_text() for r in REQS)
    if not py.exists():
        print(f"making {PEERS.name} (the peers' own venv; once)", file=sys.stderr, flush=True)
        subprocess.run(["python3", "-m", "venv", str(PEERS)], check=True)
    if not stamp.exists() or stamp.read_text() != want:
        pip = [str(py), "-m", "pip", "install", "-q"]
        p = subprocess.run([*pip, "-r", str(REQS[0]), "-e", str(ROOT)], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"cannot install the peers: {p.stderr.strip().splitlines()[-1:]}")
        p = subprocess.run([*pip, "-r", str(REQS[1])], capture_output=True, text=True)
        if p.returncode != 0:
            (PEERS / ".ray-missing").write_text(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "pip failed")
        else:
            (PEERS / ".ray-missing").unlink(missing_ok=True)
        stamp.write_text(want)
    missing = PEERS / ".ray-missing"
    return f"Ray did not install: {missing.read_text().strip()}" if missing.exists() else ""


@dataclasses.dataclass
class Outcome:
    seconds: float                 # whole job: start to the last result counted
    busy: float                    # synthesis time / (workers x first-to-last synthesis span)
    done: int                      # counted done with a valid wav
    lost_counted: int = 0          # counted done, no valid wav
    lost_dropped: int = 0          # failed for good, or in no queue and with no result
    twice: int = 0                 # complete wavs written again for a text that had one
    resynthesized: int = 0         # texts whose synthesis completed more than once
    stuck: int = 0                 # held in flight or queued when the job ended
    finished: bool = True          # the job ended by itself (not by the --grace cut)
    killed: str = ""               # what was killed, when
    note: str = ""


def read_log(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def synthesis(log: Path, workers: int) -> tuple[float, Counter, Counter, str]:
    """Busy fraction, how many times each text's synthesis completed, how many times each name's
    wav was written (the peers' tasks log it), and what was killed."""
    records = read_log(log)
    done = [r for r in records if "t1" in r]
    killed = "".join(f"pid {r['pid']} during its {r['killed']}" for r in records if "killed" in r)
    written = Counter(r["wrote"] for r in records if "wrote" in r)
    if not done:
        return 0.0, Counter(), written, killed
    span = max(r["t1"] for r in done) - min(r["t0"] for r in done)
    busy = sum(r["t1"] - r["t0"] for r in done) / (workers * span) if span > 0 else 0.0
    return busy, Counter(t for r in done for t in r["texts"]), written, killed


def wav_ok(path: Path) -> bool:
    from statesvc.audio import inspect
    return inspect(path).valid


def run_ours(work: Path, texts: list[str], a: argparse.Namespace,
             opts: dict) -> tuple[float, dict, dict, int, str]:
    """bin/run-pipeline; start to the last completion the state records, books from the state:
    {text: state}, {text: wav path}, whole takes written twice, and when it exited (its clean stop:
    last reconcile, checkpoint)."""
    tf = work / "texts.txt"
    tf.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ds = work / "ds"
    cmd = [str(ROOT / "bin" / "run-pipeline"), "--dataset", str(ds), "--texts", str(tf), "--workers",
           str(a.workers), "--batch", str(a.batch), "--synth", "peers_synth:Logged"]
    for k, v in opts.items():
        cmd += ["--synth-opt", f"{k}={v}"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=a.timeout)
    seconds = time.time() - t0
    if p.returncode not in (0, 3):
        raise SystemExit(f"run-pipeline failed ({p.returncode}): {p.stderr[-1500:]}")
    q = subprocess.run([str(Path(sys.executable).parent / "statesvc"), "list", "--json", "--dataset", str(ds)],
                       capture_output=True, env=ENV, check=True)
    state = {"completed": "done", "failed": "failed", "pending": "queued", "generating": "held"}
    books, wavs, last = {}, {}, t0
    for e in json.loads(q.stdout):
        books[e["text"]] = state[e["status"]]
        wavs[e["text"]] = ds / "wavs" / f"{e['filename']}.wav"
        if e["status"] == "completed" and e["updated_at"]:
            last = max(last, epoch(e["updated_at"]))
    # a second whole take of an entry never replaces the one that counts: it goes to stale/
    twice = sum(1 for f in (ds / "stale").glob("*.wav") if wav_ok(f)) if (ds / "stale").is_dir() else 0
    return last - t0, books, wavs, twice, f"exited after {seconds:.1f} s"


def epoch(iso: str) -> float:
    """statesvc's ``2026-12-03T06:01:53.123Z`` as seconds since the epoch."""
    return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + int(iso[20:23]) / 1000


def run_peer(system: str, work: Path, texts: list[str], a: argparse.Namespace,
             opts: dict) -> tuple[float, dict, dict, int, str]:
    script, extra = RUNNERS[system]
    folder = work / "wavs"
    folder.mkdir()
    items = [[f"t{i:05d}", t] for i, t in enumerate(texts)]
    job = {"work": str(work), "folder": str(folder), "items": items, "batch": a.batch, "workers": a.workers,
           "opts": opts, "grace": a.grace, **extra}
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    t0 = time.time()
    p = subprocess.run([str(PEERS / "bin" / "python"), str(BENCH / script), str(work / "job.json")],
                       capture_output=True, text=True, env=ENV, cwd=work, timeout=a.timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{system} runner failed ({p.returncode}): {p.stderr[-1500:]}")
    answer = json.loads(lines[-1])
    name_text = dict(items)
    books = {name_text[n]: s for n, s in answer["books"].items()}
    wavs = {t: folder / f"{n}.wav" for n, t in items}
    seconds = (answer["t_last"] or time.time()) - t0
    _, _, written, _ = synthesis(work / "synth.log", a.workers)
    return seconds, books, wavs, sum(1 for c in written.values() if c > 1), answer.get("error", "")


def run(system: str, texts: list[str], a: argparse.Namespace, kill: str) -> Outcome:
    """One job; ``kill``: "" (clean), "synthesis" or "write" (where the worker dies)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-peers-{system}-", dir=os.environ.get("BENCH_DIR")))
    log = work / "synth.log"
    opts = {"log": str(log), "per_call": str(a.per_call), "per_text": str(a.per_text)}
    if kill:
        opts.update(die_at=str(int(len(texts) * a.kill_at)), die_in=kill, marker=str(work / "died"))
    try:
        if system == "run-pipeline":
            seconds, books, wavs, twice, note = run_ours(work, texts, a, opts)
        else:
            seconds, books, wavs, twice, note = run_peer(system, work, texts, a, opts)
        busy, count, _, killed = synthesis(log, a.workers)
        if kill and not killed:
            raise SystemExit(f"{system}: nothing was killed (--kill-at too late?)")
        states = Counter(books.get(t, "gone") for t in texts)
        done_ok = sum(1 for t in texts if books.get(t) == "done" and wav_ok(wavs[t]))
        final = states["done"] + states["failed"] + states["gone"] == len(texts)
        return Outcome(seconds=seconds, busy=busy, done=done_ok,
                       lost_counted=states["done"] - done_ok,
                       lost_dropped=states["failed"] + states["gone"],
                       twice=twice, resynthesized=sum(1 for t in texts if count[t] > 1),
                       stuck=states["held"] + states["queued"],
                       finished=final and (system == "run-pipeline" or states["gone"] == 0),
                       killed=killed, note=note)
    finally:
        if a.keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


KILLS = {"synthesis": "mid-synthesis", "write": "5 ms after synthesis"}


def tables(results: dict[str, dict[str, Outcome]], n: int) -> tuple[str, str]:
    """The full table (docs) and the short one (README)."""
    full = ["| system | whole job (clean) | busy (clean) | worker killed | done | lost | written twice | "
            "re-synthesized | stuck | finished by itself |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    short = ["| system | whole job | busy | SIGKILL mid-synthesis / 5 ms after synthesis: lost, written "
             "twice, stuck |", "|---|---:|---:|---|"]
    for system, runs in results.items():
        clean = runs[""]
        cells = []
        for kill, label in KILLS.items():
            k = runs[kill]
            lost = k.lost_counted + k.lost_dropped
            detail = f" ({k.lost_counted} counted without a wav)" if k.lost_counted else ""
            full.append(f"| {LABELS[system]} | {clean.seconds:.1f} s | {clean.busy:.3f} | {label} | {k.done}/{n} | "
                        f"{lost}{detail} | {k.twice} | {k.resynthesized} | {k.stuck} | "
                        f"{'yes' if k.finished else 'no'} |")
            cells.append(f"{lost}, {k.twice}, {k.stuck}")
        short.append(f"| {LABELS[system]} | {clean.seconds:.1f} s | {clean.busy:.3f} | {' / '.join(cells)} |")
    return "\n".join(full), "\n".join(short)


def replace_block(path: Path, name: str, body: str) -> None:
    text = path.read_text()
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path.name} has no <!-- {name}:start --> ... <!-- {name}:end --> block to fill")
    path.write_text(pattern.sub(lambda _: f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->", text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--per-call", type=float, default=0.3, help="seconds of synthesis per batch")
    ap.add_argument("--per-text", type=float, default=0.05, help="seconds of synthesis per text in a batch")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of the texts synthesized at the kill")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="a peer's job is over when nothing more came for this long (seconds)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take at most")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=SYSTEMS)
    ap.add_argument("--keep", action="store_true", help="keep each run's folder (printed) to look at")
    ap.add_argument("--no-doc", action="store_true", help="Do not rewrite docs/BENCHMARKS.md and the README table.")
    a = ap.parse_args()
    skipped: dict[str, str] = {}
    if any(s != "run-pipeline" for s in a.systems):
        why = ensure_peers()
        if why and "ray" in a.systems:
            skipped["ray"] = why
            print(f"skipping ray: {why}", file=sys.stderr)
    if not shutil.which("redis-server") and any(s.startswith("celery") for s in a.systems):
        for s in ("celery", "celery+reject"):
            skipped[s] = "redis-server is not installed (Debian: apt-get install redis-server)"
        print("skipping celery: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
    texts = make_texts(a.texts)
    results: dict[str, dict[str, Outcome]] = {}
    for system in [s for s in a.systems if s not in skipped]:
        results[system] = {}
        for kill in ("", *KILLS):
            o = results[system][kill] = run(system, texts, a, kill)
            print(f"  {system:>13} {kill or 'clean':>9}: {o.seconds:6.1f} s busy {o.busy:.3f} done {o.done} "
                  f"lost {o.lost_counted}+{o.lost_dropped} twice {o.twice} resynth {o.resynthesized} "
                  f"stuck {o.stuck} finished={o.finished} {o.killed} {o.note}", file=sys.stderr, flush=True)
    shape = (f"{a.texts} texts, {a.workers} workers, batches of {a.batch}, a model of {a.per_call * 1000:.0f} ms "
             f"a call + {a.per_text * 1000:.0f} ms a text")
    full, short = tables(results, a.texts)
    print(f"{shape}\n{full}")
    for s, why in skipped.items():
        print(f"{s}: skipped, {why}")
    if a.no_doc:
        return
    from report import update
    notes = "".join(f"\n- {LABELS[s]}: skipped, {why}." for s, why in skipped.items())
    runs = "".join(f"\n- {LABELS[s]}: " + "; ".join(
        f"{kill or 'clean'}: {o.killed + ', ' if o.killed else ''}{o.note or 'no error from the job'}"
        for kill, o in r.items())
        for s, r in results.items())
    update("peers", f"The peers side by side: {shape}", DOC.format(table=full, grace=a.grace, kill_at=a.kill_at)
           + f"\n\nEach run (what was killed; the job's own end):{runs}{notes}")
    replace_block(ROOT / "README.md", "peers", f"{shape}; one worker SIGKILLed once "
                  f"(`.venv/bin/python bench/peers.py`; details in docs/BENCHMARKS.md):\n\n{short}")


DOC = """The same job through each system: the same texts, the same plugin (`bench/peers_synth.py`, a GPU
model's cost shape that logs its calls), the same wav bytes, each written through a temp file and
fsync before its result counts, the same number of worker processes (the model loaded once in
each), batches of the same size. Each system runs it three times. **Clean**: the whole job's time
(start-up of the broker, daemon or Ray included, to the last result counted, durable; ours then
stops cleanly, last reconcile and checkpoint, in about a second more) and the busy fraction
(synthesis time summed over the workers / (workers x first-to-last synthesis span)). **Killed**:
once {kill_at:.0%} of the texts are synthesized, one worker process is SIGKILLed (a CUDA crash;
the plugin does it to its own process, once per job), either halfway through a batch's synthesis
or 5 ms after the synthesis returned (while its wavs are written or reported); the books are read
when the job ends, or when nothing more came for {grace:.0f} s. **Lost**: counted done without a
valid wav, or dropped (failed for good, or in no queue and with no result: nobody will make it
unless a person finds it). **Written twice**: a whole wav written again for a text that already
had one (for ours: a valid take in `stale/`; for the peers: their task logs each write). **Re-
synthesized**: texts whose synthesis completed more than once (GPU time spent twice; a batch cut
short by the kill is not counted). **Stuck**: still held in flight or queued at the end.
**Finished by itself**: every text reached a final state without the cut.

{table}

What a worker's death costs each, as the books show it (the same in every run so far; the counts
are of the one batch the dead worker held, B texts, and how many of its wavs are written twice
depends on how many were on disk at the death): huey loses the batch, silently (no result, in no
queue; its user's wait never ends). Celery by default records it FAILURE and never retries it,
though its wavs may be on disk. With `task_reject_on_worker_lost` it is redone, and the wavs
written before the death are written twice; Ray Data does the same. As one `--pool solo` worker
per GPU, the batch is stuck for the visibility timeout. Ours puts the dead generator's texts back
at once (the supervisor tells the daemon), adopts the takes already on disk (none written twice),
synthesizes again only what was not on disk, and finishes with every entry completed.

Settings, as each tool's documentation recommends for long tasks that must not be lost:
- huey: `SqliteHuey(fsync=True)` (SQLite `synchronous=FULL`), `huey_consumer -w W -k process`, one
  task per batch, done = a result in huey's store. huey takes a task off the queue when a worker
  starts it and records nothing of it while it runs: a dead worker's task is in no queue and
  never gets a result (the consumer restarts the worker; huey's issues #728, #733).
- Celery: Redis with `appendfsync always` on a private port, `task_acks_late=True`,
  `worker_prefetch_multiplier=1`, a Redis result backend, `celery worker -c W` (prefork). By
  default a task whose pool process dies is acknowledged anyway and recorded FAILURE
  (WorkerLostError), never retried, as Celery's task guide warns; with
  `task_reject_on_worker_lost=True` it is requeued at once (its docs warn of a task that kills
  its worker every time: it is then requeued forever, where ours ends `failed` after
  `--max-attempts`). With one `--pool solo` worker per GPU (each restarted when it dies, as
  systemd would), the process that dies is the one holding the message: it stays in Redis's
  `unacked` set, and nobody gets it again before the visibility timeout (1 h by default; a
  restarted worker does not take it back earlier).
- Ray Data: `map_batches` with a class (an actor pool of W, `concurrency=W`, `num_cpus=1`), its
  defaults (dead actors restarted, their tasks retried); the driver appends each output batch's
  names to a manifest, fsynced, before counting them: Ray keeps no books of its own once the
  job ends.
- Ours: `bin/run-pipeline --workers W --batch B` as the README runs it (daemon, reconciler,
  supervisor), `--max-attempts` 3.

Caveats: a 2-core machine shared with other work, so the times are of one run each, not medians;
the peers' worker processes start once per job, as ours do. The run builds `.venv-peers` (the
peers and this project, never the other way round) on first use; Redis is Debian's
`redis-server`."""


if __name__ == "__main__":
    main()
