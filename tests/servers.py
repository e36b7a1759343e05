"""Start real Gunicorn and uWSGI masters for tests, and talk to them.

Each server gets a free port on 127.0.0.1, its own SQLite database (migrated first) and its
own metrics directory under the test's tmp_path. Stopping sends TERM to the master we
started, waits with a deadline, then kills the process group we created: never by name.
A missing server binary fails with how to install it, never skips.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise AssertionError(
            f"{name} is not installed in {BIN}: run `make test` (or "
            f"`pip install -e '.[test]'`; uWSGI compiles with gcc and needs python3-dev)"
        )
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(tmp_path: Path, metrics: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETPOINT_", "GUNICORN_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    env["PYTHONPATH"] = str(ROOT)
    env["DJANGO_SETTINGS_MODULE"] = "netpoint_metrics.sample.settings"
    env["NETPOINT_DB_PATH"] = str(tmp_path / "netpoint.sqlite3")
    env["METRICS_ENABLED"] = "1" if metrics else "0"
    if metrics:
        mp = tmp_path / "metrics"
        mp.mkdir(mode=0o700, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    menv = dict(env, METRICS_ENABLED="0")
    menv.pop("PROMETHEUS_MULTIPROC_DIR", None)
    menv.pop("NETPOINT_CONFIGURATION", None)
    subprocess.run(
        [sys.executable, "-m", "netpoint_metrics.sample.manage", "migrate", "--noinput", "-v0"],
        env=menv,
        cwd=ROOT,
        check=True,
        timeout=120,
    )


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    env: dict[str, str]
    tmp_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_dir(self) -> Path | None:
        d = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        return Path(d) if d else None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, **kw)

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        status, _, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:300]!r}\n{self.log_tail()}"
        return parse_samples(body.decode())

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _, _ = self.get("/api/sites/", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise AssertionError(f"{self.kind} not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """TERM the master, wait, then KILL our process group; returns the exit code."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode

    def group_alive(self) -> bool:
        """True while any process of the group we created still exists (zombies excluded)."""
        pgid = self.proc.pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            fields = raw.rsplit(b")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
        return False


def _start(
    kind: str, cmd: list[str], tmp_path: Path, env: dict[str, str], port: int, root: Path = ROOT
) -> Server:
    log_path = tmp_path / f"{kind}-{port}.log"
    log = open(log_path, "ab")  # noqa: SIM115 (the server owns it for its whole life)
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    server = Server(kind, proc, port, log_path, env, tmp_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def start(
    kind: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workers: int = 4,
    root: Path = ROOT,
) -> Server:
    """Migrate a fresh database, then start ``kind`` with the repository's own config.

    ``root`` is the checkout to run (the working directory and config files): a copy of
    the repository for tests that change code on disk.
    """
    env = dict(env or base_env(tmp_path))
    port = free_port()
    env.setdefault("NETPOINT_BIND", f"127.0.0.1:{port}")
    env.setdefault("NETPOINT_WORKERS", str(workers))
    migrate(env)
    if kind == "gunicorn":
        cmd = [binary("gunicorn"), "-c", str(root / "gunicorn_conf.py")]
    else:
        cmd = [binary("uwsgi"), "--ini", str(root / "uwsgi.ini")]
    return _start(kind, [*cmd, *(extra_args or [])], tmp_path, env, port, root)


def start_gunicorn(
    tmp_path: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workers: int = 4,
) -> Server:
    return start("gunicorn", tmp_path, env, extra_args, workers)


def start_uwsgi(
    tmp_path: Path,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workers: int = 4,
) -> Server:
    return start("uwsgi", tmp_path, env, extra_args, workers)


def parse_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset(labels)): value} from the text exposition format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def run_to_exit(
    kind: str, tmp_path: Path, env: dict[str, str], timeout: float = 60.0
) -> tuple[int, str]:
    """Start ``kind`` expecting it to refuse: wait for its exit, return (status, output)."""
    if kind == "gunicorn":
        cmd = [binary("gunicorn"), "-c", str(ROOT / "gunicorn_conf.py")]
    else:
        cmd = [binary("uwsgi"), "--ini", str(ROOT / "uwsgi.ini")]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(
            f"{kind} did not exit within {timeout}s:\n{out.decode()[-3000:]}"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out.decode(errors="replace")


def cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``netpoint-metrics`` as an operator would, with the server's environment."""
    return subprocess.run(
        [sys.executable, "-m", "netpoint_metrics.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_fifo(fifo: Path, command: bytes) -> None:
    """Send a command to a uWSGI master FIFO."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, command)
    finally:
        os.close(fd)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail with ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the server's workers, for a master)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def counters(samples: dict) -> dict:
    """The samples that must never decrease: counter totals, histogram buckets/counts/sums.

    Per-process series (``netpoint_process_*``, one per live pid) end with their process by
    design: a replaced worker's CPU seconds vanish, they do not decrease.
    """
    return {
        k: v
        for k, v in samples.items()
        if k[0].endswith(("_total", "_bucket", "_count", "_sum"))
        and "migrations" not in k[0]
        and not k[0].startswith("netpoint_process_")
    }


def assert_never_decreased(before: dict, after: dict) -> None:
    drops = {
        k: (v, after.get(k, 0.0)) for k, v in counters(before).items() if after.get(k, 0.0) < v
    }
    assert not drops, f"counters went down: {list(drops.items())[:5]}"
