"""Migration gauges, computed when Prometheus scrapes rather than when a worker starts.

django-prometheus computes them in ``AppConfig.ready()``: that touches the database
while apps initialise (Django warns about it) and, in a large project, adds a fraction of
a second to every worker start. The counts describe a database, not a process, so they
belong to scrape time: the migration graph is loaded once per process, at the first
scrape, and each scrape then costs one plain query per connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


class MigrationCollector(Collector):
    """``django_migrations_applied_total`` / ``..._unapplied_total`` by connection."""

    #: Seconds counts read by a worker's background read stay good for its scrapes: the
    #: counts change when someone migrates (a deploy), and a scrape saves a query.
    #: django-prometheus reads them once, when the worker starts.
    FRESH_FOR = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graph_nodes: dict[str, frozenset[tuple[str, str]]] = {}
        self._has_table: set[str] = set()
        self._warned = False
        self._counted: tuple[float, list[tuple[str, int, int]]] | None = None

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
            counted = self._counted
            if counted is not None and time.monotonic() - counted[0] < self.FRESH_FOR:
                counts = counted[1]
            else:
                counts = list(self._counts())
            for alias, n_applied, n_unapplied in counts:
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

        for alias in connections.databases:
            conn = connections[alias]
            if isinstance(conn, DatabaseWrapper):
                continue
            nodes = self._nodes(alias)
            done = self._applied(alias, conn)
            yield alias, len(done), len(nodes - done)

    def _applied(self, alias: str, conn: Any) -> set[tuple[str, str]]:
        """(app, name) of every recorded migration: what ``MigrationRecorder`` reports.

        One plain query per scrape. ``MigrationRecorder.applied_migrations()`` would also
        list the database's tables every time (a fresh recorder does not remember that the
        table exists) and build a model instance per row; here the table's existence is
        remembered once seen (it is never dropped under a running server).
        """
        from django.db.migrations.recorder import MigrationRecorder

        if alias not in self._has_table:
            if not MigrationRecorder(conn).has_table():
                return set()  # nothing applied yet, as Django reports it
            self._has_table.add(alias)
        table = conn.ops.quote_name(MigrationRecorder.Migration._meta.db_table)
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT app, name FROM {table}")
            return {(str(app), str(name)) for app, name in cursor.fetchall()}

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

    def load_graphs(self) -> None:
        """Load every connection's migration graph and count now (a background read).

        Loading imports every migration module of the project: milliseconds for the
        sample, far more for NetBox's hundreds. Done here, a worker's first scrape does
        not pay for it. A database connection this has to open is closed again at once;
        one the thread already had (persistent connections) is left as it was.
        """
        from django.db import connections
        from django.db.backends.dummy.base import DatabaseWrapper

        counts = []
        for alias in connections.databases:
            conn = connections[alias]
            if isinstance(conn, DatabaseWrapper):
                continue
            was_open = conn.connection is not None
            try:
                nodes = self._nodes(alias)
                done = self._applied(alias, conn)
                counts.append((alias, len(done), len(nodes - done)))
            finally:
                if not was_open:  # ours: a connection the thread keeps is left to Django
                    conn.close()
        self._counted = (time.monotonic(), counts)
