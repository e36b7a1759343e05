"""Background collects keep every worker's scrape cache warm (:mod:`netpoint_metrics.warmup`).

Real Gunicorn and uWSGI masters with several workers and a short period: every worker
must read the directory on its own (counted in ``netpoint_metrics_background_collects``)
while counts stay exact through recycles and folds that happen meanwhile.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from netpoint_metrics import warmup
from tests import servers
from tests.servers import total


def _background(srv: servers.Server) -> float:
    return total(srv.scrape(), "netpoint_metrics_background_collects_total")


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_every_worker_warms_itself_and_counts_stay_exact(server_factory, tmp_path, kind):
    env = servers.base_env(
        tmp_path,
        NETPOINT_METRICS_WARM_EVERY="1",
        # Long enough a life for a worker's first turn (2-6 s after its start) to come
        # under the traffic below, short enough for recycles to happen meanwhile.
        NETPOINT_MAX_REQUESTS="30",
        NETPOINT_MIN_WORKER_LIFETIME="0",
    )
    srv = server_factory(kind, env=env, workers=3)
    posts = 0
    for i in range(45):
        status, _, body = srv.request("POST", "/api/devices/", {"name": f"w{i}"})
        assert status == 201, body[:200]
        posts += 1
    # Each worker reads after a response once its turn is due (first within 6 s of its
    # start, then about every second here): keep some traffic going while waiting, which
    # also recycles workers (new ones start their own turns).
    def warmed() -> bool:
        for _ in range(6):
            assert srv.get("/api/sites/")[0] == 200
        return _background(srv) >= 6

    servers.wait_for(warmed, timeout=60, what="background collects in every worker", interval=0.5)
    samples = srv.scrape()
    assert total(samples, "django_http_requests_total_by_method_total", method="POST") == posts
    assert total(samples, "django_http_responses_total_by_status_total", status="201") == posts
    assert "Traceback" not in srv.log_tail(400)


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_a_worker_reads_after_its_first_response(server_factory, tmp_path, kind):
    """With the default period, one response is enough: a worker that then waits for its
    first scrape (a recycled worker on a quiet site) has read the directory already."""
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="0")
    srv = server_factory(kind, env=env, workers=1)
    assert srv.get("/api/sites/")[0] == 200
    # The read runs after the response is sent: poll (bounded) for the counter.
    servers.wait_for(
        lambda: _background(srv) >= 1, timeout=20, what="a read after the first response"
    )


@pytest.mark.parametrize(
    ("raw", "expected"), [("0", None), ("5", 5.0), ("", float(warmup.DEFAULT_EVERY))]
)
def test_the_period_is_read_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(warmup.ENV, raw)
    assert warmup.every() == expected


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_a_bad_period_is_refused_at_start(tmp_path, kind):
    env = servers.base_env(tmp_path, NETPOINT_METRICS_WARM_EVERY="soon")
    status, output = servers.run_to_exit(kind, tmp_path, env)
    assert status != 0
    assert "NETPOINT_METRICS_WARM_EVERY" in output, output[-500:]


WARM_ONCE = r"""
import os, sys, threading
import django
django.setup()
from django.db import connections
from netpoint_metrics import views, warmup
assert views.migration_collector()._graph_nodes == {}
out = {}
def run():
    out["read"] = warmup.warm_once(0.0)
    out["open"] = connections["default"].connection is not None
t = threading.Thread(target=run)
t.start(); t.join()
nodes = views.migration_collector()._graph_nodes["default"]
assert out == {"read": True, "open": False}, out   # read, and its connection closed
assert ("contenttypes", "0001_initial") in nodes, sorted(nodes)[:5]
assert views.directory_collector().last_collect is not None
print("ok", len(nodes))
"""


def test_warm_once_reads_the_directory_and_loads_the_migration_graph(tmp_path):
    env = servers.base_env(tmp_path)
    servers.migrate(env)
    done = subprocess.run(
        [sys.executable, "-c", WARM_ONCE],
        env=env,
        cwd=servers.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok "), done.stdout


def test_the_schedule_spreads_workers_and_settles_on_the_period():
    import itertools
    import random

    firsts, seconds = [], []
    for seed in range(200):
        steps = list(itertools.islice(warmup.schedule(30.0, random.Random(seed)), 7))
        (d0, i0), (d1, i1), (d2, i2), *later = steps
        assert (d0, i0) == (0.0, 0.0)  # at the first response: before any scrape can come
        firsts.append(d1)
        seconds.append(d2)
        assert 2.0 <= d1 <= 6.0 and i1 == 2.0
        assert 12.0 <= d2 <= 36.0 and i2 == 6.0
        assert all(22.5 <= d <= 37.5 and i == 15.0 for d, i in later)
    # Workers started together do not read together: the delays are spread out.
    assert max(firsts) - min(firsts) > 3.0 and max(seconds) - min(seconds) > 4.0
    short = list(itertools.islice(warmup.schedule(1.0, random.Random(1)), 4))
    assert short[2][0] <= 3.0 and short[3][0] <= 1.25
