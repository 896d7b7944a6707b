"""huey with SQLite as a user would run the TTS job: one task per batch, results in huey's store.

Settings and why: ``SqliteHuey(fsync=True)`` (``pragma synchronous=FULL``: the queue and the
result store survive a power cut, as our journal does); ``huey_consumer -w W -k process`` (one
process per GPU, the model loaded once per process); defaults otherwise (the health check
restarts a dead worker within 10 s). A task is counted done when its result is in huey's store
(written by the worker after the wavs were fsynced). huey removes a task from the queue when a
worker takes it and keeps no record of what a worker is running, so the task of a worker that
dies is in no queue and has no result.

    .venv-peers/bin/python bench/peers_huey.py JOB.json     (bench/peers.py writes JOB.json)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from huey import SqliteHuey
from huey.exceptions import TaskException
from peers_work import do_batch, load_job, report

huey = SqliteHuey("peers", filename=os.environ.get("PEERS_HUEY_DB", "peers-huey.db"), fsync=True)


@huey.task()
def synth_batch(folder: str, items: list[list[str]], opts: dict[str, str]) -> list[str]:
    return do_batch(folder, items, opts)


WINDOW = 8  # results looked at per poll: the store is not hammered with a read per task every poll


def main(job_path: str) -> None:
    job = load_job(job_path)
    os.environ["PEERS_HUEY_DB"] = os.path.join(job["work"], "huey.db")
    import peers_huey as app  # by its module name: the name the consumer registers the task under

    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(os.path.join(job["work"], "huey-consumer.log"), "wb")
    consumer = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "huey_consumer"),
                                 "peers_huey.huey", "-w", str(job["workers"]), "-k", "process", "-n"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        batches = [job["items"][i:i + job["batch"]] for i in range(0, len(job["items"]), job["batch"])]
        results = [(b, app.synth_batch(job["folder"], b, job["opts"])) for b in batches]
        books: dict[str, str] = {}
        t_last, last_change = None, time.time()
        while len(books) < len(job["items"]) and time.time() - last_change < job["grace"]:
            # like a user's loop of result.get(): the oldest unfinished first, a few at a time
            for batch, res in [(b, r) for b, r in results if b[0][0] not in books][:WINDOW]:
                try:
                    value = res.get(preserve=True)
                except TaskException:
                    value, state = True, "failed"
                else:
                    state = "done"
                if value is not None:
                    books.update({name: state for name, _ in batch})
                    t_last = last_change = time.time()
            time.sleep(0.02)
        queued = {t.id for t in app.huey.pending()}
        for batch, res in results:
            for name, _ in batch:
                books.setdefault(name, "queued" if res.id in queued else "gone")
        report(books, t_last)
    finally:
        consumer.send_signal(signal.SIGINT)  # huey's graceful stop
        try:
            consumer.wait(15)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()


if __name__ == "__main__":
    main(sys.argv[1])
