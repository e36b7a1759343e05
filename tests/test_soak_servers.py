"""Issue #3 acceptance under real servers: recycling, SIGKILLs and a reload mid-load.

Load comes from a few client threads; the main thread scrapes /metrics every ~40 answered
requests, strictly one after another, so "never decreases between consecutive scrapes" is
a property of the server. Workers are SIGKILLed by pid (children of the master we started).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import servers
from tests.servers import children

pytestmark = pytest.mark.soak

WORKERS = 4
BOUND = 8 * WORKERS + 32
VIEW = "django_http_requests_total_by_view_transport_method_total"


def monotone_samples(text: str) -> dict:
    """Counter and histogram samples that must never dip or vanish.

    Per-process series (``netpoint_process_*``, one per live pid) end with their process by
    design, so they are left out.
    """
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.type in ("counter", "histogram") and not fam.name.startswith("netpoint_process_"):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Load:
    """Bounded load: ``total`` GETs from ``threads`` threads, counting ok and failed."""

    def __init__(self, srv: servers.Server, total: int, threads: int = 3) -> None:
        self.srv, self.total = srv, total
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with self.lock:
                if self.sent >= self.total:
                    return
                self.sent += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=20)
                conn.request("GET", "/api/sites/")
                status = conn.getresponse().status
                conn.close()
                good = status == 200
            except OSError:
                good = False
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1

    def done(self) -> int:
        with self.lock:
            return self.ok + self.failed


def soak(
    srv: servers.Server,
    total: int,
    reload_fn,
    kill_every: int = 300,
    master=None,
) -> None:
    """Load + scrapes + kills; ``reload_fn`` runs once at half-way; ``master()`` gives the
    current master pid (it changes during a USR2 upgrade)."""
    master = master or (lambda: srv.pid)
    rng = random.Random(7)
    load = Load(srv, total)
    for t in load.threads:
        t.start()
    prev: dict = {}
    scrapes = 0
    next_scrape, next_kill, reloaded = 40, kill_every, False
    killed: list[int] = []
    deadline = time.monotonic() + 300
    while load.done() < total and time.monotonic() < deadline:
        n = load.done()
        if n >= next_kill:
            victims = children(master())
            if victims:
                victim = rng.choice(victims)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            next_kill += kill_every
        if not reloaded and n >= total // 2:
            reload_fn()
            reloaded = True
        if n >= next_scrape:
            next_scrape = n + 40
            prev = check_scrape(srv, prev)
            scrapes += 1
        time.sleep(0.005)
    for t in load.threads:
        t.join(60)
    assert load.done() == total, f"load did not finish: {load.done()} of {total}"
    assert scrapes >= total // 80 and killed and reloaded
    # Final: every answered request is counted; only requests cut off by a kill are in doubt.
    final = wait_settled(srv, prev)
    counted = final.get(
        (VIEW, (("method", "GET"), ("transport", "http"), ("view", "site-list"))), 0
    )
    counted -= 1  # the readiness probe
    assert load.ok <= counted <= load.ok + load.failed, (load.ok, load.failed, counted)
    assert load.failed <= len(killed) * 3 + 5, f"too many failures: {load.failed}"
    # A killed worker's live gauges are gone once it is replaced (folded, never served).
    mp = srv.metrics_dir
    for pid in killed:
        left = [f for f in os.listdir(mp) if f.split("_")[-1].startswith(f"{pid}-")]
        assert not [f for f in left if "_live" in f], (pid, left)
    text = srv.get("/metrics")[2].decode()
    up = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "netpoint_worker_up"
    ]
    assert up and up[0] <= len(children(master())), up


def check_scrape(srv: servers.Server, prev: dict) -> dict:
    status, _, body = srv.get("/metrics")
    assert status == 200, (status, body[:300], srv.log_tail())
    cur = monotone_samples(body.decode())
    dips = [(k, prev[k], v) for k, v in cur.items() if k in prev and v < prev[k]]
    assert not dips, f"samples went down: {dips[:5]}"
    gone = [k for k in prev if k not in cur]
    assert not gone, f"series vanished: {gone[:5]}"
    files = [f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")]
    assert len(files) < BOUND, f"{len(files)} .db files: {sorted(files)[:20]}"
    return cur


def wait_settled(srv: servers.Server, prev: dict, timeout: float = 30.0) -> dict:
    """Scrape until two consecutive scrapes agree on the site-list counter."""
    deadline = time.monotonic() + timeout
    last = check_scrape(srv, prev)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        cur = check_scrape(srv, last)
        key = (VIEW, (("method", "GET"), ("transport", "http"), ("view", "site-list")))
        if cur.get(key) == last.get(key):
            return cur
        last = cur
    return last


def test_gunicorn_recycle_kill_hup(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="20")
    srv = servers.start_gunicorn(tmp_path, env=env, workers=WORKERS)
    try:
        soak(srv, 1600, lambda: os.kill(srv.pid, signal.SIGHUP))
    finally:
        srv.stop()


@pytest.mark.parametrize("reload_cmd", [b"r", b"c"], ids=["graceful", "chain"])
def test_uwsgi_recycle_kill_reload(tmp_path: Path, reload_cmd: bytes) -> None:
    fifo = tmp_path / "master.fifo"
    env = servers.base_env(
        tmp_path,
        NETPOINT_MAX_REQUESTS="20",
        NETPOINT_MIN_WORKER_LIFETIME="0",
        NETPOINT_MASTER_FIFO=str(fifo),
    )
    srv = servers.start_uwsgi(tmp_path, env=env, workers=WORKERS)

    def reload() -> None:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, reload_cmd)
        finally:
            os.close(fd)

    try:
        soak(srv, 1200, reload)
    finally:
        srv.stop()


def test_gunicorn_ttin_ttou(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="20")
    srv = servers.start_gunicorn(tmp_path, env=env, workers=WORKERS)

    def scale() -> None:
        for sig in (signal.SIGTTIN, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTTOU, signal.SIGTTOU):
            os.kill(srv.pid, sig)

    try:
        soak(srv, 1200, scale)
    finally:
        srv.stop()


def test_gunicorn_usr2_upgrade_then_quit_old(tmp_path: Path) -> None:
    pidfile = tmp_path / "gunicorn.pid"
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="20")
    srv = servers.start_gunicorn(
        tmp_path, env=env, workers=WORKERS, extra_args=["--pid", str(pidfile)]
    )
    current = {"pid": srv.pid}

    def upgrade() -> None:
        os.kill(srv.pid, signal.SIGUSR2)
        new_pidfile = Path(str(pidfile) + ".2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                new = int(new_pidfile.read_text())
                if len(children(new)) >= WORKERS:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("the USR2 master did not come up:\n" + srv.log_tail())
        os.kill(srv.pid, signal.SIGTERM)  # graceful stop of the old master (QUIT is quick)
        current["pid"] = new

    try:
        soak(srv, 1400, upgrade, master=lambda: current["pid"])
        assert srv.proc.wait(30) == 0  # the old master left cleanly
    finally:
        if current["pid"] != srv.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(current["pid"], signal.SIGTERM)
        srv.stop()


def test_gunicorn_preload_app(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="20", NETPOINT_PRELOAD="1")
    srv = servers.start_gunicorn(tmp_path, env=env, workers=WORKERS)
    try:
        soak(srv, 800, lambda: os.kill(srv.pid, signal.SIGHUP))
    finally:
        srv.stop()


def test_uwsgi_lazy_apps(tmp_path: Path) -> None:
    env = servers.base_env(
        tmp_path,
        NETPOINT_MAX_REQUESTS="20",
        NETPOINT_MIN_WORKER_LIFETIME="0",
        NETPOINT_LAZY_APPS="1",
        NETPOINT_TOUCH_CHAIN_RELOAD=str(tmp_path / "reload"),
    )
    (tmp_path / "reload").write_text("")
    srv = servers.start_uwsgi(tmp_path, env=env, workers=WORKERS)

    def touch() -> None:
        t = time.time() + 2
        os.utime(tmp_path / "reload", (t, t))

    try:
        soak(srv, 800, touch)
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_worker_killed_during_scrapes_never_fails_or_dips_a_scrape(tmp_path: Path, kind) -> None:
    env = servers.base_env(tmp_path, NETPOINT_MIN_WORKER_LIFETIME="0")
    start = servers.start_gunicorn if kind == "gunicorn" else servers.start_uwsgi
    srv = start(tmp_path, env=env, workers=WORKERS)
    try:
        for _ in range(40):
            srv.get("/api/sites/")
        prev: dict = {}
        results: list = []

        def scrape() -> None:
            try:
                status, _, body = srv.get("/metrics", timeout=20)
                results.append((status, body))
            except (OSError, http.client.HTTPException) as exc:
                # The scrape's own worker died: a connection error, or a body cut short.
                results.append((None, exc))

        rng = random.Random(3)
        for _ in range(12):
            th = threading.Thread(target=scrape)
            th.start()
            victims = children(srv.pid)
            os.kill(rng.choice(victims), signal.SIGKILL)
            th.join(30)
            for _ in range(5):
                srv.get("/api/sites/")
        oks = 0
        for status, body in results:
            assert status in (200, None), (status, body)
            if status == 200:
                oks += 1
                cur = monotone_samples(body.decode())
                dips = [k for k, v in cur.items() if k in prev and v < prev[k]]
                assert not dips, dips[:5]
                prev = cur
        assert oks >= 6, f"only {oks} scrapes answered"
        prev = check_scrape(srv, prev)
    finally:
        srv.stop()


def test_thousand_recycles_keep_the_directory_the_same_size(tmp_path: Path) -> None:
    """Scrape cost follows the file count; after ~1,000 recycles it is what it was at 0."""
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="2", NETPOINT_PRELOAD="1")
    srv = servers.start_gunicorn(tmp_path, env=env, workers=2)
    try:
        for _ in range(60):  # ~30 recycles first: archives exist, the live set is complete
            srv.get("/api/sites/")
        wait_settled(srv, {})
        at_start = len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")])
        deadline = time.monotonic() + 420
        sent = 0
        while sent < 2000 and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                srv.get("/api/sites/", timeout=10)
            sent += 1
        assert sent == 2000
        final = wait_settled(srv, {})
        at_end = len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")])
        # The same live set and the same archives: what a scrape reads does not grow.
        assert abs(at_end - at_start) <= 6 and at_end < 8 * 2 + 32, (at_start, at_end)
        log = srv.log_tail(100000)
        recycles = log.count("Autorestarting worker")
        assert recycles >= 900, recycles
        assert (
            final[(VIEW, (("method", "GET"), ("transport", "http"), ("view", "site-list")))] >= 2000
        )
    finally:
        srv.stop()
