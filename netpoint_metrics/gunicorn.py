"""Gunicorn server hooks: ``gunicorn_conf.py`` re-exports these.

Each hook is one call into :mod:`netpoint_metrics.core.lifecycle`. State lives in this
module (imported once per master: Gunicorn re-executes the *config* module on HUP, not
this one), on the arbiter object, or in the directory. No hook raises, except to refuse a
start that would harm another server's data: a metrics problem is logged and the server
goes on.

| event | what we do |
|---|---|
| config load | decide METRICS_ENABLED, pick the directory, check it, take ownership |
| ``on_starting`` | prepare the directory (fresh start wipes; a USR2 child only folds) |
| ``post_fork`` | the worker drops the ownership descriptor, takes its identifier and lease |
| ``child_exit`` | fold dead processes (SIGKILL included: only this hook fires then) |
| ``pre_fork`` | retry a fold that found the lock busy |
| ``pre_exec`` | hand the directory and its ownership to the USR2 child master |
| ``on_exit`` | remove a private directory once nobody alive uses it |
"""

from __future__ import annotations

import logging
import os
from typing import Any

from netpoint_metrics import bootstrap, exits, private_dir, warmup
from netpoint_metrics.core import directory, events, identity, lifecycle, ownership, scrape

log = logging.getLogger(__name__)

#: Whether this master continues an earlier owner (USR2 hand-over); set at config load.
_continued = False


def configure_environment() -> str | None:
    """Decide metrics and the multiprocess directory before the app (and prometheus-client) load.

    Metrics on and no ``PROMETHEUS_MULTIPROC_DIR``: make a private directory rather than
    silently falling back to per-worker counts. The choice is kept in ``os.environ``, so a
    HUP (which re-runs the config) reuses it. A second server on a directory that a live
    server owns, an unsafe directory or contradictory settings stop the start with one
    line saying what is wrong; nothing is changed on disk.
    """
    global _continued
    try:
        enabled = bootstrap.decide(bootstrap.settings_choice())
        if not enabled:
            return None
        path = identity.multiproc_dir()
        if not path:
            path = private_dir.create()
        path = os.path.abspath(path)
        os.environ[identity.ENV_DIR] = path
        os.environ[bootstrap.ENV_ENABLED] = "1"  # workers then agree with the master
        _continued = lifecycle.claim_directory(path) or _continued
        bootstrap.setup(True)
    except (bootstrap.ConfigurationError, *lifecycle.REFUSALS) as exc:
        raise SystemExit(lifecycle.refused(identity.multiproc_dir(), exc)) from None
    if private_dir.is_private(path):
        private_dir.start_watcher(path)
    return path


def _dir() -> str | None:
    return ownership.held() if bootstrap.metrics_enabled() else None


def on_starting(server: Any) -> None:
    path = _dir()
    if not path:
        return
    continued = _continued or bool(getattr(server, "master_pid", 0))
    # Our event lines go where Gunicorn's own go (Django's LOGGING is not loaded here).
    events.attach_handlers(
        getattr(server.log, "error_log", None), getattr(server.log, "loglevel", None)
    )
    try:
        lifecycle.master_starting(path, continued=continued)
    except Exception:
        server.log.exception("netpoint-metrics: could not prepare %s", path)
    scrape.warm_up()  # inherited by every worker: their first scrape skips it


def post_fork(server: Any, worker: Any) -> None:
    os.environ["NETPOINT_SERVER_WORKERS"] = str(getattr(server, "num_workers", "") or "")
    if bootstrap.metrics_enabled() and identity.multiproc_dir():
        try:
            lifecycle.worker_started()
            exits.gunicorn_post_fork(server, worker)
        except Exception:
            server.log.exception("netpoint-metrics: worker identity failed")
        warmup.arm()


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


def pre_exec(server: Any) -> None:
    """USR2: the new master gets the original environment, so add what it must inherit.

    Runs in the child Gunicorn forked to ``exec`` the new master, so the ownership it
    hands over is the parent's (:func:`ownership.handover_env` allows exactly that).
    """
    handover = ownership.handover_env()
    if not handover:
        return
    path = handover[ownership.ENV_OWNER_FD].partition(":")[2]
    env = {identity.ENV_DIR: path, bootstrap.ENV_ENABLED: "1", **handover}
    for name in (private_dir.ENV_PRIVATE, private_dir.ENV_WATCHER):
        if name in os.environ:
            env[name] = os.environ[name]
    server.cfg.env_orig.update(env)


def on_exit(server: Any) -> None:
    """Remove a private directory, unless a live process still uses it (USR2 overlap)."""
    path = _dir()
    if not path or not private_dir.is_private(path):
        return
    ownership.release()
    if ownership.owner_pid(path) is None:
        directory.remove_private(path, self_ident=identity.peek())
