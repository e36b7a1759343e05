"""Issue #2 acceptance: every django-prometheus family at /metrics, exact, under real servers.

One scripted mix of requests, then ONE scrape, whose values must equal what the test sent,
summed over 4 workers of Gunicorn or uWSGI.
"""

from __future__ import annotations

import gzip
import os
import signal

import pytest

import netpoint_metrics
from tests import servers
from tests.servers import total, value

SERVERS = ["gunicorn", "uwsgi"]

#: Families the scrape must contain (django-prometheus's, and NetPoint's own).
EXPECTED_FAMILIES = [
    "django_http_requests_before_middlewares_total",
    "django_http_responses_before_middlewares_total",
    "django_http_requests_latency_including_middlewares_seconds",
    "django_http_requests_total_by_method_total",
    "django_http_requests_total_by_transport_total",
    "django_http_requests_total_by_view_transport_method_total",
    "django_http_responses_total_by_status_total",
    "django_http_responses_total_by_status_view_method_total",
    "django_http_responses_total_by_charset_total",
    "django_http_requests_latency_seconds_by_view_method",
    "django_http_requests_body_total_bytes",
    "django_http_responses_body_total_bytes",
    "django_model_inserts_total",
    "django_model_updates_total",
    "django_model_deletes_total",
    "django_db_new_connections_total",
    "django_db_execute_total",
    "django_db_query_duration_seconds",
    "django_cache_get_total",
    "django_cache_get_hits_total",
    "django_cache_get_misses_total",
    "django_migrations_applied_total",
    "django_migrations_unapplied_total",
    "netpoint_cache_invalidations_total",
    "rest_api_requests_total_by_method_total",
    "rest_api_requests_total_by_view_method_total",
    "graphql_api_requests_total",
    "netpoint_metrics_build_info",
    "netpoint_worker_up",
    "netpoint_http_requests_in_progress",
]


def run_mix(srv: servers.Server) -> dict[str, int]:
    """The scripted mix; returns its device ids."""

    def call(method, path, body=None, want=200):
        status, _, raw = srv.request(method, path, body)
        assert status == want, f"{method} {path}: {status} {raw[:200]!r}"
        return raw

    import json

    site = json.loads(call("POST", "/api/sites/", {"name": "s1", "slug": "s1"}, 201))
    ids = [
        json.loads(call("POST", "/api/devices/", {"name": f"d{i}", "site": site["id"]}, 201))["id"]
        for i in range(3)
    ]
    call("GET", "/api/devices/")
    call("GET", f"/api/devices/{ids[0]}/")  # cache miss
    call("GET", f"/api/devices/{ids[0]}/")  # cache hit (file cache, shared by workers)
    call("PATCH", f"/api/devices/{ids[0]}/", {"status": "offline"})  # drops the cached entry
    call("GET", f"/api/devices/{ids[0]}/")  # miss again
    call("DELETE", f"/api/devices/{ids[1]}/", want=204)  # nothing cached: no invalidation
    call("GET", f"/api/devices/{ids[1]}/", want=404)  # miss, then not found
    call("GET", "/no/such/page", want=404)
    return {"d0": ids[0], "d1": ids[1]}


@pytest.mark.parametrize("kind", SERVERS)
def test_one_scrape_shows_every_family_exactly(server_factory, kind) -> None:
    srv = server_factory(kind)
    run_mix(srv)
    s = srv.scrape()
    names = {n for n, _ in s}
    for family in EXPECTED_FAMILIES:
        assert any(n == family or n.startswith(family + "_") for n in names), family

    http = "django_http_requests_total_by_view_transport_method_total"
    expect_views = {
        ("site-list", "GET"): 1,  # the readiness probe
        ("site-list", "POST"): 1,
        ("device-list", "POST"): 3,
        ("device-list", "GET"): 1,
        ("device-detail", "GET"): 4,
        ("device-detail", "PATCH"): 1,
        ("device-detail", "DELETE"): 1,
    }
    for (view, method), n in expect_views.items():
        assert value(s, http, view=view, transport="http", method=method) == n, (view, method)
        lat = "django_http_requests_latency_seconds_by_view_method_count"
        assert value(s, lat, view=view, method=method) == n, (view, method)
    # The scrape itself passed process_view before it collected.
    assert value(s, http, view="prometheus-django-metrics", transport="http", method="GET") == 1

    status = "django_http_responses_total_by_status_total"
    assert value(s, status, status="200") == 6
    assert value(s, status, status="201") == 4
    assert value(s, status, status="204") == 1
    assert value(s, status, status="404") == 2

    done = 13  # responses sent before the scrape
    assert value(s, "django_http_requests_before_middlewares_total") == done + 1
    assert value(s, "django_http_responses_before_middlewares_total") == done
    assert value(s, "django_http_requests_latency_including_middlewares_seconds_count") == done
    assert value(s, "django_http_requests_body_total_bytes_count") == done + 1
    assert value(s, "django_http_responses_body_total_bytes_count") == done

    assert value(s, "django_model_inserts_total", model="site") == 1
    assert value(s, "django_model_inserts_total", model="device") == 3
    assert value(s, "django_model_updates_total", model="device") == 1
    assert value(s, "django_model_deletes_total", model="device") == 1

    assert total(s, "django_db_new_connections_total", vendor="sqlite") >= 1
    assert total(s, "django_db_execute_total", alias="default", vendor="sqlite") >= 11

    cache = {"backend": "filebased"}
    assert total(s, "django_cache_get_total", **cache) == 4
    assert total(s, "django_cache_get_hits_total", **cache) == 1
    assert total(s, "django_cache_get_misses_total", **cache) == 3
    assert value(s, "netpoint_cache_invalidations_total", model="device") == 1

    # NetBox's API counters (netbox/netbox/metrics.py names and labels).
    api = "rest_api_requests_total_by_view_method_total"
    expect_api = {
        ("site-list", "GET"): 1,
        ("site-list", "POST"): 1,
        ("device-list", "POST"): 3,
        ("device-list", "GET"): 1,
        ("device-detail", "GET"): 4,
        ("device-detail", "PATCH"): 1,
        ("device-detail", "DELETE"): 1,
    }
    for (view, method), n in expect_api.items():
        assert value(s, api, view=view, method=method) == n, (view, method)
    assert total(s, api) == sum(expect_api.values())
    assert value(s, "rest_api_requests_total_by_method_total", method="GET") == 6
    assert value(s, "graphql_api_requests_total") == 0

    migrations = {k: v for k, v in s.items() if k[0].startswith("django_migrations_")}
    assert migrations == {
        ("django_migrations_applied_total", frozenset({("connection", "default")})): 3.0,
        ("django_migrations_unapplied_total", frozenset({("connection", "default")})): 0.0,
    }
    info = [ls for n, ls in s if n == "netpoint_metrics_build_info"]
    assert len(info) == 1 and ("version", netpoint_metrics.__version__) in info[0]
    assert 1 <= value(s, "netpoint_worker_up") <= 4
    assert value(s, "netpoint_http_requests_in_progress") == 1  # the scrape itself


@pytest.mark.parametrize("kind", SERVERS)
def test_metrics_disabled_is_404_and_writes_nothing(server_factory, tmp_path, kind) -> None:
    env = servers.base_env(tmp_path, metrics=False)
    mp = tmp_path / "would-be-metrics"
    mp.mkdir(mode=0o700)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)  # set, yet metrics are off: still no files
    srv = server_factory(kind, env=env)
    run_mix(srv)
    status, _, _ = srv.get("/metrics")
    assert status == 404
    assert os.listdir(mp) == []


@pytest.mark.parametrize("kind", SERVERS)
def test_format_negotiation_and_clean_stop(server_factory, kind) -> None:
    srv = server_factory(kind)
    status, headers, body = srv.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    status, headers, body = srv.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert b"django_http_requests_before_middlewares_total" in gzip.decompress(body)
    status, headers, body = srv.get("/metrics")
    assert headers["content-type"].startswith("text/plain") and b"# EOF" not in body

    srv.proc.send_signal(signal.SIGTERM)
    srv.proc.wait(30)
    assert srv.proc.returncode == 0, srv.log_tail()
    srv.stopped = True
    servers_gone = servers_wait(srv)
    assert servers_gone, "processes of the server's group outlived its master"


def servers_wait(srv: servers.Server, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.group_alive():
            return True
        time.sleep(0.05)
    return False
