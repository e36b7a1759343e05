"""Migration gauges, computed when Prometheus scrapes rather than when a worker starts.

django-prometheus computes them in ``AppConfig.ready()``: that touches the database
while apps initialise (Django warns about it) and, in a large project, adds a fraction of
a second to every worker start. The counts describe a database, not a process, so they
belong to scrape time: the migration graph is loaded once per process, at the first
scrape, and each scrape then costs one query per connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class MigrationCollector(Collector):
    """``django_migrations_applied_total`` / ``..._unapplied_total`` by connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graph_nodes: dict[str, frozenset[tuple[str, str]]] = {}
        self._warned = False

    def collect(self) -> Iterable[GaugeMetricFamily]:
        applied = GaugeMetricFamily(
            "django_migrations_applied_total",
            "Count of applied migrations by database connection",
            labels=["connection"],
        )
        unapplied = GaugeMetricFamily(
            "django_migrations_unapplied_total",
            "Count of unapplied migrations by database connection",
            labels=["connection"],
        )
        try:
            for alias, n_applied, n_unapplied in self._counts():
                applied.add_metric([alias], n_applied)
                unapplied.add_metric([alias], n_unapplied)
        except Exception as exc:  # a database outage must not fail the scrape
            if not self._warned:
                log.warning("netpoint-metrics: migration gauges unavailable: %s", exc)
                self._warned = True
            return []
        return [applied, unapplied]

    def _counts(self) -> Iterable[tuple[str, int, int]]:
        from django.db import connections
        from django.db.backends.dummy.base import DatabaseWrapper
        from django.db.migrations.recorder import MigrationRecorder

        for alias in connections.databases:
            conn = connections[alias]
            if isinstance(conn, DatabaseWrapper):
                continue
            nodes = self._nodes(alias)
            done = set(MigrationRecorder(conn).applied_migrations())
            yield alias, len(done), len(nodes - done)

    def _nodes(self, alias: str) -> frozenset[tuple[str, str]]:
        with self._lock:
            nodes = self._graph_nodes.get(alias)
            if nodes is None:
                from django.db import connections
                from django.db.migrations.loader import MigrationLoader

                loader = MigrationLoader(connections[alias], ignore_no_migrations=True)
                nodes = frozenset(loader.graph.nodes)
                self._graph_nodes[alias] = nodes
            return nodes
