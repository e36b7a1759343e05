"""Issue 10.5: wrong settings get one clear line at start, not a silent misbehaviour.

Unit tests of the parsers, then real Gunicorn and uWSGI masters started with each bad
value: they must exit non-zero, within a deadline, with a line naming the setting.
Versions are checked from installed distribution metadata; a test shadows one package's
metadata with an older or newer version on ``PYTHONPATH`` (the code itself is unchanged).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netpoint_metrics import config
from tests import servers

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("word", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_words(word) -> None:
    assert config.env_bool("X", environ={"X": word}) is True


@pytest.mark.parametrize("word", ["0", "false", "no", "off", "OFF", ""])
def test_false_words(word) -> None:
    assert config.env_bool("X", True, environ={"X": word}) is (word == "")


@pytest.mark.parametrize("word", ["bogus", "2", "y", "enabled", "-1"])
def test_unknown_words_are_errors(word) -> None:
    with pytest.raises(config.SettingError, match="X="):
        config.env_bool("X", environ={"X": word})


def test_ints() -> None:
    assert config.env_int("N", 4, environ={}) == 4
    assert config.env_int("N", 4, environ={"N": " 7 "}) == 7
    for bad in ("four", "1.5", "0x10", "7 workers"):
        with pytest.raises(config.SettingError, match="not a whole number"):
            config.env_int("N", 4, environ={"N": bad})
    with pytest.raises(config.SettingError, match="below 1"):
        config.env_int("N", 4, minimum=1, environ={"N": "0"})


def test_problems_lists_every_bad_setting() -> None:
    env = {
        "METRICS_ENABLED": "maybe",
        "NETPOINT_PRELOAD": "bogus",
        "NETPOINT_WORKERS": "four",
        "NETPOINT_METRICS_ALLOW": "nonsense",
    }
    found = config.setting_problems(env)
    assert len(found) == 4
    for name in env:
        assert any(name in line for line in found), name
    assert config.setting_problems({}) == []


def test_version_parsing_and_ranges_match_pyproject() -> None:
    assert config.release("5.2.19") == (5, 2, 19)
    assert config.release("0.24.0rc1") == (0, 24, 0)
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]  # tomllib is 3.11+
    deps = re.findall(r'"([^"]+)"', block)
    assert len(deps) == len(config.SUPPORTED)
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([\d.]+),<([\d.]+)", dep.replace(" ", ""))
        assert m, dep
        name, floor, ceiling = m.groups()
        key = next(k for k in config.SUPPORTED if k.lower() == name.lower())
        assert config.SUPPORTED[key] == (config.release(floor), config.release(ceiling)), dep
    assert all(not c.too_old and not c.too_new for c in config.version_checks())


def fake_dist(tmp_path: Path, name: str, version: str) -> Path:
    """A directory whose distribution metadata claims ``name`` is at ``version``."""
    shadow = tmp_path / f"shadow-{name}-{version}"
    info = shadow / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return shadow


def run_until_exit(kind: str, env: dict[str, str], timeout: float = 60.0):
    """Start ``kind`` with ``env`` (no database needed: it must stop before serving)."""
    port = servers.free_port()
    env = dict(env, NETPOINT_BIND=f"127.0.0.1:{port}")
    if kind == "gunicorn":
        cmd = [servers.binary("gunicorn"), "-c", str(ROOT / "gunicorn_conf.py")]
    else:
        cmd = [servers.binary("uwsgi"), "--ini", str(ROOT / "uwsgi.ini")]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(
            f"{kind} did not stop on a bad setting:\n{out.decode()[-3000:]}"
        ) from None
    return proc.returncode, out.decode(errors="replace"), time.monotonic() - t0


BAD = [
    ("NETPOINT_WORKERS", "four"),
    ("NETPOINT_MAX_REQUESTS", "lots"),
    ("NETPOINT_TIMEOUT", "30s"),
    ("NETPOINT_GRACEFUL_TIMEOUT", "-5"),
    ("METRICS_ENABLED", "maybe"),
    ("NETPOINT_METRICS_ALLOW", "10.0.0.1/8"),
    ("NETPOINT_METRICS_TOKEN_FILE", "/nonexistent/token"),
]
BAD_FLAG = {"gunicorn": ("NETPOINT_PRELOAD", "bogus"), "uwsgi": ("NETPOINT_LAZY_APPS", "bogus")}


def assert_refused(kind: str, env: dict[str, str], *names: str) -> None:
    code, out, _ = run_until_exit(kind, env)
    assert code != 0, out[-2000:]
    lines = [ln for ln in out.splitlines() if "refusing to start" in ln]
    assert lines, f"no refusal line:\n{out[-2000:]}"
    for name in names:
        assert any(name in ln for ln in lines), f"{name} not named:\n{out[-2000:]}"
    assert "Traceback" not in out, out[-2000:]


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_servers_refuse_bad_settings(tmp_path, kind) -> None:
    base = servers.base_env(tmp_path)
    for name, raw in [*BAD, BAD_FLAG[kind]]:
        assert_refused(kind, dict(base, **{name: raw}), name)
    # Several at once: one line naming each.
    assert_refused(
        kind,
        dict(base, NETPOINT_WORKERS="x", NETPOINT_PRELOAD="perhaps"),
        "NETPOINT_WORKERS",
        "NETPOINT_PRELOAD",
    )


def test_uwsgi_lazy_apps_worker_refusal_stops_the_instance(tmp_path) -> None:
    """With lazy-apps the check runs in each worker; the instance must stop, not respawn."""
    env = servers.base_env(tmp_path, NETPOINT_LAZY_APPS="1", NETPOINT_MAX_REQUESTS="nope")
    code, out, seconds = run_until_exit("uwsgi", env)
    assert code != 0 and "NETPOINT_MAX_REQUESTS" in out, out[-2000:]
    assert seconds < 30


@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_too_old_dependency_refuses(tmp_path, kind) -> None:
    shadow = fake_dist(tmp_path, "prometheus_client", "0.21.0")
    env = servers.base_env(tmp_path)
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    code, out, _ = run_until_exit(kind, env)
    assert code != 0, out[-2000:]
    line = next((ln for ln in out.splitlines() if "refusing to start" in ln), "")
    assert "prometheus-client 0.21.0 is below the supported range >=0.24.1,<0.27" in line, out


def test_too_new_dependency_warns_and_serves(server_factory, tmp_path) -> None:
    shadow = fake_dist(tmp_path, "Django", "9.0")
    env = servers.base_env(tmp_path)
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    srv = server_factory("gunicorn", env=env, workers=1)
    assert srv.get("/metrics")[0] == 200
    assert "Django 9.0 is above the supported range >=4.2,<6.1" in srv.log_tail(200)


def test_too_old_dependency_stops_any_django_entry_point(tmp_path) -> None:
    """Without our server configs (a project's own Gunicorn config, manage.py), the app
    refuses at start too."""
    shadow = fake_dist(tmp_path, "django-prometheus", "2.3.1")
    env = servers.base_env(tmp_path, metrics=True)
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    r = subprocess.run(
        [sys.executable, "-m", "netpoint_metrics.sample.manage", "check"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "django-prometheus 2.3.1 is below the supported range >=2.4,<2.6" in r.stderr
