"""Structured lifecycle log lines (issue 9, item 6): one per event, quiet at INFO.

Real servers show that a start logs exactly one ``event=start`` line, a fresh start over
leftovers one ``event=wipe``, an unsafe directory one ``event=refusal``, and that folds
and routine worker exits stay out of an INFO log (but are there at DEBUG). A crash injected
into a fold in the core shows the ``event=recovery`` line.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time

import pytest

from netpoint_metrics.core import archive, events, lifecycle
from tests import servers
from tests.core_support import FakeProcess, key
from tests.test_soak_servers import children

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

EVENT = re.compile(r"\[(?P<level>[A-Z]+)\] netpoint-metrics event=(?P<event>\w+)(?P<rest>.*)$")


def _events(srv: servers.Server) -> list[tuple[str, str, str]]:
    """(level, event, fields) of every event line in the server's log."""
    out = []
    for line in srv.log_path.read_text(errors="replace").splitlines():
        m = EVENT.search(line)
        if m:
            out.append((m["level"], m["event"], m["rest"]))
    return out


def _recycle(srv: servers.Server, n: int) -> None:
    for _ in range(n):
        assert srv.get("/api/sites/")[0] == 200
    before = set(children(srv.pid))
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in set(children(srv.pid)) or len(children(srv.pid)) < len(before):
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    # Scrape once: the fold of the killed worker has run in the master by now (child_exit
    # comes before its replacement is forked), and a scrape may fold too.
    srv.scrape()


def test_format_is_key_value_and_quotes_what_would_split():
    line = events.format_event("fold", dir="/run/x y", folded=3, generation=12, ms=2.06, no=None)
    assert line == 'netpoint-metrics event=fold dir="/run/x y" folded=3 generation=12 ms=2.1'


def test_gunicorn_start_logs_one_line_and_folds_stay_below_info(server_factory, tmp_path):
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="5")
    srv = server_factory("gunicorn", env=env, workers=2)
    _recycle(srv, 30)
    got = _events(srv)
    starts = [e for e in got if e[1] == "start"]
    assert len(starts) == 1, got
    assert starts[0][0] == "INFO" and "mode=fresh-start" in starts[0][2]
    assert f"pid={srv.pid}" in starts[0][2]
    # Recycles and folds happened (max_requests=5, 30 requests, one SIGKILL) ...
    log = srv.log_path.read_text(errors="replace")
    assert len(re.findall(r"Autorestarting worker", log)) >= 3
    # ... and none of them logged at INFO: only the SIGKILL is worth a WARNING.
    assert [e[1] for e in got if e[0] == "INFO"] == ["start"], got
    assert [(e[0], e[1]) for e in got if e[1] == "worker_exit"] == [("WARNING", "worker_exit")]
    assert "cause=killed" in [e for e in got if e[1] == "worker_exit"][0][2]
    assert not [e for e in got if e[1] == "fold"]
    # HUP re-reads the configuration and replaces Gunicorn's log handlers; it is not a
    # start, and our lines still reach the log afterwards.
    old = set(children(srv.pid))
    os.kill(srv.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while set(children(srv.pid)) & old or len(children(srv.pid)) < 2:
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    _recycle(srv, 0)
    got = _events(srv)
    assert len([e for e in got if e[1] == "start"]) == 1, got
    assert [e[0] for e in got if e[1] == "worker_exit"] == ["WARNING", "WARNING"], got


def test_gunicorn_debug_level_shows_the_fold_lines(server_factory, tmp_path):
    env = servers.base_env(tmp_path, NETPOINT_MAX_REQUESTS="5", NETPOINT_LOG_LEVEL="debug")
    srv = server_factory("gunicorn", env=env, workers=2)
    _recycle(srv, 20)
    got = _events(srv)
    folds = [e for e in got if e[1] == "fold"]
    assert folds and all(e[0] == "DEBUG" for e in folds), got
    assert any(re.search(r"folded=[1-9]\d* generation=\d+ ms=\d+\.\d", e[2]) for e in folds)
    assert len([e for e in got if e[1] == "start"]) == 1
    assert any(e[0] == "DEBUG" and "cause=max_requests" in e[2] for e in got)


def test_fresh_start_over_leftovers_logs_one_wipe(server_factory, tmp_path):
    first = server_factory("gunicorn", workers=2)
    for _ in range(5):
        assert first.get("/api/sites/")[0] == 200
    first.proc.send_signal(signal.SIGKILL)  # the master dies: its files stay behind
    first.stop()
    assert any(n.endswith(".db") for n in os.listdir(first.metrics_dir))
    env = {k: v for k, v in first.env.items() if k not in ("NETPOINT_BIND", "NETPOINT_WORKERS")}
    second = server_factory("gunicorn", env=env, workers=2)
    got = _events(second)
    wipes = [e for e in got if e[1] == "wipe"]
    assert len(wipes) == 1 and wipes[0][0] == "INFO", got
    assert int(re.search(r"files=(\d+)", wipes[0][2])[1]) > 0
    assert [e[1] for e in got if e[0] == "INFO"] == ["start", "wipe"], got


def test_uwsgi_lazy_apps_logs_one_start_line(server_factory, tmp_path):
    env = servers.base_env(tmp_path, NETPOINT_LAZY_APPS="true")
    srv = server_factory("uwsgi", env=env, workers=2)
    for _ in range(5):
        assert srv.get("/api/sites/")[0] == 200
    got = _events(srv)
    assert [e[1] for e in got if e[0] == "INFO"] == ["start"], got
    assert f"pid={srv.pid}" in [e for e in got if e[1] == "start"][0][2]


def test_unsafe_directory_logs_one_refusal_and_the_server_stops(tmp_path):
    env = servers.base_env(tmp_path)
    bad = tmp_path / "open"
    bad.mkdir()
    os.chmod(bad, 0o777)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(bad)
    env["NETPOINT_BIND"] = f"127.0.0.1:{servers.free_port()}"
    servers.migrate(env)
    for cmd in (
        [servers.binary("gunicorn"), "-c", str(servers.ROOT / "gunicorn_conf.py")],
        [servers.binary("uwsgi"), "--ini", str(servers.ROOT / "uwsgi.ini")],
    ):
        proc = subprocess.run(
            cmd, env=env, cwd=servers.ROOT, capture_output=True, text=True, timeout=60
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        refusals = re.findall(r"netpoint-metrics event=refusal .*", out)
        assert len(refusals) == 1, out
        assert "world-writable" in refusals[0] and str(bad) in refusals[0]
        assert "event=start" not in out


def test_fold_that_crashed_after_commit_is_finished_with_one_recovery_line(tmp_path, caplog):
    d = str(tmp_path)
    k = key("c", "c_total", {})
    procs = [FakeProcess(d).start() for _ in range(3)]
    for p in procs:
        p.add("counter", k, 1.0)
        p.kill()

    def crash(step: str) -> None:
        if step == "committed":
            raise RuntimeError("injected crash after commit")

    caplog.set_level(logging.DEBUG, logger="netpoint_metrics")
    archive._fault = crash
    try:
        lifecycle.worker_died(d)
    finally:
        archive._fault = None
    caplog.clear()
    lifecycle.worker_died(d)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith("netpoint-metrics event=recovery "), lines
    assert int(re.search(r"cleaned=(\d+)", lines[0])[1]) >= 3
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("netpoint-metrics event=fold ") for m in debug), debug
