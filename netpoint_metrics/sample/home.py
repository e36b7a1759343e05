"""The sample's landing page: what is running, and where to look next."""

from __future__ import annotations

import html
import os
import sys

from django.http import HttpRequest, HttpResponse

from netpoint_metrics.bootstrap import metrics_enabled

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>NetPoint (sample)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2em}}</style></head>
<body><h1>NetPoint sample site</h1>
<p>A NetBox-like Django app used to show <strong>netpoint-metrics</strong>: exact
django-prometheus metrics under multi-process servers.</p>
<p>Served by <strong>{server}</strong> with {workers} (this one: pid {pid}).</p>
<h2>API</h2>
<ul><li><a href="api/devices/">api/devices/</a> (GET, POST)</li>
<li><a href="api/sites/">api/sites/</a> (GET, POST)</li></ul>
<h2>Metrics</h2>
<p>{metrics}</p>
</body></html>
"""


def server_description() -> tuple[str, str]:
    """Which server runs this process and how many workers it was told to keep."""
    if "uwsgi" in sys.modules:
        import uwsgi

        return f"uWSGI {uwsgi.version.decode()}", _plural(int(uwsgi.numproc))
    if "gunicorn.arbiter" in sys.modules or "gunicorn" in os.environ.get("SERVER_SOFTWARE", ""):
        import gunicorn

        workers = os.environ.get("NETPOINT_SERVER_WORKERS", "")
        return f"Gunicorn {gunicorn.__version__}", (
            _plural(int(workers)) if workers.isdigit() else "its workers"
        )
    return "a single-process server", "1 process"


def _plural(n: int) -> str:
    return f"{n} worker process{'es' if n != 1 else ''}"


def index(request: HttpRequest) -> HttpResponse:
    server, workers = server_description()
    if metrics_enabled():
        metrics = (
            '<a href="metrics">/metrics</a>: every worker\'s metrics, aggregated '
            "(Prometheus text format; OpenMetrics when asked for)."
        )
    else:
        metrics = (
            "Metrics are off. Start the server with <code>METRICS_ENABLED=1</code> "
            "to serve them at <code>/metrics</code>."
        )
    page = _PAGE.format(
        server=html.escape(server), workers=html.escape(workers), pid=os.getpid(), metrics=metrics
    )
    return HttpResponse(page)
