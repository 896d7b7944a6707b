"""Is the run healthy? One judgement over the daemon's status, for `statesvc health` (a systemd
timer, a Nagios-style check, a container probe): pure, so each state of it is tested alone."""

from __future__ import annotations

from dataclasses import dataclass

GB = 1 << 30


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


def min_free_bytes(total: int, asked_mb: int | None) -> int:
    """The free-space floor: as asked, else 1 GiB or 2 % of the filesystem, whichever is larger."""
    return asked_mb * (1 << 20) if asked_mb is not None else max(GB, total // 50)


def judge(st: dict | None, now: float, max_stall: float, min_free: int) -> Verdict:
    """``st``: the daemon's status reply, or None when it does not answer. ``max_stall``: seconds
    without a completion, with work left, before the run counts as stalled."""
    if st is None:
        return Verdict(False, "the daemon does not answer")
    if st.get("commit_failures"):
        return Verdict(False, f"commits are failing ({st['commit_failures']} in a row): {st.get('last_commit_error')}")
    free = st.get("disk_free_bytes", -1)
    if 0 <= free < min_free:
        return Verdict(False, f"free disk space {free / GB:.2f} GB is under {min_free / GB:.2f} GB")
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
