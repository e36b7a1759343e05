"""The Prometheus text format (0.0.4), byte for byte what prometheus-client's
``generate_latest`` writes, at a fraction of its cost per sample.

A scrape renders the same series every time: with 48 workers about a thousand samples
whose names and labels do not change between scrapes, only their values. ``generate_latest``
re-sorts, re-escapes and re-joins every label set on every scrape (a few microseconds per
sample, milliseconds per scrape); here the text before the value, ``name{labels} ``, is
made once per distinct (name, labels) with prometheus-client's own escaping functions and
then looked up, and values are formatted with its ``floatToGoString`` rules.

Only the default exposition is rendered here (no escaping scheme negotiated, no
OpenMetrics); callers fall back to prometheus-client for anything else. A test compares
the output with ``generate_latest`` on real and adversarial families.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

_INF = math.inf
_ESCAPING = openmetrics.UNDERSCORES
_escape_name = openmetrics.escape_metric_name
_escape_label_name = openmetrics.escape_label_name
_escape_value = openmetrics._escape
_ALLOWUTF8 = openmetrics.ALLOWUTF8

#: Cache bounds: far above any real scrape, low enough that label churn cannot grow it.
_MAX_PREFIXES = 100_000
_MAX_HEADERS = 10_000

#: What ``generate_latest`` passes as ``_escape``'s rune check for label values (none).
_NO_CHECK: Any = False
#: ``# HELP``/``# TYPE`` text, then the headers and names of OpenMetrics-only samples.
_Header = tuple[str, tuple[str, ...], tuple[str, ...]]

_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


class TextRenderer:
    """Renders metric families as ``generate_latest`` does; keep one per process.

    Thread-safe in the way the caches are used: a lost race only computes an entry twice.
    """

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._headers: dict[tuple[str, str, str], _Header] = {}

    def render(self, metrics: Iterable[Metric]) -> bytes:
        """The exposition text of ``metrics`` (``registry.collect()``), UTF-8 encoded."""
        if len(self._prefixes) > _MAX_PREFIXES:
            self._prefixes.clear()
        if len(self._headers) > _MAX_HEADERS:
            self._headers.clear()
        prefixes = self._prefixes
        output: list[str] = []
        append = output.append
        for metric in metrics:
            om_samples: dict[str, list[str]] | None = None
            try:
                header, om_heads, om_names = self._header(metric)
                append(header)
                for s in metric.samples:
                    name = s.name
                    if name in om_names:
                        # OpenMetrics-only samples go to gauges after the family, as stock.
                        if om_samples is None:
                            om_samples = {}
                        om_samples.setdefault(_OM_SUFFIXES[om_names.index(name)], []).append(
                            self._line(s)
                        )
                        continue
                    labels = s.labels
                    if labels:
                        key = (name, tuple(labels.items()))
                        prefix = prefixes.get(key)
                        if prefix is None:
                            prefix = prefixes[key] = _prefix(name, labels)
                    else:
                        prefix = prefixes.get((name, ()))
                        if prefix is None:
                            prefix = prefixes[(name, ())] = _prefix(name, labels)
                    value = s.value
                    # _go(value), inlined for its common case (~1,000 samples a scrape).
                    if value.__class__ is float and -_INF < value < 1e6:
                        text = repr(value)
                    else:
                        text = _go(value)
                    if s.timestamp is None:
                        append(f"{prefix}{text}\n")
                    else:
                        append(f"{prefix}{text} {int(float(s.timestamp) * 1000):d}\n")
            except Exception as exception:
                exception.args = (exception.args or ("",)) + (metric,)
                raise
            if om_samples:
                for suffix, lines in sorted(om_samples.items()):
                    append(om_heads[_OM_SUFFIXES.index(suffix)])
                    output.extend(lines)
        return "".join(output).encode("utf-8")

    def _header(self, metric: Metric) -> _Header:
        """``# HELP``/``# TYPE`` lines, the OpenMetrics-only sample names and their headers."""
        key = (metric.name, metric.type, metric.documentation)
        got = self._headers.get(key)
        if got is None:
            got = self._headers[key] = _header(*key)
        return got

    def _line(self, s: Sample) -> str:
        name, labels, value, timestamp = s[:4]
        prefix = _prefix(name, labels)
        if timestamp is None:
            return f"{prefix}{_go(value)}\n"
        return f"{prefix}{_go(value)} {int(float(timestamp) * 1000):d}\n"


def _header(
    name: str, mtype: str, documentation: str
) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    mname = name
    if mtype == "counter":
        mname = name + "_total"
    elif mtype == "info":
        mname = name + "_info"
    mtype = _TYPES.get(mtype, mtype)
    doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
    escaped = _escape_name(mname, _ESCAPING)
    text = f"# HELP {escaped} {doc}\n# TYPE {escaped} {mtype}\n"
    om_names = tuple(name + suffix for suffix in _OM_SUFFIXES)
    om_heads = tuple(
        f"# HELP {_escape_name(n, _ESCAPING)} {doc}\n# TYPE {_escape_name(n, _ESCAPING)} gauge\n"
        for n in om_names
    )
    return text, om_heads, om_names


#: Escaped metric names and ``name="value"`` label texts: few and shared by many series
#: (``method="GET"``, ``le="0.5"``), while a first scrape makes ~1,000 prefixes from them
#: (the name checks are regular expressions).
_metric_names: dict[str, str] = {}
_label_texts: dict[tuple[str, str], str] = {}


def _prefix(name: str, labels: dict[str, str]) -> str:
    """``name{k="v",...} `` exactly as ``generate_latest``'s ``sample_line`` writes it."""
    ename = _metric_names.get(name)
    if ename is None:
        if len(_metric_names) > _MAX_HEADERS:
            _metric_names.clear()
        ename = _metric_names[name] = _escape_name(name, _ESCAPING)
    if not labels:
        return f"{ename} "
    texts = _label_texts
    parts = []
    for pair in sorted(labels.items()):
        text = texts.get(pair)
        if text is None:
            if len(texts) > _MAX_PREFIXES:
                texts.clear()
            k, v = pair
            text = texts[pair] = (
                f'{_escape_label_name(k, _ESCAPING)}="{_escape_value(v, _ALLOWUTF8, _NO_CHECK)}"'
            )
        parts.append(text)
    return f"{ename}{{{','.join(parts)}}} "


def _go(d: object) -> str:
    """``floatToGoString``: ``repr`` for the common case, its own code for the rest."""
    if type(d) is float and -_INF < d < 1e6:
        # Finite (never +Inf/-Inf/NaN) and below 1e6: a negative or zero value is its
        # repr, a positive one has fewer than 7 digits before the dot, so never the
        # exponent rewrite.
        return repr(d)
    return str(floatToGoString(d))  # type: ignore[no-untyped-call, unused-ignore]


def probe_families() -> list[Metric]:
    """Families that exercise every branch of ``generate_latest``'s text format: every
    type, labels that need escaping, OpenMetrics-only samples, timestamps, special floats.
    """
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeHistogramMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        InfoMetricFamily,
        StateSetMetricFamily,
        SummaryMetricFamily,
    )

    c = CounterMetricFamily("p_requests", "Help with \\ and\nnewline", labels=["a", "b"])
    c.add_metric(["x", 'q"uo\\te\nnl'], 3, created=1_700_000_000.5)
    c.add_metric(["ünï", ""], 0.0, timestamp=1_700_000_001.25)
    g = GaugeMetricFamily("p_gauge", "g", labels=["z", "a"])
    for i, v in enumerate(
        [0.0, -0.0, 1.0, -1.5, 1e6, 999_999.5, 1_234_567.0, 1e-7, 1e22, -1e22, 123456789012.5]
    ):
        g.add_metric([str(i), "v"], v)
    for i, v in enumerate([math.inf, -math.inf, math.nan, 7, True]):
        g.add_metric([f"s{i}", "v"], v)
    plain = GaugeMetricFamily("p_plain", "no labels", value=42.0)
    h = HistogramMetricFamily("p_hist", "h", labels=["l"])
    h.add_metric(["1"], buckets=[("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)], sum_value=2.5)
    gh = GaugeHistogramMetricFamily("p_ghist", "gh", labels=["l"])
    gh.add_metric(["1"], buckets=[("1.0", 3.0), ("+Inf", 4.0)], gsum_value=7.0)
    s = SummaryMetricFamily("p_summary", "s", labels=["l"])
    s.add_metric(["1"], count_value=3, sum_value=1.5)
    info = InfoMetricFamily("p_build", "i", labels=["site"])
    info.add_metric(["a"], {"version": "1.2"})
    ss = StateSetMetricFamily("p_state", "ss", labels=["l"])
    ss.add_metric(["1"], {"on": True, "off": False})
    unknown = Metric("p_unknown", "u", "unknown")
    unknown.add_sample("p_unknown", {}, 1.0)
    out: list[Metric] = [c, g, plain, h, gh, s, info, ss, unknown]
    try:  # UTF-8 names (prometheus-client >= 0.22), written with underscores
        dotted = GaugeMetricFamily("p.dotted", "d", labels=["a.b"])
        dotted.add_metric(["x"], 1.0)
        out.append(dotted)
    except ValueError:
        pass
    return out


_matches: bool | None = None


def matches_stock() -> bool:
    """True if this renderer writes what the installed prometheus-client writes.

    Checked once per process on :func:`probe_families`; any difference (a prometheus-client
    that formats differently) means callers keep using ``generate_latest``.
    """
    global _matches
    if _matches is None:
        try:
            from prometheus_client.exposition import generate_latest

            class _Probe:
                def collect(self) -> list[Metric]:
                    return probe_families()

            _matches = TextRenderer().render(probe_families()) == generate_latest(_Probe())
        except Exception:
            log.debug("text renderer self-check failed", exc_info=True)
            _matches = False
        if not _matches:
            log.info("prometheus-client formats differently here; rendering with generate_latest")
    return _matches
