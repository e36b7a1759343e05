"""Issue #12 acceptance: the production profile (PostgreSQL, Redis, RQ) under real servers.

Real Gunicorn and uWSGI masters, a real PostgreSQL (run as a non-root user) and a real Redis,
both started by this module on loopback (:mod:`tests.services`), and real RQ workers
started as ``netpoint-sample rqworker``.

What "exact" means for jobs whose process is SIGKILLed mid-run (see
:mod:`netpoint_metrics.rq_metrics`), and what the job test asserts:

* the work-horse is killed: the job counts as started (the horse wrote that) and failed (the
  rqworker saw the horse die and RQ failed the job), never finished;
* the rqworker is killed while its work-horse runs: the horse (its own process group) goes
  on, finishes the job and counts it finished; the dead rqworker's own counts stay counted.

Both are checked against RQ's own registries, so the metrics and RQ agree job for job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netpoint_metrics
from netpoint_metrics.core import directory, lease
from tests import servers, services
from tests.servers import total, value

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

# Module-scoped fixtures: one PostgreSQL and one Redis for this whole module.
postgres = services.postgres
redis_server = services.redis_server

SERVERS = ["gunicorn", "uwsgi"]
AUDIT = "netpoint_metrics.sample.dcim.jobs.audit_device"
MISSING_DEVICE = 987654321


def production_env(tmp_path: Path, pg, rd, **extra: str) -> dict[str, str]:
    return servers.base_env(tmp_path, DATABASE_URL=pg.database(), REDIS_URL=rd.database(), **extra)


def call(srv: servers.Server, method: str, path: str, body=None, want: int = 200, **kw) -> bytes:
    status, _, raw = srv.request(method, path, body, **kw)
    assert status == want, f"{method} {path}: {status} {raw[:300]!r}\n{srv.log_tail(20)}"
    return raw


def children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


# -- web: PostgreSQL, Redis cache, NetBox-named counters, across recycles ---------------


def web_round(srv: servers.Server, n: int) -> None:
    """One known mix of requests; ``n`` makes names unique per round."""
    site = json.loads(call(srv, "POST", "/api/sites/", {"name": f"s{n}", "slug": f"s{n}"}, 201))
    # Same slug again: PostgreSQL's unique constraint fails the INSERT; psycopg raises
    # UniqueViolation, which django-prometheus counts by its class name.
    call(srv, "POST", "/api/sites/", {"name": f"t{n}", "slug": f"s{n}"}, 500)
    ids = []
    for i in range(3):
        body = {"name": f"d{n}{i}", "site": site["id"]}
        ids.append(json.loads(call(srv, "POST", "/api/devices/", body, 201))["id"])
    call(srv, "GET", "/api/devices/")
    call(srv, "GET", f"/api/devices/{ids[0]}/")  # cache miss
    call(srv, "GET", f"/api/devices/{ids[0]}/")  # cache hit (Redis, shared by every worker)
    call(srv, "PATCH", f"/api/devices/{ids[0]}/", {"status": "offline"})  # drops the entry
    call(srv, "GET", f"/api/devices/{ids[0]}/")  # miss again
    call(srv, "DELETE", f"/api/devices/{ids[1]}/", want=204)
    call(srv, "GET", f"/api/devices/{ids[1]}/", want=404)  # miss, then not found
    call(srv, "POST", "/graphql/", {"query": "{ devices { id name } sites { slug } }"})
    call(srv, "POST", "/graphql/", {"query": "{ racks { id } }"}, 400)
    call(srv, "GET", "/graphql/", want=405)  # not JSON: NetBox does not count it either
    call(srv, "GET", "/no/such/page", want=404)


def check_web(s: dict, rounds: int) -> None:
    r = rounds
    pg = {"vendor": "postgresql"}
    assert total(s, "django_db_new_connections_total", alias="default", **pg) >= 1
    assert total(s, "django_db_execute_total", alias="default", **pg) >= 20 * r
    assert total(s, "django_db_errors_total", alias="default", type="UniqueViolation", **pg) == r
    assert total(s, "django_db_execute_total", vendor="sqlite") == 0

    redis = {"backend": "redis"}
    assert total(s, "django_cache_get_total", **redis) == 4 * r
    assert total(s, "django_cache_get_hits_total", **redis) == 1 * r
    assert total(s, "django_cache_get_misses_total", **redis) == 3 * r
    assert total(s, "django_cache_get_total") == 4 * r  # no other backend
    assert value(s, "netpoint_cache_invalidations_total", model="device") == r

    # The failed INSERT was counted too: django-prometheus counts before it executes.
    assert value(s, "django_model_inserts_total", model="site") == 2 * r
    assert value(s, "django_model_inserts_total", model="device") == 3 * r
    assert value(s, "django_model_updates_total", model="device") == r
    assert value(s, "django_model_deletes_total", model="device") == r

    by_view = "rest_api_requests_total_by_view_method_total"
    expect = {
        ("site-list", "GET"): 1,  # each server's readiness probe, once
        ("site-list", "POST"): 2 * r,
        ("device-list", "POST"): 3 * r,
        ("device-list", "GET"): r,
        ("device-detail", "GET"): 4 * r,
        ("device-detail", "PATCH"): r,
        ("device-detail", "DELETE"): r,
    }
    got = {(dict(ls)["view"], dict(ls)["method"]): v for (n, ls), v in s.items() if n == by_view}
    assert got == expect
    by_method = "rest_api_requests_total_by_method_total"
    assert value(s, by_method, method="GET") == 1 + 5 * r
    assert value(s, by_method, method="POST") == 5 * r
    assert value(s, by_method, method="PATCH") == r
    assert value(s, by_method, method="DELETE") == r
    assert value(s, "graphql_api_requests_total") == 2 * r


def counter_samples(s: dict) -> dict:
    """Series that must never decrease (a process's own CPU series ends with the process)."""
    return {
        k: v
        for k, v in s.items()
        if k[0].endswith(("_total", "_count", "_sum", "_bucket"))
        and "build_info" not in k[0]
        and not k[0].startswith("netpoint_process_")
    }


@pytest.mark.parametrize("kind", SERVERS)
def test_postgres_redis_and_netbox_counters_exact_across_recycles(
    server_factory,
    tmp_path,
    postgres,
    redis_server,
    kind,
) -> None:
    env = production_env(
        tmp_path,
        postgres,
        redis_server,
        NETPOINT_MAX_REQUESTS="5",  # every worker recycles several times per round
        NETPOINT_MIN_WORKER_LIFETIME="0",
        NETPOINT_THREADS="3",  # Gunicorn's gthread worker, as NetBox runs it (uWSGI ignores it)
    )
    srv = server_factory(kind, env=env, workers=2)
    first_workers = children(srv.pid)
    web_round(srv, 1)
    s1 = srv.scrape()
    check_web(s1, 1)
    web_round(srv, 2)
    web_round(srv, 3)
    s3 = srv.scrape()
    check_web(s3, 3)
    assert not first_workers & children(srv.pid), "workers never recycled"
    low = {k: (v, s3.get(k, 0.0)) for k, v in counter_samples(s1).items() if s3.get(k, 0.0) < v}
    assert not low, f"counters went down: {list(low.items())[:5]}"
    # The toolkit's own series: named for the toolkit, set only by what runs.
    info = [dict(ls) for n, ls in s3 if n == "netpoint_metrics_build_info"]
    assert len(info) == 1 and info[0]["version"] and "netpoint_version" not in info[0]
    assert value(s3, "netpoint_http_requests_in_progress") == 1  # the scrape itself


# -- jobs: RQ worker and work-horses in the same directory, SIGKILLs mid-job ------------


class RQWorker:
    """``netpoint-sample rqworker default`` as its own process group; stopped by pid."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netpoint_metrics.sample.manage", "rqworker", "default"],
                env=env,
                cwd=servers.ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # RQ's warm shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def wait_for(srv: servers.Server, what: str, cond, timeout: float = 60.0) -> dict:
    """Scrape until ``cond(samples)`` holds; every scrape must be >= the one before."""
    deadline = time.monotonic() + timeout
    prev: dict = {}
    while True:
        s = srv.scrape()
        low = [k for k, v in counter_samples(prev).items() if s.get(k, 0.0) < v]
        assert not low, f"counters went down while waiting for {what}: {low[:5]}"
        if cond(s):
            return s
        if time.monotonic() > deadline:
            jobs = {k: v for k, v in s.items() if k[0].startswith("netpoint_rq_")}
            raise AssertionError(f"timed out waiting for {what}: {jobs}")
        prev = s
        time.sleep(0.2)


def jobs(s: dict, family: str) -> float:
    return value(s, f"netpoint_rq_jobs_{family}_total", queue="default", job=AUDIT)


def enqueue(srv: servers.Server, device: int, hold: float = 0) -> str:
    body = {"device": device, "hold": hold}
    return json.loads(call(srv, "POST", "/api/jobs/device-audit/", body, 202))["id"]


@pytest.mark.parametrize("kind", SERVERS)
def test_job_counters_exact_with_rq_processes_sigkilled(
    server_factory,
    tmp_path,
    postgres,
    redis_server,
    kind,
) -> None:
    import redis
    from rq import Queue

    env = production_env(tmp_path, postgres, redis_server)
    srv = server_factory(kind, env=env, workers=2)
    site = json.loads(call(srv, "POST", "/api/sites/", {"name": "j", "slug": "j"}, 201))
    device = json.loads(call(srv, "POST", "/api/devices/", {"name": "x", "site": site["id"]}, 201))
    dev = device["id"]
    conn = redis.Redis.from_url(env["REDIS_URL"])
    queue = Queue("default", connection=conn)
    workers: list[RQWorker] = []
    horses: list[int] = []
    try:
        # 6 good and 2 failing audits queued while no worker runs: depth follows enqueues.
        for _ in range(6):
            enqueue(srv, dev)
        for _ in range(2):
            enqueue(srv, MISSING_DEVICE)
        s = srv.scrape()
        assert jobs(s, "enqueued") == 8 and jobs(s, "started") == 0
        assert value(s, "netpoint_rq_queue_depth", queue="default") == 8

        w1 = RQWorker(env, tmp_path / "rqworker-1.log")
        workers.append(w1)
        s = wait_for(
            srv, "8 jobs done", lambda s: jobs(s, "finished") == 6 and jobs(s, "failed") == 2
        )
        assert jobs(s, "started") == 8

        # A: SIGKILL the work-horse mid-job. Started (by the horse), then failed (by RQ).
        enqueue(srv, dev, hold=30)
        wait_for(srv, "job A started", lambda s: jobs(s, "started") == 9)
        (horse,) = children(w1.pid)
        horses.append(horse)
        os.kill(horse, signal.SIGKILL)
        s = wait_for(srv, "job A failed", lambda s: jobs(s, "failed") == 3)
        assert jobs(s, "finished") == 6

        # B: SIGKILL the rqworker mid-job. Its work-horse finishes B and counts it.
        enqueue(srv, dev, hold=2)
        wait_for(srv, "job B started", lambda s: jobs(s, "started") == 10)
        (horse,) = children(w1.pid)
        horses.append(horse)
        os.kill(w1.pid, signal.SIGKILL)
        w1.proc.wait(10)
        s = wait_for(srv, "job B finished by its horse", lambda s: jobs(s, "finished") == 7)
        deadline = time.monotonic() + 30
        while alive(horse) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(horse)

        # A new worker, 4 more jobs: every count exact, nothing lost with the dead processes.
        w2 = RQWorker(env, tmp_path / "rqworker-2.log")
        workers.append(w2)
        for _ in range(4):
            enqueue(srv, dev)
        s = wait_for(srv, "all jobs done", lambda s: jobs(s, "finished") == 11)
        depth = "netpoint_rq_queue_depth"
        s = wait_for(srv, "queue drained", lambda s: value(s, depth, queue="default") == 0)
        assert jobs(s, "enqueued") == 14
        assert jobs(s, "started") == 14
        assert jobs(s, "finished") == 11
        assert jobs(s, "failed") == 3
        duration = "netpoint_rq_job_duration_seconds_count"
        assert value(s, duration, queue="default", job=AUDIT) == 14
        # RQ agrees, job for job.
        assert queue.finished_job_registry.count == 11
        assert queue.failed_job_registry.count == 3
        assert queue.count == 0

        # Dead job processes were folded like dead web workers: no file of a dead process
        # is left (the live worker folds after each job).
        # A fold that met a scrape's lock is retried on the next job or the next scrape
        # (every FOLD_EVERY seconds), so poll with a deadline.
        mp = str(srv.metrics_dir)
        deadline = time.monotonic() + 45
        while True:
            dead = [i for i in directory.scan(mp).files if not lease.is_alive(mp, i)]
            if not dead or time.monotonic() > deadline:
                break
            srv.scrape()
            time.sleep(0.5)
        assert not dead, f"files of dead processes left: {dead}"
        assert any("_archive-" in n for n in os.listdir(mp)), os.listdir(mp)
        # The web side: the enqueue API shows in NetBox's counters.
        by_view = "rest_api_requests_total_by_view_method_total"
        assert value(s, by_view, view="device-audit", method="POST") == 14
    finally:
        for w in workers:
            w.stop()
        for pid in horses:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        conn.close()


def _db_sockets(pid: int, port: int) -> list[int]:
    """Inodes of ``pid``'s TCP sockets connected to ``port`` on this host."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                if remote_port == port and int(cols[9]) in inodes:
                    found.append(int(cols[9]))
    return found


def test_uwsgi_master_keeps_no_database_session_for_its_workers(
    server_factory, tmp_path, postgres, redis_server
) -> None:
    """uWSGI loads the app in its master, then forks: a database connection opened while
    loading (the sample checks its migrations) must be closed before the fork, or every
    worker talks on the same session (seen: a duplicate INSERT accepted, a request hung)."""
    env = production_env(tmp_path, postgres, redis_server)
    srv = server_factory("uwsgi", env=env, workers=2)
    for i in range(6):  # every worker has served, and read the directory after its response
        call(srv, "POST", "/api/sites/", {"name": f"m{i}", "slug": f"m{i}"}, 201)
    assert _db_sockets(srv.pid, postgres.port) == []
    workers = children(srv.pid)
    sockets = {w: _db_sockets(w, postgres.port) for w in workers}
    assert all(len(v) <= 1 for v in sockets.values()), sockets
    # The unique constraint holds across workers: one session each, nothing shared.
    for _ in range(4):
        call(srv, "POST", "/api/sites/", {"name": "dup", "slug": "m0"}, 500)


# -- a NetBox-shaped project adopts the toolkit with settings alone ----------------------


@pytest.mark.parametrize("kind", SERVERS)
def test_netbox_shaped_project_gets_our_metrics_view_without_url_changes(
    server_factory, tmp_path, kind
) -> None:
    """django_prometheus.urls is included at the root, as in NetBox, yet our view answers."""
    env = servers.base_env(
        tmp_path,
        DJANGO_SETTINGS_MODULE="tests.netboxlike.settings",
        NETPOINT_WSGI_APP="tests.netboxlike.wsgi:application",
        NETPOINT_CONFIGURATION="tests.netboxlike.configuration",  # METRICS_ENABLED = True
    )
    srv = server_factory(kind, env=env, workers=2)
    for i in range(6):
        call(srv, "POST", "/api/sites/", {"name": f"n{i}", "slug": f"n{i}"}, 201)
    call(srv, "POST", "/graphql/", {"query": "{ sites { slug } }"})
    # Ours negotiates OpenMetrics; django-prometheus's ExportToDjangoView never does.
    status, headers, body = srv.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    s = srv.scrape()
    by_view = "rest_api_requests_total_by_view_method_total"
    assert value(s, by_view, view="site-list", method="POST") == 6  # summed over both workers
    assert value(s, by_view, view="site-list", method="GET") == 1  # the readiness probe
    assert value(s, "graphql_api_requests_total") == 1
    assert value(s, "django_model_inserts_total", model="site") == 6
    # The scrapes resolved to the route django-prometheus's middlewares know.
    views = "django_http_requests_total_by_view_transport_method_total"
    assert value(s, views, view="prometheus-django-metrics", transport="http", method="GET") == 2
    assert value(s, "netpoint_http_requests_in_progress") == 1  # the middleware is installed
    assert [n for n, _ in s if n == "netpoint_metrics_build_info"]


def test_live_gauges_exist_only_where_the_middleware_runs(tmp_path) -> None:
    """Loading the app and its metrics writes no worker gauge: only the middleware does."""
    env = servers.base_env(tmp_path)
    servers.migrate(env)
    code = (
        "import django; django.setup()\n"
        "from netpoint_metrics import metrics, rq_metrics, netbox_metrics\n"
        "netbox_metrics.Metrics.get_instance()\n"
        "metrics.export_build_info()\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=servers.ROOT, check=True, timeout=60)
    files = sorted(os.listdir(env["PROMETHEUS_MULTIPROC_DIR"]))
    assert not [f for f in files if f.startswith("gauge_livesum_")], files
    assert [f for f in files if f.startswith("gauge_livemax_")], files  # build info was set


# -- the production settings files -----------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, val = line.partition("=")
            assert sep and key == key.strip() and key.isupper(), f"{path}: bad line {line!r}"
            out[key] = val
    return out


def test_production_settings_files_agree_and_load(tmp_path, postgres, redis_server) -> None:
    """The env file, the Secret and the ConfigMap hold the same settings, each one the code
    reads, and with them the sample runs on PostgreSQL and Redis through django-prometheus."""
    deploy = servers.ROOT / "deploy"
    settings = env_file(deploy / "production" / "netpoint.env")
    manifest = json.loads((deploy / "production" / "kubernetes.yaml").read_text())
    kinds = {item["kind"]: item for item in manifest["items"]}
    secret, config = kinds["Secret"]["stringData"], kinds["ConfigMap"]["data"]
    assert set(secret) == {
        "DATABASE_URL",
        "REDIS_URL",
        "NETPOINT_TASKS_REDIS_URL",
        "NETPOINT_SECRET_KEY",
    }
    assert not set(secret) & set(config)
    assert set(secret) | set(config) == set(settings)
    assert "PROMETHEUS_MULTIPROC_DIR" not in settings  # each unit sets its own
    code = (
        "".join(
            p.read_text()
            for p in [
                *servers.ROOT.glob("netpoint_metrics/**/*.py"),
                servers.ROOT / "gunicorn_conf.py",
            ]
        )
        + (servers.ROOT / "uwsgi.ini").read_text()
    )
    netbox = env_file(deploy / "netbox" / "netpoint-metrics.env")
    unread = [k for k in [*settings, *netbox] if k != "DJANGO_SETTINGS_MODULE" and k not in code]
    assert not unread, f"settings nothing reads: {unread}"

    env = servers.base_env(tmp_path)
    env.update(settings)
    env.update(
        DATABASE_URL=postgres.database(),
        REDIS_URL=redis_server.database(),
        NETPOINT_TASKS_REDIS_URL=redis_server.database(),
    )
    probe = (
        "import json, django; django.setup()\n"
        "from django.conf import settings as s\n"
        "from django.core.cache import cache\n"
        "from django.db import connection\n"
        "cache.set('k', 1); assert cache.get('k') == 1\n"
        "connection.ensure_connection()\n"
        "print(json.dumps([s.DATABASES['default']['ENGINE'], s.CACHES['default']['BACKEND'],"
        " s.RQ, connection.vendor]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=servers.ROOT, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    engine, cache, rq_settings, vendor = json.loads(done.stdout.decode().splitlines()[-1])
    assert engine == "netpoint_metrics.db.backends.postgresql" and vendor == "postgresql"
    assert cache == "netpoint_metrics.cache.redis.RedisCache"
    assert rq_settings["WORKER_CLASS"] == "netpoint_metrics.rq_metrics.MetricsWorker"
    assert rq_settings["QUEUE_CLASS"] == "netpoint_metrics.rq_metrics.MetricsQueue"


@pytest.mark.parametrize("kind", SERVERS)
def test_build_info_shows_only_versions_still_running(server_factory, tmp_path, kind) -> None:
    """Issue #7 item 5: a process of another version that has gone leaves no series behind."""
    srv = server_factory(kind, workers=2)
    old = (
        "import netpoint_metrics\n"
        "netpoint_metrics.setup()\n"
        "from netpoint_metrics import metrics\n"
        "metrics.BUILD_INFO.labels('0.0.1-old', 'x', 'x', 'x').set(1)\n"
        "metrics.CACHE_INVALIDATIONS.labels('old-process').inc()\n"
    )
    # The old version's process runs, writes, and exits (its lease goes with it).
    subprocess.run(
        [sys.executable, "-c", old], env=srv.env, cwd=servers.ROOT, check=True, timeout=60
    )
    for _ in range(2):  # before and after a fold (a worker exit folds the dead)
        s = srv.scrape()
        versions = {dict(ls)["version"] for n, ls in s if n == "netpoint_metrics_build_info"}
        assert versions == {netpoint_metrics.__version__}, versions
        # Its counter stays counted: only the live-mode gauge left with it.
        assert value(s, "netpoint_cache_invalidations_total", model="old-process") == 1
        (worker, *_) = sorted(children(srv.pid))
        os.kill(worker, signal.SIGTERM)


@pytest.mark.soak
def test_job_abandoned_by_both_its_processes_is_counted_failed_by_rqs_cleanup(
    server_factory, tmp_path, postgres, redis_server
) -> None:
    """Worker and work-horse SIGKILLed together: nobody is left to fail the job. RQ's own
    clean-up does it once the job's heartbeat has expired (RQ keeps it at least 60 s), and
    calls the worker's exception handlers, ours among them. Slow: it waits for RQ."""
    import redis
    from rq import Queue

    # RQ expires a started job 60 s after its last heartbeat, plus min(job timeout, 30 s).
    env = production_env(tmp_path, postgres, redis_server, NETPOINT_JOB_TIMEOUT="5")
    srv = server_factory("gunicorn", env=env, workers=1)
    site = json.loads(call(srv, "POST", "/api/sites/", {"name": "a", "slug": "a"}, 201))
    dev = json.loads(call(srv, "POST", "/api/devices/", {"name": "x", "site": site["id"]}, 201))
    conn = redis.Redis.from_url(env["REDIS_URL"])
    queue = Queue("default", connection=conn)
    workers: list[RQWorker] = []
    horse = 0
    try:
        w1 = RQWorker(env, tmp_path / "rqworker-1.log")
        workers.append(w1)
        enqueue(srv, dev["id"], hold=30)  # killed long before RQ's 5 s timeout would stop it
        wait_for(srv, "job started", lambda s: jobs(s, "started") == 1)
        (horse,) = children(w1.pid)
        os.kill(w1.pid, signal.SIGKILL)
        os.kill(horse, signal.SIGKILL)
        w1.proc.wait(10)
        # Only ask RQ which started entries have expired: reading the registry any other
        # way runs its clean-up here, without the worker's exception handlers.
        deadline = time.monotonic() + 150
        while not queue.started_job_registry.get_expired_job_ids():
            assert time.monotonic() < deadline, "RQ never expired the abandoned job"
            time.sleep(1)
        s = srv.scrape()
        assert (jobs(s, "started"), jobs(s, "finished"), jobs(s, "failed")) == (1, 0, 0)
        workers.append(RQWorker(env, tmp_path / "rqworker-2.log"))  # cleans up at start
        s = wait_for(srv, "abandoned job failed", lambda s: jobs(s, "failed") == 1)
        assert (jobs(s, "started"), jobs(s, "finished")) == (1, 0)
        assert queue.failed_job_registry.count == 1
    finally:
        for w in workers:
            w.stop()
        if horse and alive(horse):
            os.kill(horse, signal.SIGKILL)
        conn.close()
