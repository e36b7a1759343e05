"""What operators do around a running server (issue 7), with real servers.

A second server on the same directory, the CLI beside a live server, a reload after CLI
commands, METRICS_ENABLED from settings or the environment, a damaged archive. The first
server's counters must never go down and nothing of it may be deleted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests import servers
from tests.servers import assert_never_decreased, total, wait_for

VIEW_COUNT = "django_http_requests_latency_seconds_by_view_method_count"


def traffic(srv: servers.Server, n: int) -> None:
    for _ in range(n):
        status, _, _ = srv.get("/api/devices/")
        assert status == 200


def device_list_count(samples: dict) -> float:
    return total(samples, VIEW_COUNT, view="device-list", method="GET")


def kill_one_worker_and_wait_for_fold(srv: servers.Server) -> None:
    """SIGKILL a worker; wait until its files are folded into an archive."""
    d = srv.metrics_dir
    old = set(servers.children(srv.pid))
    victim = min(old)
    old.discard(victim)
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: not any(f"_{victim}-" in n for n in os.listdir(d))
        and any("_archive-" in n for n in os.listdir(d)),
        30,
        f"worker {victim} to be folded",
    )
    wait_for(lambda: set(servers.children(srv.pid)) - old, 30, "the replacement worker")
    wait_settled(d)


def wait_settled(d: Path, quiet: float = 1.5, timeout: float = 30.0) -> None:
    """Wait until no file appears or vanishes for ``quiet`` seconds (workers booted)."""
    state = {"names": set(os.listdir(d)), "since": time.monotonic()}

    def settled() -> bool:
        names = set(os.listdir(d))
        if names != state["names"]:
            state["names"], state["since"] = names, time.monotonic()
        return time.monotonic() - state["since"] >= quiet

    wait_for(settled, timeout, f"{d} to settle", interval=0.1)


@pytest.mark.parametrize("second", ["gunicorn", "uwsgi"])
def test_second_server_on_an_owned_directory_refuses_and_deletes_nothing(
    tmp_path: Path, second: str
) -> None:
    env = servers.base_env(tmp_path)
    first = servers.start_gunicorn(tmp_path, env=env, workers=2)
    try:
        traffic(first, 12)
        kill_one_worker_and_wait_for_fold(first)
        traffic(first, 8)
        before = first.scrape()
        assert device_list_count(before) == 20
        files_before = set(os.listdir(first.metrics_dir))
        env2 = dict(env, NETPOINT_BIND=f"127.0.0.1:{servers.free_port()}")
        code, out = servers.run_to_exit(second, tmp_path, env2)
        assert code != 0, out
        assert str(first.metrics_dir) in out and f"pid {first.pid}" in out, out[-2000:]
        assert "Traceback" not in out, out[-3000:]
        assert files_before <= set(os.listdir(first.metrics_dir)), "the refused server deleted"
        after = first.scrape()
        assert_never_decreased(before, after)
        traffic(first, 5)
        assert device_list_count(first.scrape()) == 25
    finally:
        first.stop()


READ_ONLY = (["inspect"], ["inspect", "--json"], ["doctor"], ["collect"], ["compact"])


def test_cli_beside_a_live_server_leaves_no_trace_and_wipe_waits(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path)
    srv = servers.start_gunicorn(tmp_path, env=env, workers=2)
    try:
        traffic(srv, 10)
        kill_one_worker_and_wait_for_fold(srv)
        before = srv.scrape()
        listing = sorted(os.listdir(srv.metrics_dir))
        for args in READ_ONLY:
            r = servers.cli(env, *args)
            assert r.returncode in (0, 1) and "Traceback" not in r.stderr, (args, r.stderr)
            assert sorted(os.listdir(srv.metrics_dir)) == listing, f"{args} left files behind"
        r = servers.cli(env, "collect")
        assert 'view="device-list"' in r.stdout
        wiped = servers.cli(env, "wipe")
        assert wiped.returncode == 1 and f"pid {srv.pid}" in wiped.stderr, wiped.stderr
        assert sorted(os.listdir(srv.metrics_dir)) == listing
        after = srv.scrape()
        assert_never_decreased(before, after)
        assert device_list_count(after) == 10
    finally:
        srv.stop()
    assert srv.proc.returncode == 0
    r = servers.cli(env, "wipe")
    assert r.returncode == 0, r.stderr
    assert not [n for n in os.listdir(srv.metrics_dir) if n.endswith((".db", ".json"))]
    again = servers.start_gunicorn(tmp_path, env=env, workers=2)
    try:
        assert device_list_count(again.scrape()) == 0  # a clean start
        traffic(again, 3)
        assert device_list_count(again.scrape()) == 3
    finally:
        again.stop()


def test_uwsgi_graceful_reload_after_cli_commands_keeps_every_counter(tmp_path: Path) -> None:
    fifo = tmp_path / "master.fifo"
    env = servers.base_env(tmp_path, NETPOINT_MASTER_FIFO=str(fifo))
    srv = servers.start_uwsgi(tmp_path, env=env, workers=2)
    try:
        traffic(srv, 15)
        before = srv.scrape()
        for args in (*READ_ONLY, ["wipe"]):
            servers.cli(env, *args)
        old = set(servers.children(srv.pid))
        servers.write_fifo(fifo, b"r")
        wait_for(
            lambda: (kids := set(servers.children(srv.pid))) and not kids & old and len(kids) >= 2,
            60,
            "the reloaded workers",
        )
        srv.wait_ready()
        after = srv.scrape()
        assert_never_decreased(before, after)
        assert device_list_count(after) == 15
        assert "fresh-start" not in srv.log_path.read_text().split("binary reloading")[-1]
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("kind", "where"),
    [
        ("gunicorn", "settings"),
        ("uwsgi", "settings"),
        ("gunicorn", "environment"),
        ("gunicorn", "both"),
    ],
)
def test_metrics_enabled_from_settings_or_environment_aggregates(
    tmp_path: Path, kind: str, where: str
) -> None:
    env = servers.base_env(tmp_path)
    if where in ("settings", "both"):
        env["NETPOINT_CONFIGURATION"] = "tests.metrics_config_on"
    if where == "settings":
        del env["METRICS_ENABLED"]
    srv = servers.start(kind, tmp_path, env=env, workers=3)
    try:
        traffic(srv, 30)
        # Every scrape lands on some worker; each must show all 30 requests.
        for _ in range(6):
            assert device_list_count(srv.scrape()) == 30
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_metrics_enabled_contradiction_is_a_start_up_error(tmp_path: Path, kind: str) -> None:
    env = servers.base_env(tmp_path, NETPOINT_CONFIGURATION="tests.metrics_config_on")
    env["METRICS_ENABLED"] = "0"
    env["NETPOINT_BIND"] = f"127.0.0.1:{servers.free_port()}"
    servers.migrate(env)
    code, out = servers.run_to_exit(kind, tmp_path, env)
    assert code != 0
    assert "METRICS_ENABLED contradicts itself" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]


def test_damaged_archive_is_set_aside_and_folding_goes_on(tmp_path: Path) -> None:
    env = servers.base_env(tmp_path)
    srv = servers.start_gunicorn(tmp_path, env=env, workers=2)
    d = srv.metrics_dir
    try:
        traffic(srv, 5)
        kill_one_worker_and_wait_for_fold(srv)
        archive = next(n for n in os.listdir(d) if n.startswith("counter_archive-"))
        size = os.path.getsize(d / archive)
        (d / archive).write_bytes(os.urandom(max(size, 64)))
        status, _, _ = srv.get("/metrics")
        assert status == 200
        counts = []
        for _ in range(3):
            traffic(srv, 4)
            kill_one_worker_and_wait_for_fold(srv)
            status, _, _ = srv.get("/metrics")
            assert status == 200
            counts.append(len(os.listdir(d)))
        set_aside = [n for n in os.listdir(d) if n.startswith("corrupt-counter_archive-")]
        assert len(set_aside) == 1, os.listdir(d)
        assert max(counts) - min(counts) <= 2, counts  # folding kept going: bounded
        assert not [n for n in os.listdir(d) if n.startswith("counter_archive-")] or any(
            n.startswith("counter_archive-") and n != archive for n in os.listdir(d)
        )
        log = srv.log_path.read_text()
        assert log.count("its archived totals are lost") == 1, log[-3000:]
    finally:
        srv.stop()
