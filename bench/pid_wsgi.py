"""The sample site with ``X-Bench-*`` response headers: which worker answered, and how
long its directory collector took.

The benchmark uses them to tell a worker's first scrape (cold) from its later ones (warm)
when 48 workers share one listening socket and the kernel picks who accepts, and to split
a scrape's time into collecting and everything else (Django, rendering, HTTP).
"""

import os

from netpoint_metrics.sample.wsgi import application as _app


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


def application(environ, start_response):
    def start(status, headers, exc_info=None):
        extra = [("X-Bench-Pid", str(os.getpid()))]
        if environ.get("PATH_INFO") == "/metrics":
            ms = _collect_ms()
            if ms is not None:
                extra.append(("X-Bench-Collect-Ms", ms))
        return start_response(status, [*headers, *extra], exc_info)

    return _app(environ, start)
