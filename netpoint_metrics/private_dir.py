"""A directory the toolkit made for one server, and removing it when that server is gone.

When metrics are on and no ``PROMETHEUS_MULTIPROC_DIR`` is set, the server gets a private
directory (0700, unpredictable name). It must not outlive the server, but neither server
says reliably when it is really gone: Gunicorn's ``on_exit`` does not run when the master
is SIGKILLed, and a uWSGI master has no exit hook at all and re-executes itself on reload.
So a small watcher process, started with the directory, polls the directory's ownership
(:func:`netpoint_metrics.core.ownership.owner_pid`, which a reload of the same master or a
USR2 hand-over keeps) and removes the directory once nobody owns it and no writer is alive.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from netpoint_metrics.core import directory, ownership, procinfo

log = logging.getLogger(__name__)

ENV_PRIVATE = "NETPOINT_METRICS_PRIVATE_DIR"
ENV_WATCHER = "NETPOINT_METRICS_WATCHER_PID"

#: Seconds between checks, and how long lingering workers may keep the directory busy.
POLL = 1.0
LINGER = 60.0


def create() -> str:
    """Make the private directory and remember it for reloads and USR2 children."""
    path = directory.make_private()
    os.environ[ENV_PRIVATE] = path
    return path


def is_private(path: str) -> bool:
    return os.environ.get(ENV_PRIVATE) == path


def start_watcher(path: str) -> None:
    """Start the watcher once per directory (a reloaded master finds it still running)."""
    pid = os.environ.get(ENV_WATCHER, "")
    if pid.isdigit() and procinfo.pid_exists(int(pid)):
        return
    python = _python()
    if python is None:
        log.warning("netpoint-metrics: no Python found to watch %s; remove it by hand", path)
        return
    try:
        proc = subprocess.Popen(
            [python, "-m", "netpoint_metrics.private_dir", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        log.warning("netpoint-metrics: cannot start the watcher of %s: %s", path, exc)
        return
    os.environ[ENV_WATCHER] = str(proc.pid)


def _python() -> str | None:
    """The interpreter of this environment (under uWSGI, sys.executable is uwsgi)."""
    candidates = [sys.executable, os.path.join(sys.prefix, "bin", "python3")]
    for candidate in candidates:
        if (
            candidate
            and os.path.basename(candidate).startswith("python")
            and os.access(candidate, os.X_OK)
        ):
            return candidate
    return None


def watch(path: str, *, poll: float = POLL, linger: float = LINGER) -> bool:
    """Wait until nobody owns ``path``, then remove it; True if removed."""
    grace_until: float | None = None
    while os.path.isdir(path):
        if ownership.owner_pid(path) is None:
            if directory.remove_private(path):
                return True
            # Workers of a SIGKILLed master linger a few seconds: give them a while.
            grace_until = grace_until or time.monotonic() + linger
            if time.monotonic() > grace_until:
                return False
        else:
            grace_until = None
        time.sleep(poll)
    return False


if __name__ == "__main__":
    raise SystemExit(0 if watch(sys.argv[1]) else 1)
