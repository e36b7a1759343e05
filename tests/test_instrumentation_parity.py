"""Our middlewares, database backend and value class emit exactly what django-prometheus does.

One request sequence (every status class, methods valid and invalid, AJAX, HTTPS, a body, a
cache miss and hit, a view that raises from the database: a duplicate unique name) runs
through the sample app
twice (and a few requests through Django's async handler), each in its own process and
metrics directory:

* stock: django-prometheus's middlewares and database backend, prometheus-client's own
  ``MultiProcessValue``;
* ours: :mod:`netpoint_metrics.instrumentation`, :mod:`netpoint_metrics.db` and
  :mod:`netpoint_metrics.core.values`.

Both directories are then read by the *stock* ``MultiProcessCollector`` (so this also proves
our files stay readable by it), and every family, sample name, label set and value must be
equal. Durations come from one fake clock patched into both code paths (each call advances
it by a fixed step), so latency histograms are compared exactly too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests import servers

DRIVER = r"""
import sys, os
variant, out = sys.argv[1], sys.argv[2]
from django.conf import settings
settings.MIDDLEWARE  # imports the sample settings (which set up netpoint_metrics)
from prometheus_client import values
# Only django-prometheus's families are compared: NetBox's extra counters are left out.
settings.MIDDLEWARE = [
    m.replace("netpoint_metrics.netbox_metrics.", "netpoint_metrics.instrumentation.")
    for m in settings.MIDDLEWARE
]
if variant == "stock":
    # Without our app its set-up never runs, so prometheus-client's own class stays.
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "netpoint_metrics"]
    values.ValueClass = values.MultiProcessValue()
    settings.MIDDLEWARE = [
        m.replace("netpoint_metrics.instrumentation.", "django_prometheus.middleware.")
        for m in settings.MIDDLEWARE
    ]
    assert "django_prometheus.middleware.PrometheusAfterMiddleware" in settings.MIDDLEWARE
    settings.DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.sqlite3"
    settings.CACHES["default"]["BACKEND"] = (
        "django_prometheus.cache.backends.filebased.FileBasedCache"
    )
else:
    assert settings.CACHES["default"]["BACKEND"] == (
        "netpoint_metrics.cache.filebased.FileBasedCache"
    ), settings.CACHES["default"]["BACKEND"]
    from netpoint_metrics.core import identity
    from netpoint_metrics.core.values import make_value_class
    if values.ValueClass.__name__ != "NetpointValue":
        values.ValueClass = make_value_class(identity.current)
    swap = {
        "django_prometheus.middleware.PrometheusBeforeMiddleware":
            "netpoint_metrics.instrumentation.PrometheusBeforeMiddleware",
        "django_prometheus.middleware.PrometheusAfterMiddleware":
            "netpoint_metrics.instrumentation.PrometheusAfterMiddleware",
    }
    settings.MIDDLEWARE = [swap.get(m, m) for m in settings.MIDDLEWARE]
    assert any("instrumentation" in m for m in settings.MIDDLEWARE)
    settings.DATABASES["default"]["ENGINE"] = "netpoint_metrics.db.backends.sqlite3"
# The clock goes in before setup: app start-up runs timed queries too.
class Clock:
    t = 1000.0
    def __call__(self):
        self.t += 0.0013
        return self.t
clock = Clock()
import django_prometheus.utils, prometheus_client.context_managers
django_prometheus.utils.default_timer = clock
prometheus_client.context_managers.default_timer = clock
if variant == "ours":
    import netpoint_metrics.instrumentation, netpoint_metrics.db.common
    netpoint_metrics.instrumentation._now = clock
    netpoint_metrics.db.common._now = clock

import django
django.setup()
from django_prometheus.middleware import Metrics
from django_prometheus.db.metrics import execute_total
want = "MmapedValue" if variant == "stock" else "NetpointValue"
for value in (Metrics.get_instance().requests_total._value, execute_total.labels("x", "y")._value):
    assert type(value).__name__ == want, (variant, type(value))

from django.test import Client
c = Client(raise_request_exception=False)
J = "application/json"
statuses = []
for round_ in range(3):
    s = str(round_)
    for r in [
        c.get("/api/devices/"),
        c.post("/api/sites/", {"name": "s" + s, "slug": "s" + s}, content_type=J),
        c.post("/api/devices/", {"name": "d" + s, "site": round_ + 1}, content_type=J),
        c.post("/api/devices/", {}, content_type=J),
        c.get(f"/api/devices/{round_ + 1}/"),
        c.get(f"/api/devices/{round_ + 1}/"),
        c.patch(f"/api/devices/{round_ + 1}/", {"name": "x" + s}, content_type=J),
        c.get("/api/devices/", HTTP_X_REQUESTED_WITH="XMLHttpRequest"),
        c.get("/api/sites/", secure=True),
        c.head("/api/devices/"),
        c.options("/api/sites/"),
        c.put("/api/sites/", "x", content_type="text/plain"),
        c.generic("BREW", "/api/devices/"),
        c.get("/no/such/path/"),
        c.get("/api/devices/99999/"),
        c.post("/api/sites/", {"name": "s" + s, "slug": "s" + s}, content_type=J),  # 500
        c.delete(f"/api/devices/{round_ + 1}/"),
    ]:
        statuses.append(r.status_code)
# The same middlewares in an async chain (ASGI): Django runs them in async mode, where ours
# take the mixin's own path; a view raising (duplicate name: 500) is counted there too.
import asyncio
from django.test import AsyncClient
async def async_requests():
    ac = AsyncClient(raise_request_exception=False)
    return [
        (await ac.get("/api/devices/")).status_code,
        (await ac.get("/api/devices/1/", HTTP_X_REQUESTED_WITH="XMLHttpRequest")).status_code,
        (await ac.post("/api/sites/", {"name": "s0", "slug": "s0"}, content_type=J)).status_code,
        (await ac.generic("BREW", "/api/sites/")).status_code,
    ]
statuses += asyncio.run(async_requests())
# Responses the sample app never makes: a template response and a streaming one, through
# the variant's own After middleware.
from importlib import import_module
from django.http import StreamingHttpResponse
from django.template.response import SimpleTemplateResponse
from django.test import RequestFactory
module = "netpoint_metrics.instrumentation"
if variant == "stock":
    module = "django_prometheus.middleware"
after = import_module(module).PrometheusAfterMiddleware(lambda r: None)
for _ in range(2):
    req = RequestFactory().get("/somewhere/")
    after.process_request(req)
    after.process_template_response(req, SimpleTemplateResponse("dcim/some.html"))
    after.process_response(req, StreamingHttpResponse(iter([b"a", b"bc"])))
print(" ".join(map(str, statuses)))

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
reg = CollectorRegistry()
MultiProcessCollector(reg)
with open(out, "wb") as f:
    f.write(generate_latest(reg))
"""


def _run(tmp: Path, variant: str, db_template: Path) -> tuple[str, str]:
    (tmp / variant).mkdir(exist_ok=True)
    env = servers.base_env(tmp / variant)  # metrics on, directory tmp/variant/metrics
    db = tmp / variant / "netpoint.sqlite3"
    shutil.copy(db_template, db)
    env["NETPOINT_DB_PATH"] = str(db)
    env["NETPOINT_CACHE_DIR"] = str(tmp / variant / "cache")
    out = tmp / variant / "metrics.txt"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, variant, str(out)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"{variant} driver failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1], out.read_text()


def _samples(text: str) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("netpoint_metrics_dropped_updates"):
            continue  # ours only: the full-disk counter (0 here, checked below)
        if fam.name == "netpoint_metrics_build_info":
            continue  # the toolkit's app (left out of the stock run) sets it
        for s in fam.samples:
            samples[(fam.name, s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_same_families_names_labels_and_values_as_django_prometheus(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path, metrics=False)
    servers.migrate(env)
    template = tmp_path / "netpoint.sqlite3"
    assert template.exists()
    stock_status, stock_text = _run(tmp_path, "stock", template)
    ours_status, ours_text = _run(tmp_path, "ours", template)
    assert stock_status == ours_status
    codes = set(stock_status.split())
    assert {"200", "201", "204", "400", "404", "405", "500"} <= codes, codes

    stock, ours = _samples(stock_text), _samples(ours_text)
    missing = sorted(set(stock) - set(ours))
    extra = sorted(set(ours) - set(stock))
    assert not missing, f"series only django-prometheus emits: {missing[:10]}"
    assert not extra, f"series only we emit: {extra[:10]}"
    differ = {k: (stock[k], ours[k]) for k in stock if stock[k] != ours[k]}
    assert not differ, f"values differ (stock, ours): {sorted(differ.items())[:10]}"

    # The comparison covered what it should: every middleware and database family.
    families = {k[0] for k in stock}
    for name in (
        "django_http_requests_before_middlewares",
        "django_http_responses_before_middlewares",
        "django_http_requests_latency_including_middlewares_seconds",
        "django_http_requests_latency_seconds_by_view_method",
        "django_http_ajax_requests",
        "django_http_requests_total_by_method",
        "django_http_requests_total_by_transport",
        "django_http_requests_total_by_view_transport_method",
        "django_http_requests_body_total_bytes",
        "django_http_responses_total_by_status",
        "django_http_responses_total_by_status_view_method",
        "django_http_responses_body_total_bytes",
        "django_http_responses_total_by_charset",
        "django_http_exceptions_total_by_type",
        "django_http_exceptions_total_by_view",
        "django_db_new_connections",
        "django_db_execute",
        "django_db_errors",
        "django_db_query_duration_seconds",
        "django_cache_get",
        "django_http_responses_total_by_templatename",
        "django_http_responses_streaming",
    ):
        assert name in families, f"{name} missing from the compared output"
    key = ("django_http_requests_total_by_method", "django_http_requests_total_by_method_total")
    assert stock[(*key, (("method", "<invalid method>"),))] == 3.0 + 1  # + one async
    # + two async requests and the two direct calls
    assert stock[(*key, (("method", "GET"),))] == 3.0 * 7 + 2 + 2
    assert (
        stock[("django_http_responses_streaming", "django_http_responses_streaming_total", ())] == 2
    )
    assert ours_text.count("netpoint_metrics_dropped_updates_total 0.0") == 1
