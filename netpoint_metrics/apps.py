"""The ``netpoint_metrics`` Django app: the /metrics view and NetPoint's metadata metrics."""

from __future__ import annotations

import logging

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger("netpoint_metrics")


class NetpointMetricsConfig(AppConfig):
    name = "netpoint_metrics"
    verbose_name = "NetPoint metrics"

    def ready(self) -> None:
        if not getattr(settings, "METRICS_ENABLED", False):
            return
        from netpoint_metrics.core import access

        try:
            access.policy()  # parse the /metrics access settings now: a bad one stops the start
        except access.AccessConfigError as exc:
            raise ImproperlyConfigured(str(exc)) from None
        from netpoint_metrics import metrics

        metrics.export_build_info()
        try:
            metrics.export_migrations()
        except Exception as exc:  # a missing or locked database must not stop the server
            log.warning("netpoint-metrics: migration gauges not set: %s", exc)
