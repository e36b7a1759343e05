"""uWSGI adapter: ``uwsgi.ini`` loads ``module = netpoint_metrics.uwsgi:application``.

uWSGI has no master hook for a worker's death, and needs none here: a dead worker's
lease is free the moment it dies, and the worker that replaces it (``postfork``, or the
import itself with ``lazy-apps``) folds whatever is dead before serving. The directory is
prepared where the app is first imported: in the master (preforked, the default) or, with
``lazy-apps``, in the first worker, on behalf of the master's pid. A reload re-executes the
master in the same pid, which :func:`netpoint_metrics.core.directory.prepare` recognises,
so reloads never reset counters.

The real WSGI application is named by ``NETPOINT_WSGI_APP``
(default ``netpoint_metrics.sample.wsgi:application``).
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile

import uwsgi  # only importable inside a uWSGI process

from netpoint_metrics import exits
from netpoint_metrics.bootstrap import bootstrap, metrics_enabled
from netpoint_metrics.core import directory, events, identity, lifecycle

log = logging.getLogger("netpoint_metrics")


def _configure() -> str | None:
    if not metrics_enabled():
        bootstrap()
        return None
    path = identity.multiproc_dir()
    if not path:
        # Named by the master's pid: every worker (lazy-apps too) and every reload of the
        # same master agree on it without talking to each other.
        path = os.path.join(tempfile.gettempdir(), f"netpoint-metrics-uwsgi-{uwsgi.masterpid()}")
    try:
        path = directory.ensure_directory(path)
    except directory.UnsafeDirectory as exc:
        log.error("%s", lifecycle.refused(path, exc))
        raise
    os.environ[identity.ENV_DIR] = path
    bootstrap()
    return path


def _in_master() -> bool:
    return os.getpid() == uwsgi.masterpid()


def _worker_begins() -> None:
    """A worker or mule begins: own identifier first, then fold the dead it replaces."""
    if _PATH:
        try:
            lifecycle.worker_started()
            exits.uwsgi_register_exit()
            lifecycle.worker_died(_PATH)
        except Exception:
            log.exception("netpoint-metrics: worker start-up step failed")


def _load_application():
    target = os.environ.get("NETPOINT_WSGI_APP", "netpoint_metrics.sample.wsgi:application")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr or "application")


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
_PATH = _configure()
if _PATH:
    events.attach_handlers()  # stderr is uWSGI's log; Django's LOGGING is not loaded yet
    if _in_master():
        lifecycle.master_starting(_PATH, os.getpid())
        from uwsgidecorators import postfork

        postfork(_worker_begins)
    else:  # lazy-apps: imported in each worker, and postfork does not run
        lifecycle.master_starting(_PATH, uwsgi.masterpid())
        _worker_begins()

application = _load_application()
