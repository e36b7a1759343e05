"""uWSGI adapter: ``uwsgi.ini`` imports it in the master and serves its ``application``.

``shared-import = netpoint_metrics.uwsgi`` runs this module in the master before any
worker exists, with or without ``lazy-apps``: the master decides METRICS_ENABLED, picks
and checks the directory, takes ownership and prepares it. A reload re-executes the master
in the same pid, which ownership recognises, so reloads only fold and never reset counters.

uWSGI has no master hook for a worker's death, and needs none here: a dead worker's lease
is free the moment it dies, and the worker that replaces it folds whatever is dead before
serving (``postfork``, registered here in the master, runs in every worker and mule).

``application`` (``module = netpoint_metrics.uwsgi:application``) loads the real WSGI
application, named by ``NETPOINT_WSGI_APP``: in the master for preforked apps, in each
worker (after the fork) with ``lazy-apps``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import uwsgi  # only importable inside a uWSGI process

from netpoint_metrics import bootstrap, config, exits, private_dir, warmup
from netpoint_metrics.core import events, identity, lifecycle

log = logging.getLogger(__name__)

SAMPLE_APP = "netpoint_metrics.sample.wsgi:application"
#: Set by the master once it prepared the directory; workers inherit it.
ENV_READY = "NETPOINT_METRICS_UWSGI_READY"


def _check_settings() -> None:
    """Every NETPOINT_* setting, access settings, dependency versions: one line, exit 1."""
    try:
        config.check_startup(who="uwsgi")
    except config.StartupError as exc:
        print(exc.code, file=sys.stderr, flush=True)
        os._exit(1)


def _master_setup() -> str | None:
    try:
        enabled = bootstrap.decide(bootstrap.settings_choice())
        if not enabled:
            return None
        path = identity.multiproc_dir() or private_dir.create()
        path = os.path.abspath(path)
        os.environ[identity.ENV_DIR] = path
        os.environ[bootstrap.ENV_ENABLED] = "1"
        continued = lifecycle.claim_directory(path)
        bootstrap.setup(True)
    except (bootstrap.ConfigurationError, *lifecycle.REFUSALS) as exc:
        # One line in the log and a non-zero exit: uWSGI cannot start a master we refuse.
        print(lifecycle.refused(identity.multiproc_dir(), exc), file=sys.stderr, flush=True)
        os._exit(1)
    if private_dir.is_private(path):
        private_dir.start_watcher(path)
    events.attach_handlers()  # stderr is uWSGI's log; Django's LOGGING is not loaded yet
    lifecycle.master_starting(path, continued=continued)
    os.environ[ENV_READY] = path
    return path


def _worker_begins() -> None:
    """A worker or mule begins: own identifier first, then fold the dead it replaces."""
    path = os.environ.get(ENV_READY)
    if path:
        try:
            lifecycle.worker_started()
            exits.uwsgi_register_exit()
            lifecycle.worker_died(path)
        except Exception:
            log.exception("netpoint-metrics: worker start-up step failed")
        if not uwsgi.mule_id():  # mules serve no scrapes
            warmup.arm()
    if _lazy_apps():
        application.load()


def _check_worker_setup() -> None:
    """A lazy-apps worker imported us first: the master never prepared anything."""
    if os.environ.get(ENV_READY) or not bootstrap.decide(bootstrap.settings_choice()):
        return
    raise RuntimeError(
        "netpoint-metrics: with lazy-apps the master must import the adapter too: add "
        "`shared-import = netpoint_metrics.uwsgi` to your uWSGI config (uwsgi.ini has it)"
    )


def _lazy_apps() -> bool:
    raw = uwsgi.opt.get("lazy-apps") or uwsgi.opt.get("lazy") or b""
    if isinstance(raw, list):
        raw = raw[-1] if raw else b""
    word = raw.decode() if isinstance(raw, bytes) else str(raw)
    return word.strip().lower() in ("1", "true", "yes", "on", "y")


class _Application:
    """The WSGI callable uWSGI serves; the real application is imported by :meth:`load`.

    uWSGI looks the callable up in the module's namespace, so it must exist at import.
    Preforked, the master loads the real app right away (workers inherit it); with
    ``lazy-apps`` each worker loads it after the fork, before serving.
    """

    def __init__(self) -> None:
        self._app: Any = None

    def load(self) -> Any:
        if self._app is None:
            target = os.environ.get("NETPOINT_WSGI_APP", SAMPLE_APP)
            module_name, _, attr = target.partition(":")
            self._app = getattr(importlib.import_module(module_name), attr or "application")
        return self._app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return (self._app or self.load())(environ, start_response)


application = _Application()

if os.environ.get("NETPOINT_WSGI_APP", SAMPLE_APP) == SAMPLE_APP:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
if os.getpid() == uwsgi.masterpid():
    _check_settings()
    _master_setup()
    from uwsgidecorators import postfork

    postfork(_worker_begins)
    if not _lazy_apps():
        application.load()
else:
    _check_worker_setup()
