"""Celery with Redis as a user would run the TTS job: one task per batch, results in Redis.

Settings and why (Celery's docs on long tasks and on worker loss): ``task_acks_late=True`` (a
message is acknowledged after the task, so a worker lost mid-task does not lose it),
``worker_prefetch_multiplier=1`` (long tasks: a worker reserves one message per process),
``task_reject_on_worker_lost`` as the job says (``PEERS_CELERY_REJECT=1``: a task whose pool
process died is requeued; off, Celery's default, it is acknowledged and recorded as failed with
WorkerLostError, as the docs warn), a Redis result backend. Redis is Debian's ``redis-server``,
started here on a private port with ``appendonly yes`` and ``appendfsync always``: queue and
results are fsynced before Redis answers. ``celery worker -c W`` (prefork: one process per GPU,
the model loaded once per process), or (``"solo": true``) W workers ``--pool solo``, one per
GPU, each restarted when it dies (as systemd's ``Restart=always`` would). A task is counted done
when its result is SUCCESS in Redis. A message taken but never acknowledged waits in Redis's
``unacked`` set for the visibility timeout (1 hour by default) before it is delivered again.

    .venv-peers/bin/python bench/peers_celery.py JOB.json     (bench/peers.py writes JOB.json)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from celery import Celery
from peers_work import do_batch, load_job, report

PORT = int(os.environ.get("PEERS_REDIS_PORT", "6379"))
app = Celery("peers_celery", broker=f"redis://127.0.0.1:{PORT}/0", backend=f"redis://127.0.0.1:{PORT}/1")
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1,
                task_reject_on_worker_lost=os.environ.get("PEERS_CELERY_REJECT") == "1",
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="peers.synth_batch")
def synth_batch(folder: str, items: list[list[str]], opts: dict[str, str]) -> list[str]:
    return do_batch(folder, items, opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_redis(port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"redis-server did not listen on {port}")


WINDOW = 8  # results looked at per poll: the store is not hammered with a read per task every poll


def restart_dead(workers: list[subprocess.Popen], commands: list[list[str]], start) -> None:
    for i, w in enumerate(workers):  # a dead worker is restarted, as systemd's Restart=always does
        if w.poll() is not None:
            workers[i] = start(commands[i])


def collect(job: dict, results: list, tick) -> tuple[dict[str, str], float | None]:
    """Wait for the results as a user's loop of ``result.get()`` would, oldest first, until all
    came or nothing more came for ``grace`` seconds."""
    books: dict[str, str] = {}
    t_last, last_change = None, time.time()
    while len(books) < len(job["items"]) and time.time() - last_change < job["grace"]:
        for batch, res in [(b, r) for b, r in results if b[0][0] not in books][:WINDOW]:
            state = res.state
            if state in ("SUCCESS", "FAILURE"):
                books.update({name: "done" if state == "SUCCESS" else "failed" for name, _ in batch})
                t_last = last_change = time.time()
        tick()
        time.sleep(0.02)
    return books, t_last


def unaccounted(client, results: list, books: dict[str, str]) -> None:
    """What Redis still holds of the tasks without a result: taken and unacknowledged, or queued."""
    unacked = set(client.hvals("unacked")) if client.exists("unacked") else set()
    queued = set(client.lrange("celery", 0, -1))
    for batch, res in results:
        held = any(res.id.encode() in m for m in unacked)
        waiting = any(res.id.encode() in m for m in queued)
        for name, _ in batch:
            books.setdefault(name, "held" if held else "queued" if waiting else "gone")


def main(job_path: str) -> None:
    job = load_job(job_path)
    port = free_port()
    os.environ["PEERS_REDIS_PORT"] = str(port)
    os.environ["PEERS_CELERY_REJECT"] = "1" if job.get("reject_on_worker_lost") else "0"
    import peers_celery as tasks  # by its module name, with the port set: the worker's view

    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", job["work"],
                              "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(os.path.join(job["work"], "celery-worker.log"), "ab")
    celery = [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "peers_celery", "worker", "-l", "INFO",
              "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if job.get("solo"):  # one worker per GPU: W processes, each its own broker connection
        commands = [[*celery, "--pool", "solo", "-n", f"gpu{i}@%h"] for i in range(job["workers"])]
    else:  # one worker, W pool processes
        commands = [[*celery, "--pool", "prefork", "-c", str(job["workers"])]]

    def start(cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=job["work"])

    workers: list[subprocess.Popen] = []
    try:
        wait_redis(port, time.time() + 10)
        workers = [start(cmd) for cmd in commands]
        batches = [job["items"][i:i + job["batch"]] for i in range(0, len(job["items"]), job["batch"])]
        results = [(b, tasks.synth_batch.delay(job["folder"], b, job["opts"])) for b in batches]
        books, t_last = collect(job, results, lambda: restart_dead(workers, commands, start))
        unaccounted(tasks.app.connection().default_channel.client, results, books)
        report(books, t_last)
    finally:
        for w in workers:
            w.send_signal(signal.SIGQUIT)  # cold stop: the books are read, nothing to drain
        for w in workers:
            try:
                w.wait(15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        redis.terminate()
        redis.wait(15)


if __name__ == "__main__":
    main(sys.argv[1])
