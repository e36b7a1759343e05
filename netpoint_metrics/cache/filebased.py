"""``django_prometheus.cache.backends.filebased.FileBasedCache``, cheaper per ``get``."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache.backends import filebased
from django_prometheus.cache.backends import filebased as dp_filebased

from netpoint_metrics.cache import Counters

log = logging.getLogger(__name__)

_COUNTERS = Counters("filebased")


class FileBasedCache(dp_filebased.FileBasedCache):
    """Same counters and results as django-prometheus's (including ``cached or default``)."""

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        total, hits, misses = _COUNTERS.values()
        total.inc(1)
        cached = filebased.FileBasedCache.get(self, key, default=None, version=version)
        if cached is not None:
            hits.inc(1)
        else:
            misses.inc(1)
        return cached or default
