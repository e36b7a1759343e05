"""The toolkit's own metrics, beside django-prometheus's.

Rule for this module: a series exists only if something sets it. In multiprocess mode a
metric *without* labels writes a zero entry into its process's file as soon as it is
created, and every forked child rewrites a zero entry for every value its parent holds.
So the gauges only our middleware sets are made on the middleware's first request in a
process (:func:`live_gauges`), never at import; everything else here has labels and so
writes nothing until a value is set.

None of them uses the ``all`` gauge mode: that mode adds a ``pid`` label and keeps one
series per process ever seen (django-prometheus issue #498).
"""

from __future__ import annotations

import logging
import platform
import threading
from dataclasses import dataclass

import django
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

CACHE_INVALIDATIONS = Counter(
    "netpoint_cache_invalidations_total",
    "Cache entries NetPoint dropped because their model was saved or deleted",
    ["model"],
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
# "livemax": a process's series leaves with the process, so after an upgrade (USR2,
# uWSGI reload, a new RQ worker) only the versions still running are shown.
BUILD_INFO = Gauge(
    "netpoint_metrics_build_info",
    "netpoint-metrics and library versions of the running processes (value 1)",
    ["version", "django_version", "prometheus_client_version", "python_version"],
    multiprocess_mode="livemax",
)

# -- background jobs (RQ) -------------------------------------------------------------
# Labels: queue name and the job's function path (RQ's ``func_name``), bounded by the code.
JOB_LABELS = ["queue", "job"]
JOBS_ENQUEUED = Counter(
    "netpoint_rq_jobs_enqueued_total",
    "Jobs put on an RQ queue (first enqueue, retries and requeues), by the enqueuing process",
    JOB_LABELS,
)
JOBS_STARTED = Counter(
    "netpoint_rq_jobs_started_total",
    "Job executions an RQ work-horse began",
    JOB_LABELS,
)
JOBS_FINISHED = Counter(
    "netpoint_rq_jobs_finished_total",
    "Job executions that returned (RQ status finished)",
    JOB_LABELS,
)
JOBS_FAILED = Counter(
    "netpoint_rq_jobs_failed_total",
    "Job executions that failed: raised, timed out, or their work-horse died",
    JOB_LABELS,
)
JOB_DURATION = Histogram(
    "netpoint_rq_job_duration_seconds",
    "Wall time of job executions that finished or failed, as RQ records it",
    JOB_LABELS,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
# "livemostrecent": the latest depth any live process observed (the enqueuer right after
# an enqueue, the RQ worker whenever it takes a job); a dead observer's value is dropped.
QUEUE_DEPTH = Gauge(
    "netpoint_rq_queue_depth",
    "Jobs waiting in an RQ queue, as last observed by a live process",
    ["queue"],
    multiprocess_mode="livemostrecent",
)


@dataclass(frozen=True)
class LiveGauges:
    in_progress: Gauge
    worker_up: Gauge


_live: LiveGauges | None = None
_live_lock = threading.Lock()


def live_gauges() -> LiveGauges:
    """The two gauges only :class:`~netpoint_metrics.middleware.NetpointMetricsMiddleware`
    sets, created on first use so that a project without the middleware has no such series.
    """
    global _live
    if _live is None:
        with _live_lock:
            if _live is None:
                _live = LiveGauges(
                    in_progress=Gauge(
                        "netpoint_http_requests_in_progress",
                        "Requests being served now, summed over live worker processes",
                        multiprocess_mode="livesum",
                    ),
                    worker_up=Gauge(
                        "netpoint_worker_up",
                        "Live worker processes that have served at least one request",
                        multiprocess_mode="livesum",
                    ),
                )
    return _live


def _toolkit_version() -> str:
    import netpoint_metrics

    return str(getattr(netpoint_metrics, "__version__", "unknown"))


def _prometheus_client_version() -> str:
    try:
        from importlib.metadata import version

        return version("prometheus-client")
    except Exception:
        import prometheus_client

        return str(getattr(prometheus_client, "__version__", "unknown"))


def export_build_info() -> None:
    BUILD_INFO.labels(
        _toolkit_version(),
        django.get_version(),
        _prometheus_client_version(),
        platform.python_version(),
    ).set(1)


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
