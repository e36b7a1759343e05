"""Settings of the sample NetPoint site.

Everything comes from the environment; see the README's settings table. With nothing set it
needs no service: SQLite and a file cache. ``DATABASE_URL`` (parsed by dj-database-url)
moves it to PostgreSQL, ``REDIS_URL`` to a Redis cache and turns on background jobs
(django-rq), as NetBox runs in production. Metrics follow NetBox's layout:
``METRICS_ENABLED`` off by default; when on, the django-prometheus database and cache
backends and the before/after middlewares are used (ours, which add NetBox's API counters).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from netpoint_metrics.bootstrap import env_flag

# NetBox's style: an optional configuration module (NETPOINT_CONFIGURATION) may set
# METRICS_ENABLED; otherwise the environment does. If both say something, they must agree
# (checked at start-up by netpoint_metrics.bootstrap).
_configuration = (
    importlib.import_module(os.environ["NETPOINT_CONFIGURATION"])
    if os.environ.get("NETPOINT_CONFIGURATION")
    else None
)
METRICS_ENABLED = getattr(_configuration, "METRICS_ENABLED", None)
if METRICS_ENABLED is None:
    METRICS_ENABLED = env_flag("METRICS_ENABLED", False)

SECRET_KEY = os.environ.get("NETPOINT_SECRET_KEY", "netpoint-sample-insecure-dev-key")
DEBUG = env_flag("NETPOINT_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("NETPOINT_ALLOWED_HOSTS", "*").split(",")]

INSTALLED_APPS = [
    "netpoint_metrics",  # first: its app config picks the value class before django_prometheus
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
        # django-prometheus's Before/After middlewares: same metrics, cheaper per request
        # (netpoint_metrics.instrumentation), plus NetBox's API counters.
        "netpoint_metrics.netbox_metrics.PrometheusBeforeMiddleware",
        "netpoint_metrics.middleware.NetpointMetricsMiddleware",
        *MIDDLEWARE,
        "netpoint_metrics.netbox_metrics.PrometheusAfterMiddleware",
    ]

ROOT_URLCONF = "netpoint_metrics.sample.urls"
WSGI_APPLICATION = "netpoint_metrics.sample.wsgi.application"

# django-prometheus wraps each of these engines: same database, plus counters. Ours
# (netpoint_metrics.db) are the same wrappers with the cursor class built once, not per query.
_PROMETHEUS_ENGINES = {
    "django.db.backends.postgresql": "netpoint_metrics.db.backends.postgresql",
    "django.db.backends.sqlite3": "netpoint_metrics.db.backends.sqlite3",
    "django.db.backends.mysql": "django_prometheus.db.backends.mysql",
}
_db_path = os.environ.get("NETPOINT_DB_PATH") or str(Path.cwd() / "var" / "netpoint.sqlite3")
if os.environ.get("DATABASE_URL"):
    import dj_database_url

    _database = dj_database_url.parse(
        os.environ["DATABASE_URL"],
        conn_max_age=int(os.environ.get("NETPOINT_DB_CONN_MAX_AGE", "300")),
        conn_health_checks=True,
    )
else:
    _database = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db_path,
        "OPTIONS": {"timeout": 20},
    }
if METRICS_ENABLED:
    _database["ENGINE"] = _PROMETHEUS_ENGINES.get(_database["ENGINE"], _database["ENGINE"])
DATABASES = {"default": _database}

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # django-redis, as NetBox uses; django-prometheus's subclass counts gets, hits, misses.
    CACHES = {
        "default": {
            "BACKEND": (
                "netpoint_metrics.cache.redis.RedisCache"
                if METRICS_ENABLED
                else "django_redis.cache.RedisCache"
            ),
            "LOCATION": REDIS_URL,
        }
    }
    # Background jobs: `netpoint-sample rqworker` runs them. Jobs may use their own Redis
    # database (NetBox keeps tasks and caching apart); by default they share REDIS_URL.
    INSTALLED_APPS.append("django_rq")
    RQ_QUEUES = {
        "default": {
            "URL": os.environ.get("NETPOINT_TASKS_REDIS_URL") or REDIS_URL,
            # Seconds a job may run before RQ stops it (NetBox's RQ_DEFAULT_TIMEOUT).
            "DEFAULT_TIMEOUT": int(os.environ.get("NETPOINT_JOB_TIMEOUT", "300")),
        }
    }
    RQ = {"COMMIT_MODE": "auto"}
    if METRICS_ENABLED:
        RQ["QUEUE_CLASS"] = "netpoint_metrics.rq_metrics.MetricsQueue"
        RQ["WORKER_CLASS"] = "netpoint_metrics.rq_metrics.MetricsWorker"
else:
    # A file-based cache: shared by every worker process, and no extra service to run.
    _cache_dir = os.environ.get("NETPOINT_CACHE_DIR") or str(Path(_db_path).parent / "cache")
    CACHES = {
        "default": {
            "BACKEND": (
                "netpoint_metrics.cache.filebased.FileBasedCache"
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
    "loggers": {
        "netpoint_metrics": {"handlers": ["console"], "level": "INFO"},
        # A request that fails is logged with its traceback (stderr: the server's log).
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
