"""``/metrics``: prometheus-client's Django view, fed by the directory collector.

Content negotiation (OpenMetrics when asked for, gzip when accepted, ``name[]`` filters)
is prometheus-client's own ``PrometheusDjangoView``; we only choose the registry: the
aggregate of every process in the multiprocess directory when there is one, this process's
registry otherwise. One registry per process, because the collector's cache is what keeps
scrapes cheap.
"""

from __future__ import annotations

import logging
import os
import threading

from django.conf import settings
from django.http import Http404, HttpResponse
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.django import PrometheusDjangoView

from netpoint_metrics.core import identity
from netpoint_metrics.core.collect import DirectoryCollector
from netpoint_metrics.core.lock import LockTimeout
from netpoint_metrics.core.scrape import ScrapeCollector

log = logging.getLogger("netpoint_metrics")

#: Seconds between folds a scrape may do itself (servers fold on their own events).
FOLD_EVERY = 15.0

_lock = threading.Lock()
_registry: tuple[int, str, CollectorRegistry] | None = None


def get_registry() -> CollectorRegistry:
    global _registry
    path = identity.multiproc_dir()
    if not path or identity.installed() != "multiprocess":
        return REGISTRY
    with _lock:
        if _registry is None or _registry[:2] != (os.getpid(), path):
            registry = CollectorRegistry(auto_describe=False)
            # The wrapper adds self-metrics and per-process metrics, and runs the
            # opportunistic folds itself so that they are counted like the servers' own.
            registry.register(ScrapeCollector(DirectoryCollector(path), fold_every=FOLD_EVERY))
            _registry = (os.getpid(), path, registry)
        return _registry[2]


class MetricsView(PrometheusDjangoView):
    """404 unless ``METRICS_ENABLED``; 503, never a wrong answer, if the directory fails."""

    def get(self, request, *args, **kwargs):
        if not getattr(settings, "METRICS_ENABLED", False):
            raise Http404("metrics are disabled")
        self.registry = get_registry()
        try:
            return super().get(request, *args, **kwargs)
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

    def options(self, request, *args, **kwargs):
        if not getattr(settings, "METRICS_ENABLED", False):
            raise Http404("metrics are disabled")
        return super().options(request, *args, **kwargs)
