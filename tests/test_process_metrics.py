"""Per-process metrics (issue 9, item 4) under real Gunicorn and uWSGI masters.

One series per live process (master and every worker), labelled role and pid, with
plausible values; a killed worker's series disappear once it is replaced.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from netpoint_metrics.core import processmetrics
from tests import servers
from tests.test_soak_servers import children

FAMILIES = (
    "netpoint_process_resident_memory_bytes",
    "netpoint_process_cpu_seconds_total",
    "netpoint_process_open_fds",
    "netpoint_process_start_time_seconds",
)


def test_read_process_reads_this_process():
    me = processmetrics.read_process(os.getpid())
    assert me is not None
    assert me.ppid == os.getppid()
    assert me.rss_bytes > 1_000_000
    assert me.cpu_seconds > 0
    assert me.open_fds is not None and me.open_fds >= 3
    assert abs(me.start_time - time.time()) < 24 * 3600
    # A pid that does not exist is a normal race with an exit, not an error.
    assert processmetrics.read_process(2**22 + 1) is None


def test_roles_follow_the_process_tree():
    def p(pid: int, ppid: int) -> processmetrics.ProcessStats:
        return processmetrics.ProcessStats(pid, ppid, 1.0, 1.0, 1.0, 1)

    # 10 owns the directory; 5 is its parent (the old master during a Gunicorn USR2).
    procs = [p(11, 10), p(10, 5), p(5, 1), p(12, 5), p(99, 1)]
    roles = {s.pid: s.role for s in processmetrics.assign_roles(procs, master=10)}
    assert roles == {10: "master", 5: "master", 11: "worker", 12: "worker", 99: "job"}


def _by_pid(samples: dict, family: str) -> dict[int, tuple[str, float]]:
    out = {}
    for (name, labels), v in samples.items():
        if name == family:
            d = dict(labels)
            out[int(d["pid"])] = (d["role"], v)
    return out


def _check(srv: servers.Server, t_start: float) -> tuple[dict, set[int]]:
    """Scrape once the series match the live process tree; check every value."""
    deadline = time.monotonic() + 30
    while True:
        s = srv.scrape()
        workers = set(children(srv.pid))
        rss = _by_pid(s, FAMILIES[0])
        if set(rss) == workers | {srv.pid} and len(workers) == 2:
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"series {sorted(rss)} never matched master {srv.pid} + workers "
                f"{sorted(workers)}\n{srv.log_tail()}"
            )
        time.sleep(0.2)
    now = time.time()
    for family in FAMILIES:
        series = _by_pid(s, family)
        assert set(series) == workers | {srv.pid}, family
        assert series[srv.pid][0] == "master"
        assert all(series[w][0] == "worker" for w in workers)
    for pid, (_, v) in _by_pid(s, FAMILIES[0]).items():
        assert 1_000_000 < v < 4_000_000_000, (pid, v)
    for pid, (_, v) in _by_pid(s, FAMILIES[1]).items():
        assert 0 <= v < 600, (pid, v)
    for pid, (_, v) in _by_pid(s, FAMILIES[2]).items():
        assert 3 <= v < 10_000, (pid, v)
    # Start times: within the test window (10 ms kernel ticks, hence the slack).
    for pid, (_, v) in _by_pid(s, FAMILIES[3]).items():
        assert t_start - 1 <= v <= now + 1, (pid, v, t_start, now)
    master_start = _by_pid(s, FAMILIES[3])[srv.pid][1]
    assert all(_by_pid(s, FAMILIES[3])[w][1] >= master_start - 0.02 for w in workers)
    return s, workers


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_series_per_live_process_and_replaced_worker_vanishes(server_factory, tmp_path, kind):
    t_start = time.time()
    srv = server_factory(kind, workers=2)
    for _ in range(10):
        assert srv.get("/api/sites/")[0] == 200
    _, workers = _check(srv, t_start)

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        now = set(children(srv.pid))
        if victim not in now and len(now) == 2:
            break
        assert time.monotonic() < deadline, f"no replacement for {victim}\n{srv.log_tail()}"
        time.sleep(0.1)
    s, workers2 = _check(srv, t_start)
    for family in FAMILIES:
        assert victim not in _by_pid(s, family), family
    replacement = (workers2 - workers).pop()
    # The replacement started after the victim was killed; the master kept its series.
    assert _by_pid(s, FAMILIES[3])[replacement][1] > _by_pid(s, FAMILIES[3])[srv.pid][1]
