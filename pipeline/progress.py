"""The run's progress on the terminal: a bar redrawn in place on a tty, a line every 10 s otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from statesvc.health import paused_line

BAR_WIDTH = 30
LINE_EVERY = 10.0  # seconds between progress lines when the output is not a terminal


@dataclass
class Progress:
    """What ``bin/run-pipeline`` shows of the daemon's status; its other lines go through ``say``,
    which first clears the bar so a line never lands in the middle of it."""

    out: object = sys.stderr
    gpus: list[str] | None = None  # shown when the generators run on GPUs
    checking: bool = False         # --check: the checks' counters too
    _bar_shown: bool = field(default=False, init=False)
    _next_line: float = field(default=0.0, init=False)
    _paused: str = field(default="", init=False)

    def say(self, text: str) -> None:
        self.clear()
        print(text, file=self.out, flush=True)

    def show(self, st: dict) -> None:
        """The daemon's status reply as the bar (a terminal) or a line now and then (a log)."""
        total = st["total"] or 1
        done = st["completed"] + st["failed"]
        text = self.text(st, done)
        paused = paused_line(st)  # the generators' disk guard, as they told the daemon
        if paused:
            text += f"  {paused}"
        if paused != self._paused:  # a pause (or its end) shows at once, not at the next 10 s line
            self._paused, self._next_line = paused, 0.0
        if getattr(self.out, "isatty", lambda: False)():
            filled = int(BAR_WIDTH * done / total)
            print(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}\033[K", end="", file=self.out, flush=True)
            self._bar_shown = True
        elif time.monotonic() >= self._next_line:
            self._next_line = time.monotonic() + LINE_EVERY
            print(f"progress: {text}", file=self.out, flush=True)

    def text(self, st: dict, done: int) -> str:
        total = st["total"] or 1
        rate, eta = st.get("rate_per_second"), st.get("eta_seconds")
        text = (f"{done}/{st['total']} {100 * done / total:5.1f}%  completed {st['completed']}  "
                f"failed {st['failed']}  generating {st['generating']}  "
                f"{(rate or 0):.1f}/s  ETA {fmt_seconds(eta) if eta is not None else '-'}")
        if self.gpus:
            text += f"  GPUs {','.join(dict.fromkeys(self.gpus))}"
        if self.checking:
            text += f"  checked {st.get('checked', 0)}  flagged {st.get('mismatched', 0)}"
        return text

    def clear(self) -> None:
        """Erase the bar, if one is shown."""
        if self._bar_shown:
            print("\r\033[K", end="", file=self.out, flush=True)
            self._bar_shown = False


def fmt_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
