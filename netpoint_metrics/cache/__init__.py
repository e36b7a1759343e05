"""django-prometheus's cache backends, with the same counters for less per ``get``.

django-prometheus's backends call ``labels(backend=...)`` (keyword arguments, validation,
a lock) two times on every ``get``. These subclasses keep the same metric objects
(``django_prometheus.cache.metrics``) and the same behaviour, found once per process as a
plain dict lookup in each metric's own table. Nothing is created at import: a labelled child
opens a value file, which only a process that uses the cache should do.
"""

from __future__ import annotations

import logging
from typing import Any

from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)

log = logging.getLogger(__name__)


class Counters:
    """The cache counters' children for one ``backend`` label, made on first use.

    The failure counter's child is made only when a failure happens: a series django-
    prometheus would not have (it labels that counter only on a failure) must not appear.
    """

    __slots__ = ("backend", "_values")

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._values: tuple[Any, Any, Any] | None = None

    def values(self) -> tuple[Any, Any, Any]:
        """The value objects of (get, hits, misses): ``.inc(1)`` on each."""
        got = self._values
        if got is None:
            key = (self.backend,)
            got = self._values = (
                _child(django_cache_get_total, key)._value,
                _child(django_cache_hits_total, key)._value,
                _child(django_cache_misses_total, key)._value,
            )
        return got

    def failed(self) -> None:
        _child(django_cache_get_fail_total, (self.backend,))._value.inc(1)


def _child(metric: Any, key: tuple[str, ...]) -> Any:
    child = metric._metrics.get(key)
    if child is None:
        child = metric.labels(*key)
    return child
