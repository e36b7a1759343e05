"""A new user's first launch (issue 8): a fresh copy, an installed wheel, an upgrade.

The repository is copied without ``var/`` (and without ``.git`` or any venv), built into a
wheel and installed with its server extras into a fresh virtual environment. Then the
mission's launch lines run with nothing but ``METRICS_ENABLED=1`` (and a free port) set:
the sample must create and migrate its database itself, answer within 60 s, log no warning
or traceback our configuration causes, and stop within a few seconds of SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import servers

pytestmark = pytest.mark.slow

IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "var", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis"
)
#: Start-up lines that are about the machine, not about our configuration.
NOT_OURS = re.compile(r"running uWSGI as root|use the --uid flag")
BAD = re.compile(r"Traceback|warning|deprecat|error", re.IGNORECASE)


def copy_repo(dest: Path) -> Path:
    shutil.copytree(servers.ROOT, dest, ignore=IGNORE)
    return dest


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new venv with the project's wheel and its server extras, nothing else."""
    base = tmp_path_factory.mktemp("fresh")
    src = copy_repo(base / "src")
    dist = base / "dist"
    venv = base / "venv"
    run = {"check": True, "capture_output": True, "text": True, "timeout": 600}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        **run,
    )
    (wheel,) = dist.glob("netpoint_metrics-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", f"{wheel}[gunicorn,uwsgi]"],
        **run,
    )
    assert "netpoint" not in done.stderr.lower() or "deprecat" not in done.stderr.lower()
    return venv


def minimal_env(venv: Path, home: Path, port: int) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "METRICS_ENABLED": "1",
        "NETPOINT_BIND": f"127.0.0.1:{port}",
    }


def get(port: int, path: str) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def launch_and_check(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> str:
    """Start, wait for 200 from the API and /metrics (<= 60 s), TERM, check the stop and log."""
    port = int(env["NETPOINT_BIND"].rsplit(":", 1)[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        ok = False
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                if get(port, "/api/devices/") == 200 and get(port, "/metrics") == 200:
                    ok = True
                    break
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert ok, f"no 200 from the API and /metrics within 60 s:\n{text[-3000:]}"
        assert get(port, "/") == 200
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stopped_in = time.monotonic() - t0
        assert stopped_in < 8, f"took {stopped_in:.1f} s to stop on SIGTERM"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    text = log.read_text(errors="replace")
    bad = [ln for ln in text.splitlines() if BAD.search(ln) and not NOT_OURS.search(ln)]
    assert not bad, "start-up log has warnings or tracebacks:\n" + "\n".join(bad[:20])
    return text


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_launch_line_on_a_fresh_copy(tmp_path: Path, fresh_venv: Path, kind: str) -> None:
    copy = copy_repo(tmp_path / "netpoint")
    assert not (copy / "var").exists()
    env = minimal_env(fresh_venv, tmp_path / "home", servers.free_port())
    if kind == "gunicorn":
        cmd = [str(fresh_venv / "bin" / "gunicorn"), "-c", "gunicorn_conf.py"]
    else:
        cmd = [str(fresh_venv / "bin" / "uwsgi"), "--ini", "uwsgi.ini"]
    launch_and_check(cmd, copy, env, tmp_path / f"{kind}.log")
    assert (copy / "var" / "netpoint.sqlite3").is_file()  # created and migrated on first start


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_installed_wheel_serves_with_shipped_configs(
    tmp_path: Path, fresh_venv: Path, kind: str
) -> None:
    site = tmp_path / "site"  # not the repository: only the installed wheel is importable
    site.mkdir()
    env = minimal_env(fresh_venv, tmp_path / "home", servers.free_port())
    if kind == "gunicorn":
        cmd = [str(fresh_venv / "bin" / "gunicorn"), "-c", "python:netpoint_metrics.gunicorn_conf"]
    else:
        ini = subprocess.run(
            [str(fresh_venv / "bin" / "netpoint-metrics"), "config", "uwsgi"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        (site / "uwsgi.ini").write_text(ini)
        cmd = [str(fresh_venv / "bin" / "uwsgi"), "--ini", "uwsgi.ini"]
    launch_and_check(cmd, site, env, tmp_path / f"{kind}.log")


def bump_version(copy: Path, version: str) -> None:
    init = copy / "netpoint_metrics" / "__init__.py"
    text = init.read_text()
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', text))


def build_versions(srv: servers.Server) -> set[str]:
    return {dict(ls)["version"] for n, ls in srv.scrape() if n == "netpoint_metrics_build_info"}


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_upgrade_in_place_shows_only_live_versions(tmp_path: Path, kind: str) -> None:
    """New code on disk, then a USR2 upgrade or a uWSGI reload: the old version's
    ``netpoint_metrics_build_info`` series goes with the processes that ran it."""
    copy = copy_repo(tmp_path / "netpoint")
    bump_version(copy, "1.0.0")
    fifo = tmp_path / "master.fifo"
    pidfile = tmp_path / "server.pid"
    env = servers.base_env(tmp_path, PYTHONPATH=str(copy), NETPOINT_MASTER_FIFO=str(fifo))
    extra = ["--pid", str(pidfile)] if kind == "gunicorn" else []
    srv = servers.start(kind, tmp_path, env=env, workers=2, extra_args=extra, root=copy)
    new_master = 0
    try:
        assert build_versions(srv) == {"1.0.0"}
        for _ in range(5):
            srv.get("/api/devices/")
        bump_version(copy, "1.1.0")
        old = set(servers.children(srv.pid))
        if kind == "uwsgi":
            servers.write_fifo(fifo, b"r")
            servers.wait_for(
                lambda: (kids := set(servers.children(srv.pid))) and not kids & old,
                60,
                "the reloaded workers",
            )
            srv.wait_ready()
        else:
            os.kill(srv.pid, signal.SIGUSR2)
            new_pid = Path(f"{pidfile}.2")
            new_master = servers.wait_for(
                lambda: (
                    new_pid.exists()
                    and new_pid.read_text().strip().isdigit()
                    and len(servers.children(int(new_pid.read_text()))) >= 2
                    and int(new_pid.read_text())
                ),
                60,
                "the USR2 master",
            )
            os.kill(srv.pid, signal.SIGTERM)
            assert srv.proc.wait(30) == 0
        servers.wait_for(lambda: build_versions(srv) == {"1.1.0"}, 30, "only 1.1.0 to show")
        s = srv.scrape()
        count = servers.total(
            s, "django_http_requests_latency_seconds_by_view_method_count", view="device-list"
        )
        assert count == 5  # the upgrade kept the counters
    finally:
        if new_master:
            with contextlib.suppress(ProcessLookupError):
                os.kill(new_master, signal.SIGTERM)
            servers.wait_for(lambda: not servers.children(new_master), 30, "the new workers")
        srv.stop()
