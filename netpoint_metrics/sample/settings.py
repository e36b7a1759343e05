"""Settings of the sample NetPoint site (SQLite, no other service needed).

Everything comes from the environment; see the README's settings table. Metrics follow
NetBox's layout: ``METRICS_ENABLED`` off by default; when on, the django-prometheus database
and cache backends and the before/after middlewares are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import netpoint_metrics  # noqa: F401  (must come before anything that imports django_prometheus)
from netpoint_metrics.bootstrap import env_flag

METRICS_ENABLED = env_flag("METRICS_ENABLED", False)

SECRET_KEY = os.environ.get("NETPOINT_SECRET_KEY", "netpoint-sample-insecure-dev-key")
DEBUG = env_flag("NETPOINT_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("NETPOINT_ALLOWED_HOSTS", "*").split(",")]

INSTALLED_APPS = [
    "netpoint_metrics",  # first: its import picks the metric value class
    "django_prometheus",
    "django.contrib.contenttypes",
    "netpoint_metrics.sample.dcim",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
if METRICS_ENABLED:
    MIDDLEWARE = [
        # django-prometheus's Before/After middlewares, same metrics, cheaper per request.
        "netpoint_metrics.instrumentation.PrometheusBeforeMiddleware",
        "netpoint_metrics.middleware.NetpointMetricsMiddleware",
        *MIDDLEWARE,
        "netpoint_metrics.instrumentation.PrometheusAfterMiddleware",
    ]

ROOT_URLCONF = "netpoint_metrics.sample.urls"
WSGI_APPLICATION = "netpoint_metrics.sample.wsgi.application"

_db_path = os.environ.get("NETPOINT_DB_PATH") or str(Path.cwd() / "var" / "netpoint.sqlite3")
DATABASES = {
    "default": {
        "ENGINE": (
            "django_prometheus.db.backends.sqlite3"
            if METRICS_ENABLED
            else "django.db.backends.sqlite3"
        ),
        "NAME": _db_path,
        "OPTIONS": {"timeout": 20},
    }
}
# A file-based cache: shared by every worker process, and no extra service to run.
_cache_dir = os.environ.get("NETPOINT_CACHE_DIR") or str(Path(_db_path).parent / "cache")
CACHES = {
    "default": {
        "BACKEND": (
            "django_prometheus.cache.backends.filebased.FileBasedCache"
            if METRICS_ENABLED
            else "django.core.cache.backends.filebased.FileBasedCache"
        ),
        "LOCATION": _cache_dir,
    }
}
# We export the migration gauges ourselves, one series per connection (apps.py).
PROMETHEUS_EXPORT_MIGRATIONS = False

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"netpoint_metrics": {"handlers": ["console"], "level": "INFO"}},
}
