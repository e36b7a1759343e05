"""Issue #3 acceptance under a real Gunicorn master: every kind of worker exit.

Each test starts its own master (tests/servers.py) with METRICS_ENABLED=1 and a private
PROMETHEUS_MULTIPROC_DIR under tmp_path, drives load through :class:`tests.soak.Soak`
and asserts: no counter/histogram sample ever goes down between consecutive scrapes, the
final request counters equal the answered requests (cut-off ones maybe), the directory
stays under 8 x workers + 32 ``.db`` files at every scrape, and no dead worker's live
gauge is served.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests import servers
from tests.soak import Event, Soak, children, is_running, send_signal, wait_for

pytestmark = pytest.mark.soak

VIEW = "device-list"
PATH = "/api/devices/"


def bound(workers: int) -> int:
    return 8 * workers + 32


def start(tmp_path: Path, workers: int, extra_args: list[str] | None = None, **env: str):
    return servers.start_gunicorn(
        tmp_path, env=servers.base_env(tmp_path, **env), workers=workers, extra_args=extra_args
    )


def wait_workers(master: int, n: int, what: str = "") -> None:
    wait_for(lambda: len(children(master)) == n, 60, what or f"{n} workers under {master}")


def soak_for(srv: servers.Server, total: int, workers, db_bound: int, **kw) -> Soak:
    return Soak(
        srv.port,
        srv.metrics_dir,
        path=PATH,
        total=total,
        workers=workers,
        db_bound=db_bound,
        log_tail=srv.log_tail,
        **kw,
    )


def kills(soak_total: int, every: int, expect) -> list[Event]:
    """A SIGKILL of a random worker every ``every`` requests (``expect()``: worker count);
    every other one while folds are held off, so the dead files are still there."""
    return [
        Event(
            n, "kill", lambda s, hold=(i % 2 == 1): s.kill_random_worker(expect(), hold_folds=hold)
        )
        for i, n in enumerate(range(every, soak_total - 50, every))
    ]


def test_recycle_sigkill_and_hup_keep_counts_exact(tmp_path: Path) -> None:
    """max_requests=20, a SIGKILL every 300 requests, a HUP half-way."""
    srv = start(tmp_path, 4, NETPOINT_MAX_REQUESTS="20")
    try:
        wait_workers(srv.pid, 4)
        soak = soak_for(srv, 2000, lambda: children(srv.pid), bound(4), seed=11)
        hup = Event(1000, "HUP", lambda s: send_signal(srv.pid, signal.SIGHUP))
        final = soak.run([*kills(2000, 300, lambda: 4), hup])
        soak.assert_exact(final, VIEW)
        assert len(soak.killed) >= 6 and soak.unfolded_checks >= 1
        # ~120 recycles happened, yet the directory is the live set plus the archives.
        assert srv.log_tail(10**6).count("Autorestarting worker") >= 80
    finally:
        srv.stop()


def test_ttin_ttou_scale_keeps_counts_exact(tmp_path: Path) -> None:
    """Scale 4 -> 6 -> 3 with TTIN/TTOU mid-load, with kills and recycling throughout."""
    srv = start(tmp_path, 4, NETPOINT_MAX_REQUESTS="20")
    size = {"n": 4}

    def scale(targets: tuple[int, ...], sig: int):
        def action(s: Soak) -> None:
            # One signal at a time: two identical pending signals merge into one.
            for n in targets:
                send_signal(srv.pid, sig)
                size["n"] = n
                wait_workers(srv.pid, n, f"{n} workers after {signal.Signals(sig).name}")
                s.scrape_ok()

        return action

    try:
        wait_workers(srv.pid, 4)
        soak = soak_for(srv, 1500, lambda: children(srv.pid), bound(6), seed=12)
        final = soak.run(
            [
                *kills(1500, 300, lambda: size["n"]),
                Event(400, "TTIN x2", scale((5, 6), signal.SIGTTIN)),
                Event(900, "TTOU x3", scale((5, 4, 3), signal.SIGTTOU)),
            ]
        )
        soak.assert_exact(final, VIEW)
        assert len(children(srv.pid)) == 3
    finally:
        srv.stop()


def test_usr2_upgrade_then_quit_old_master_keeps_counts_exact(tmp_path: Path) -> None:
    """USR2 starts a second master beside the first; QUIT then stops the old one. Requests
    flow throughout, and the counters never go down across the hand-over."""
    srv = start(tmp_path, 4, NETPOINT_MAX_REQUESTS="20")
    state = {"masters": [srv.pid]}

    def workers() -> list[int]:
        out = []
        for m in state["masters"]:
            out += [c for c in children(m) if c not in state["masters"]]
        return out

    def upgrade(s: Soak) -> None:
        old = srv.pid
        before = set(children(old))
        send_signal(old, signal.SIGUSR2)
        new = wait_for(
            lambda: next((c for c in children(old) if c not in before and children(c)), None),
            60,
            "the USR2 master to fork its workers",
        )
        state["masters"] = [old, new]
        wait_workers(new, 4, "the new master's 4 workers")
        s.scrape_ok()  # both generations serve, each master folds its own dead
        s.log.append(f"{s.elapsed():.1f}s new master {new}; QUIT {old}")
        send_signal(old, signal.SIGQUIT)
        assert srv.proc.wait(60) == 0, srv.log_tail()
        state["masters"] = [new]
        s.scrape_ok()

    try:
        wait_workers(srv.pid, 4)
        soak = soak_for(srv, 1500, workers, bound(4), seed=13)
        final = soak.run([*kills(1500, 300, lambda: 4), Event(700, "USR2", upgrade)])
        soak.assert_exact(final, VIEW)
        assert len(state["masters"]) == 1 and state["masters"][0] != srv.pid
        assert "inherited from another master" in srv.log_tail(10**6)
    finally:
        for m in state["masters"]:
            if m != srv.pid and send_signal(m, signal.SIGTERM):
                wait_for(lambda m=m: not is_running(m), 30, f"upgraded master {m} to stop")
        srv.stop()


def test_preload_app_keeps_counts_exact(tmp_path: Path) -> None:
    """preload_app: metrics exist in the master before on_starting and before any fork."""
    srv = start(tmp_path, 4, NETPOINT_MAX_REQUESTS="20", NETPOINT_PRELOAD="1")
    try:
        wait_workers(srv.pid, 4)
        soak = soak_for(srv, 1500, lambda: children(srv.pid), bound(4), seed=14)
        hup = Event(750, "HUP", lambda s: send_signal(srv.pid, signal.SIGHUP))
        final = soak.run([*kills(1500, 400, lambda: 4), hup])
        soak.assert_exact(final, VIEW)
    finally:
        srv.stop()


def test_worker_killed_during_scrape_never_fails_or_dips_it(tmp_path: Path) -> None:
    """A scrape whose worker dies may be cut off; one that answers is 200 and monotone."""
    srv = start(tmp_path, 4, NETPOINT_PRELOAD="1")
    try:
        wait_workers(srv.pid, 4)
        soak = soak_for(srv, 20000, lambda: children(srv.pid), bound(4), threads=2, seed=15)
        stats: dict[str, int] = {}

        def race(s: Soak) -> None:
            stats.update(s.scrape_kill_race(40, expect=4))
            s.stop_load()

        final = soak.run([Event(200, "race", race)])
        soak.assert_exact(final, VIEW, complete=False)
        assert stats["rounds"] == 40
        assert stats["in_flight"] >= 20, stats  # the kills really landed during scrapes
        assert stats["answered"] >= 20, stats
        assert stats["answered"] + stats["cut"] == 40, stats
    finally:
        srv.stop()


def test_thousand_recycles_leave_the_directory_the_size_of_none(tmp_path: Path) -> None:
    """Scrape cost follows the number of files; after 1,000 recycles (max_requests=1: every
    request ends its worker) there are as many as after none: the live workers', the
    master's and one archive per kind."""
    srv = start(tmp_path, 2, NETPOINT_MAX_REQUESTS="1", NETPOINT_PRELOAD="1")
    try:
        wait_workers(srv.pid, 2)
        soak = soak_for(
            srv, 1000, lambda: children(srv.pid), bound(2), threads=2, seed=16, time_limit=300
        )
        final = soak.run()
        soak.assert_exact(final, VIEW)
        recycles = srv.log_tail(10**6).count("Autorestarting worker")
        assert recycles >= 1000, recycles
        at_start = soak.baseline.db_count
        counts = [s.db_count for s in soak.scrapes]
        print(f"files at start {at_start}, during {counts}, recycles {recycles}")
        # Without folding each recycle would leave its files behind: thousands by now.
        # With it, every scrape saw the start's files, at most one archive per kind, and
        # at most the files of the two workers just replaced that no fold has reached yet.
        archives = {f.split("_archive")[0] for f in final.db_files if "_archive-" in f}
        assert max(counts) <= at_start + len(archives) + 2 * 3, (at_start, counts)
        assert final.db_count <= at_start + len(archives) + 2 * 3, final.db_files
        assert len(archives) <= 4, final.db_files
    finally:
        srv.stop()
