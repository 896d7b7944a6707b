"""Small real filesystems for the full-disk tests: a tmpfs of a chosen size mounted on a folder,
filled to the last byte, grown, unmounted (root only; the ``small_fs`` fixture skips without it)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class Unmountable(Exception):
    """No tmpfs can be mounted here (not root, or mounts not allowed): the reason, for a skip."""


class Tmpfs:
    """A tmpfs of ``size`` (``"2m"``) mounted on ``point`` (created if missing)."""

    def __init__(self, point: Path, size: str):
        point.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise Unmountable("mounting a tmpfs needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Unmountable(f"tmpfs mounts are not allowed here: {r.stderr.strip()}")
        self.point = point

    def fill(self) -> Path:
        """Write zeros into ``point/junk`` until the disk is full; the junk file (unlink it to free the space)."""
        junk = self.point / "junk"
        with open(junk, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        return junk

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.point)], check=True)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.point)], capture_output=True)
