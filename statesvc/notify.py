"""sd_notify without libsystemd: READY, WATCHDOG and STATUS datagrams to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET")
        self.addr = None
        if addr:
            # A leading '@' names a socket in the abstract namespace.
            self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 5.0

    def send(self, message: str) -> None:
        if not self.addr:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.addr)
                s.sendall(message.encode())
        except OSError:
            pass  # systemd gone or socket unwritable: never a reason to stop serving


def journald_stderr() -> bool:
    """Whether stderr is the journal itself (systemd sets $JOURNAL_STREAM to its device:inode):
    then journald stamps each line with the time and the pid, and a log format must not again.
    Checked against stderr, not just the variable: run-pipeline's children inherit it but write
    to log files, which still need their timestamps."""
    try:
        dev, ino = (int(x) for x in os.environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(2)
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def log_format(full: str, journald: str) -> str:
    """``journald`` (without time and pid) when stderr is the journal, else ``full``."""
    return journald if journald_stderr() else full
