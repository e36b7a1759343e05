"""Run a real Prometheus (and promtool) for tests, query its HTTP API, stop it by pid.

The Debian package ``prometheus`` provides both binaries. A missing one fails the test with
how to install it, never a skip. Prometheus listens on a free 127.0.0.1 port with a data
directory under the test's tmp_path; stopping sends TERM to the process we started, waits
with a deadline, then kills its process group (ours: it was started in a new session).

Also here: :func:`metric_names`, which pulls the metric names out of a PromQL expression,
shared by the structural tests of the rules and the dashboard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

log = logging.getLogger(__name__)

INSTALL_HINT = "apt-get install prometheus (Debian/Ubuntu; it provides prometheus and promtool)"

#: Series Prometheus itself adds to every target.
SYNTHETIC = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

#: The self-metric names every helper agreed on (the contract), with their types.
CONTRACT: dict[str, str] = {
    "netpoint_metrics_directory_files": "gauge",
    "netpoint_metrics_directory_bytes": "gauge",
    "netpoint_metrics_collect_duration_seconds": "histogram",
    "netpoint_metrics_unreadable_files_total": "counter",
    "netpoint_metrics_quarantined_files": "gauge",
    "netpoint_metrics_folds_total": "counter",
    "netpoint_metrics_folded_processes_total": "counter",
    "netpoint_metrics_fold_duration_seconds": "histogram",
    "netpoint_metrics_fold_busy_total": "counter",
    "netpoint_metrics_fold_errors_total": "counter",
    "netpoint_metrics_worker_exits_total": "counter",
    "netpoint_metrics_dropped_updates_total": "counter",
    "netpoint_process_resident_memory_bytes": "gauge",
    "netpoint_process_cpu_seconds_total": "counter",
    "netpoint_process_open_fds": "gauge",
    "netpoint_process_start_time_seconds": "gauge",
    "netpoint_metrics_build_info": "gauge",
}


def contract_sample_names() -> set[str]:
    """Sample names the contract families expose (histograms add _bucket/_sum/_count)."""
    out = set()
    for name, kind in CONTRACT.items():
        out.add(name)
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return out


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"{name} is not installed: {INSTALL_HINT}")
    return path


def promtool(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def get(self, path: str, timeout: float = 30.0, **params: object) -> dict:
        """GET an API path; returns ``data`` of a successful answer, else fails loudly."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; each result is {"metric": {...}, "value": [t, "v"]} (or "values")."""
        params: dict[str, object] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.get("/api/v1/query", **params)
        return data["result"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@contextlib.contextmanager
def running(tmp_path: Path, config: dict) -> Iterator[Prometheus]:
    """Prometheus with ``config`` (written as JSON, which is YAML) until the block ends."""
    exe = binary("prometheus")
    base = tmp_path / "prometheus"
    base.mkdir(exist_ok=True)
    config_path = base / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))
    check = promtool("check", "config", str(config_path))
    assert check.returncode == 0, f"test config rejected:\n{check.stdout}{check.stderr}"
    port = free_port()
    log_path = base / "prometheus.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={base / 'data'}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    prom = Prometheus(proc, port, log_path)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


# --- PromQL -------------------------------------------------------------------------------

_NOT_NAMES = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
    }
)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (good enough for our own rules and panels).

    Removes strings, label matchers, ranges and grouping clauses, then keeps identifiers
    that are not keywords, not functions or aggregations (followed by ``(``) and not part
    of a number or duration. Also finds ``__name__="..."`` matchers.
    """
    names = set(re.findall(r'__name__\s*=\s*"([A-Za-z_:][A-Za-z0-9_:]*)"', expr))
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in _IDENT.finditer(s):
        word = m.group(0)
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":
            continue
        if s[m.end() :].lstrip().startswith("("):
            continue
        if word.lower() in _NOT_NAMES:
            continue
        names.add(word)
    return names
