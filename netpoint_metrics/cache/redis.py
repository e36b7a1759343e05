"""``django_prometheus.cache.backends.redis.RedisCache``, cheaper per ``get``."""

from __future__ import annotations

import logging
from typing import Any

from django_prometheus.cache.backends import redis as dp_redis
from django_redis import cache, exceptions

from netpoint_metrics.cache import Counters

log = logging.getLogger(__name__)

_COUNTERS = Counters("redis")


class RedisCache(dp_redis.RedisCache):
    """Same counters, results and error handling as django-prometheus's."""

    @cache.omit_exception
    def get(self, key: Any, default: Any = None, version: Any = None, client: Any = None) -> Any:
        total, hits, misses = _COUNTERS.values()
        try:
            total.inc(1)
            cached = self.client.get(key, default=None, version=version, client=client)
        except exceptions.ConnectionInterrupted as e:
            _COUNTERS.failed()
            if self._ignore_exceptions:
                if self._log_ignored_exceptions:
                    self.logger.error(str(e))
                return default
            raise
        if cached is not None:
            hits.inc(1)
            return cached
        misses.inc(1)
        return default
