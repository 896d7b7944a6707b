"""run-pipeline's progress display (pipeline/progress.py): a bar redrawn in place on a terminal,
a line now and then in a log, and the run's other lines never written into the bar."""

from __future__ import annotations

import io

from pipeline.progress import Progress, fmt_seconds

ST = {"total": 4, "completed": 1, "failed": 1, "generating": 1, "pending": 1, "rate_per_second": 0.5,
      "eta_seconds": 4.0}
TEXT = "2/4  50.0%  completed 1  failed 1  generating 1  0.5/s  ETA 4.0s"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_cleared_before_a_line() -> None:
    out = Terminal()
    p = Progress(out)
    p.show(ST)
    p.show(ST)
    bar = f"\r[{'#' * 15}{'.' * 15}] {TEXT}\033[K"
    assert out.getvalue() == bar * 2
    p.say("a line")
    assert out.getvalue() == bar * 2 + "\r\033[K" + "a line\n"
    p.say("another")  # no bar shown now: nothing to clear
    assert out.getvalue().endswith("a line\nanother\n")


def test_in_a_log_a_line_every_ten_seconds_and_at_once_when_a_pause_begins_or_ends() -> None:
    out = io.StringIO()
    p = Progress(out, gpus=["0", "1", "0"], checking=True)
    p.show(ST)
    p.show(ST)  # within 10 s of the first: not shown
    extra = "  GPUs 0,1  checked 0  flagged 0"
    assert out.getvalue().splitlines() == [f"progress: {TEXT}{extra}"]
    paused = {**ST, "disk_pause": {"generators": 1, "free_bytes": 10 << 20, "floor_bytes": 20 << 20}}
    p.show(paused)
    p.show(ST)  # the pause is over: said at once too
    assert out.getvalue().splitlines()[1:] == [
        f"progress: {TEXT}{extra}  paused: 10 MB free, under the 20 MB floor; --min-free-mb",
        f"progress: {TEXT}{extra}"]


def test_durations_read_as_seconds_minutes_or_hours() -> None:
    assert [fmt_seconds(s) for s in (4.04, 61, 3600 + 62)] == ["4.0s", "1m01s", "1h01m02s"]
