"""The sample's background job: a device audit, run by ``netpoint-sample rqworker``.

Enqueued by ``POST /api/jobs/device-audit/``. A missing device makes the job fail (RQ
records the exception), which the job metrics count as failed.
"""

from __future__ import annotations

import logging
import time

from netpoint_metrics.sample.dcim.models import Device

log = logging.getLogger(__name__)

#: Upper bound of ``hold``: a slow audit for demonstrations and tests, never a stuck worker.
MAX_HOLD_SECONDS = 60.0


def audit_device(device_id: int, hold: float = 0.0) -> dict:
    """Check one device for what an operator would want fixed; ``hold`` slows it down."""
    device = Device.objects.get(pk=device_id)  # DoesNotExist: the job fails
    problems = []
    if device.site_id is None:
        problems.append("no site")
    if device.status == "offline":
        problems.append("offline")
    if hold > 0:
        time.sleep(min(float(hold), MAX_HOLD_SECONDS))
    return {"device": device.pk, "problems": problems}
