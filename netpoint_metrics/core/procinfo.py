"""What the kernel says about a process: does it exist, and when did it start.

A pid alone names a process only until it is reused; a pid plus its start time (clock
ticks since boot, from ``/proc/<pid>/stat``) names one process for good. Records that must
outlive their writer (the directory's owner) store both.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def pid_exists(pid: int | None) -> bool:
    """True if a process with this pid exists (any user's)."""
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return raw.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None
