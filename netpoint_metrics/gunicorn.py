"""Gunicorn server hooks: ``gunicorn_conf.py`` re-exports these.

Each hook is one call into :mod:`netpoint_metrics.core.lifecycle`. State lives on the
arbiter object or in the directory, never in module globals: Gunicorn re-executes the
config module on HUP. No hook ever raises: a metrics problem is logged and the server goes on.

| event | what we do |
|---|---|
| config load | pick the directory (a private one if metrics are on and none is set) |
| ``on_starting`` | prepare the directory; a USR2 child master inherits, never wipes |
| ``post_fork`` | the worker takes its never-reused identifier and lease |
| ``child_exit`` | fold dead processes (SIGKILL included: only this hook fires then) |
| ``pre_fork`` | retry a fold that found the lock busy |
| ``on_exit`` | remove a private directory once nobody alive uses it |
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from netpoint_metrics import exits
from netpoint_metrics.bootstrap import bootstrap, metrics_enabled
from netpoint_metrics.core import directory, events, identity, lease, lifecycle, names

log = logging.getLogger("netpoint_metrics")

#: Set when the toolkit made the directory itself, so it may remove it at exit.
ENV_PRIVATE = "NETPOINT_METRICS_PRIVATE_DIR"


def configure_environment() -> str | None:
    """Decide the multiprocess directory before the app (and prometheus-client) load.

    Metrics on and no ``PROMETHEUS_MULTIPROC_DIR``: make a private directory rather than
    silently falling back to per-worker counts. The choice is kept in ``os.environ``, so a
    HUP (which re-runs the config) and a USR2 child master reuse it.
    """
    if not metrics_enabled():
        return None
    path = identity.multiproc_dir()
    if not path:
        path = tempfile.mkdtemp(prefix="netpoint-metrics-")
        os.environ[ENV_PRIVATE] = path
    try:
        path = directory.ensure_directory(path)
    except directory.UnsafeDirectory as exc:
        log.error("%s", lifecycle.refused(path, exc))
        raise
    os.environ[identity.ENV_DIR] = path
    bootstrap()  # importing the package ran it before the directory was known
    return path


def _dir() -> str | None:
    return identity.multiproc_dir() if metrics_enabled() else None


def on_starting(server: Any) -> None:
    path = _dir()
    if not path:
        return
    inherit = bool(getattr(server, "master_pid", 0))
    # Our event lines go where Gunicorn's own go (Django's LOGGING is not loaded here).
    events.attach_handlers(
        getattr(server.log, "error_log", None), getattr(server.log, "loglevel", None)
    )
    try:
        lifecycle.master_starting(path, os.getpid(), inherit=inherit)
    except directory.UnsafeDirectory:
        raise  # refuse to start on an unsafe directory: the message says how to fix it
    except Exception:
        server.log.exception("netpoint-metrics: could not prepare %s", path)


def post_fork(server: Any, worker: Any) -> None:
    if _dir():
        try:
            lifecycle.worker_started()
            exits.gunicorn_post_fork(server, worker)
        except Exception:
            server.log.exception("netpoint-metrics: worker identity failed")


def pre_fork(server: Any, worker: Any) -> None:
    path = _dir()
    if path and worker is not None:
        exits.gunicorn_pre_fork(worker)
    if path and getattr(server, "_netpoint_fold_pending", False):
        result = lifecycle.worker_died(path)
        server._netpoint_fold_pending = result.busy or result.more


def child_exit(server: Any, worker: Any) -> None:
    path = _dir()
    if path:
        try:
            exits.gunicorn_child_exit(worker)
        except Exception:
            server.log.exception("netpoint-metrics: could not count a worker exit")
        result = lifecycle.worker_died(path)
        server._netpoint_fold_pending = result.busy or result.more


def worker_exit(server: Any, worker: Any) -> None:
    """Leave the master a note if this worker is leaving after ``max_requests``.

    Nothing else to do: the lease is released by the kernel whichever way the worker ends.
    (No directory check: a worker no longer holds the ownership, and without the note
    descriptor, which only a master with metrics on gives, this does nothing.)
    """
    exits.gunicorn_worker_exit(worker)


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    pre_fork(server, None)


def on_exit(server: Any) -> None:
    """Remove a private directory, unless a live process still uses it (USR2 overlap)."""
    private = os.environ.get(ENV_PRIVATE)
    path = _dir()
    if not private or path != private or not os.path.isdir(private):
        return
    own = identity.current() if identity.installed() == "multiprocess" else None
    listing = directory.scan(private)
    if any(i != own and lease.is_alive(private, i) for i in listing.idents()):
        return
    for name in os.listdir(private):
        if names.is_ours(name):
            directory.unlink(private, name)
    try:
        os.rmdir(private)
    except OSError as exc:
        log.warning("netpoint-metrics: could not remove %s: %s", private, exc)
