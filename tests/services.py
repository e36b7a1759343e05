"""Throwaway PostgreSQL and Redis servers for tests, on loopback, stopped by pid after.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the server runs
as the system user ``netpoint-test`` (created with ``useradd`` if missing, ``nobody`` if that
fails) in a temporary directory it owns. Both servers listen on 127.0.0.1 on a free port,
keep nothing on disk beyond their temporary directory, and are stopped by the pid we
started (never by name). A missing binary fails with the package to install.

Fixtures (module scope: one server per test module; each test gets its own database or
Redis database number): ``postgres`` gives a :class:`Postgres`, ``redis_server`` a
:class:`Redis`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port

PG_USER = "netpoint-test"
APT_POSTGRES = "apt-get install postgresql"
APT_REDIS = "apt-get install redis-server"


def _find_pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise AssertionError(
        f"PostgreSQL's {name} is not installed (looked in PATH and /usr/lib/postgresql/*/bin): "
        f"run `{APT_POSTGRES}`"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        capture_output=True,
        timeout=30,
    )
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        print(f"useradd {PG_USER} failed ({done.stderr!r}); running PostgreSQL as nobody")
        return pwd.getpwnam("nobody")


def _poll(what: str, check, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            check()
            return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"{what} not ready in {timeout}s ({last}):\n{_tail(log)}")


def _tail(log: Path, n: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen, sig: int, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)


@dataclass
class Postgres:
    """A running throwaway PostgreSQL; :meth:`database` makes a fresh database."""

    proc: subprocess.Popen
    port: int
    root: Path
    log: Path
    _made: int = field(default=0)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def database(self, prefix: str = "netpoint") -> str:
        """CREATE DATABASE with a new name; returns its ``DATABASE_URL``."""
        import psycopg

        self._made += 1
        name = f"{prefix}_{self._made}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGQUIT)  # "immediate" shutdown: nothing here is worth keeping
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> Postgres:
    initdb = _find_pg_binary("initdb")
    postgres = _find_pg_binary("postgres")
    user = _run_as()
    # Not under pytest's tmp_path: its parents are private to root, the server's user
    # could not reach them.
    root = Path(tempfile.mkdtemp(prefix="netpoint-pg-"))
    data, sockets, log = root / "data", root / "sockets", root / "postgres.log"
    sockets.mkdir()
    kw: dict = {}
    if user is not None:
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    done = subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        env=env,
        cwd=root,
        capture_output=True,
        timeout=120,
        **kw,
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"initdb failed: {done.stdout.decode()}\n{done.stderr.decode()}")
    port = free_port()
    with open(log, "ab") as out:
        if user is not None:
            os.chown(log, user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(
            [
                postgres,
                "-D", str(data),
                "-p", str(port),
                "-k", str(sockets),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],  # fmt: skip
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
    server = Postgres(proc, port, root, log)

    def ready() -> None:
        import psycopg

        psycopg.connect(server.url(), connect_timeout=2).close()

    try:
        _poll("postgres", ready, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Redis:
    """A running throwaway Redis; :meth:`database` hands out a fresh database number."""

    proc: subprocess.Popen
    port: int
    root: Path
    log: Path
    _next: int = field(default=0)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def database(self) -> str:
        """A ``REDIS_URL`` of a database number no earlier test used (16 per server)."""
        if self._next >= 16:
            raise AssertionError("this test module used all 16 Redis databases")
        db, self._next = self._next, self._next + 1
        return self.url(db)

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis() -> Redis:
    binary = shutil.which("redis-server")
    if not binary:
        raise AssertionError(f"redis-server is not installed: run `{APT_REDIS}`")
    root = Path(tempfile.mkdtemp(prefix="netpoint-redis-"))
    log = root / "redis.log"
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(root),
                "--daemonize", "no",
                "--databases", "16",
            ],  # fmt: skip
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Redis(proc, port, root, log)

    def ready() -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            assert client.ping()
        finally:
            client.close()

    try:
        _poll("redis-server", ready, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def postgres():
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server():
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
