"""The ``netpoint_metrics`` Django app: decides METRICS_ENABLED and checks the set-up.

List it first in ``INSTALLED_APPS``: Django creates app configs in that order, and ours
installs the value class (:func:`netpoint_metrics.setup`) in its constructor, before
``django_prometheus`` is imported and creates its metrics.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from netpoint_metrics import bootstrap
from netpoint_metrics.core import identity

log = logging.getLogger(__name__)


class NetpointMetricsConfig(AppConfig):
    name = "netpoint_metrics"
    verbose_name = "NetPoint metrics"

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        try:
            bootstrap.setup(getattr(settings, "METRICS_ENABLED", None))
        except bootstrap.ConfigurationError as exc:
            raise ImproperlyConfigured(str(exc)) from None

    def ready(self) -> None:
        if not bootstrap.metrics_enabled():
            return
        from netpoint_metrics import config
        from netpoint_metrics.core import access

        try:
            access.policy()  # parse the /metrics access settings now: a bad one stops the start
        except access.AccessConfigError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        if too_old := [c.message() for c in config.version_checks() if c.too_old]:
            raise ImproperlyConfigured("; ".join(too_old))
        _check_value_class()
        from netpoint_metrics import metrics

        metrics.export_build_info()
        if identity.multiproc_dir():
            # What a worker's first scrape would otherwise pay for: importing the view
            # (and the collectors) and the renderer's self-check.
            from django.core.signals import request_finished

            from netpoint_metrics import views, warmup  # noqa: F401
            from netpoint_metrics.core import scrape

            scrape.warm_up()
            # Workers read the directory now and then after a response (servers arm it).
            request_finished.connect(
                warmup.request_finished, dispatch_uid="netpoint-metrics-warmup"
            )


def _check_value_class() -> None:
    """Metrics are on: make sure this process aggregates, or say why it cannot."""
    if identity.multiproc_dir() and identity.installed() == "multiprocess":
        return
    if bootstrap.under_multiprocess_server():
        raise ImproperlyConfigured(
            "METRICS_ENABLED is on but this worker has no shared metrics directory, so "
            "/metrics would show one worker's numbers. Start the server with the toolkit's "
            "config (gunicorn -c gunicorn_conf.py, uwsgi --ini uwsgi.ini), or set "
            "METRICS_ENABLED=1 in the server's environment."
        )
    if "runserver" not in sys.argv[1:2]:
        log.info("netpoint-metrics: metrics on, kept in this process (no multiprocess directory)")
