"""The ``serve`` exporter as a real subprocess, and GETs from a chosen loopback address."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ROOT, free_port


def get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    source: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One GET to 127.0.0.1:``port``, optionally from another loopback ``source`` address."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@dataclass
class Exporter:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def get(self, path: str, **kw) -> tuple[int, dict[str, str], bytes]:
        return get(self.port, path, **kw)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode


def start_exporter(env: dict[str, str], log_dir: Path, timeout: float = 30.0) -> Exporter:
    """Start ``netpoint-metrics serve`` on a free port and wait until it answers."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "netpoint_metrics.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    exporter = Exporter(proc, port, log_path)
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{exporter.log()}")
        try:
            if exporter.get("/-/healthy", timeout=5)[0] == 200:
                return exporter
        except OSError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    exporter.stop()
    raise AssertionError(f"serve not ready in {timeout}s:\n{exporter.log()}")
