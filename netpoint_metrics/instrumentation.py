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
``request.META`` instead of building ``request.headers``. Each hook gathers its updates and
hands them to the value class's ``inc_many`` (one lock round-trip for all of them, see
:mod:`netpoint_metrics.core.values`); the request's method and transport are worked out once,
in ``process_request``, and a response's charset and content are read once. In a sync chain
both middlewares are called directly instead of through Django's ``MiddlewareMixin.__call__``.

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
from collections.abc import Callable, Iterable
from timeit import default_timer
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.core.signals import setting_changed
from django.http.response import HttpResponseBase
from django_prometheus import middleware as dp

log = logging.getLogger(__name__)

#: The clock django-prometheus uses (``django_prometheus.utils.Time``); tests replace it.
_now = default_timer

_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"}
)
_INVALID_METHOD = "<invalid method>"
_UNNAMED_VIEW = "<unnamed view>"
#: Where ``process_request`` leaves ``(method label, transport label)`` for later hooks.
_FACTS = "_netpoint_method_transport"
_MISSING = object()

#: A list of ``(value object, amount)`` pairs to add, in one call of the value class.
Updates = list[tuple[Any, float]]

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


def child_value(metric: Any, key: tuple[str, ...]) -> Any:
    """The value object of the labelled child for ``key``: what ``inc`` ends in."""
    child = metric._metrics.get(key)
    if child is None:
        child = metric.labels(*key)
    return child._value


def _observe(hist: Any, amount: float) -> None:
    """``Histogram.observe`` without the checks and the bucket loop (same values)."""
    hist._sum.inc(amount)
    i = bisect_left(hist._upper_bounds, amount)
    if i < len(hist._buckets):
        hist._buckets[i].inc(1)


def _add_observation(updates: Updates, hist: Any, amount: float) -> None:
    """What :func:`_observe` would add, appended to ``updates`` instead (same values)."""
    updates.append((hist._sum, amount))
    i = bisect_left(hist._upper_bounds, amount)
    if i < len(hist._buckets):
        updates.append((hist._buckets[i], 1))


#: Django's own ``charset`` property, whose answer :func:`_charset_label` may remember.
_DJANGO_CHARSET = HttpResponseBase.__dict__.get("charset")
#: ``str(response.charset)`` by Content-Type header, for responses without an explicit one.
_charsets: dict[Any, str] = {}
_CHARSETS_MAX = 64


def _charset_label(response: Any) -> str | None:
    """``str(response.charset)``, or None for a response without ``charset``.

    Django's property runs a regex over the Content-Type header on every call and, when
    it finds no charset there (``application/json``), reads ``DEFAULT_CHARSET`` through the
    lazy settings: ~1.5 us. For a response that has Django's very property and no explicit
    charset, the answer depends only on that header and ``DEFAULT_CHARSET``, so it is
    remembered per header value (a site sends a handful; bounded all the same) and forgotten
    when ``DEFAULT_CHARSET`` changes. Anything else asks the property, once.
    """
    if (
        getattr(type(response), "charset", None) is _DJANGO_CHARSET
        and getattr(response, "_charset", _MISSING) is None
    ):
        content_type = response.headers.get("Content-Type")
        label = _charsets.get(content_type)
        if label is None:
            label = str(response.charset)
            if len(_charsets) < _CHARSETS_MAX:
                _charsets[content_type] = label
        return label
    charset = getattr(response, "charset", _MISSING)
    return None if charset is _MISSING else str(charset)


def _forget_charsets(*, setting: str, **kwargs: Any) -> None:
    if setting == "DEFAULT_CHARSET":
        _charsets.clear()


setting_changed.connect(_forget_charsets, dispatch_uid="netpoint_metrics.instrumentation")


def _inc_each(updates: Iterable[tuple[Any, float]]) -> None:
    """For value classes without ``inc_many`` (prometheus-client's own): one ``inc`` each."""
    for value, amount in updates:
        value.inc(amount)


def _batch_for(metrics: Any) -> Callable[[Updates], None]:
    """The ``inc_many`` of the value class the metrics write through, else :func:`_inc_each`.

    Our ``inc_many`` takes any value object (those it does not own go through their own
    ``inc``), so one chosen here is right even if some children were made by another class.
    """
    value = getattr(getattr(metrics, "requests_total", None), "_value", None)
    batch = getattr(type(value), "inc_many", None)
    return batch if callable(batch) else _inc_each


def _method_label(request: Any) -> str:
    method = request.method
    return method if method in _METHODS else _INVALID_METHOD


def _facts(request: Any) -> tuple[str, str]:
    """``(method, transport)`` labels as django-prometheus's ``_method``/``_transport``.

    ``is_secure()`` reads settings through Django's lazy settings object (~0.5 us); the
    answer does not change within a request, so ``process_request`` works both out once.
    """
    facts = getattr(request, _FACTS, None)
    if facts is None:  # a hook called without our process_request (tests, other code)
        facts = (_method_label(request), "https" if request.is_secure() else "http")
    return facts  # type: ignore[no-any-return]


def _fast_ok(metrics: Any) -> bool:
    for attr, labels in _EXPECTED_LABELS.items():
        metric = getattr(metrics, attr, None)
        if metric is None or tuple(metric._labelnames) != labels:
            return False
        if labels and not hasattr(metric, "_metrics"):
            return False
    return True


class _DirectCall:
    """``__call__`` for a sync chain without ``MiddlewareMixin``'s per-request checks.

    Django's ``MiddlewareMixin.__call__`` asks, on every request, whether it runs async
    and whether the instance has ``process_request``/``process_response`` (ours always
    do). In a sync chain this calls the two hooks directly, in the same order and with the
    same short-circuit; an async chain (the next handler is a coroutine function: Django
    4.2 marks the middleware itself, 5.x sets ``async_mode``; we ask the same question
    once, at start) goes through the mixin unchanged.
    """

    get_response: Callable[[Any], Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_chain = not iscoroutinefunction(self.get_response)

    def __call__(self, request: Any) -> Any:
        if not self._sync_chain:
            return super().__call__(request)  # type: ignore[misc]  # the mixin's __acall__
        response = self.process_request(request) or self.get_response(request)  # type: ignore[attr-defined]
        return self.process_response(request, response)  # type: ignore[attr-defined]


class PrometheusBeforeMiddleware(_DirectCall, dp.PrometheusBeforeMiddleware):
    """Counts requests and whole-stack latency; put it first in ``MIDDLEWARE``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast = _fast_ok(self.metrics)
        self._inc_many = _batch_for(self.metrics)
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
        updates: Updates = [(m.responses_total._value, 1)]
        try:
            started = request.prometheus_before_middleware_event
        except AttributeError:
            updates.append((m.requests_unknown_latency_before._value, 1))
        else:
            _add_observation(updates, m.requests_latency_before, _now() - started)
        self._inc_many(updates)
        return response


class PrometheusAfterMiddleware(_DirectCall, dp.PrometheusAfterMiddleware):
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
        self._inc_many = _batch_for(self.metrics)
        if not self._fast:
            log.info(
                "netpoint-metrics: customised django-prometheus middleware; using its code path"
            )

    def process_request(self, request: Any) -> None:
        if not self._fast:
            return super().process_request(request)
        m = self.metrics
        method = _method_label(request)
        transport = "https" if request.is_secure() else "http"
        setattr(request, _FACTS, (method, transport))
        updates: Updates = [
            (child_value(m.requests_by_method, (method,)), 1),
            (child_value(m.requests_by_transport, (transport,)), 1),
        ]
        meta = request.META
        if meta.get("HTTP_X_REQUESTED_WITH") == "XMLHttpRequest":
            updates.append((m.requests_ajax._value, 1))
        try:
            content_length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            content_length = 0
        _add_observation(updates, m.requests_body_bytes, content_length)
        self._inc_many(updates)
        request.prometheus_after_middleware_event = _now()
        return None

    def process_view(
        self, request: Any, view_func: Any, *view_args: Any, **view_kwargs: Any
    ) -> None:
        if not self._fast:
            return super().process_view(request, view_func, *view_args, **view_kwargs)
        match = getattr(request, "resolver_match", _UNNAMED_VIEW)
        if match is not _UNNAMED_VIEW:
            method, transport = _facts(request)
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
        method = _facts(request)[0]
        name = self._view_name(request)
        status = str(response.status_code)
        updates: Updates = [
            (child_value(m.responses_by_status, (status,)), 1),
            # Label order of responses_by_status_view_method: status, view, method.
            (child_value(m.responses_by_status_view_method, (status, name, method)), 1),
        ]
        charset = _charset_label(response)
        if charset is not None:
            updates.append((child_value(m.responses_by_charset, (charset,)), 1))
        if getattr(response, "streaming", False):
            updates.append((m.responses_streaming._value, 1))
        content = getattr(response, "content", _MISSING)  # read once: it joins the chunks
        if content is not _MISSING:
            _add_observation(updates, m.responses_body_bytes, len(content))
        try:
            started = request.prometheus_after_middleware_event
        except AttributeError:
            updates.append((m.requests_unknown_latency._value, 1))
        else:
            # django-prometheus labels this one with the raw request method.
            hist = _child(m.requests_latency_by_view_method, (name, str(request.method)))
            _add_observation(updates, hist, _now() - started)
        self.add_response_updates(request, method, name, updates)
        self._inc_many(updates)
        return response

    def add_response_updates(self, request: Any, method: str, view: str, updates: Updates) -> None:
        """Hook for subclasses with counters of their own (NetBox's): append to ``updates``.

        Called by the fast ``process_response`` with the labels it already worked out
        (``method`` as django-prometheus's ``_method``, ``view`` as ``_get_view_name``), so
        the extra counters share its lock round-trip and cost no second look-up.
        """

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
