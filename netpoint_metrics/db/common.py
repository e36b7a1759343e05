"""The instrumented cursor and connection code shared by our database backends.

django-prometheus's ``DatabaseWrapperMixin.create_cursor`` builds a brand-new cursor
*class* (``ExportingCursorWrapper``) for every cursor, that is for every query Django
runs, and each query then goes through two ``labels(**kwargs)`` calls, a ``Timer`` and an
exception-counting context manager. Here the wrapper class is built once per
(cursor class, alias, vendor) and cached, labelled children are found with one dict lookup
in the metric's own table, and the timing is inline. The metric objects are
django-prometheus's own (``django_prometheus.db.metrics``), so the output is the same:
the same statement counts, the duration of each ``execute``/``executemany`` observed in
``django_db_query_duration_seconds`` (clamped at 0 as ``Timer`` does), and any exception
leaving it counted in ``django_db_errors_total`` by type name.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from timeit import default_timer
from typing import Any

from django_prometheus.db.metrics import (
    connection_errors_total,
    connections_total,
    errors_total,
    execute_many_total,
    execute_total,
    query_duration_seconds,
)

log = logging.getLogger(__name__)

#: The clock prometheus-client's ``Timer`` uses; tests replace it.
_now = default_timer

_classes: dict[tuple[type, str, str], type] = {}
_classes_lock = threading.Lock()


def _child(metric: Any, key: tuple[str, ...]) -> Any:
    child = metric._metrics.get(key)
    if child is None:
        child = metric.labels(*key)
    return child


def _observe(hist: Any, amount: float) -> None:
    hist._sum.inc(amount)
    i = bisect_left(hist._upper_bounds, amount)
    if i < len(hist._buckets):
        hist._buckets[i].inc(1)


def cursor_wrapper(cursor_class: type, alias: str, vendor: str) -> type:
    """The instrumented subclass of ``cursor_class`` for one connection alias (cached)."""
    key = (cursor_class, alias, vendor)
    cls = _classes.get(key)
    if cls is None:
        with _classes_lock:
            cls = _classes.get(key)
            if cls is None:
                cls = _classes[key] = _make_wrapper(cursor_class, str(alias), str(vendor))
    return cls


def _make_wrapper(cursor_class: type, alias: str, vendor: str) -> type:
    labels = (alias, vendor)

    class CursorWrapper(cursor_class):  # type: ignore[misc,valid-type]
        """Counts and times statements like django-prometheus's ``ExportingCursorWrapper``."""

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            _child(execute_total, labels)._value.inc(1)
            start = _now()
            try:
                return super().execute(*args, **kwargs)
            except BaseException as exc:
                _child(errors_total, (alias, vendor, type(exc).__name__))._value.inc(1)
                raise
            finally:
                _observe(_child(query_duration_seconds, labels), max(_now() - start, 0))

        def executemany(self, query: Any, param_list: Any, *args: Any, **kwargs: Any) -> Any:
            n = len(param_list)
            execute_total.labels(alias, vendor).inc(n)
            execute_many_total.labels(alias, vendor).inc(n)
            start = _now()
            try:
                return super().executemany(query, param_list, *args, **kwargs)
            except BaseException as exc:
                _child(errors_total, (alias, vendor, type(exc).__name__))._value.inc(1)
                raise
            finally:
                _observe(_child(query_duration_seconds, labels), max(_now() - start, 0))

    CursorWrapper.__qualname__ = f"CursorWrapper[{cursor_class.__name__}]"
    return CursorWrapper


class DatabaseWrapperMixin:
    """Counts new connections (and failures) and hands out instrumented cursors."""

    alias: str
    vendor: str
    connection: Any
    CURSOR_CLASS: type

    def get_new_connection(self, *args: Any, **kwargs: Any) -> Any:
        _child(connections_total, (str(self.alias), str(self.vendor)))._value.inc(1)
        try:
            return super().get_new_connection(*args, **kwargs)  # type: ignore[misc]
        except Exception:
            connection_errors_total.labels(self.alias, self.vendor).inc()
            raise

    def create_cursor(self, name: Any = None) -> Any:
        return self.connection.cursor(
            factory=cursor_wrapper(self.CURSOR_CLASS, self.alias, self.vendor)
        )
