"""deploy/: the assets operators install, checked by the tools that will read them.

* Prometheus rules: ``promtool check rules`` and ``promtool test rules`` (a real test file
  with input series and expected alerts); every alert is unit-tested and has a runbook
  entry; a real Prometheus loads them, and they only use metric names that exist (a real
  server's /metrics, the self-metric contract, our own recorded names).
* Scrape configs: ``promtool check config`` (the token variant with a real token file).
* systemd units: ``systemd-analyze verify`` on a copy whose ExecStart points at the real
  server binaries, ``systemd-analyze security --offline`` for the hardening, and the
  settings the metrics directory needs. tmpfiles.d: ``systemd-tmpfiles --create`` in a
  temporary root.
* Kubernetes manifests (JSON, which is YAML: no YAML library needed) and the Grafana
  dashboard: structural checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests import prometheus, servers

ROOT = servers.ROOT
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "netpoint.rules.yml"
RULE_TESTS = PROM / "tests" / "netpoint.rules.test.yml"
UNITS = ["netpoint-gunicorn.service", "netpoint-uwsgi.service"]
K8S = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "netpoint-dashboard.json"


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"{name} is not installed: apt-get install systemd")
    return path


@pytest.fixture(scope="module")
def real_names(tmp_path_factory) -> set[str]:
    """Sample names a real Gunicorn's /metrics serves after requests of every kind."""
    tmp = tmp_path_factory.mktemp("real-metrics")
    srv = servers.start_gunicorn(tmp, workers=2)
    try:
        status, _, body = srv.request("POST", "/api/devices/", body={"name": "sw1"})
        assert status == 201, body
        pk = json.loads(body)["id"]
        for _ in range(2):
            srv.get("/api/sites/")
            srv.get("/api/devices/")
            srv.get(f"/api/devices/{pk}/")
        srv.request("PATCH", f"/api/devices/{pk}/", body={"status": "offline"})
        srv.request("DELETE", f"/api/devices/{pk}/")
        names = {name for name, _ in srv.scrape()}
    finally:
        srv.stop()
    assert "django_http_requests_latency_seconds_by_view_method_bucket" in names
    return names


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record: (\S+)\s*$", RULES.read_text(), re.M))


def known_names(real: set[str]) -> set[str]:
    return real | prometheus.contract_sample_names() | recorded_names() | prometheus.SYNTHETIC


def rule_count() -> int:
    out = prometheus.promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    m = re.search(r"SUCCESS: (\d+) rules found", out.stdout)
    assert m, out.stdout
    return int(m.group(1))


# --- Prometheus rules -------------------------------------------------------------------------


def test_metric_names_reads_promql() -> None:
    expr = (
        '(sum by (le) (rate(a_bucket{job=~"$job", status=~"5.."}[$__rate_interval])) '
        "or vector(0)) / on (instance) group_left b:rec:rate5m offset 5m > 1e3 * up"
    )
    assert prometheus.metric_names(expr) == {"a_bucket", "b:rec:rate5m", "up"}
    assert prometheus.metric_names('{__name__="c_total"}') == {"c_total"}


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    assert rule_count() >= 20
    out = prometheus.promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook() -> None:
    rules = RULES.read_text()
    tests = RULE_TESTS.read_text()
    readme = (DEPLOY / "README.md").read_text()
    alerts = re.findall(r"^\s*- alert: (\w+)\s*$", rules, re.M)
    assert len(alerts) == len(set(alerts)) >= 14, alerts
    for alert in alerts:
        firing = re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels:", tests)
        assert firing, f"{alert}: no promtool test case where it fires"
        assert f"runbook: deploy/README.md#{alert.lower()}" in rules, alert
        assert re.search(rf"^### {alert}$", readme, re.M), f"{alert}: no runbook in README"
    tested = set(re.findall(r"alertname: (\w+)", tests))
    assert tested == set(alerts), tested ^ set(alerts)
    # every recording rule is checked by a promql_expr_test or used by an alert
    for name in recorded_names():
        assert tests.count(name) or rules.count(name) > 1, f"{name} is neither tested nor used"


def test_rules_load_in_prometheus_and_use_known_metric_names(real_names, tmp_path) -> None:
    config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(RULES)]}
    with prometheus.running(tmp_path, config) as prom:
        groups = prom.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == rule_count(), [r["name"] for r in rules]
    known = known_names(real_names)
    unknown = {
        r["name"]: sorted(prometheus.metric_names(r["query"]) - known)
        for r in rules
        if prometheus.metric_names(r["query"]) - known
    }
    assert not unknown, f"rules use names no target serves: {unknown}"
    # The whole self-metric contract that is alert-worthy is covered by some rule.
    used = set().union(*(prometheus.metric_names(r["query"]) for r in rules))
    for name in (
        "netpoint_metrics_directory_files",
        "netpoint_metrics_unreadable_files_total",
        "netpoint_metrics_fold_errors_total",
        "netpoint_metrics_fold_duration_seconds_bucket",
        "netpoint_metrics_collect_duration_seconds_bucket",
        "netpoint_metrics_worker_exits_total",
        "netpoint_metrics_dropped_updates_total",
        "django_http_responses_total_by_status_total",
        "up",
        "scrape_duration_seconds",
    ):
        assert name in used, f"no rule uses {name}"


# --- Scrape configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-token.yml"])
def test_scrape_config_passes_promtool(name: str, tmp_path: Path) -> None:
    text = (PROM / name).read_text()
    assert re.search(r"^\s+- job_name: netpoint$", text, re.M), "rules select job=netpoint"
    assert "metrics_path: /metrics" in text
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    token = tmp_path / "netpoint-metrics.token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    if name == "prometheus-token.yml":
        assert "type: Bearer" in text
        assert "credentials_file: /etc/prometheus/netpoint-metrics.token" in text
        (copy / name).write_text(text.replace("/etc/prometheus/netpoint-metrics.token", str(token)))
    out = prometheus.promtool("check", "config", str(copy / name))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {rule_count()} rules found" in out.stdout, out.stdout
    if name == "prometheus-token.yml":
        # promtool really looks at the token file: without it the config is refused.
        token.unlink()
        out = prometheus.promtool("check", "config", str(copy / name))
        assert out.returncode != 0 and "credentials" in out.stdout + out.stderr


# --- systemd ----------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, list[str]]:
    """{"Section.Key": [values in order]} of a unit file (no line continuations in ours)."""
    out: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out[f"{section}.{key.strip()}"].append(value.strip())
    return out


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_settings(unit: str) -> None:
    s = unit_settings(DEPLOY / "systemd" / unit)
    server = "gunicorn" if "gunicorn" in unit else "uwsgi"
    assert one(s, "Service.Type") == "notify"
    assert one(s, "Service.User") not in ("root", "0", "nobody")
    # The metrics directory: this unit's own tmpfs directory, private, gone after a stop.
    runtime = one(s, "Service.RuntimeDirectory")
    assert " " not in runtime and runtime == f"netpoint-{server}"
    assert one(s, "Service.RuntimeDirectoryMode") == "0700"
    assert s.get("Service.RuntimeDirectoryPreserve", ["no"]) == ["no"]
    env = s["Service.Environment"]
    assert f"PROMETHEUS_MULTIPROC_DIR=%t/{runtime}" in env, env
    assert "NETPOINT_METRICS_TOKEN_FILE=%d/metrics-token" in env, env
    assert one(s, "Service.LoadCredential").startswith("metrics-token:/etc/netpoint/")
    # Restarts, reloads, graceful stops.
    assert one(s, "Service.Restart") == "on-failure"
    assert one(s, "Service.KillMode") == "mixed"
    assert int(one(s, "Service.TimeoutStopSec")) > 30  # > NETPOINT_GRACEFUL_TIMEOUT / harakiri
    assert one(s, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    exec_start = one(s, "Service.ExecStart")
    assert exec_start.startswith(f"/opt/netpoint/.venv/bin/{server} ")
    config = "gunicorn_conf.py" if server == "gunicorn" else "uwsgi.ini"
    assert f"/opt/netpoint/{config}" in exec_start and (ROOT / config).exists()
    if server == "uwsgi":
        # TERM must stop uWSGI (die-on-term) and stop it gracefully (hook), both in the
        # shipped uwsgi.ini, so every supervisor gets them.
        ini = (ROOT / "netpoint_metrics" / "uwsgi.ini").read_text()
        assert re.search(r"^die-on-term = true$", ini, re.M)
        assert re.search(
            r"^hook-master-start = unix_signal:15 gracefully_kill_them_all$", ini, re.M
        )
    # Hardening, and nothing world-writable.
    for key, want in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }.items():
        assert one(s, f"Service.{key}") == want, key
    assert "Service.ReadWritePaths" not in s, "only RuntimeDirectory/StateDirectory are writable"
    for key, values in s.items():
        if key.endswith("DirectoryMode"):
            assert all(int(v, 8) & 0o007 == 0 for v in values), (key, values)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verifies_the_unit(unit: str, tmp_path: Path) -> None:
    analyze = systemd_tool("systemd-analyze")
    server = "gunicorn" if "gunicorn" in unit else "uwsgi"
    servers.binary(server)  # the real ExecStart binary (fails with how to install it)
    text = (DEPLOY / "systemd" / unit).read_text()
    assert "/opt/netpoint/.venv/bin/" in text
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/netpoint/.venv/bin/", f"{servers.BIN}/"))

    def verify(path: Path) -> tuple[int, str]:
        out = subprocess.run(
            [analyze, "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.returncode, (out.stdout + out.stderr).strip()

    rc, output = verify(copy)
    assert rc == 0 and output == "", output
    # The verifier really reads our file: a bad value in a copy is reported.
    broken = tmp_path / "broken" / unit
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("ProtectHome=yes", "ProtectHome=maybe"))
    rc, output = verify(broken)
    assert "ProtectHome" in output or "protect home" in output, output
    # Hardening score: systemd's own exposure estimate, 2.0 or better ("OK").
    out = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=20", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert out.returncode == 0 and exposure, out.stdout[-2000:] + out.stderr
    assert float(exposure.group(1)) <= 2.0


def test_systemd_env_file_example_leaves_the_directory_to_the_unit() -> None:
    lines = [
        ln
        for ln in (DEPLOY / "systemd" / "netpoint.env.example").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    keys = dict(ln.split("=", 1) for ln in lines)
    assert keys["METRICS_ENABLED"] == "1"
    assert "PROMETHEUS_MULTIPROC_DIR" not in keys and "NETPOINT_METRICS_TOKEN" not in keys
    readme = (ROOT / "README.md").read_text()
    for key in keys:
        assert key in readme or key == "DJANGO_SETTINGS_MODULE", f"{key} is not documented"


def test_tmpfiles_entry_creates_a_private_directory_never_aged(tmp_path: Path) -> None:
    tmpfiles = systemd_tool("systemd-tmpfiles")
    conf = DEPLOY / "tmpfiles.d" / "netpoint-metrics.conf"
    entries = [ln.split() for ln in conf.read_text().splitlines() if ln and ln[0] != "#"]
    assert entries == [["d", "/run/netpoint-metrics", "0700", "netpoint", "netpoint", "-"]]
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    # "netpoint" in the temporary root's user database: a spare uid when we may chown.
    uid, gid = (4321, 4321) if os.getuid() == 0 else (os.getuid(), os.getgid())
    (root / "etc" / "passwd").write_text(f"netpoint:x:{uid}:{gid}::/nonexistent:/bin/false\n")
    (root / "etc" / "group").write_text(f"netpoint:x:{gid}:\n")

    def run(*args: str) -> None:
        out = subprocess.run(
            [tmpfiles, f"--root={root}", *args, str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr

    run("--create")
    made = root / "run" / "netpoint-metrics"
    st = made.lstat()
    assert made.is_dir() and not made.is_symlink()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, uid, gid)
    # A live worker's file a year old survives --clean (age "-").
    old = made / "counter_1234-abcd.db"
    old.write_bytes(b"\0" * 16)
    year_ago = time.time() - 365 * 86400
    os.utime(old, (year_ago, year_ago))
    run("--clean")
    assert old.exists()


# --- Kubernetes -------------------------------------------------------------------------------


def manifest(name: str) -> dict:
    text = (K8S / name).read_text()
    try:
        return json.loads(text)  # JSON is YAML: kubectl reads it as it is
    except ValueError as exc:
        raise AssertionError(f"{name} must stay JSON-compatible YAML: {exc}") from None


def test_kubernetes_manifests_fit_together() -> None:
    dep = manifest("deployment.yaml")
    svc = manifest("service.yaml")
    sm = manifest("servicemonitor.yaml")
    assert (dep["apiVersion"], dep["kind"]) == ("apps/v1", "Deployment")
    assert (svc["apiVersion"], svc["kind"]) == ("v1", "Service")
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")

    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # job="netpoint" for the rules: the ServiceMonitor takes it from a Service label.
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "netpoint"

    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    value = {k: e.get("value") for k, e in env.items()}

    # Scrape annotations and ServiceMonitor point at the container's /metrics.
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == ports["http"]
    assert value["NETPOINT_BIND"] == f"0.0.0.0:{ports['http']}"
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] in ports
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"

    # The token: one Secret, mounted as a file for the server, read by the operator.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)
    token_file = value["NETPOINT_METRICS_TOKEN_FILE"]
    token_mount = next(m for p, m in mounts.items() if token_file.startswith(p + "/"))
    token_volume = volumes[token_mount["name"]]["secret"]
    assert token_mount["readOnly"] is True and token_volume["defaultMode"] & 0o007 == 0
    creds = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert creds["name"] == token_volume["secretName"]
    assert token_file.endswith("/" + creds["key"])

    # The metrics directory: a private subdirectory the server creates (mode 0700) inside a
    # Memory emptyDir. The emptyDir's root is root-owned and world-writable, which
    # netpoint-metrics refuses, so it must not be the directory itself.
    assert value["METRICS_ENABLED"] == "1"
    mp = value["PROMETHEUS_MULTIPROC_DIR"]
    parent = next(p for p in mounts if mp.startswith(p + "/"))
    run_volume = volumes[mounts[parent]["name"]]
    assert run_volume["emptyDir"]["medium"] == "Memory" and run_volume["emptyDir"]["sizeLimit"]
    assert mp != parent and "/" not in mp[len(parent) + 1 :]
    # With a read-only root filesystem every path written to is a volume.
    assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["medium"] == "Memory"
    for key in ("NETPOINT_DB_PATH", "NETPOINT_CACHE_DIR"):
        assert any(value[key].startswith(p + "/") for p in mounts if p != parent), key

    # Security context: non-root, read-only root, no privilege escalation, no capabilities.
    psc, csc = spec["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False

    # Probes on the named port; a graceful stop fits in the grace period.
    ready, live = container["readinessProbe"], container["livenessProbe"]
    assert ready["httpGet"]["port"] in ports and ready["httpGet"]["path"].startswith("/")
    assert (live.get("tcpSocket") or live.get("httpGet"))["port"] in ports
    assert spec["terminationGracePeriodSeconds"] > int(value["NETPOINT_GRACEFUL_TIMEOUT"])
    assert container["command"][:2] == ["gunicorn", "-c"]
    assert container["command"][2].endswith("/gunicorn_conf.py")
    assert container["resources"]["limits"]["memory"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


# --- Grafana ----------------------------------------------------------------------------------


def dashboard_panels() -> list[dict]:
    dash = json.loads(DASHBOARD.read_text())
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_dashboard_structure_and_metric_names(real_names) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = known_names(real_names)
    used: set[str] = set()
    panels = dashboard_panels()
    assert len(panels) >= 20
    for p in panels:
        title = p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, title
        assert p["datasource"]["uid"] == "${datasource}", title
        assert p["targets"], f"{title}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), title
        for t in p["targets"]:
            expr = t["expr"].strip()
            assert expr, f"{title}: empty query"
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            names = prometheus.metric_names(expr)
            assert names, f"{title}: {expr} selects no metric"
            assert not names - known, f"{title}: unknown names {names - known}"
            if "[" in expr:
                assert "[$__rate_interval]" in expr, f"{title}: use $__rate_interval"
            if "{" in expr:
                assert 'job=~"$job", instance=~"$instance"' in expr, f"{title}: {expr}"
            used |= names
    wanted = {
        "django_http_requests_total_by_method_total",
        "django_http_requests_latency_seconds_by_view_method_bucket",
        "django_http_responses_total_by_status_total",
        "django_db_execute_total",
        "django_cache_get_total",
        "up",
    }
    for name, kind in prometheus.CONTRACT.items():
        wanted.add(f"{name}_bucket" if kind == "histogram" else name)
    assert not wanted - used, f"the dashboard does not show {sorted(wanted - used)}"
