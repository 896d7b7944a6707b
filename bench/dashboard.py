"""The review dashboard at scale: start-up, the first page, filters and searches, and its memory,
against the issue's targets ("on a 1,000,000-entry dataset, the first page in under 1 s, a filter
or search in under 300 ms (p95), the dashboard's memory under 1 GB").

It builds a dataset of N entries (Spanish-like texts of 20-200 characters; ~70% completed with a
duration of about 0.3 s + characters / 14 and a few outliers, ~3% failed with an error, a few
generating under a lease, the rest pending; some takes reviewed) straight through
``statesvc.store.create``, with no wav files. It starts a real ``statesvc dashboard --no-analysis``
on it (no daemon: the dashboard reads the files; the audio analysis is off so that the measurement
is the mirror's and the web app's alone, not a thread reading 700,000 absent wavs), and times over
HTTP:

* start-up: from the process start until ``/api/status`` answers ``"loading": false``;
* the first page (``/``, the HTML overview with its first 50 rows) and ``/api/entries``: the
  first request after start-up (cold) and the median of ``--repeat``;
* each filter, search, entry view and neighbour lookup: cold, then p50 and p95 over ``--repeat``
  (a search asked again may be answered from what the dashboard kept of it, so one row asks for
  another word each time: what typing a new search costs);
* the dashboard's RSS once loaded, its peak (VmHWM) after the queries, and after a reload: the state
  file touched, as when the daemon restarts or the CLI changes the files offline, the dashboard
  reads it all again while the old copy still serves (the reload's seconds are until its CPU use
  settles).

Run (1,000,000 entries: about 20 s to build, a few minutes in all on 2 cores; ``--keep`` keeps the
temporary dataset, ``--dataset DIR`` builds it there the first time and reuses it after):

    .venv/bin/python bench/dashboard.py --entries 1000000 --repeat 20
    .venv/bin/python bench/dashboard.py --entries 1000000 --dataset /tmp/dash1m   # build once, reuse
    .venv/bin/python bench/dashboard.py --entries 1000000 --checked   # every completed take checked
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIRST_PAGE_S = 1.0    # the first page, cold
QUERY_P95_MS = 300.0  # a filter or a search, p95
RSS_MB = 1024.0       # the dashboard's memory

WORDS = """
el la los las un una de del en y o que por para con sin sobre entre hasta desde cuando donde como
casa perro gato niño niña madre padre hermano ciudad pueblo camino río mar cielo sol luna noche día
tarde mañana año tiempo agua fuego tierra viento montaña árbol flor jardín calle plaza puerta ventana
libro carta palabra canción voz historia mundo vida amor corazón mano ojos cabeza señor señora amigo
trabajo escuela mesa silla cama cocina pan vino café leche fruta manzana naranja limón azúcar sal
es fue era será tiene tenía hace hizo dijo dice quiere quería puede podía sabe sabía viene vino va
iba mira miraba habla hablaba camina caminaba corre corría escribe escribió lee leyó canta cantó
grande pequeño viejo nuevo bueno malo alto bajo largo corto blanco negro rojo verde azul claro oscuro
muy más menos siempre nunca también todavía ya aquí allí ahora después antes luego pronto tarde bien
mal quizás además según durante mientras aunque porque pero sino así entonces tampoco otra vez
pájaro caballo vaca oveja pescado lluvia nieve invierno verano otoño primavera semana mes hora minuto
teléfono ordenador coche tren avión barco estación aeropuerto hospital médico enfermera profesor
alumno pregunta respuesta problema solución idea razón verdad mentira miedo alegría tristeza sueño
España Madrid Sevilla Barcelona Valencia Bilbao Granada México Lima Bogotá Quito Santiago Caracas
""".split()
ERRORS = ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
          "ValueError: the model produced an empty waveform",
          "TimeoutError: synthesis took longer than 120 s",
          "generator died while synthesizing (charged after 3 attempts)",
          "AssertionError: alignment failed: attention never reached the end of the text"]
OWNERS = ["gpu0-gen", "gpu1-gen", "gpu2-gen", "gpu3-gen"]


# ---- the dataset --------------------------------------------------------------------------------
def sentence(rng: random.Random) -> str:
    """A Spanish-looking sentence of 20 to 200 characters, cut at a word."""
    target = rng.randint(20, 200)
    words = rng.choices(WORDS, k=target // 3 + 2)
    s = " ".join(words)
    if len(s) > target:
        s = s[:target].rsplit(" ", 1)[0] if " " in s[:target] else s[:target]
    s = s[0].upper() + s[1:]
    return (s + rng.choice(".,;?!…"))[:200] if len(s) >= 19 else (s + " y la tarde pasó.")[:200]


def check_of(e: object, rng: random.Random) -> None:
    """A check of the completed take of ``e``, as a run with --check leaves it: a transcript (the text
    lowercased, a word dropped now and then), its CER, 3 % judged wrong and kept (flagged)."""
    from statesvc.entry import Check, Stage
    words = e.text.lower().split()
    if len(words) > 2 and rng.random() < 0.3:
        del words[rng.randrange(len(words))]
    wrong = rng.random() < 0.03
    cer = round(rng.uniform(0.5, 1.2) if wrong else rng.uniform(0.0, 0.3), 3)
    e.check = Check(e.take, cer, cer, " ".join(words), "base", None, wrong,
                    f"CER {cer:.2f} over 0.50" if wrong else None, 0.5, e.duration_seconds, len(e.text))
    e.stage = Stage.FLAGGED if wrong else Stage.CHECKED


def make_dataset(folder: Path, n: int, seed: int = 1, checked: bool = False) -> dict:
    """Write a state of ``n`` entries into ``folder`` (no wavs); return what it holds, by status.
    With ``checked``, every completed take carries a check (``check_of``)."""
    from statesvc.entry import Entry, Lease, Phase, Review, Status, Verdict
    from statesvc.state import State
    from statesvc.store import create
    rng = random.Random(seed)
    t_end = 1_760_000_000.0                    # the last completion; a run of about three days before it
    span = 3 * 86400.0
    stamp = {}

    def iso(t: float) -> str:
        s = int(t)
        head = stamp.get(s)
        if head is None:
            head = stamp[s] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return f"{head}.{int(t % 1 * 1000):03d}Z"

    entries = []
    for i in range(1, n + 1):
        text = sentence(rng)
        name = f"es_{i:07d}"
        r = rng.random()
        if r < 0.70:
            noise = math.exp(rng.gauss(0.0, 0.08))
            dur = (0.3 + len(text) / 14.0) * noise
            if rng.random() < 0.004:           # a few outliers: a take cut short, or one that rambled on
                dur *= rng.choice((0.35, 2.8, 4.0))
            t = t_end - span * (1 - i / n) + rng.uniform(-600, 600)
            e = Entry.make(i, name, text, Status.COMPLETED, round(dur, 3), 22050, 1, None, iso(t),
                           take=f"{rng.getrandbits(64):016x}")
            v = rng.random()
            if v < 0.03:
                e.review = Review(Verdict.APPROVED if v < 0.025 else Verdict.REJECTED, e.take, iso(t + 3600),
                                  None if v < 0.027 else "se corta al final")
            if checked:
                check_of(e, rng)
        elif r < 0.73:
            t = t_end - span * (1 - i / n)
            e = Entry.make(i, name, text, Status.FAILED, None, None, 3, rng.choice(ERRORS), iso(t))
        elif r < 0.7305:
            e = Entry.make(i, name, text, Status.GENERATING, None, None, 0, None, iso(t_end))
            e.lease = Lease(f"{rng.getrandbits(64):016x}", rng.choice(OWNERS), t_end + 300, Phase.QUEUED)
        else:
            e = Entry.make(i, name, text)
        entries.append(e)
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    state = State(entries, sample_rate=22050)
    create(folder, state)
    counts: dict[str, int] = {}
    for e in entries:
        counts[str(e.status)] = counts.get(str(e.status), 0) + 1
    return counts


# ---- HTTP -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base: str, path: str, timeout: float = 120.0) -> tuple[float, int, bytes]:
    """(seconds, HTTP status, body) of one GET, the body read in full."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            body, status = r.read(), r.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    return time.perf_counter() - t0, status, body


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reload_seconds(pid: int, folder: Path, timeout: float = 600.0) -> float:
    """Touch the state file and wait until the dashboard read it again: its CPU use rose, then stayed
    under a tenth of a core for a second (it looks at the files once a second)."""
    from statesvc.layout import state_path
    t0 = time.perf_counter()
    os.utime(state_path(folder))
    busy, quiet_since, last, at = False, None, cpu_seconds(pid), time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        time.sleep(0.25)
        cpu, now = cpu_seconds(pid), time.perf_counter()
        working = (cpu - last) / (now - at) > 0.1
        last, at = cpu, now
        if working:
            busy, quiet_since = True, None
        elif busy:
            quiet_since = quiet_since or now
            if now - quiet_since >= 1.0:
                return quiet_since - t0
    raise SystemExit("the dashboard did not reload")


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def start_dashboard(folder: Path, port: int) -> tuple[subprocess.Popen, float, float]:
    """(the process, seconds until it answered at all, seconds until its state was loaded)."""
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    d = subprocess.Popen([sys.executable, "-m", "statesvc", "dashboard", "--dataset", str(folder), "--port",
                          str(port), "--no-analysis", "--log-level", "WARNING"],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tempfile.gettempdir())
    up = None
    while True:
        if d.poll() is not None:
            raise SystemExit(f"the dashboard exited {d.returncode}")
        try:
            _, status, body = get(base, "/api/status", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
            continue
        if up is None:
            up = time.perf_counter() - t0
        if status == 200 and orjson.loads(body).get("loading") is False:
            return d, up, time.perf_counter() - t0
        time.sleep(0.05)


def measure(base: str, path: str | list[str], repeat: int) -> dict:
    """The first request, then ``repeat`` more: of the same path, or of each path of a list in turn."""
    paths = path if isinstance(path, list) else [path] * (repeat + 1)
    cold, status, body = get(base, paths[0])
    if status != 200:
        raise SystemExit(f"GET {paths[0]}: HTTP {status}: {body[:300]!r}")
    times = [get(base, p)[0] for p in paths[1:repeat + 1]]
    return {"cold": cold * 1000, "p50": statistics.median(times) * 1000, "p95": p95(times) * 1000,
            "bytes": len(body), "body": body}


# ---- the run --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000, help="Entries of the dataset built.")
    ap.add_argument("--repeat", type=int, default=20, help="Timed requests per query (after a cold one).")
    ap.add_argument("--dataset", type=Path, default=None,
                    help="Use this folder: built there if it holds no state, else reused as it is.")
    ap.add_argument("--keep", action="store_true", help="Keep the dataset built in a temporary folder.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checked", action="store_true",
                    help="Every completed take checked, with a transcript (as after a run with --check).")
    a = ap.parse_args()

    from statesvc.layout import state_path
    tmp = None
    if a.dataset is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-", dir=os.environ.get("BENCH_DIR")))
        folder = tmp / "ds"
    else:
        folder = a.dataset.resolve()
    d = None
    try:
        if state_path(folder).exists():
            print(f"  reusing {folder}", file=sys.stderr, flush=True)
        else:
            t = time.perf_counter()
            counts = make_dataset(folder, a.entries, a.seed, a.checked)
            print(f"  built {folder} in {time.perf_counter() - t:.0f} s: {counts}, "
                  f"{state_path(folder).stat().st_size / 2**20:.0f} MiB", file=sys.stderr, flush=True)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        d, up, loaded = start_dashboard(folder, port)
        print(f"  answering after {up:.2f} s, loaded after {loaded:.2f} s", file=sys.stderr, flush=True)
        status = orjson.loads(get(base, "/api/status")[2])
        total = status["total"]
        rss_loaded, peak_loaded = rss_mb(d.pid, "VmRSS"), rss_mb(d.pid, "VmHWM")

        rows: list[tuple[str, dict, str, bool]] = []

        def run(label: str, path: str | list[str], target: str, ok: Callable[[dict], bool]) -> dict:
            m = measure(base, path, a.repeat)
            rows.append((label, m, target, ok(m)))
            print(f"  {label:<60} cold {m['cold']:8.1f} ms  p50 {m['p50']:8.1f}  p95 {m['p95']:8.1f}  "
                  f"({m['bytes']} bytes)", file=sys.stderr, flush=True)
            return m

        first = f"< {FIRST_PAGE_S * 1000:.0f} ms (cold)"
        within = f"p95 < {QUERY_P95_MS:.0f} ms"
        run("`GET /` (overview, first 50 rows)", "/", first, lambda m: m["cold"] < FIRST_PAGE_S * 1000)
        run("`GET /api/entries`", "/api/entries", first, lambda m: m["cold"] < FIRST_PAGE_S * 1000)
        completed = status.get("completed", 0)
        pick = orjson.loads(get(base, f"/api/entries?status=completed&offset={completed // 2}&limit=1")[2])
        name = pick["entries"][0]["filename"]
        fresh = [w.lower() for w in dict.fromkeys(WORDS) if len(w) >= 4 and w != "montaña"][:a.repeat + 1]
        for label, path in [
            ("`?status=failed`", "/api/entries?status=failed"),
            ("`?status=completed&sort=-duration`", "/api/entries?status=completed&sort=-duration"),
            ("`?sort=cps`", "/api/entries?sort=cps"),
            ("`?flag=any`", "/api/entries?flag=any"),
            ("`?sort=-cer`", "/api/entries?sort=-cer"),
            ("`?flag=mismatch` (says something else)", "/api/entries?flag=mismatch"),
            ("`?q=montaña` (in some texts)", "/api/entries?q=" + urllib.parse.quote("montaña")),
            ("`?q=zzzz` (in none)", "/api/entries?q=zzzz"),
            ("`?q=<another word each time>`", [f"/api/entries?q={urllib.parse.quote(w)}" for w in fresh]),
            ("`?status=completed&q=la&sort=duration&offset=5000`",
             "/api/entries?status=completed&q=la&sort=duration&offset=5000"),
            (f"`/api/entries/{name}`", f"/api/entries/{name}"),
            (f"`/api/neighbours/{name}?status=completed&sort=-duration`",
             f"/api/neighbours/{name}?status=completed&sort=-duration"),
        ]:
            m = run(label, path, within, lambda m: m["p95"] < QUERY_P95_MS)
            if isinstance(path, str) and path.startswith("/api/entries?"):
                rows[-1] = (f"{label}: {orjson.loads(m['body'])['total']:,} match", *rows[-1][1:])
        run("`GET /health` (histograms, character coverage)", "/health", within, lambda m: m["p95"] < QUERY_P95_MS)

        peak, now = rss_mb(d.pid, "VmHWM"), rss_mb(d.pid, "VmRSS")
        reload = reload_seconds(d.pid, folder)
        peak_reload = rss_mb(d.pid, "VmHWM")
        print(f"  reloaded in {reload:.1f} s, peak RSS {peak_reload:.0f} MB", file=sys.stderr, flush=True)
    finally:
        if d is not None:
            d.terminate()
            try:
                d.wait(10)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
        if tmp is not None and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"  kept {folder}", file=sys.stderr)

    held = ", ".join(f"{k} {status.get(k, 0):,}" for k in ("completed", "failed", "generating", "pending"))
    out = [f"Dashboard at {total:,} entries ({held}), "
           f"audio analysis off (`--no-analysis`), over HTTP, {a.repeat} timed requests after a cold one.", "",
           "| query | cold ms | p50 ms | p95 ms | target | met? |", "|---|---:|---:|---:|---|---|"]
    for label, m, target, ok in rows:
        out.append(f"| {label} | {m['cold']:.1f} | {m['p50']:.1f} | {m['p95']:.1f} | {target} | "
                   f"{'yes' if ok else '**no**'} |")
    out += ["", f"- start-up: answering after {up:.2f} s, state loaded (`\"loading\": false`) after {loaded:.2f} s",
            f"- RSS (target < {RSS_MB:.0f} MB): {rss_loaded:.0f} MB once loaded (peak {peak_loaded:.0f} MB), "
            f"{now:.0f} MB after the queries (peak {peak:.0f} MB: {'met' if peak < RSS_MB else '**missed**'}); "
            f"a reload (state file touched) took {reload:.1f} s, peak {peak_reload:.0f} MB "
            f"({'met' if peak_reload < RSS_MB else '**missed**'})",
            "- command: `" + " ".join([".venv/bin/python", *sys.argv]) + "`"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
