"""Issue 10.1: /metrics access control, the same through every way of serving metrics.

The policy's unit tests, then each status case against real Gunicorn and uWSGI (the
Django view) and the ``serve`` exporter: no token 401 with ``WWW-Authenticate: Bearer``,
wrong token 403, right token 200, a client outside the allow-list 403 even with the
right token. The client's address is chosen by binding the test's socket to 127.0.0.2.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from netpoint_metrics.core import access
from tests import servers
from tests.serve_support import get, start_exporter

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-Zq9"


def policy(**env: str) -> access.Policy:
    return access.Policy.from_env(env)


def test_open_by_default() -> None:
    p = policy()
    assert p.open
    assert p.check(None, "192.0.2.1").status == 200
    assert p.check(None, None).status == 200


def test_token_cases() -> None:
    p = policy(NETPOINT_METRICS_TOKEN=TOKEN)
    missing = p.check(None, "127.0.0.1")
    assert missing.status == 401
    assert dict(missing.headers)["WWW-Authenticate"].startswith("Bearer")
    assert p.check("Basic dXNlcjpwdw==", "127.0.0.1").status == 401  # not a bearer token
    assert p.check("Bearer", "127.0.0.1").status == 401
    assert p.check("Bearer wrong", "127.0.0.1").status == 403
    assert p.check(f"Bearer {TOKEN}x", "127.0.0.1").status == 403
    assert p.check(f"Bearer {TOKEN[:-1]}", "127.0.0.1").status == 403
    assert p.check(f"Bearer {TOKEN}", "127.0.0.1").status == 200
    assert p.check(f"bearer  {TOKEN} ", "127.0.0.1").status == 200  # scheme is case-blind
    assert p.check("Bearer h\u00e9", "127.0.0.1").status == 403  # non-ASCII: no TypeError
    assert TOKEN not in p.describe()


def test_allow_list() -> None:
    p = policy(NETPOINT_METRICS_ALLOW="10.0.0.0/8, 127.0.0.1, 2001:db8::/32")
    assert p.check(None, "10.1.2.3").status == 200
    assert p.check(None, "127.0.0.1").status == 200
    assert p.check(None, "::ffff:127.0.0.1").status == 200  # dual-stack socket
    assert p.check(None, "2001:db8::5").status == 200
    assert p.check(None, "127.0.0.2").status == 403
    assert p.check(None, "").status == 403  # Unix socket: no address to vouch for
    assert p.check(None, "not-an-address").status == 403
    both = policy(NETPOINT_METRICS_ALLOW="127.0.0.1/32", NETPOINT_METRICS_TOKEN=TOKEN)
    assert both.check(f"Bearer {TOKEN}", "127.0.0.2").status == 403
    assert both.check(None, "127.0.0.1").status == 401


def test_token_file_several_tokens(tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text(f"# rolled 2026-11-25\nold-token\n{TOKEN}\n")
    p = policy(NETPOINT_METRICS_TOKEN_FILE=str(f))
    assert p.check("Bearer old-token", None).status == 200
    assert p.check(f"Bearer {TOKEN}", None).status == 200
    assert p.check("Bearer # rolled", None).status == 403


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"NETPOINT_METRICS_ALLOW": "10.0.0.300/8"}, ["NETPOINT_METRICS_ALLOW", "10.0.0.300"]),
        ({"NETPOINT_METRICS_ALLOW": "10.0.0.1/8"}, ["NETPOINT_METRICS_ALLOW", "10.0.0.0/8"]),
        ({"NETPOINT_METRICS_ALLOW": " , "}, ["NETPOINT_METRICS_ALLOW"]),
        ({"NETPOINT_METRICS_TOKEN_FILE": "/nonexistent/token"}, ["NETPOINT_METRICS_TOKEN_FILE"]),
        (
            {"NETPOINT_METRICS_TOKEN": "a", "NETPOINT_METRICS_TOKEN_FILE": "/x"},
            ["not both"],
        ),
        ({"NETPOINT_METRICS_TOKEN": "two words"}, ["whitespace"]),
    ],
)
def test_bad_settings_name_the_setting(env, words) -> None:
    with pytest.raises(access.AccessConfigError) as err:
        access.Policy.from_env(env)
    for w in words:
        assert w in str(err.value)


def test_empty_token_file_is_an_error(tmp_path) -> None:
    f = tmp_path / "token"
    f.write_text("\n# nothing\n")
    with pytest.raises(access.AccessConfigError, match="holds no token"):
        access.Policy.from_env({"NETPOINT_METRICS_TOKEN_FILE": str(f)})


def assert_status_cases(port: int, path: str = "/metrics") -> None:
    """Every status case against one listening port that expects TOKEN from 127.0.0.1."""
    status, headers, _ = get(port, path)
    assert status == 401
    assert headers.get("www-authenticate", "").startswith("Bearer")
    status, _, body = get(port, path, headers={"Authorization": "Bearer nope"})
    assert status == 403 and TOKEN.encode() not in body
    status, headers, body = get(port, path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body[:300]
    assert headers["content-type"].startswith("text/plain")
    status, _, _ = get(port, path, headers={"Authorization": f"Bearer {TOKEN}"}, source="127.0.0.2")
    assert status == 403


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_view_status_cases_token_file(server_factory, tmp_path, kind) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = servers.base_env(
        tmp_path,
        NETPOINT_METRICS_TOKEN_FILE=str(token_file),
        NETPOINT_METRICS_ALLOW="127.0.0.1/32, ::1",
    )
    srv = server_factory(kind, env=env, workers=2)
    assert_status_cases(srv.port)
    # The refusal happens before collecting: the app's own pages are not affected.
    status, _, _ = srv.get("/api/sites/", headers={})
    assert status == 200


def test_view_inline_token(server_factory, tmp_path) -> None:
    env = servers.base_env(tmp_path, NETPOINT_METRICS_TOKEN=TOKEN)
    srv = server_factory("gunicorn", env=env, workers=1)
    assert get(srv.port, "/metrics")[0] == 401
    assert get(srv.port, "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    # No allow-list: any local address may read with the token.
    hdr = {"Authorization": f"Bearer {TOKEN}"}
    assert get(srv.port, "/metrics", headers=hdr, source="127.0.0.2")[0] == 200


def test_serve_status_cases(tmp_path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    env = servers.base_env(
        tmp_path,
        NETPOINT_METRICS_TOKEN_FILE=str(token_file),
        NETPOINT_METRICS_ALLOW="127.0.0.1",
    )
    exporter = start_exporter(env, tmp_path)
    try:
        assert_status_cases(exporter.port)
        assert exporter.get("/-/healthy", source="127.0.0.2")[0] == 200  # reveals nothing
    finally:
        assert exporter.stop() == 0, exporter.log()


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: netpoint
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {token_file}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
  - job_name: wrong-token
    authorization:
      credentials_file: {wrong_file}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
  - job_name: no-token
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def test_prometheus_scrapes_with_the_readme_config(server_factory, tmp_path) -> None:
    """The README's ``authorization: credentials_file`` config, in a real Prometheus."""
    import shutil
    import subprocess
    import time
    import urllib.parse
    import urllib.request

    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not installed: apt-get install prometheus"
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    env = servers.base_env(tmp_path, NETPOINT_METRICS_TOKEN_FILE=str(token_file))
    srv = server_factory("gunicorn", env=env, workers=1)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        PROMETHEUS_CONFIG.format(token_file=token_file, wrong_file=wrong, port=srv.port)
    )
    port = servers.free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        health: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/targets", timeout=5
                ) as resp:
                    targets = json.load(resp)["data"]["activeTargets"]
                health = {
                    t["labels"]["job"]: (t["health"], t.get("lastError", "")) for t in targets
                }
            except OSError:
                pass
            if len(health) == 3 and all(h != "unknown" for h, _ in health.values()):
                break
            time.sleep(0.5)
        assert health.get("netpoint", ("?",))[0] == "up", health
        assert health["wrong-token"][0] == "down" and "403" in health["wrong-token"][1], health
        assert health["no-token"][0] == "down" and "401" in health["no-token"][1], health
        query = urllib.parse.quote('django_http_requests_total_by_method_total{job="netpoint"}')
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5
        ) as resp:
            assert json.load(resp)["data"]["result"], "no samples scraped with the token"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
