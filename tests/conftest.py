"""Shared fixtures: real servers started per test, always stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values as pc_values

from tests import servers


@pytest.fixture
def mpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private multiprocess directory in the environment; the value class put back after."""
    d = tmp_path / "mp"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(d))
    saved = pc_values.ValueClass
    yield d
    pc_values.ValueClass = saved


@pytest.fixture
def server_factory(tmp_path):
    started: list[servers.Server] = []

    def start(kind: str, **kw) -> servers.Server:
        fn = servers.start_gunicorn if kind == "gunicorn" else servers.start_uwsgi
        srv = fn(tmp_path, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


#: Modules whose real-server tests stay in the fast tier: one smoke test per server.
FAST_SERVER_MODULES = {"test_foundation_servers"}


def pytest_collection_modifyitems(config, items) -> None:
    """Real-server tests belong to the full suite, not the fast tier (``make test-fast``)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if "server_factory" in item.fixturenames and module not in FAST_SERVER_MODULES:
            item.add_marker(pytest.mark.slow)
