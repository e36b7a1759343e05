"""A full metrics disk costs metric updates, never a worker or a request (issue 10, item 4).

prometheus-client grows its files with ``truncate`` and writes through ``mmap``: on a full
tmpfs the first touch of an unbacked page kills the worker with SIGBUS. Our value class
reserves space with ``posix_fallocate`` first, drops (and counts) what it cannot store, and
resumes recording by itself when space returns.

The test gives a real Gunicorn server a metrics directory on a 4 MiB tmpfs mounted in a
private mount namespace (``unshare -m``, so nothing is mounted on the host; CI runs tests as
root), fills that tmpfs with a file while requests keep coming and workers recycle
(``max_requests``) so that new workers start on the full disk, then frees the space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests import servers

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

API = "rest_api_requests_total_by_view_method_total"
API_LABELS = {"view": "device-list", "method": "GET"}
DROPPED = "netpoint_metrics_dropped_updates_total"


def _unshare() -> str:
    path = shutil.which("unshare")
    if path is None:
        raise AssertionError("unshare is missing: apt-get install util-linux")
    if os.geteuid() != 0:
        raise AssertionError("this test mounts a tmpfs in a private namespace: run it as root")
    return path


def _fill(path: Path, limit_bytes: int = 64 << 20) -> int:
    """Write ``path`` until the file system says ENOSPC; returns the bytes written."""
    chunk = b"\xff" * 65536
    written = 0
    with open(path, "wb", buffering=0) as f:
        while written < limit_bytes:
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written
    raise AssertionError(f"{path}: no ENOSPC after {limit_bytes} bytes; is it on the tmpfs?")


def _get_ok(srv: servers.Server, n: int) -> None:
    for i in range(n):
        status, _, body = srv.get("/api/devices/")
        assert status == 200, f"request {i}: {status} {body[:200]!r}\n{srv.log_tail()}"


def test_full_tmpfs_drops_and_counts_updates_and_no_worker_dies(tmp_path: Path) -> None:
    unshare = _unshare()
    mnt = tmp_path / "metrics"
    mnt.mkdir(mode=0o700)
    env = servers.base_env(tmp_path)
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(mnt)
    port = servers.free_port()
    env.update(
        NETPOINT_BIND=f"127.0.0.1:{port}",
        NETPOINT_WORKERS="2",
        NETPOINT_MAX_REQUESTS="25",
        NETPOINT_MAX_REQUESTS_JITTER="0",
    )
    servers.migrate(env)
    script = 'mount -t tmpfs -o size=4m,mode=0700 netpoint-test "$0" && shift && exec "$@"'
    cmd = [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(mnt),
        "--",
        servers.binary("gunicorn"),
        "-c",
        str(servers.ROOT / "gunicorn_conf.py"),
    ]
    srv = servers._start("gunicorn", cmd, tmp_path, env, port)
    try:
        # The master's view of the directory: the tmpfs, inside its namespace.
        inside = Path(f"/proc/{srv.pid}/root") / str(mnt).lstrip("/")
        mounts = Path(f"/proc/{srv.pid}/mounts").read_text()
        assert f" {mnt} tmpfs " in mounts, "the tmpfs is not mounted in the server's namespace"
        assert f" {mnt} tmpfs " not in Path("/proc/self/mounts").read_text()

        _get_ok(srv, 40)
        before = servers.value(srv.scrape(), API, **API_LABELS)
        assert before == 40.0

        # Fill the disk, then keep serving: every worker recycles several times (25
        # requests each), so new workers start with no space for their files.
        filler = inside / "filler"
        _fill(filler)
        _get_ok(srv, 160)
        during = srv.scrape()
        assert servers.value(during, API, **API_LABELS) >= before, "recorded counts were lost"
        log_text = srv.log_path.read_text(errors="replace")
        assert "no space for metric values" in log_text, srv.log_tail()

        # Space returns: recording resumes by itself (a retry at most every second).
        filler.unlink()
        # Let the writers' retry interval (1 s) pass before the next request: a worker born
        # on the full disk must still be alive to store its count when it retries.
        time.sleep(1.3)
        deadline = time.monotonic() + 30
        dropped = 0.0
        samples = during
        while time.monotonic() < deadline:
            _get_ok(srv, 4)
            samples = srv.scrape()
            dropped = servers.total(samples, DROPPED)
            if dropped > 0 and "recording resumes" in srv.log_path.read_text(errors="replace"):
                break
            time.sleep(0.2)
        assert dropped > 0, f"no dropped updates counted:\n{srv.log_tail()}"
        # Both workers are past their retry by now: every update from here on is stored.
        time.sleep(1.2)
        _get_ok(srv, 2)
        resumed = servers.value(srv.scrape(), API, **API_LABELS)
        assert resumed >= before
        _get_ok(srv, 20)
        after = servers.value(srv.scrape(), API, **API_LABELS)
        assert after == resumed + 20, (resumed, after)
    finally:
        with contextlib.suppress(OSError):
            (Path(f"/proc/{srv.pid}/root") / str(mnt).lstrip("/") / "filler").unlink()
        srv.stop()

    log_text = srv.log_path.read_text(errors="replace")
    # Gunicorn's master reports every worker killed by a signal ("was sent SIGBUS!") and
    # every abnormal exit ("exited with code"); recycles exit normally.
    assert "SIGBUS" not in log_text, log_text[-3000:]
    assert not re.search(r"Worker \(pid:\d+\) was sent", log_text), log_text[-3000:]
    assert "exited with code" not in log_text, log_text[-3000:]
    assert log_text.count("Autorestarting worker") >= 4, "workers did not recycle on the full disk"
