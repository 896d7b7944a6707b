"""What an entry view costs the rest of the dashboard (issue 17, item 9): /api/status timed alone and
while entry views load one after another, for an entry with 20 earlier takes of 30 s in requeued/
and, with ``--others N``, N more files there (other entries' takes).

It builds the dataset in a temporary folder (no daemon: the dashboard reads the files), starts a
real ``statesvc dashboard --no-analysis`` and times over HTTP. Run:

    .venv/bin/python bench/dashboard_entry.py
    .venv/bin/python bench/dashboard_entry.py --others 100000
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile

BIN = Path(sys.executable).parent


def build(root: Path, others: int) -> Path:
    (root / "texts.txt").write_text("Una frase de prueba.\nOtra frase.\n", encoding="utf-8")
    ds = root / "ds"
    subprocess.run([BIN / "statesvc", "init", "--dataset", ds, "--texts", root / "texts.txt"], check=True,
                   capture_output=True)
    folder = ds / "requeued"
    folder.mkdir(exist_ok=True)
    audio = (0.3 * np.sin(np.arange(30 * 22050) / 22050 * 2 * np.pi * 220)).astype(np.float32)
    for i in range(20):
        soundfile.write(folder / f"ds_0001.202601{i + 1:02d}T120000.000000001.wav", audio, 22050, subtype="PCM_16")
    for i in range(others):
        (folder / f"zz_{i:07d}.20260101T120000.000000001.wav").touch()
    return ds


def summary(xs: list[float]) -> str:
    return (f"median {statistics.median(xs) * 1000:.1f} ms, p95 {sorted(xs)[int(len(xs) * 0.95)] * 1000:.1f} ms, "
            f"max {max(xs) * 1000:.1f} ms ({len(xs)})")


def measure(url: str, name: str) -> None:
    def timed(path: str) -> float:
        t = time.perf_counter()
        urllib.request.urlopen(url + path, timeout=60).read()
        return time.perf_counter() - t
    print(f"/api/status alone:              {summary([timed('/api/status') for _ in range(50)])}")
    print(f"entry view alone:               {summary([timed(f'/api/entries/{name}') for _ in range(10)])}")
    views: list[float] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            views.append(timed(f"/api/entries/{name}"))
    th = threading.Thread(target=load)
    th.start()
    during = []
    for _ in range(200):
        during.append(timed("/api/status"))
        time.sleep(0.01)
    stop.set()
    th.join()
    print(f"/api/status during entry views: {summary(during)}")
    print(f"entry views meanwhile:          {summary(views)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--others", type=int, default=0, help="more files in requeued/ (default 0)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-entry-"))
    try:
        ds = build(root, args.others)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([BIN / "statesvc", "dashboard", "--dataset", ds, "--port", str(port), "--no-analysis"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if b'"loading":false' in urllib.request.urlopen(url + "/api/status", timeout=2).read():
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard did not answer within 60 s")
                time.sleep(0.1)
            print(f"requeued/ holds {20 + args.others} files; the entry has 20 earlier takes of 30 s")
            measure(url, "ds_0001")
        finally:
            proc.terminate()
            proc.wait(20)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
