"""Turning the series table's value lists into metric families, in stock's order and shape.

This mirrors ``MultiProcessCollector._accumulate_metrics`` fed one aggregated value per
series in first-seen order, which gives the same families, samples and order. Per-sample
facts (bucket names, label dicts) are computed once per sample, not once per scrape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from netpoint_metrics.core.series import PID_MODES, Labels, SeriesTable

log = logging.getLogger(__name__)

Total = Callable[[list[float]], float]
SampleKey = tuple[str, Labels]

SUMMED_GAUGE_MODES = frozenset({"sum", "livesum"})
_MIN_MODES = frozenset({"min", "livemin"})
_MAX_MODES = frozenset({"max", "livemax"})


def exact_sum(vals: list[float]) -> float:
    """``math.fsum``, or the plain sum where fsum gives up (inf - inf, overflow on the way).

    A value file can hold anything a program wrote (or damage did); a scrape must not
    fail because of it, and stock's ``+=`` gives inf or nan for the same input.
    """
    try:
        return math.fsum(vals)
    except (OverflowError, ValueError):
        return sequential_sum(vals)


def sequential_sum(vals: Iterable[float]) -> float:
    """Add in order from 0.0, exactly as the stock collector's ``+=`` does."""
    acc = 0.0
    for v in vals:
        acc += v
    return acc


class FamilyBuilder:
    """Builds families from a series table; keeps per-sample facts between scrapes."""

    def __init__(self, exact: bool) -> None:
        #: math.fsum: order-independent exact sums; else stock's left-to-right ``+=``.
        self.total: Total = exact_sum if exact else sequential_sum
        self._sample_meta: dict[SampleKey, tuple[str, dict[str, str]]] = {}
        self._bucket_keys: dict[tuple[str, Labels, float], SampleKey] = {}

    def build(self, table: SeriesTable, order: list[int]) -> list[Metric]:
        """Families of the series in ``order`` (first-seen order is stock's output order)."""
        metrics, samples, buckets = self._aggregate(table, order)
        out = []
        for metric_name, metric in metrics.items():
            msamples = samples[metric_name]
            if metric.type == "histogram":
                self._cumulate(metric_name, msamples, buckets[metric_name])
            metric.samples = self._samples(msamples)
            out.append(metric)
        if len(self._sample_meta) > 8 * len(order) + 4096:
            self._sample_meta.clear()
            self._bucket_keys.clear()
        return out

    def _aggregate(
        self, table: SeriesTable, order: list[int]
    ) -> tuple[
        dict[str, Metric],
        dict[str, dict[Labels, dict[SampleKey, float]]],
        dict[str, dict[Labels, dict[float, float]]],
    ]:
        """One value per sample: series of different processes combined as stock does."""
        values, stamps, plans = table.values, table.stamps, table.plans
        total = self.total
        metrics: dict[str, Metric] = {}
        samples: dict[str, dict[Labels, dict[SampleKey, float]]] = {}
        buckets: dict[str, dict[Labels, dict[float, float]]] = {}
        for slot in order:
            plan = plans[slot]
            metric_name = plan.metric_name
            msamples = samples.get(metric_name)
            if msamples is None:
                metrics[metric_name] = Metric(metric_name, plan.help_text, plan.kind)
                msamples = samples[metric_name] = {}
                buckets[metric_name] = {}
            vals = values[slot]
            key = plan.key
            if plan.kind == "gauge":
                mode = plan.mode
                metrics[metric_name]._multiprocess_mode = mode  # type: ignore[attr-defined]
                group = msamples.get(plan.group)
                if group is None:
                    group = msamples[plan.group] = {}
                if mode in PID_MODES:
                    group[key] = vals[-1]
                    continue
                value = gauge_value(mode, vals, stamps[slot], total)
                if value is not None:
                    merge_gauge(group, key, value, mode, total)
            elif plan.le is not None:  # a histogram bucket: summed now, made cumulative later
                le = plan.le
                b = buckets[metric_name].get(plan.group)
                if b is None:
                    b = buckets[metric_name][plan.group] = {}
                b[le] = total(vals) if le not in b else total([b[le], *vals])
            else:
                group = msamples.get(plan.group)
                if group is None:
                    group = msamples[plan.group] = {}
                group[key] = total(vals) if key not in group else total([group[key], *vals])
        return metrics, samples, buckets

    def _cumulate(
        self,
        metric_name: str,
        msamples: dict[Labels, dict[SampleKey, float]],
        buckets: dict[Labels, dict[float, float]],
    ) -> None:
        """Histogram buckets as stock emits them: cumulative, sorted by bound, then _count."""
        for labels, bvals in buckets.items():
            acc = 0.0
            group = msamples.get(labels)
            if group is None:
                group = msamples[labels] = {}
            for bound, value in sorted(bvals.items()):
                acc += value
                group[self._bucket_key(metric_name, labels, bound)] = acc
            group[(metric_name + "_count", labels)] = acc

    def _samples(self, msamples: dict[Labels, dict[SampleKey, float]]) -> list[Sample]:
        meta = self._sample_meta
        make = Sample._make
        out = []
        for group in msamples.values():
            for key, value in group.items():
                m = meta.get(key)
                if m is None:
                    m = meta[key] = (key[0], dict(key[1]))
                out.append(make((m[0], m[1], value, None, None, None)))
        return out

    def _bucket_key(self, metric_name: str, labels: Labels, bound: float) -> SampleKey:
        k = (metric_name, labels, bound)
        key = self._bucket_keys.get(k)
        if key is None:
            key = self._bucket_keys[k] = (
                metric_name + "_bucket",
                labels + (("le", go_float(bound)),),
            )
        return key


_go_floats: dict[float, str] = {}


def go_float(bound: float) -> str:
    """``floatToGoString``, once per distinct bound in the process (few, and slow-ish)."""
    text = _go_floats.get(bound)
    if text is None:
        if len(_go_floats) > 10000:
            _go_floats.clear()
        text = _go_floats[bound] = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def gauge_value(mode: str, vals: list[float], stamps: list[float], total: Total) -> float | None:
    """One series' gauge value over processes; None for mostrecent with no timestamp yet."""
    if mode in SUMMED_GAUGE_MODES:
        return total(vals)
    if mode in _MIN_MODES:
        return min(vals)
    if mode in _MAX_MODES:
        return max(vals)
    # mostrecent: newest positive timestamp wins, first on ties
    best_t, value = 0.0, None
    for v, t in zip(vals, stamps):  # noqa: B905  (equal lengths by construction)
        if best_t < t:
            best_t, value = t, v
    return value


def merge_gauge(
    group: dict[SampleKey, float], key: SampleKey, value: float, mode: str, total: Total
) -> None:
    """Combine two series that stock would merge (same labels once ``pid`` is dropped)."""
    old = group.get(key)
    if old is None:
        group[key] = value
    elif mode in SUMMED_GAUGE_MODES:
        group[key] = total([old, value])
    elif mode in _MIN_MODES:
        group[key] = min(old, value)
    elif mode in _MAX_MODES:
        group[key] = max(old, value)
    else:
        group[key] = value
