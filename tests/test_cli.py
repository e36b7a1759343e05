"""The ops CLI: usage and exit codes, doctor's findings, read-only commands against a live
server (issue 7: no file left behind, no total changed, wipe refused while it runs, a
uWSGI reload after any command keeps every counter), and the ``serve`` exporter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netpoint_metrics import doctor, serve
from netpoint_metrics.cli import main
from netpoint_metrics.core import access
from tests import servers
from tests.core_support import FakeProcess, key
from tests.serve_support import get, start_exporter
from tests.servers import cli

# Real servers for every test: the full suite only, not the fast tier.
pytestmark = pytest.mark.slow

K = key("c", "c_total", {"view": "x"})
COMMANDS = ["doctor", "inspect", "collect", "compact", "wipe", "serve"]
SITE_GETS = ("django_http_requests_total_by_view_transport_method_total", "site-list", "GET")


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("NETPOINT_", "PROMETHEUS_MULTIPROC", "prometheus_multiproc")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("METRICS_ENABLED", raising=False)
    access.reset()
    return monkeypatch


# -- usage and exit codes ------------------------------------------------------------


def test_help_on_every_command(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit codes" in out
    for command in COMMANDS:
        assert command in out
        assert main([command, "--help"]) == 0, command
        assert f"usage: netpoint-metrics {command}" in capsys.readouterr().out


def test_usage_errors_exit_2(clean_env, capsys, tmp_path) -> None:
    assert main([]) == 2
    assert main(["bogus"]) == 2
    assert main(["inspect", "--no-such-flag"]) == 2
    assert main(["inspect"]) == 2  # no directory anywhere
    assert "PROMETHEUS_MULTIPROC_DIR" in capsys.readouterr().err
    assert main(["--dir", str(tmp_path), "serve", "--bind", "nonsense"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_console_script_and_module_agree(tmp_path) -> None:
    env = servers.base_env(tmp_path, metrics=False)
    r = cli(env, "--help")
    assert r.returncode == 0 and "netpoint-metrics" in r.stdout
    r = cli(env, "inspect", "--json")  # metrics off: no directory set
    assert r.returncode == 2, r.stderr


def test_importing_the_cli_installs_nothing_and_creates_nothing(tmp_path) -> None:
    d = tmp_path / "metrics"
    d.mkdir(mode=0o700)
    env = servers.base_env(tmp_path)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    code = (
        "import netpoint_metrics.cli, netpoint_metrics.doctor, netpoint_metrics.serve\n"
        "from netpoint_metrics.core import identity\n"
        "assert identity.installed() is None, identity.installed()\n"
        "assert identity._ident == '', identity._ident\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=servers.ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert os.listdir(d) == []


# -- against a directory of fake processes -------------------------------------------


def test_inspect_compact_collect_wipe(tmp_path, capsys) -> None:
    d = str(tmp_path)
    live, dead = FakeProcess(d).start(), FakeProcess(d).start()
    live.add("counter", K, 2)
    dead.add("counter", K, 3)
    dead.kill()
    assert main(["--dir", d, "inspect", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    states = {p["ident"]: p["alive"] for p in report["processes"]}
    assert states == {live.ident: True, dead.ident: False}
    assert report["owner_pid"] is None
    assert main(["--dir", d, "compact"]) == 0
    assert "folded 1 dead" in capsys.readouterr().out
    assert main(["--dir", d, "collect"]) == 0
    assert 'c_total{view="x"} 5.0' in capsys.readouterr().out
    assert main(["--dir", d, "wipe"]) == 1  # a live writer is still there
    assert "live process" in capsys.readouterr().err
    owner_before = sorted(os.listdir(d))
    live.kill()
    assert main(["--dir", d, "wipe"]) == 0
    capsys.readouterr()
    assert main(["--dir", d, "collect"]) == 0
    assert "c_total" not in capsys.readouterr().out
    left = set(os.listdir(d))
    # Only the lock files stay; no owner record is ever written by the CLI.
    assert left <= {"netpoint.lock", "netpoint-owner.lock"}, (owner_before, left)


def findings(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_doctor_with_defaults_is_healthy(tmp_path) -> None:
    env = servers.base_env(tmp_path, metrics=False)
    r = cli(env, "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("healthy")
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in r.stdout
    assert "Traceback" not in r.stderr


def test_doctor_reports_every_misconfiguration(clean_env, tmp_path, capsys) -> None:
    d = tmp_path / "metrics"
    d.mkdir(mode=0o700)
    clean_env.setenv("PROMETHEUS_MULTIPROC_DIR", str(d))
    clean_env.setenv("METRICS_ENABLED", "maybe")
    clean_env.setenv("NETPOINT_PRELOAD", "bogus")
    clean_env.setenv("NETPOINT_WORKERS", "four")
    clean_env.setenv("NETPOINT_METRICS_ALLOW", "10.0.0.300/8")
    clean_env.setattr(doctor, "MIN_FREE_BYTES", 1 << 62)  # no real disk is that large
    (d / "notes.txt").write_text("someone else's file")
    (d / "counter_123-abcdefabcdef.db").write_bytes(b"\x01\x02\x03")
    (d / "corrupt-counter_9-abcdefabcdef.db.bad").write_bytes(b"x")
    (d / "lost+found").mkdir()  # tolerated
    foreign_owner = os.geteuid() == 0  # only root can give a file away; CI runs as root
    if foreign_owner:
        (d / "gauge_livesum_77-abcdefabcdef.db").write_bytes(b"")
        os.chown(d / "gauge_livesum_77-abcdefabcdef.db", 65534, 65534)
    assert main(["doctor"]) == 1
    out = "\n".join(findings(capsys))
    fails = [ln for ln in out.splitlines() if ln.startswith("[FAIL]")]
    for needle in [
        "METRICS_ENABLED='maybe'",
        "NETPOINT_PRELOAD='bogus'",
        "NETPOINT_WORKERS='four'",
        "NETPOINT_METRICS_ALLOW",
        "not netpoint-metrics files: notes.txt",
        "corrupt value file(s)",
        "quarantined file(s)",
        "MiB free",
    ]:
        assert any(needle in ln for ln in fails), (needle, out)
    assert "lost+found" not in out
    if foreign_owner:
        assert any("owned by another user" in ln for ln in fails), out
    assert out.rstrip().endswith("problem(s) found")


def test_doctor_unsafe_directories(clean_env, tmp_path, capsys) -> None:
    world = tmp_path / "world"
    world.mkdir()
    world.chmod(0o777)
    assert main(["--dir", str(world), "doctor"]) == 1
    assert any("world-writable" in ln for ln in findings(capsys))
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert main(["--dir", str(link), "doctor"]) == 1
    assert any("symlink" in ln for ln in findings(capsys))
    assert main(["--dir", str(tmp_path / "missing"), "doctor"]) == 1
    assert any("does not exist" in ln for ln in findings(capsys))


def test_doctor_token_file_permissions(clean_env, tmp_path, capsys) -> None:
    f = tmp_path / "token"
    f.write_text("t0ken\n")
    f.chmod(0o644)
    clean_env.setenv("NETPOINT_METRICS_TOKEN_FILE", str(f))
    assert main(["doctor"]) == 1
    out = findings(capsys)
    assert any("readable by other users" in ln for ln in out), out
    assert all("t0ken" not in ln for ln in out)
    f.chmod(0o600)
    assert main(["doctor"]) == 0
    assert any("bearer token required" in ln for ln in findings(capsys))


# -- against a live server ------------------------------------------------------------


def counters(text: str) -> dict:
    """Every django_* counter sample (what a read-only command must never change)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.type == "counter" and fam.name.startswith("django_"):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def collect_counters(env: dict[str, str]) -> dict:
    r = cli(env, "collect")
    assert r.returncode == 0, r.stderr
    return counters(r.stdout)


def settled_files(d: Path, workers: int, timeout: float = 30.0) -> list[str]:
    """The directory's names once every worker has booted and written its files.

    wait_ready() returns when one worker answers; the others may still be booting.
    """
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while time.monotonic() < deadline:
        now = sorted(os.listdir(d))
        writers = {n.split("_", 1)[1] for n in now if n.startswith("counter_")}
        if now == last and len(writers) >= workers:
            return now
        last = now
        time.sleep(0.3)
    raise AssertionError(f"directory did not settle: {last}")


def site_gets(samples: dict) -> float:
    name, view, method = SITE_GETS
    return servers.value(samples, name, view=view, transport="http", method=method)


def test_read_only_commands_on_a_live_gunicorn(server_factory, tmp_path) -> None:
    srv = server_factory("gunicorn", workers=2)
    for _ in range(5):
        assert srv.get("/api/sites/")[0] == 200
    d = srv.metrics_dir
    env = srv.env
    before_files = settled_files(d, 2)
    before = collect_counters(env)
    assert before, "no counters collected"

    r = cli(env, "inspect", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["owner_pid"] == srv.pid
    assert sum(p["alive"] for p in report["processes"]) >= 2
    r = cli(env, "doctor")
    assert f"owned by a live server master, pid {srv.pid}" in r.stdout, r.stdout
    assert r.returncode == 0, r.stdout
    r = cli(env, "inspect")
    assert r.returncode == 0 and str(srv.pid) in r.stdout
    assert sorted(os.listdir(d)) == before_files, "a read-only command left a file behind"
    assert collect_counters(env) == before

    # compact: a dead process's files (a fake one, SIGKILLed) are folded; totals unchanged.
    fake = FakeProcess(str(d)).start()
    fake.add("counter", K, 7)
    fake.kill()
    with_fake = cli(env, "collect").stdout
    r = cli(env, "compact")
    assert r.returncode == 0 and "folded 1 dead" in r.stdout, r.stdout + r.stderr
    assert cli(env, "collect").stdout.count("c_total") == with_fake.count("c_total")
    assert collect_counters(env) == before
    new = set(os.listdir(d)) - set(before_files)
    assert all(n.startswith(("counter_archive-", "netpoint-archive")) for n in new), new

    # wipe: refused while the server runs, nothing deleted.
    files = sorted(os.listdir(d))
    r = cli(env, "wipe")
    assert r.returncode == 1 and f"pid {srv.pid}" in r.stderr, r.stderr
    r = cli(env, "wipe", "--force")
    assert r.returncode == 1, "--force must not override a live owner"
    assert sorted(os.listdir(d)) == files
    scraped = srv.scrape()
    assert site_gets(scraped) == 5 + 1  # the readiness probe counts too

    # After the server stops: wipe works, and the next start is a clean start.
    assert srv.stop() == 0, srv.log_tail()
    r = cli(env, "doctor")
    assert "no live server owns it" in r.stdout, r.stdout
    r = cli(env, "wipe")
    assert r.returncode == 0, r.stderr
    assert not [n for n in os.listdir(d) if n.endswith(".db")]
    env2 = {k: v for k, v in env.items() if k != "NETPOINT_BIND"}  # a new port
    again = servers.start_gunicorn(tmp_path, env=env2, workers=2)
    try:
        assert site_gets(again.scrape()) == 1  # just this start's readiness probe
    finally:
        again.stop()


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def test_uwsgi_reload_after_every_command_keeps_counters(server_factory, tmp_path) -> None:
    fifo = tmp_path / "master.fifo"
    env = servers.base_env(tmp_path, NETPOINT_MASTER_FIFO=str(fifo))
    srv = server_factory("uwsgi", env=env, workers=2)
    for _ in range(4):
        assert srv.get("/api/sites/")[0] == 200
    d = srv.metrics_dir
    before_files = settled_files(d, 2)
    for args in (["inspect"], ["doctor"], ["collect"], ["compact"], ["wipe"]):
        r = cli(srv.env, *args)
        assert r.returncode == (1 if args == ["wipe"] else 0), (args, r.stdout, r.stderr)
    assert sorted(os.listdir(d)) == before_files
    before = site_gets(srv.scrape())
    assert before == 5
    old = children(srv.pid)
    servers.write_fifo(fifo, b"r")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (children(srv.pid) & old or not children(srv.pid)):
        time.sleep(0.1)
    assert not children(srv.pid) & old, "uWSGI did not reload"
    srv.wait_ready()  # one more site-list GET
    after = site_gets(srv.scrape())
    assert after == before + 1, (before, after, srv.log_tail())


# -- serve ------------------------------------------------------------------------------


def test_serve_keeps_one_warm_collector(tmp_path) -> None:
    d = str(tmp_path)
    p = FakeProcess(d).start()
    p.add("counter", K, 3)
    exporter = serve.Exporter(("127.0.0.1", 0), d, access.Policy())
    t = threading.Thread(target=exporter.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        port = exporter.server_address[1]
        collector = exporter.collector
        status, _, body = get(port, "/metrics")
        assert status == 200 and b'c_total{view="x"} 3.0' in body
        assert collector._layouts, "the first scrape did not fill the file cache"
        cached = dict(collector._layouts)
        p.add("counter", K, 2)
        status, _, body = get(port, "/metrics")
        assert b'c_total{view="x"} 5.0' in body
        assert exporter.collector is collector and set(collector._layouts) == set(cached)
        status, headers, _ = get(port, "/metrics", headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("content-encoding") == "gzip"
        status, headers, body = get(
            port, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        status, _, body = get(port, "/metrics?name[]=c_total")
        assert status == 200 and b"c_total" in body
        assert get(port, "/nope")[0] == 404
    finally:
        exporter.shutdown()
        exporter.server_close()
        t.join(10)
        p.kill()


def test_serve_next_to_a_live_gunicorn(server_factory, tmp_path) -> None:
    srv = server_factory("gunicorn", workers=2)
    for _ in range(3):
        assert srv.get("/api/sites/")[0] == 200
    files = settled_files(srv.metrics_dir, 2)
    exporter = start_exporter(srv.env, tmp_path)
    try:
        status, _, body = exporter.get("/metrics")
        assert status == 200
        assert counters(body.decode()) == collect_counters(srv.env)
        assert site_gets(servers.parse_samples(body.decode())) == 4
        assert sorted(os.listdir(srv.metrics_dir)) == files, "serve created a file"
    finally:
        assert exporter.stop() == 0, exporter.log()


def test_serve_refuses_bad_access_settings(tmp_path) -> None:
    env = servers.base_env(tmp_path, NETPOINT_METRICS_TOKEN_FILE=str(tmp_path / "missing"))
    r = cli(env, "serve", "--bind", f"127.0.0.1:{servers.free_port()}", timeout=30)
    assert r.returncode == 1
    assert "NETPOINT_METRICS_TOKEN_FILE" in r.stderr and len(r.stderr.splitlines()) == 1


def test_serve_stops_cleanly_on_sigterm(tmp_path) -> None:
    env = servers.base_env(tmp_path)
    exporter = start_exporter(env, tmp_path)
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(15) == 0, exporter.log()
    assert "serving" in Path(exporter.log_path).read_text()


def test_doctor_filesystem_and_bare_pid_writers(clean_env, tmp_path, capsys) -> None:
    d = tmp_path / "metrics"
    d.mkdir(mode=0o700)
    bare = FakeProcess(str(d), ident=str(os.getpid()))  # a writer without our identity
    bare.add("counter", K, 1)
    assert main(["--dir", str(d), "doctor"]) == 0
    out = findings(capsys)
    assert any(ln.startswith("[warn]") and "bare pid" in ln for ln in out), out
    fstype = doctor.filesystem_type(str(d))
    assert fstype and any(f"is on {fstype}" in ln for ln in out), out
    clean_env.setattr(doctor, "filesystem_type", lambda path: "nfs4")
    assert main(["--dir", str(d), "doctor"]) == 1
    assert any("local flock" in ln for ln in findings(capsys))
    bare.kill()
