"""``/metrics``: prometheus-client's Django view, fed by the directory collector.

Content negotiation (OpenMetrics when asked for, gzip when accepted, ``name[]`` filters)
is prometheus-client's own ``PrometheusDjangoView``; we choose the registry: the
aggregate of every process in the multiprocess directory when there is one, this process's
registry otherwise. One registry per process, because the collector's cache is what keeps
scrapes cheap.

The answer is baked as prometheus-client's view bakes it (its ``choose_encoder`` and
``gzip_accepted``), except that the common case, the plain text format Prometheus asks for
by default, is written by :mod:`netpoint_metrics.core.render`: the same bytes as
``generate_latest`` at a fraction of its cost (checked once per process; it steps aside if
the installed prometheus-client formats differently). OpenMetrics and negotiated escaping
schemes are prometheus-client's own encoders.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading

from django.http import Http404, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.django import PrometheusDjangoView
from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted

from netpoint_metrics.bootstrap import metrics_enabled
from netpoint_metrics.core import access, identity, render
from netpoint_metrics.core.collect import DirectoryCollector
from netpoint_metrics.core.lock import LockTimeout
from netpoint_metrics.core.scrape import ScrapeCollector
from netpoint_metrics.migration_metrics import MigrationCollector
from netpoint_metrics.registry import new_registry

log = logging.getLogger(__name__)

#: Seconds between folds a scrape may do itself (servers fold on their own events).
FOLD_EVERY = 15.0

_lock = threading.Lock()
_registry: (
    tuple[int, str, CollectorRegistry, DirectoryCollector, MigrationCollector] | None
) = None
_single_migrations: MigrationCollector | None = None
_renderer = render.TextRenderer()
#: Prometheus always asks for gzip. prometheus-client compresses at level 9, which costs
#: about five times level 1's time for a ~20% smaller body: milliseconds of every scrape,
#: for bytes that cross a LAN. The decompressed text is the same.
GZIP_LEVEL = 1


def get_registry() -> CollectorRegistry:
    global _registry, _single_migrations
    path = identity.multiproc_dir()
    with _lock:
        if not path or identity.installed() != "multiprocess":
            if _single_migrations is None:
                _single_migrations = MigrationCollector()
                REGISTRY.register(_single_migrations)
            return REGISTRY
        if _registry is None or _registry[:2] != (os.getpid(), path):
            registry = new_registry()
            directory = DirectoryCollector(path)
            # The wrapper adds self-metrics and per-process metrics, and runs the
            # opportunistic folds itself so that they are counted like the servers' own.
            registry.register(ScrapeCollector(directory, fold_every=FOLD_EVERY))
            migrations = MigrationCollector()
            registry.register(migrations)
            _registry = (os.getpid(), path, registry, directory, migrations)
        return _registry[2]


def _current() -> (
    tuple[int, str, CollectorRegistry, DirectoryCollector, MigrationCollector] | None
):
    """This process's multiprocess registry and its collectors, made if needed; None when
    metrics are off or values are kept in memory."""
    if not metrics_enabled():
        return None
    get_registry()
    current = _registry
    return current if current is not None and current[0] == os.getpid() else None


def directory_collector() -> DirectoryCollector | None:
    """This process's directory collector (the one ``/metrics`` reads through), if any."""
    current = _current()
    return current[3] if current is not None else None


def background_collect(collector: DirectoryCollector) -> bool:
    """Read the directory (giving way to any scrape) and render it, output discarded: what
    a worker's background read does, so the collector's caches and the renderer's label texts are
    warm. False if it gave way."""
    metrics = collector.collect_in_background()
    if metrics is None:
        return False
    if render.matches_stock():
        _renderer.render(metrics)
    return True


def migration_collector() -> MigrationCollector | None:
    """This process's migration gauges collector (multiprocess mode only), if any."""
    current = _current()
    return current[4] if current is not None else None


def access_denied(request) -> HttpResponse | None:
    """The shared access policy (:mod:`netpoint_metrics.core.access`); None: serve it."""
    decision = access.policy().check(
        request.META.get("HTTP_AUTHORIZATION"), request.META.get("REMOTE_ADDR")
    )
    if decision.allowed:
        return None
    response = HttpResponse(
        f"{decision.reason}\n", status=decision.status, content_type="text/plain"
    )
    for name, value in decision.headers:
        response[name] = value
    return response


class MetricsView(PrometheusDjangoView):
    """404 unless ``METRICS_ENABLED``; 503, never a wrong answer, if the directory fails."""

    def get(self, request, *args, **kwargs):
        if not metrics_enabled():
            raise Http404("metrics are disabled")
        if (denied := access_denied(request)) is not None:
            return denied
        self.registry = get_registry()
        try:
            return self._bake(request)
        except LockTimeout as exc:
            log.warning("netpoint-metrics: %s", exc)
            return HttpResponse("metrics directory busy\n", status=503, content_type="text/plain")
        except OSError as exc:
            log.error("netpoint-metrics: cannot read the metrics directory: %s", exc)
            return HttpResponse(
                f"metrics directory unreadable: {exc.strerror or exc}\n",
                status=503,
                content_type="text/plain",
            )

    def _bake(self, request) -> HttpResponse:
        """What ``PrometheusDjangoView.get`` answers, with three differences: the default
        text format is rendered by :mod:`~netpoint_metrics.core.render` (same bytes,
        cheaper), gzip runs at :data:`GZIP_LEVEL`, and every ``name[]`` value filters
        (prometheus-client's view passes Django's ``request.GET["name[]"]``, the last value
        as one string, which matches nothing).
        """
        encoder, content_type = choose_encoder(request.headers.get("Accept"))
        registry = self.registry
        if "name[]" in request.GET:
            registry = registry.restricted_registry(request.GET.getlist("name[]"))
        if encoder is generate_latest and render.matches_stock():
            output = _renderer.render(registry.collect())
        else:
            output = encoder(registry)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(request.headers.get("Accept-Encoding")):
            output = gzip.compress(output, compresslevel=GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        return HttpResponse(output, status=200, headers=headers)

    def options(self, request, *args, **kwargs):
        if not metrics_enabled():
            raise Http404("metrics are disabled")
        if (denied := access_denied(request)) is not None:
            return denied
        return super().options(request, *args, **kwargs)
