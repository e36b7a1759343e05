"""NetBox's RQ worker with job metrics (only importable inside NetBox).

Run NetBox's worker as ``manage.py rqworker high default low --worker-class
netpoint_metrics.netbox_rq.NetBoxMetricsWorker``: it keeps ``NetBoxRQWorker``'s
self-healing registration and adds :class:`netpoint_metrics.rq_metrics.JobMetricsMixin`.
Given on the command line rather than as ``RQ["WORKER_CLASS"]``, NetBox does not warn
that its own worker class was replaced.
"""

from __future__ import annotations

import logging

from utilities.rqworker import NetBoxRQWorker

from netpoint_metrics.rq_metrics import JobMetricsMixin

log = logging.getLogger(__name__)


class NetBoxMetricsWorker(JobMetricsMixin, NetBoxRQWorker):
    """``NetBoxRQWorker`` plus the job counters, duration histogram and queue depth."""
