"""Adopt netpoint-metrics in NetBox from ``configuration.py`` alone: a NetBox plugin.

``PLUGINS = ["netpoint_metrics.netbox_plugin"]`` makes NetBox's settings, while they load,

* import this module, which chooses the metric value class before django-prometheus
  creates any metric (``netpoint_metrics.setup()`` where the package has it; older
  versions choose it when the package is imported);
* append ``netpoint_metrics`` to ``INSTALLED_APPS`` (build info, migration gauges) and
  :class:`~netpoint_metrics.middleware.NetpointMetricsMiddleware` to ``MIDDLEWARE``, which
  serves the aggregated ``/metrics`` although NetBox's ``urls.py`` includes
  ``django_prometheus.urls`` (no change to NetBox's URLs).

This module is imported in the middle of NetBox's settings, so it imports nothing that
reads Django settings. It is only importable inside NetBox (``netbox.plugins``).
"""

from __future__ import annotations

import logging
import os
import sys

from netbox.plugins import PluginConfig

import netpoint_metrics

log = logging.getLogger(__name__)


def _netbox_metrics_enabled() -> object:
    """``METRICS_ENABLED`` as NetBox's settings, being executed right now, have set it.

    NetBox reads it from ``configuration.py`` before it loads plugins, so the half-run
    settings module already holds it.
    """
    module = sys.modules.get(os.environ.get("DJANGO_SETTINGS_MODULE") or "netbox.settings")
    return getattr(module, "METRICS_ENABLED", None)


netpoint_metrics.setup(_netbox_metrics_enabled())


class NetpointMetricsPlugin(PluginConfig):
    # The label stays Django's default, "netbox_plugin": NetBox looks a plugin's app up by
    # the last part of its module path.
    name = "netpoint_metrics.netbox_plugin"
    verbose_name = "netpoint-metrics"
    description = "Exact, bounded Prometheus metrics under multi-process Gunicorn and uWSGI"
    version = netpoint_metrics.__version__
    base_url = "netpoint-metrics"
    min_version = "4.0.0"
    django_apps = ["netpoint_metrics"]
    middleware = ["netpoint_metrics.middleware.NetpointMetricsMiddleware"]


config = NetpointMetricsPlugin
