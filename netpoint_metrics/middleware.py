"""NetPoint's request middleware: API counters and live in-progress/worker gauges.

Goes right after django-prometheus's ``PrometheusBeforeMiddleware``. It never lets a
metrics error break a request.
"""

from __future__ import annotations

import logging

from django.conf import settings

from netpoint_metrics import metrics

log = logging.getLogger("netpoint_metrics")


class NetpointMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.api_prefix = getattr(settings, "NETPOINT_API_PREFIX", "/api/")

    def __call__(self, request):
        try:
            metrics.WORKERS_UP.set(1)
            metrics.REQUESTS_IN_PROGRESS.inc()
        except Exception:
            log.exception("netpoint-metrics: gauge update failed")
        status = 500
        try:
            response = self.get_response(request)
            status = response.status_code
            return response
        finally:
            try:
                metrics.REQUESTS_IN_PROGRESS.dec()
                if request.path.startswith(self.api_prefix):
                    match = getattr(request, "resolver_match", None)
                    endpoint = (match.url_name if match else None) or "unknown"
                    metrics.API_REQUESTS.labels(endpoint, request.method, str(status)).inc()
            except Exception:
                log.exception("netpoint-metrics: API counter update failed")
