"""Processes of this host: whether one still runs (for leases and budget entries that name a host and a pid)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: this host's name, written beside a pid wherever another process may have to tell whether that pid still runs
HOST = socket.gethostname()


def process_running(pid: int) -> bool:
    """The process ``pid`` exists on this host and has not ended (a zombie, killed and not yet reaped, has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: the signal said it runs
    return state != "Z"


__all__ = ["HOST", "process_running"]
