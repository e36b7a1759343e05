"""Issue #3 acceptance under a real uWSGI master (compiled uwsgi, http-socket, 4 workers).

uWSGI keeps worker ids stable across respawns and has no master hook on a worker's death:
the worker that takes a slot folds what is dead. These tests recycle workers every 20
requests (min-worker-lifetime 0), SIGKILL random ones, and reload the master gracefully
(SIGHUP: the master re-executes itself in the same pid) and by chain (workers one at a
time), with the same assertions as the Gunicorn tests (see tests/soak.py).

uWSGI pauses 2 s ("worker respawning too fast") when more workers respawn than it has
within about a second; that slows these tests but changes nothing they check.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests import servers
from tests.soak import Event, Soak, children, send_signal, wait_for

pytestmark = pytest.mark.soak

VIEW = "device-list"
PATH = "/api/devices/"
WORKERS = 4
BOUND = 8 * WORKERS + 32


def start(tmp_path: Path, **env: str) -> servers.Server:
    env.setdefault("NETPOINT_MIN_WORKER_LIFETIME", "0")
    srv = servers.start_uwsgi(tmp_path, env=servers.base_env(tmp_path, **env), workers=WORKERS)
    try:
        wait_workers(srv)
    except BaseException:
        srv.stop()
        raise
    return srv


def wait_workers(srv: servers.Server) -> None:
    # http-socket: the master's children are exactly its workers.
    wait_for(lambda: len(children(srv.pid)) == WORKERS, 60, f"{WORKERS} uWSGI workers")


def soak_for(srv: servers.Server, total: int, **kw) -> Soak:
    return Soak(
        srv.port,
        srv.metrics_dir,
        path=PATH,
        total=total,
        workers=lambda: children(srv.pid),
        db_bound=BOUND,
        log_tail=srv.log_tail,
        time_limit=150.0,
        **kw,
    )


def kills(total: int, every: int) -> list[Event]:
    """A SIGKILL every ``every`` requests; every other one while folds are held off."""
    return [
        Event(
            n, "kill", lambda s, hold=(i % 2 == 1): s.kill_random_worker(WORKERS, hold_folds=hold)
        )
        for i, n in enumerate(range(every, total - 50, every))
    ]


def graceful_reload(srv: servers.Server):
    """SIGHUP: workers finish their request, the master re-executes itself (same pid)."""

    def action(s: Soak) -> None:
        before = set(children(srv.pid))
        send_signal(srv.pid, signal.SIGHUP)
        wait_for(
            lambda: len(set(children(srv.pid)) - before) >= WORKERS,
            60,
            "a new set of workers after the graceful reload",
        )
        s.scrape_ok()

    return action


def fifo_chain_reload(srv: servers.Server, fifo: Path):
    """Master FIFO ``c``: replace the workers one at a time."""

    def action(s: Soak) -> None:
        before = set(children(srv.pid))
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"c")
        finally:
            os.close(fd)
        wait_for(lambda: "chain reloading complete" in srv.log_tail(400), 60, "chain reload")
        assert not before & set(children(srv.pid)), "a worker survived the chain reload"
        s.scrape_ok()

    return action


def touch_chain_reload(srv: servers.Server, path: Path):
    """``touch-chain-reload``: uWSGI checks the file's mtime about once a second."""

    def action(s: Soak) -> None:
        marks = srv.log_tail(10**6).count("chain reloading complete")
        future = time.time() + 1
        os.utime(path, (future, future))
        wait_for(
            lambda: srv.log_tail(10**6).count("chain reloading complete") > marks,
            60,
            "the touch-triggered chain reload",
        )
        s.scrape_ok()

    return action


def test_recycle_sigkill_graceful_and_chain_reload_keep_counts_exact(tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    srv = start(tmp_path, NETPOINT_MAX_REQUESTS="20", NETPOINT_MASTER_FIFO=str(fifo))
    try:
        soak = soak_for(srv, 2000, seed=21)
        final = soak.run(
            [
                *kills(2000, 300),
                Event(650, "graceful reload (HUP)", graceful_reload(srv)),
                Event(1350, "chain reload (fifo c)", fifo_chain_reload(srv, fifo)),
            ]
        )
        soak.assert_exact(final, VIEW)
        assert soak.unfolded_checks >= 1
        log = srv.log_tail(10**6)
        assert "binary reloading uWSGI" in log
        assert log.count("The work of process") >= 50  # max-requests recycles
    finally:
        srv.stop()


def test_lazy_apps_keep_counts_exact(tmp_path: Path) -> None:
    """lazy-apps: each worker imports the app itself; no postfork hook runs."""
    touch = tmp_path / "chain-reload"
    touch.write_text("")
    srv = start(
        tmp_path,
        NETPOINT_MAX_REQUESTS="20",
        NETPOINT_LAZY_APPS="1",
        NETPOINT_TOUCH_CHAIN_RELOAD=str(touch),
    )
    try:
        soak = soak_for(srv, 800, seed=22)
        final = soak.run(
            [
                *kills(800, 250),
                Event(300, "graceful reload (HUP)", graceful_reload(srv)),
                Event(550, "chain reload (touch)", touch_chain_reload(srv, touch)),
            ]
        )
        soak.assert_exact(final, VIEW)
    finally:
        srv.stop()


def test_worker_killed_during_scrape_never_fails_or_dips_it(tmp_path: Path) -> None:
    """A scrape whose worker dies may be cut off; one that answers is 200 and monotone."""
    srv = start(tmp_path)
    try:
        soak = soak_for(srv, 20000, threads=2, seed=23)
        stats: dict[str, int] = {}

        def race(s: Soak) -> None:
            stats.update(s.scrape_kill_race(30, expect=WORKERS))
            s.stop_load()

        final = soak.run([Event(200, "race", race)])
        soak.assert_exact(final, VIEW, complete=False)
        assert stats["rounds"] == 30
        assert stats["in_flight"] >= 15, stats  # the kills really landed during scrapes
        assert stats["answered"] >= 15, stats
        assert stats["answered"] + stats["cut"] == 30, stats
    finally:
        srv.stop()
