"""The sample site with ``X-Bench-*`` response headers: which worker answered, and how
long its directory collector took.

The benchmark uses them to tell a worker's first scrape (cold) from its later ones (warm)
when 48 workers share one listening socket and the kernel picks who accepts, and to split
a scrape's time into collecting and everything else (Django, rendering, HTTP).

With ``NETPOINT_BENCH_PHASES=1`` (``bench/scrape_overhead.py``) a ``/metrics`` response
also carries ``X-Bench-Phases``: milliseconds spent in each part of the scrape path
(the WSGI app, the view's baking, each collector, per-process metrics), timed by
wrappers installed here, in the worker, so the product code carries no timers.
"""

import os
import time

from netpoint_metrics.sample.wsgi import application as _app

_PHASES = os.environ.get("NETPOINT_BENCH_PHASES") == "1"
_times: dict[str, float] = {}


def _timed(owner, attr: str, phase: str) -> None:
    """Wrap ``owner.attr`` so its wall time adds to ``_times[phase]`` (bench only)."""
    inner = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            _times[phase] = _times.get(phase, 0.0) + time.perf_counter() - t0

    setattr(owner, attr, wrapper)


if _PHASES:
    import prometheus_client.django.exposition as _dj_expo

    from netpoint_metrics import migration_metrics, views
    from netpoint_metrics.core import processmetrics, scrape, selfmetrics
    from netpoint_metrics.core.collect import DirectoryCollector

    _timed(_dj_expo, "_bake_output", "bake")
    if hasattr(views.MetricsView, "_bake"):  # our own baking of the answer
        _timed(views.MetricsView, "_bake", "bake")
    _timed(DirectoryCollector, "collect", "collect")
    _timed(scrape.ScrapeCollector, "collect", "scrape")
    _timed(scrape.ScrapeCollector, "_process_families", "process")
    _timed(selfmetrics, "record_collect", "selfmetrics")
    _timed(migration_metrics.MigrationCollector, "collect", "migrations")
    _timed(views, "get_registry", "registry")
    if hasattr(views, "_renderer"):
        from netpoint_metrics.core import render as _render

        _inner_render = _render.TextRenderer.render

        def _split_render(self, metrics):
            """Collect first, then render: the render time alone (bench only)."""
            metrics = list(metrics)
            t0 = time.perf_counter()
            try:
                return _inner_render(self, metrics)
            finally:
                _times["render"] = _times.get("render", 0.0) + time.perf_counter() - t0

        _render.TextRenderer.render = _split_render
    _timed(views, "access_denied", "access")
    for _name in ("gather", "families", "owner_pid", "live_pids", "read_process"):
        if hasattr(processmetrics, _name):
            _timed(processmetrics, _name, f"pm_{_name}")


def _collect_ms() -> str | None:
    try:
        from netpoint_metrics import views

        registry = views._registry[2] if views._registry else None
        for collector in getattr(registry, "_collector_to_names", {}):
            # The view wraps the directory collector in its self-metrics collector.
            collector = getattr(collector, "inner", collector)
            stats = getattr(collector, "stats", None)
            if stats is not None:
                return f"{stats.last_duration * 1000:.3f}"
    except Exception:  # a bench header must never break the response
        return None
    return None


_PROFILE_DIR = os.environ.get("NETPOINT_BENCH_PROFILE")  # cProfile each scrape into here
_scrapes = 0


def application(environ, start_response):
    is_metrics = environ.get("PATH_INFO") == "/metrics"
    t0 = time.perf_counter()

    def start(status, headers, exc_info=None):
        extra = [("X-Bench-Pid", str(os.getpid()))]
        if is_metrics:
            ms = _collect_ms()
            if ms is not None:
                extra.append(("X-Bench-Collect-Ms", ms))
            if _PHASES:
                _times["app"] = time.perf_counter() - t0
                extra.append(
                    (
                        "X-Bench-Phases",
                        ",".join(f"{k}={v * 1000:.3f}" for k, v in sorted(_times.items())),
                    )
                )
        return start_response(status, [*headers, *extra], exc_info)

    _times.clear()
    if is_metrics and _PROFILE_DIR:
        return _profiled(environ, start)
    return _app(environ, start)


def _profiled(environ, start_response):
    """One scrape under cProfile, saved as ``<pid>-<n>-<cold|warm>.prof`` (bench only)."""
    import cProfile

    global _scrapes
    _scrapes += 1
    kind = "cold" if _scrapes == 1 else "warm"
    prof = cProfile.Profile()
    prof.enable()
    try:
        body = _app(environ, start_response)
    finally:
        prof.disable()
        prof.dump_stats(os.path.join(_PROFILE_DIR, f"{os.getpid()}-{_scrapes}-{kind}.prof"))
    return body
