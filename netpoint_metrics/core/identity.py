"""Process identifiers that no later process can reuse, and the value class that uses them.

prometheus-client names each process's files by ``os.getpid()`` and reopens old files when
a pid comes back, which after a few thousand forks it does: a new worker would then continue
a dead one's counters that were already counted, or already folded into an archive.
Our identifier is ``<pid>-<random nonce>``, fixed for the life of one process and never
seen again. With it comes the process's lease (:mod:`.lease`).

``current()`` is what prometheus-client calls on every value access to notice a fork, so it
must stay cheap: one ``os.getpid()`` and a comparison.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading

from netpoint_metrics.core import lease

log = logging.getLogger("netpoint_metrics")

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LEGACY_ENV_DIR = "prometheus_multiproc_dir"

_lock = threading.Lock()
_pid: int = -1
_ident: str = ""
_lease_fd: int = -1
_installed: str | None = None  # "multiprocess" or "single"


def multiproc_dir() -> str | None:
    """The directory prometheus-client will write to, from the environment."""
    return os.environ.get(ENV_DIR) or os.environ.get(_LEGACY_ENV_DIR) or None


def current() -> str:
    """This process's identifier; makes a new one (and its lease) after a fork."""
    if os.getpid() != _pid:
        _rotate()
    return _ident


def peek() -> str | None:
    """This process's identifier if it already has one; never creates one (or a lease)."""
    return _ident if _pid == os.getpid() else None


def _rotate() -> None:
    global _pid, _ident, _lease_fd
    with _lock:
        pid = os.getpid()
        if pid == _pid:
            return
        ident = f"{pid}-{secrets.token_hex(6)}"
        fd = -1
        directory = multiproc_dir()
        if directory:
            try:
                fd = lease.acquire(directory, ident)
            except OSError as exc:
                # Metrics must never break the process: without a lease the directory's
                # readers fall back to a pid check, which is conservative.
                log.warning("netpoint-metrics: cannot create a lease in %s: %s", directory, exc)
        _pid, _ident, _lease_fd = pid, ident, fd


def _after_fork_in_child() -> None:
    """Drop the parent's lease descriptor in a forked child.

    Only close it, never unlock: the lock belongs to the open file description the parent
    shares, and LOCK_UN here would release the parent's lease.
    """
    global _lease_fd
    if _lease_fd >= 0:
        with contextlib.suppress(OSError):
            os.close(_lease_fd)
        _lease_fd = -1


os.register_at_fork(after_in_child=_after_fork_in_child)


def install_multiprocess() -> None:
    """Make every metric created from now on write files named by :func:`current`."""
    global _installed
    from prometheus_client import values

    if _installed == "multiprocess":
        return
    _warn_if_late()
    # Our value class (core.values): same files and format as prometheus-client's
    # MultiProcessValue, but fork noticed by os.register_at_fork instead of a pid check on
    # every write, and a full disk dropping (and counting) updates instead of SIGBUS.
    from netpoint_metrics.core.values import make_value_class

    values.ValueClass = make_value_class(process_identifier=current)
    _installed = "multiprocess"


def install_single_process() -> None:
    """Keep values in memory: metrics off, or no directory, must write no files."""
    global _installed
    from prometheus_client import values

    if _installed == "single":
        return
    _warn_if_late()
    values.ValueClass = values.MutexValue
    _installed = "single"


def installed() -> str | None:
    return _installed


def _warn_if_late() -> None:
    if "django_prometheus.middleware" in sys.modules or "django_prometheus.models" in sys.modules:
        log.warning(
            "netpoint-metrics: django_prometheus was imported before netpoint_metrics; its "
            "metrics keep the value class chosen then. Import netpoint_metrics first "
            "(list it first in INSTALLED_APPS, or import it in your settings)."
        )
