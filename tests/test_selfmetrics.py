"""Self-metrics (issue 9, item 3): exact counts of folds and worker exits, scrape figures.

The core part runs in a subprocess with the multiprocess value class installed (the test
process must keep its own), on real prometheus-client files and real leases. The server
parts start real Gunicorn and uWSGI masters and compare what the metrics say with what the
servers' own logs say happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from netpoint_metrics import exits
from netpoint_metrics.core.scrape import ScrapeCollector
from tests import servers
from tests.servers import total, value
from tests.test_soak_servers import children

ROOT = Path(__file__).resolve().parent.parent

SELF_COUNTERS = (
    "netpoint_metrics_folds_total",
    "netpoint_metrics_folded_processes_total",
    "netpoint_metrics_fold_busy_total",
    "netpoint_metrics_fold_errors_total",
    "netpoint_metrics_fold_duration_seconds_count",
    "netpoint_metrics_collect_duration_seconds_count",
    "netpoint_metrics_unreadable_files_total",
)

# -- the cause of an exit ------------------------------------------------------------------


def test_cause_of_maps_wait_statuses():
    assert exits.cause_of(0) == "graceful"
    assert exits.cause_of(0, note=b"M") == "max_requests"
    assert exits.cause_of(1 << 8) == "error"
    assert exits.cause_of(1 << 8, aborted=True) == "timeout"
    assert exits.cause_of(signal.SIGKILL) == "killed"
    assert exits.cause_of(signal.SIGKILL, aborted=True) == "timeout"
    assert exits.cause_of(signal.SIGSEGV) == "signal"
    assert exits.cause_of(None) == "unknown"
    assert exits.cause_of(None, note=b"M") == "max_requests"


# -- fold counters in the core, exactly --------------------------------------------------

CORE_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
import netpoint_metrics
getattr(netpoint_metrics, "setup", lambda: None)()
from netpoint_metrics.core import archive, identity, lifecycle, lock
from netpoint_metrics.core.collect import DirectoryCollector
from netpoint_metrics.core.scrape import ScrapeCollector
from tests.core_support import FakeProcess, key, samples

d = sys.argv[1]
assert identity.installed() == "multiprocess", identity.installed()
k = key("c", "c_total", {})
procs = [FakeProcess(d).start() for _ in range(5)]
for p in procs:
    p.add("counter", k, 1.0)
procs[0].kill(); procs[1].kill()
r1 = lifecycle.worker_died(d)                      # folds 2
procs[2].kill()
r2 = lifecycle.worker_died(d)                      # folds 1
r3 = lifecycle.worker_died(d)                      # nothing dead: still a fold
procs[3].kill()
with lock.exclusive(d, 5.0):
    r4 = lifecycle.worker_died(d)                  # lock held: busy
def boom(step):
    if step == "merged":
        raise RuntimeError("injected")
archive._fault = boom
r5 = lifecycle.worker_died(d)                      # raises inside: an error
archive._fault = None
r6 = lifecycle.worker_died(d)                      # folds procs[3]
collector = ScrapeCollector(DirectoryCollector(d))
first = samples(collector.collect())
second = samples(collector.collect())
out = {"folded": [len(r.folded) for r in (r1, r2, r3, r4, r5, r6)],
       "busy": [r.busy for r in (r1, r2, r3, r4, r5, r6)],
       "first": {n: v for (n, l), v in first.items() if n.startswith("netpoint_") and not l},
       "second": {n: v for (n, l), v in second.items() if n.startswith("netpoint_") and not l},
       "c": second.get(("c_total", ())),
       "pid": os.getpid(),
       "process": sorted(json.dumps([n, dict(l)]) for (n, l), v in second.items()
                         if n.startswith("netpoint_process_"))}
print(json.dumps(out))
"""


def test_fold_counters_are_exact(tmp_path):
    d = tmp_path / "m"
    d.mkdir(mode=0o700)
    env = dict(os.environ, METRICS_ENABLED="1", PROMETHEUS_MULTIPROC_DIR=str(d))
    proc = subprocess.run(
        [sys.executable, "-c", CORE_SCRIPT, str(d), str(ROOT)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["folded"] == [2, 1, 0, 0, 0, 1]
    assert out["busy"] == [False, False, False, True, True, False]
    s = out["second"]
    assert s["netpoint_metrics_folds_total"] == 4  # r1, r2, r3, r6
    assert s["netpoint_metrics_folded_processes_total"] == 4
    assert s["netpoint_metrics_fold_busy_total"] == 1
    assert s["netpoint_metrics_fold_errors_total"] == 1
    assert s["netpoint_metrics_fold_duration_seconds_count"] == 4
    assert 0 < s["netpoint_metrics_fold_duration_seconds_sum"] < 10
    # A scrape records itself after reading: the second scrape sees the first.
    assert out["first"]["netpoint_metrics_collect_duration_seconds_count"] == 0
    assert s["netpoint_metrics_collect_duration_seconds_count"] == 1
    assert s["netpoint_metrics_unreadable_files_total"] == 0
    assert s["netpoint_metrics_directory_files"] >= 1
    # This collector reports no byte count: the one listing the scrape makes supplies it.
    on_disk = sum(f.stat().st_size for f in d.iterdir() if f.name.endswith(".db"))
    assert 0 < s["netpoint_metrics_directory_bytes"] <= on_disk + 1_000_000
    assert s["netpoint_metrics_quarantined_files"] == 0
    # The counter the fake processes wrote is exact too (5 processes, 1 each).
    assert out["c"] == 5.0
    # The subprocess holds a lease and is not the directory's owner: one "job" series.
    assert (
        json.dumps(
            ["netpoint_process_resident_memory_bytes", {"pid": str(out["pid"]), "role": "job"}]
        )
        in out["process"]
    )


# -- the wrapper reads what the collector says it saw ------------------------------------


class _Stats:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


class _Reader:
    """Stands in for the directory collector's interface (collect() and its stats)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.stats = _Stats(files=7, bytes=4096, unreadable_total=3, quarantined=2, lease_idents=[])

    def collect(self):
        return []


def test_directory_figures_come_from_collector_stats(tmp_path):
    reader = _Reader(str(tmp_path))
    c = ScrapeCollector(reader, process_metrics=False)
    got = {m.name: m.samples[0].value for m in c.collect()}
    assert got == {
        "netpoint_metrics_directory_files": 7.0,
        "netpoint_metrics_directory_bytes": 4096.0,
        "netpoint_metrics_quarantined_files": 2.0,
    }
    # Unreadable files are counted by difference of the collector's running total.
    assert c._unreadable_delta({"unreadable_total": 3}) == 0
    assert c._unreadable_delta({"unreadable_total": 5}) == 2
    assert c._unreadable_delta({"unreadable_total": 1}) == 1  # a new collector: restart
    # Nothing is listed: with the collector's lease list there is no extra directory pass
    # (here the directory does not even exist, and the process families still come).
    gone = _Reader(str(tmp_path / "missing"))
    names = [m.name for m in ScrapeCollector(gone, process_metrics=True).collect()]
    assert "netpoint_process_resident_memory_bytes" in names
    assert "netpoint_metrics_directory_files" in names


# -- real servers --------------------------------------------------------------------------


def _counters(samples: dict) -> dict[str, float]:
    return {n: total(samples, n) for n in SELF_COUNTERS}


def _assert_not_decreasing(before: dict, after: dict, where: str) -> None:
    for name, v in before.items():
        assert after[name] >= v, f"{name} went from {v} to {after[name]} ({where})"


def _live_workers(srv: servers.Server) -> set[int]:
    return set(children(srv.pid))


def _wait(what: str, cond, timeout: float = 30.0, srv: servers.Server | None = None):
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"timed out waiting for {what}\n{srv.log_tail() if srv else ''}")


def test_gunicorn_counts_every_exit_by_cause(server_factory, tmp_path):
    env = servers.base_env(
        tmp_path,
        NETPOINT_MAX_REQUESTS="12",
        NETPOINT_TIMEOUT="2",
        NETPOINT_GRACEFUL_TIMEOUT="5",
        NETPOINT_LOG_LEVEL="debug",  # event=worker_exit lines explain a failure
    )
    srv = server_factory("gunicorn", env=env, workers=2)
    scrapes = 0

    def scrape() -> dict:
        nonlocal scrapes
        s = srv.scrape()
        scrapes += 1
        return s

    history = [_counters(scrape())]
    # 1. Recycling through max_requests.
    for _ in range(60):
        assert srv.get("/api/sites/")[0] == 200
    history.append(_counters(scrape()))
    # 2. SIGKILL one worker.
    victim = sorted(_live_workers(srv))[0]
    os.kill(victim, signal.SIGKILL)
    _wait(
        "the SIGKILLed worker's replacement",
        lambda: victim not in _live_workers(srv) and len(_live_workers(srv)) == 2,
        srv=srv,
    )
    history.append(_counters(scrape()))
    # 3. A worker that stops answering its heartbeat: Gunicorn's timeout kills it.
    frozen = sorted(_live_workers(srv))[0]
    os.kill(frozen, signal.SIGSTOP)
    _wait("the timeout kill", lambda: frozen not in _live_workers(srv), timeout=30, srv=srv)
    # 4. HUP: new workers, old ones stopped gracefully; the master (and its counts) stays.
    before_hup = _live_workers(srv)
    os.kill(srv.pid, signal.SIGHUP)
    _wait(
        "HUP to replace every worker",
        lambda: len(_live_workers(srv)) == 2 and not (_live_workers(srv) & before_hup),
        srv=srv,
    )
    history.append(_counters(scrape()))
    for _ in range(30):
        assert srv.get("/api/sites/")[0] == 200

    def settled():
        # Scrapes are requests too and may recycle a worker: take the metrics first, then
        # the log and the process tree, and accept only a snapshot where they agree.
        s = scrape()
        log = srv.log_path.read_text(errors="replace")
        booted = set(map(int, re.findall(r"Booting worker with pid: (\d+)", log)))
        gone = booted - _live_workers(srv)
        exits_total = total(s, "netpoint_metrics_worker_exits_total", server="gunicorn")
        folded = value(s, "netpoint_metrics_folded_processes_total")
        if exits_total != len(gone) or folded != len(gone):
            return None
        recycled = set(map(int, re.findall(r"\[(\d+)\] \[INFO\] Autorestarting", log)))
        # A worker we SIGKILLed or froze may have been on its last request: its cause is
        # what ended it, not the limit it had reached.
        return s, gone, len((recycled & gone) - {victim, frozen})

    s, gone, recycled = _wait("every exit counted and folded", settled, timeout=30, srv=srv)
    history.append(_counters(s))
    for a, b in zip(history, history[1:], strict=False):
        _assert_not_decreasing(a, b, "gunicorn")

    by_cause = {
        c: value(s, "netpoint_metrics_worker_exits_total", server="gunicorn", cause=c)
        for c in ("max_requests", "graceful", "timeout", "killed", "signal", "error", "unknown")
    }
    assert by_cause["killed"] == 1, by_cause
    assert by_cause["timeout"] == 1, by_cause
    assert by_cause["graceful"] >= 2, by_cause  # the HUP stopped both old workers
    exit_lines = re.findall(r"event=worker_exit .*", srv.log_path.read_text(errors="replace"))
    assert by_cause["max_requests"] == recycled >= 5, (by_cause, exit_lines)
    assert by_cause["signal"] == by_cause["error"] == by_cause["unknown"] == 0, by_cause
    assert sum(by_cause.values()) == len(gone)
    assert value(s, "netpoint_metrics_fold_errors_total") == 0
    assert value(s, "netpoint_metrics_fold_duration_seconds_count") == value(
        s, "netpoint_metrics_folds_total"
    )
    # Each scrape records itself after reading, in whichever worker served it, and a
    # recycled worker's record is folded, not lost: the count is exactly the scrapes before.
    assert value(s, "netpoint_metrics_collect_duration_seconds_count") == scrapes - 1
    files = value(s, "netpoint_metrics_directory_files")
    on_disk = len([n for n in os.listdir(srv.metrics_dir) if n.endswith(".db")])
    assert 0 < files <= on_disk + 4


def test_uwsgi_counts_recycles_and_keeps_counts_across_reload(server_factory, tmp_path):
    fifo = tmp_path / "master.fifo"
    env = servers.base_env(
        tmp_path,
        NETPOINT_MAX_REQUESTS="10",
        NETPOINT_MIN_WORKER_LIFETIME="0",
        NETPOINT_MASTER_FIFO=str(fifo),
    )
    srv = server_factory("uwsgi", env=env, workers=2)
    history = [_counters(srv.scrape())]
    for _ in range(50):
        assert srv.get("/api/sites/")[0] == 200
    history.append(_counters(srv.scrape()))

    def recycled() -> int:
        log = srv.log_path.read_text(errors="replace")
        return len(re.findall(r"The work of process \d+ is done", log))

    def settled():
        s = srv.scrape()
        n = recycled()
        got = value(s, "netpoint_metrics_worker_exits_total", server="uwsgi", cause="max_requests")
        return s if n >= 4 and got == n else None

    s = _wait("every recycle counted", settled, srv=srv)
    history.append(_counters(s))
    n_recycled = recycled()

    def workers_settled() -> bool:
        # A worker counts its own exit from atexit, registered as it starts: reload only
        # once every live worker has started (holds its lease), or a replacement killed
        # by the reload before it got that far would go uncounted (see exits.py).
        pids = children(srv.pid)
        leases = {
            n.split("_", 1)[1].split("-", 1)[0]
            for n in os.listdir(srv.metrics_dir)
            if n.startswith("lease_")
        }
        log = srv.log_path.read_text(errors="replace")
        leaving = [p for p in pids if f"The work of process {p} is done" in log]
        return len(pids) == 2 and all(str(p) in leases for p in pids) and not leaving

    _wait("every worker started", workers_settled, srv=srv)
    before_reload = set(children(srv.pid))
    # Graceful reload: the master re-executes in the same pid, workers exit through atexit.
    with open(fifo, "w") as f:
        f.write("r")
    _wait("the old workers to go", lambda: not set(children(srv.pid)) & before_reload, srv=srv)
    srv.wait_ready()

    def reloaded():
        # Scrapes are requests and may recycle a worker too: compare with the log as it is
        # now, after the scrape. A worker the reload met while it was already leaving at its
        # request limit exits as a recycle, not gracefully: each exit counts once, by cause.
        s = srv.scrape()
        log = srv.log_path.read_text(errors="replace")
        leaving = {p for p in before_reload if f"The work of process {p} is done" in log}
        graceful = value(s, "netpoint_metrics_worker_exits_total", server="uwsgi", cause="graceful")
        by_limit = value(
            s, "netpoint_metrics_worker_exits_total", server="uwsgi", cause="max_requests"
        )
        want = len(before_reload - leaving)
        last["seen"] = (graceful, by_limit, recycled(), want)
        return s if want >= 1 and graceful == want and by_limit == recycled() else None

    last: dict = {}
    try:
        s = _wait("the reload's worker exits", reloaded, srv=srv)
    except AssertionError as exc:
        raise AssertionError(
            f"(graceful, max_requests, log recycles, graceful expected) = {last}"
        ) from exc
    history.append(_counters(s))
    for a, b in zip(history, history[1:], strict=False):
        _assert_not_decreasing(a, b, "uwsgi")
    assert recycled() >= n_recycled >= 4
    assert value(s, "netpoint_metrics_folded_processes_total") >= n_recycled
    assert value(s, "netpoint_metrics_fold_errors_total") == 0


def test_gunicorn_usr2_upgrade_keeps_every_count(server_factory, tmp_path):
    """The old master counts its workers' exits in its own files; once it is gone they are
    folded like any dead process's, so nothing is lost or counted twice across USR2."""
    pidfile = tmp_path / "gunicorn.pid"
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="8")
    srv = server_factory("gunicorn", env=env, workers=2, extra_args=["--pid", str(pidfile)])
    for _ in range(30):
        assert srv.get("/api/sites/")[0] == 200
    before = _counters(srv.scrape())
    assert before["netpoint_metrics_folds_total"] > 0

    os.kill(srv.pid, signal.SIGUSR2)
    new_pidfile = Path(str(pidfile) + ".2")

    def new_master() -> int | None:
        try:
            pid = int(new_pidfile.read_text())
        except (OSError, ValueError):
            return None
        return pid if len(children(pid)) == 2 else None

    new = _wait("the USR2 master and its workers", new_master, srv=srv)
    try:
        os.kill(srv.pid, signal.SIGQUIT)  # graceful stop of the old master
        assert srv.proc.wait(30) == 0

        def settled():
            s = srv.scrape()
            log = srv.log_path.read_text(errors="replace")
            booted = set(map(int, re.findall(r"Booting worker with pid: (\d+)", log)))
            gone = booted - set(children(new))
            exits_total = total(s, "netpoint_metrics_worker_exits_total")
            folded = value(s, "netpoint_metrics_folded_processes_total")
            # Folded: every gone worker, plus the old master itself.
            return s if exits_total == len(gone) and folded == len(gone) + 1 else None

        s = _wait("the old master's counts folded", settled, timeout=40, srv=srv)
        _assert_not_decreasing(before, _counters(s), "USR2")
        assert (
            value(s, "netpoint_metrics_worker_exits_total", server="gunicorn", cause="graceful")
            >= 2
        )  # the old master's workers, stopped by QUIT
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(new, signal.SIGTERM)
