"""Settings shaped like NetBox's ``netbox/settings.py`` (only what matters here)."""

from __future__ import annotations

import importlib
import os

import netpoint_metrics

# NetBox imports its configuration module unconditionally; here it is optional so that the
# test helpers' `migrate` (which drops NETPOINT_CONFIGURATION) runs with metrics off.
configuration = (
    importlib.import_module(os.environ["NETPOINT_CONFIGURATION"])
    if os.environ.get("NETPOINT_CONFIGURATION")
    else None
)
METRICS_ENABLED = getattr(configuration, "METRICS_ENABLED", None)
if METRICS_ENABLED is None:
    METRICS_ENABLED = os.environ.get("METRICS_ENABLED", "").lower() in ("1", "true", "yes", "on")
# The toolkit's one call before django-prometheus creates a metric (what the NetBox plugin
# does when NetBox's settings import it).
netpoint_metrics.setup(METRICS_ENABLED)

SECRET_KEY = "netboxlike-test-key"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.netboxlike.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PROMETHEUS_EXPORT_MIGRATIONS = False

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django_prometheus",
    "netpoint_metrics.sample.dcim",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
if METRICS_ENABLED:
    MIDDLEWARE = [
        "netpoint_metrics.netbox_metrics.PrometheusBeforeMiddleware",
        *MIDDLEWARE,
        "netpoint_metrics.netbox_metrics.PrometheusAfterMiddleware",
    ]

DATABASES = {
    "default": {
        "ENGINE": "django_prometheus.db.backends.sqlite3"
        if METRICS_ENABLED
        else "django.db.backends.sqlite3",
        "NAME": os.environ["NETPOINT_DB_PATH"],
        "OPTIONS": {"timeout": 20},
    }
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# -- what adopting netpoint-metrics adds (a NetBox plugin appends exactly these) --------
INSTALLED_APPS.append("netpoint_metrics")
MIDDLEWARE.append("netpoint_metrics.middleware.NetpointMetricsMiddleware")
