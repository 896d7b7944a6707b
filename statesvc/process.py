"""What a child process of ours sets up first: a signal from the kernel when its parent dies."""

from __future__ import annotations

import os

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int, parent: int | None = None) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere nothing),
    so no child of ours outlives the process that started it. With ``parent`` (its pid, read before
    the fork), a child whose parent died before the call exits at once."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:  # it died before the line above
        os._exit(1)
