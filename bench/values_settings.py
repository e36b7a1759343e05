"""The sample settings with netpoint_metrics' database backend (bench/per_request.py "ours").

The sample settings already use :mod:`netpoint_metrics.instrumentation`'s middlewares; this
adds the cheaper ``django_db_*`` instrumentation (:mod:`netpoint_metrics.db`).
"""

from netpoint_metrics.sample.settings import *  # noqa: F403
from netpoint_metrics.sample.settings import DATABASES, METRICS_ENABLED

if METRICS_ENABLED:
    for _db in DATABASES.values():
        _db["ENGINE"] = _db["ENGINE"].replace(
            "django_prometheus.db.backends.", "netpoint_metrics.db.backends."
        )
