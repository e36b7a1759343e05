"""django-prometheus's request middlewares, with the same output at a fraction of the cost.

Drop-in replacements for ``django_prometheus.middleware.PrometheusBeforeMiddleware`` and
``PrometheusAfterMiddleware`` (they subclass them and use the very same metric objects from
``Metrics.get_instance()``), so every family, name, label and value is what
django-prometheus would emit for the same requests; ``tests/test_instrumentation_parity.py``
runs one request sequence through both and compares the collected output.

Why they are faster. Per request django-prometheus calls ``labels(**kwargs)`` about eleven
times (~5 us each: keyword validation, sorting, ``str()`` of every value, a lock, a dict
lookup) and goes through ``Counter.inc``/``Histogram.observe`` (observability checks, a
Python loop over up to 31 buckets). Here a labelled child is found with one dict lookup
in the metric's own ``_metrics`` table (creating it through ``labels()`` only the first
time, so ``remove()``/``clear()`` keep working), the update goes straight to the child's
value object, and a histogram bucket is found with ``bisect``. Headers are read from
``request.META`` instead of building ``request.headers``.

Subclasses that override django-prometheus's extension points (``label_metric``,
``_method``, ``_transport``, ``_get_view_name``) or bring a ``metrics_cls`` whose metrics have
other labels get django-prometheus's own code path unchanged: correctness first.

One deliberate difference: a request whose ``Content-Length`` is not a number is counted
with a body size of 0; django-prometheus raises ``ValueError`` there, turning the request
into a 500. Metrics code must never break a request.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from timeit import default_timer
from typing import Any

from django_prometheus import middleware as dp

log = logging.getLogger(__name__)

#: The clock django-prometheus uses (``django_prometheus.utils.Time``); tests replace it.
_now = default_timer

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"}
)
_INVALID_METHOD = "<invalid method>"
_UNNAMED_VIEW = "<unnamed view>"

# The label names our fast path assumes, per attribute of django-prometheus's ``Metrics``.
_EXPECTED_LABELS: dict[str, tuple[str, ...]] = {
    "requests_total": (),
    "responses_total": (),
    "requests_latency_before": (),
    "requests_unknown_latency_before": (),
    "requests_latency_by_view_method": ("view", "method"),
    "requests_unknown_latency": (),
    "requests_ajax": (),
    "requests_by_method": ("method",),
    "requests_by_transport": ("transport",),
    "requests_by_view_transport_method": ("view", "transport", "method"),
    "requests_body_bytes": (),
    "responses_by_templatename": ("templatename",),
    "responses_by_status": ("status",),
    "responses_by_status_view_method": ("status", "view", "method"),
    "responses_body_bytes": (),
    "responses_by_charset": ("charset",),
    "responses_streaming": (),
    "exceptions_by_type": ("type",),
    "exceptions_by_view": ("view",),
}


def _child(metric: Any, key: tuple[str, ...]) -> Any:
    """The labelled child for ``key`` (label values in label-name order, all ``str``)."""
    child = metric._metrics.get(key)
    if child is None:
        child = metric.labels(*key)
    return child


def _inc(metric: Any, key: tuple[str, ...]) -> None:
    child = metric._metrics.get(key)
    if child is None:
        child = metric.labels(*key)
    child._value.inc(1)


#: For subclasses adding labelled counters of their own (NetBox's API counters).
inc_child = _inc


def _observe(hist: Any, amount: float) -> None:
    """``Histogram.observe`` without the checks and the bucket loop (same values)."""
    hist._sum.inc(amount)
    i = bisect_left(hist._upper_bounds, amount)
    if i < len(hist._buckets):
        hist._buckets[i].inc(1)


def _fast_ok(metrics: Any) -> bool:
    for attr, labels in _EXPECTED_LABELS.items():
        metric = getattr(metrics, attr, None)
        if metric is None or tuple(metric._labelnames) != labels:
            return False
        if labels and not hasattr(metric, "_metrics"):
            return False
    return True


class PrometheusBeforeMiddleware(dp.PrometheusBeforeMiddleware):
    """Counts requests and whole-stack latency; put it first in ``MIDDLEWARE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast = _fast_ok(self.metrics)
        if not self._fast:
            log.info("netpoint-metrics: custom django-prometheus metrics; using its own code path")

    def process_request(self, request: Any) -> None:
        if not self._fast:
            return super().process_request(request)
        self.metrics.requests_total._value.inc(1)
        request.prometheus_before_middleware_event = _now()
        return None

    def process_response(self, request: Any, response: Any) -> Any:
        if not self._fast:
            return super().process_response(request, response)
        m = self.metrics
        m.responses_total._value.inc(1)
        try:
            started = request.prometheus_before_middleware_event
        except AttributeError:
            m.requests_unknown_latency_before._value.inc(1)
        else:
            _observe(m.requests_latency_before, _now() - started)
        return response


class PrometheusAfterMiddleware(dp.PrometheusAfterMiddleware):
    """Counts by method, view, status, sizes and view latency; put it last in ``MIDDLEWARE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        base = dp.PrometheusAfterMiddleware
        self._fast = (
            cls.label_metric is base.label_metric
            and cls._method is base._method
            and cls._transport is base._transport
            and cls._get_view_name is base._get_view_name
            and _fast_ok(self.metrics)
        )
        if not self._fast:
            log.info(
                "netpoint-metrics: customised django-prometheus middleware; using its code path"
            )

    def process_request(self, request: Any) -> None:
        if not self._fast:
            return super().process_request(request)
        m = self.metrics
        method = request.method
        if method not in _METHODS:
            method = _INVALID_METHOD
        transport = "https" if request.is_secure() else "http"
        _inc(m.requests_by_method, (method,))
        _inc(m.requests_by_transport, (transport,))
        meta = request.META
        if meta.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest":
            m.requests_ajax._value.inc(1)
        try:
            content_length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            content_length = 0
        _observe(m.requests_body_bytes, content_length)
        request.prometheus_after_middleware_event = _now()
        return None

    def process_view(
        self, request: Any, view_func: Any, *view_args: Any, **view_kwargs: Any
    ) -> None:
        if not self._fast:
            return super().process_view(request, view_func, *view_args, **view_kwargs)
        match = getattr(request, "resolver_match", _UNNAMED_VIEW)
        if match is not _UNNAMED_VIEW:
            method = request.method
            if method not in _METHODS:
                method = _INVALID_METHOD
            transport = "https" if request.is_secure() else "http"
            name = match.view_name or _UNNAMED_VIEW
            # Label order of requests_by_view_transport_method: view, transport, method.
            _inc(self.metrics.requests_by_view_transport_method, (name, transport, method))
        return None

    def process_template_response(self, request: Any, response: Any) -> Any:
        if not self._fast:
            return super().process_template_response(request, response)
        if hasattr(response, "template_name"):
            _inc(self.metrics.responses_by_templatename, (str(response.template_name),))
        return response

    @staticmethod
    def _view_name(request: Any) -> str:
        match = getattr(request, "resolver_match", None)
        if match is not None and match.view_name is not None:
            return str(match.view_name)
        return _UNNAMED_VIEW

    def process_response(self, request: Any, response: Any) -> Any:
        if not self._fast:
            return super().process_response(request, response)
        m = self.metrics
        raw_method = request.method
        method = raw_method if raw_method in _METHODS else _INVALID_METHOD
        name = self._view_name(request)
        status = str(response.status_code)
        _inc(m.responses_by_status, (status,))
        # Label order of responses_by_status_view_method: status, view, method.
        _inc(m.responses_by_status_view_method, (status, name, method))
        if hasattr(response, "charset"):
            _inc(m.responses_by_charset, (str(response.charset),))
        if getattr(response, "streaming", False):
            m.responses_streaming._value.inc(1)
        if hasattr(response, "content"):
            _observe(m.responses_body_bytes, len(response.content))
        try:
            started = request.prometheus_after_middleware_event
        except AttributeError:
            m.requests_unknown_latency._value.inc(1)
        else:
            # django-prometheus labels this one with the raw request method.
            hist = _child(m.requests_latency_by_view_method, (name, str(raw_method)))
            _observe(hist, _now() - started)
        return response

    def process_exception(self, request: Any, exception: Any) -> None:
        if not self._fast:
            return super().process_exception(request, exception)
        m = self.metrics
        _inc(m.exceptions_by_type, (type(exception).__name__,))
        match = getattr(request, "resolver_match", _UNNAMED_VIEW)
        if match is not _UNNAMED_VIEW:
            _inc(m.exceptions_by_view, (match.view_name or _UNNAMED_VIEW,))
        try:
            started = request.prometheus_after_middleware_event
        except AttributeError:
            m.requests_unknown_latency._value.inc(1)
        else:
            hist = _child(
                m.requests_latency_by_view_method, (self._view_name(request), str(request.method))
            )
            _observe(hist, _now() - started)
        return None
