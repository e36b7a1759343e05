"""netpoint-metrics: exact, bounded django-prometheus metrics under multi-process servers.

Importing the package installs the process-identity value class into prometheus-client
(see :mod:`netpoint_metrics.bootstrap`). It has to happen at import time: prometheus-client
binds every metric value to a value class when the metric is created, and django-prometheus
creates its metrics when it is imported, so anything later is too late.
"""

from __future__ import annotations

from netpoint_metrics.bootstrap import bootstrap

__version__ = "0.1.0"

bootstrap()
