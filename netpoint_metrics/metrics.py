"""NetPoint's own metrics, beside django-prometheus's.

Created when this module is first imported, which is always after ``netpoint_metrics``
itself (it lives inside the package), so they use the value class the package installed.
None of them uses the ``all`` gauge mode: that mode adds a ``pid`` label and keeps one series
per process ever seen (django-prometheus issue #498).
"""

from __future__ import annotations

import platform

import django
import django_prometheus
import prometheus_client
from prometheus_client import Counter, Gauge

import netpoint_metrics

API_REQUESTS = Counter(
    "netpoint_api_requests_total",
    "NetPoint API requests by endpoint, method and status (like NetBox's REST counters)",
    ["endpoint", "method", "status"],
)
CACHE_INVALIDATIONS = Counter(
    "netpoint_cache_invalidations_total",
    "Cache entries NetPoint dropped because their model was saved or deleted",
    ["model"],
)
REQUESTS_IN_PROGRESS = Gauge(
    "netpoint_http_requests_in_progress",
    "Requests being served now, summed over live worker processes",
    multiprocess_mode="livesum",
)
WORKERS_UP = Gauge(
    "netpoint_worker_up",
    "Live worker processes that have served at least one request",
    multiprocess_mode="livesum",
)
# django-prometheus registers gauges of these names on the global registry when its app
# loads, in the "all" mode. Ours are kept off that registry (no name clash) and use
# "mostrecent": one series per database connection, the latest value any process saw.
MIGRATIONS_APPLIED = Gauge(
    "django_migrations_applied_total",
    "Count of applied migrations by database connection",
    ["connection"],
    multiprocess_mode="mostrecent",
    registry=None,
)
MIGRATIONS_UNAPPLIED = Gauge(
    "django_migrations_unapplied_total",
    "Count of unapplied migrations by database connection",
    ["connection"],
    multiprocess_mode="mostrecent",
    registry=None,
)
BUILD_INFO = Gauge(
    "netpoint_build_info",
    "NetPoint and library versions (value 1)",
    [
        "netpoint_version",
        "django_version",
        "django_prometheus_version",
        "prometheus_client_version",
        "python_version",
    ],
    multiprocess_mode="max",
)


def _version(module: object) -> str:
    return str(getattr(module, "__version__", "unknown"))


def export_build_info() -> None:
    BUILD_INFO.labels(
        netpoint_metrics.__version__,
        django.get_version(),
        _version(django_prometheus),
        _prometheus_client_version(),
        platform.python_version(),
    ).set(1)


def _prometheus_client_version() -> str:
    try:
        from importlib.metadata import version

        return version("prometheus-client")
    except Exception:
        return _version(prometheus_client)


def export_migrations() -> None:
    """Set the migration gauges for every database connection (called at app start)."""
    from django.db import connections
    from django.db.backends.dummy.base import DatabaseWrapper
    from django.db.migrations.executor import MigrationExecutor

    for alias in connections.databases:
        conn = connections[alias]
        if isinstance(conn, DatabaseWrapper):
            continue
        executor = MigrationExecutor(conn)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        MIGRATIONS_UNAPPLIED.labels(alias).set(len(plan))
        MIGRATIONS_APPLIED.labels(alias).set(len(executor.loader.applied_migrations))
