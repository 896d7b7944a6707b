"""A checker: hears every current take that has no check yet and reports what it heard.

It claims check work from the daemon like a generator claims texts (an exclusive check lease with
a fencing token, renewed by a heartbeat thread during a long decode), reads the take, runs the
cheap pre-check (``cer.silent``), transcribes it (``asr.Recognizer``), scores the transcript
against the entry's text (``cer.score``) and reports; the daemon judges. A report on a take that
is no longer current, or under a lease that ended, is refused and discarded by the daemon. A
recognizer error is reported as a check with its error (the daemon flags it), never retried.

SIGTERM or Ctrl-C: the check under way is finished and reported, the rest given back; exit 0.

A check that runs past its deadline (``--max-check-seconds``, by default max(60 s, 20x the take's
duration)) is stuck: the heartbeat stops renewing its lease, so the daemon's expiry hands the take
to another checker, and the process exits 1 (a decode cannot be interrupted from Python; the
supervisor restarts the checker), as a generator lets go of a stuck synthesis.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from statesvc.audio import is_adopted, read_provenance
from statesvc.client import Client, ServiceError, Unavailable
from statesvc.conventions import FAILED
from statesvc.layout import wav_path

if TYPE_CHECKING:
    from .asr import Recognizer  # faster-whisper is loaded only by a checker that runs

log = logging.getLogger("pipeline.checker")

IDLE_POLL = 0.5  # seconds between claims while nothing awaits a check
MIN_CHECK_SECONDS = 60.0  # a check's deadline: at least this...
CHECK_SECONDS_PER_AUDIO_SECOND = 20.0  # ...or this many times the take's duration (a slow CPU decodes at ~1x)


def check_deadline_seconds(duration: float, max_check_seconds: float | None) -> float:
    """How long the check of a take of ``duration`` seconds may run before it is stuck."""
    if max_check_seconds is not None:
        return max_check_seconds
    return max(MIN_CHECK_SECONDS, CHECK_SECONDS_PER_AUDIO_SECOND * duration)


def _exit_stuck() -> None:
    logging.shutdown()
    os._exit(FAILED)


def default_owner() -> str:
    return f"{socket.gethostname()}:check:{os.getpid()}:{secrets.token_hex(3)}"


class Checker:
    def __init__(self, client: Client, recognizer: Recognizer, dataset: Path, *,
                 owner: str | None = None, until_done: bool = False, heartbeat_seconds: float = 2.0,
                 max_check_seconds: float | None = None, on_stuck: Callable[[], None] = _exit_stuck):
        self.client, self.recognizer, self.dataset = client, recognizer, dataset
        self.owner = owner or default_owner()
        self.until_done = until_done
        self.heartbeat_seconds = heartbeat_seconds
        self.stopping = False
        self.held: dict[str, dict] = {}  # check lease token -> the item claimed
        self.deadlines: dict[str, float] = {}  # check lease token -> when its check is stuck (monotonic)
        self.max_check_seconds = max_check_seconds
        self.on_stuck = on_stuck  # the process exits: the decode under way cannot be interrupted
        self.lock = threading.Lock()
        self.checked = self.refused = self.errors = 0

    # ---- the loop ------------------------------------------------------------
    def run(self) -> int:
        beat = threading.Thread(target=self._heartbeat, name="check-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stopping:
                if not self.run_once():
                    if self.until_done and self._done():
                        log.info("nothing to generate or check: done")
                        break
                    self._sleep(IDLE_POLL)
        finally:
            self._release_all()
        log.info("checker %s stopping: %d checked, %d refused (take replaced or lease lost), %d recognizer errors",
                 self.owner, self.checked, self.refused, self.errors)
        return 0

    def run_once(self) -> bool:
        """Claim one take and check it; False when nothing awaits a check."""
        items = self.client.call("check_claim", owner=self.owner, n=1)["entries"]
        if not items:
            return False
        for item in items:
            with self.lock:
                self.held[item["token"]] = item
            try:
                self.report(item, self.hear(item))
            finally:
                with self.lock:
                    self.held.pop(item["token"], None)
                    self.deadlines.pop(item["token"], None)
        return True

    def hear(self, item: dict) -> dict | None:
        """What the checker makes of one take: the report's fields, or None when the wav under the
        entry's name is not the take claimed (replaced meanwhile: the lease is given back)."""
        import soundfile

        from .asr import AsrError
        from .cer import score, silent
        path = wav_path(self.dataset, item["filename"])
        prov = read_provenance(path)
        if (prov.token if prov is not None else None) != (None if is_adopted(item["take"]) else item["take"]):
            return None
        try:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as exc:
            log.warning("%s: cannot read the take: %s", item["filename"], exc)
            return None
        mono = samples.mean(axis=1)
        limit = check_deadline_seconds(len(mono) / rate, self.max_check_seconds)
        with self.lock:
            self.deadlines[item["token"]] = time.monotonic() + limit
        quiet = silent(mono, rate)
        try:
            # hear: scored in the recognizer's own language (an English-only model's is "en", so
            # "twenty" meets "20"), heard a second way when the first hearing looks wrong
            if quiet:
                transcript, s = "", score(item["text"], "", self.recognizer.language)
            else:
                heard = self.recognizer.hear(mono, rate, item["text"])
                transcript, s = heard.transcript, heard.score
        except AsrError as exc:
            return {"cer": None, "wer": None, "transcript": "", "error": str(exc), "silent": quiet}
        return {"cer": round(s.cer, 4), "wer": round(s.wer, 4), "transcript": transcript, "error": None,
                "silent": quiet}

    def report(self, item: dict, heard: dict | None) -> None:
        if heard is None:  # the wav is not (yet) the take claimed: another checker's turn, later ours
            self.client.call("check_release", owner=self.owner, tokens=[item["token"]])
            self._sleep(IDLE_POLL)
            return
        reply = self.client.call("check_result", id=item["id"], owner=self.owner, token=item["token"],
                                 take=item["take"], model=self.recognizer.name, **heard)
        if heard["error"] is not None:
            self.errors += 1
        if reply.get("applied"):
            self.checked += 1
            log.info("%s: CER %s %s%s", item["filename"], heard["cer"], reply.get("stage"),
                     f" ({reply['reason']})" if reply.get("reason") else "")
        else:
            self.refused += 1
            log.info("%s: check refused: %s", item["filename"], reply.get("reason"))

    def _done(self) -> bool:
        st = self.client.call("status")
        return st.get("pending") == 0 and st.get("generating") == 0 and st.get("check_waiting") == 0

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(0.05)

    # ---- leases ----------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Renew the check leases held, during a long decode too (its own socket: not shared)."""
        with Client(self.client.endpoint, timeout=2.0, retries=1) as c:
            while True:
                time.sleep(self.heartbeat_seconds)
                now = time.monotonic()
                with self.lock:
                    stuck = [t for t, d in self.deadlines.items() if t in self.held and now > d]
                    tokens = [t for t in self.held if t not in stuck]
                if stuck:  # not renewed: the daemon's expiry hands the take to another checker
                    names = ", ".join(self.held[t]["filename"] for t in stuck if t in self.held)
                    log.error("check of %s running past its deadline (--max-check-seconds): stuck; its lease is "
                              "no longer renewed, the checker exits", names)
                    self.on_stuck()
                    return
                if tokens:
                    try:
                        c.call("check_heartbeat", owner=self.owner, tokens=tokens)
                    except (Unavailable, ServiceError) as exc:
                        log.warning("check heartbeat failed: %s", exc)

    def _release_all(self) -> None:
        with self.lock:
            tokens = list(self.held)
        if tokens:
            try:
                self.client.call("check_release", owner=self.owner, tokens=tokens)
            except (Unavailable, ServiceError):
                pass  # they expire
