"""Ray Data as a user would run the TTS job: ``map_batches`` over the texts with an actor pool.

Settings and why: ``map_batches(Synth, batch_size=B, concurrency=W, num_cpus=1)``, a fixed pool
of W actors (one per GPU, the model loaded once per actor), Ray Data's defaults otherwise (its
actors are restarted when they die, ``max_restarts=-1``, and their tasks retried,
``max_task_retries=-1``); a local Ray started with W + 1 CPUs and no dashboard. The driver
iterates the output and appends each batch's names to a manifest, fsynced, before counting them
(the user's books: Ray Data itself keeps nothing once the job ends).

    .venv-peers/bin/python bench/peers_ray.py JOB.json     (bench/peers.py writes JOB.json)
"""

from __future__ import annotations

import os
import sys
import time

from peers_work import do_batch, load_job, report


class Synth:
    def __init__(self, folder: str, opts: dict[str, str]):
        self.folder, self.opts = folder, opts

    def __call__(self, batch: dict) -> dict:
        items = [[str(n), str(t)] for n, t in zip(batch["name"], batch["text"], strict=True)]
        return {"name": do_batch(self.folder, items, self.opts)}


def main(job_path: str) -> None:
    job = load_job(job_path)
    import ray

    # the actors find peers_work through PYTHONPATH, which bench/peers.py sets and Ray's workers inherit
    ray.init(num_cpus=job["workers"] + 1, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    books: dict[str, str] = {}
    t_last = None
    error = ""
    manifest = os.open(os.path.join(job["work"], "ray-manifest.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        ds = ray.data.from_items([{"name": n, "text": t} for n, t in job["items"]])
        out = ds.map_batches(Synth, fn_constructor_kwargs={"folder": job["folder"], "opts": job["opts"]},
                             batch_size=job["batch"], concurrency=job["workers"], num_cpus=1)
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            names = [str(n) for n in batch["name"]]
            os.write(manifest, ("".join(f"{n}\n" for n in names)).encode())
            os.fsync(manifest)
            books.update({n: "done" for n in names})
            t_last = time.time()
    except Exception as exc:  # the job's end as its user sees it
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        os.close(manifest)
    for name, _ in job["items"]:
        books.setdefault(name, "gone")
    report(books, t_last, {"error": error} if error else None)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
