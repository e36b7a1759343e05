"""NetBox's own API counters, for projects that are not NetBox but want its dashboards.

Same names, types and labels as NetBox's ``netbox/netbox/metrics.py`` (prometheus-client
appends ``_total`` to a counter's samples, so the first two read
``rest_api_requests_total_by_method_total`` and
``rest_api_requests_total_by_view_method_total``, exactly as NetBox's do):

| family | type | labels | counted for |
|---|---|---|---|
| ``rest_api_requests_total_by_method`` | counter | method | every response under the API prefix |
| ``rest_api_requests_total_by_view_method`` | counter | view, method | the same, by URL name |
| ``graphql_api_requests_total`` | counter | (none) | JSON requests to the GraphQL path |

Use these two middlewares in place of django-prometheus's (first and last in
``MIDDLEWARE``, as usual). NetBox itself does not need them: it has its own, and running
both would register every family twice. The API prefix is ``NETPOINT_API_PREFIX``
(default ``/api/``), the GraphQL path ``NETPOINT_GRAPHQL_PATH`` (default ``/graphql/``),
both under ``BASE_PATH`` if the project has one. ``PROMETHEUS_METRIC_NAMESPACE`` applies, as
in NetBox.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django_prometheus import middleware
from django_prometheus.conf import NAMESPACE
from prometheus_client import Counter

from netpoint_metrics import instrumentation

log = logging.getLogger(__name__)


class Metrics(middleware.Metrics):
    """django-prometheus's request metrics plus NetBox's three API counters."""

    def register(self) -> None:
        super().register()
        self.rest_api_requests = self.register_metric(
            Counter,
            "rest_api_requests_total_by_method",
            "Count of total REST API requests by method",
            ["method"],
            namespace=NAMESPACE,
        )
        self.rest_api_requests_by_view_method = self.register_metric(
            Counter,
            "rest_api_requests_total_by_view_method",
            "Count of REST API requests by view & method",
            ["view", "method"],
            namespace=NAMESPACE,
        )
        self.graphql_api_requests = self.register_metric(
            Counter,
            "graphql_api_requests_total",
            "Count of total GraphQL API requests",
            namespace=NAMESPACE,
        )


def _under_base(path: str) -> str:
    base = str(getattr(settings, "BASE_PATH", "") or "").strip("/")
    path = "/" + path.strip("/") + "/"
    return f"/{base}{path}" if base else path


class PrometheusBeforeMiddleware(instrumentation.PrometheusBeforeMiddleware):
    metrics_cls = Metrics


class PrometheusAfterMiddleware(instrumentation.PrometheusAfterMiddleware):
    metrics_cls = Metrics

    def __init__(self, get_response=None):
        super().__init__(get_response)
        self.api_prefix = _under_base(getattr(settings, "NETPOINT_API_PREFIX", "/api/"))
        self.graphql_path = _under_base(getattr(settings, "NETPOINT_GRAPHQL_PATH", "/graphql/"))

    def add_response_updates(self, request, method, view, updates):
        """The API counters, in the base class's batch (fast path only).

        ``method`` and ``view`` are the labels NetBox's middleware gets from
        ``_method``/``_get_view_name``, already worked out by the base class.
        """
        try:
            path = request.path_info
            if path.startswith(self.api_prefix):
                m, value = self.metrics, instrumentation.child_value
                # Label order of rest_api_requests_by_view_method: view, method.
                updates += (
                    (value(m.rest_api_requests, (method,)), 1),
                    (value(m.rest_api_requests_by_view_method, (view, method)), 1),
                )
            elif path == self.graphql_path and request.content_type == "application/json":
                updates.append((self.metrics.graphql_api_requests._value, 1))
        except Exception:
            log.exception("netpoint-metrics: API counter update failed")

    def process_response(self, request, response):
        response = super().process_response(request, response)
        if self._fast:
            return response  # counted by add_response_updates, in the same batch
        try:
            path = request.path_info
            if path.startswith(self.api_prefix):
                method = self._method(request)
                view = self._get_view_name(request)
                self.label_metric(self.metrics.rest_api_requests, request, method=method).inc()
                self.label_metric(
                    self.metrics.rest_api_requests_by_view_method,
                    request,
                    method=method,
                    view=view,
                ).inc()
            elif path == self.graphql_path and request.content_type == "application/json":
                self.metrics.graphql_api_requests.inc()
        except Exception:
            log.exception("netpoint-metrics: API counter update failed")
        return response
