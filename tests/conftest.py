"""Shared fixtures: real servers started per test, always stopped."""

from __future__ import annotations

import pytest

from tests import servers


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
