"""Is the run healthy? One judgement over the daemon's status, for `statesvc health` (a systemd
timer, a Nagios-style check, a container probe): pure, so each state of it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import disk_pause

GB = 1 << 30


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


MB = 1 << 20


def min_free_bytes(total: int, asked_mb: int | None, checkpoint: int = 0) -> int:
    """The free-space floor, for the generators' disk guard and `statesvc health` alike: as asked
    (``--min-free-mb``), else 1 GiB or 5 % of the filesystem of ``total`` bytes, whichever is
    smaller (a floor above a small disk's size paused every run on it for ever), and never less
    than ``checkpoint`` bytes: room for one more checkpoint (about the state file's size)."""
    if asked_mb is not None:
        return asked_mb * MB
    return max(min(GB, total // 20), checkpoint)


def paused_line(status: dict | None) -> str:
    """The generators' disk pause in the daemon's ``status`` reply, as the console and the page
    show it; "" when none is paused (or there is no status)."""
    pause = disk_pause(status) if status else None
    if pause is None:
        return ""
    return (f"paused: {pause.free_bytes / MB:.0f} MB free, under the {pause.floor_bytes / MB:.0f} MB floor; "
            f"--min-free-mb")


def judge(st: dict | None, now: float, max_stall: float, min_free: int) -> Verdict:
    """``st``: the daemon's status reply, or None when it does not answer. ``max_stall``: seconds
    without a completion, with work left, before the run counts as stalled."""
    if st is None:
        return Verdict(False, "the daemon does not answer")
    if st.get("commit_failures"):
        return Verdict(False, f"commits are failing ({st['commit_failures']} in a row): {st.get('last_commit_error')}")
    free = st.get("disk_free_bytes", -1)
    if 0 <= free < min_free:
        return Verdict(False, f"free disk space {free / MB:.0f} MB is under the {min_free / MB:.0f} MB floor")
    left = st.get("pending", 0) + st.get("generating", 0)
    idle = now - st.get("last_completion", now)
    if left and idle > max_stall:
        if not st.get("generators"):
            return Verdict(False, f"no generator holds work: {left} entries left, nothing completed for "
                                  f"{idle / 60:.0f} min")
        return Verdict(False, f"stalled: nothing completed for {idle / 60:.0f} min while {st['generators']} "
                              f"generators hold {st.get('leases', 0)} leases ({left} entries left)")
    done = f"{st.get('completed', 0)}/{st.get('total', 0)} completed"
    return Verdict(True, f"healthy: {done}, {st.get('generators', 0)} generators, {free / GB:.1f} GB free, "
                         f"last completion {idle:.0f} s ago")
