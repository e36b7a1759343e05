"""CPU per request, in-process: metrics off vs stock django-prometheus vs ours (issue 11.2).

Run by hand: ``python bench/per_request.py [--rounds 301] [--requests 25] [--path /api/devices/]``

Three long-lived worker processes, one per variant, each with the sample app loaded and a
WSGI handler called directly with a prebuilt environ (no socket, no server: what is left is
Django plus the metrics code). All three are pinned to the same CPU and measured in turn,
round after round, alternating the order, in short slices (25 requests, ~15 ms), so
drift on this shared machine hits them alike. Interference from other processes only ever
adds time, so the low percentiles of the slices are the least disturbed figures; ratios are
given per round, of the minimums, of the 10th percentiles and of the medians.

* ``off``   METRICS_ENABLED=0: plain Django middlewares, database and cache backends.
* ``stock`` django-prometheus's middlewares and backends with prometheus-client's own
  ``MultiProcessValue`` (pid-named files): the stock recipe.
* ``ours``  :mod:`netpoint_metrics.instrumentation` middlewares, our value class
  (:mod:`netpoint_metrics.core.values`) and our database backends
  (:mod:`netpoint_metrics.db`); the cache backend is django-prometheus's.
* ``ours-mw`` the same with django-prometheus's database backend: what swapping only the
  middleware names gives.

Both "on" variants also run NetPoint's own middleware. The figure that matters is the
metrics cost, ``variant - off`` in CPU microseconds per request, and its ratio
``(ours - off) / (stock - off)``, computed per round (both from the same round) and shown as
min / median / max over rounds. Results go to stdout as a table and, with ``--json``, to a
file.

``--wrk SECONDS`` measures throughput instead: one Gunicorn server (2 workers, pinned to
CPU 0) per variant, ``wrk`` pinned to CPU 1, rounds alternating between the servers, and
reports requests/s on/off per round (min / median / max). There ``ours`` is
``bench/values_settings.py`` (our database backend too) and ``ours-mw`` the sample settings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("off", "stock", "ours", "ours-mw")
OURS_ENGINE = {
    "django_prometheus.db.backends.sqlite3": "netpoint_metrics.db.backends.sqlite3",
    "django_prometheus.db.backends.postgresql": "netpoint_metrics.db.backends.postgresql",
}
OURS_MIDDLEWARE = {
    "django_prometheus.middleware.PrometheusBeforeMiddleware": (
        "netpoint_metrics.instrumentation.PrometheusBeforeMiddleware"
    ),
    "django_prometheus.middleware.PrometheusAfterMiddleware": (
        "netpoint_metrics.instrumentation.PrometheusAfterMiddleware"
    ),
}


# -- worker side -----------------------------------------------------------------------------


def _worker(variant: str, path: str) -> None:
    import django
    from django.conf import settings

    settings.MIDDLEWARE  # noqa: B018  (imports the settings module, which sets up values)
    from prometheus_client import values

    if variant == "stock":
        values.ValueClass = values.MultiProcessValue()
        stock = {v: k for k, v in OURS_MIDDLEWARE.items()}
        settings.MIDDLEWARE = [stock.get(m, m) for m in settings.MIDDLEWARE]
    elif variant.startswith("ours"):
        # ours-mw: our middlewares and value class, django-prometheus's database backend.
        from netpoint_metrics.core import identity
        from netpoint_metrics.core.values import make_value_class

        if getattr(values.ValueClass, "__name__", "") != "NetpointValue":
            values.ValueClass = make_value_class(identity.current)
        settings.MIDDLEWARE = [OURS_MIDDLEWARE.get(m, m) for m in settings.MIDDLEWARE]
        if variant == "ours":
            for db in settings.DATABASES.values():
                db["ENGINE"] = OURS_ENGINE.get(db["ENGINE"], db["ENGINE"])
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    if variant == "off":
        _seed()
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status_seen: list[str] = []

    def start_response(status: str, headers: list, exc_info: object = None) -> None:
        status_seen.append(status)

    def one() -> None:
        env = dict(base)
        env["wsgi.input"] = io.BytesIO(b"")
        body = handler(env, start_response)
        for _ in body:
            pass
        body.close()

    for _ in range(300):
        one()
    if not status_seen or not status_seen[-1].startswith("200"):
        raise SystemExit(f"{variant}: {path} answered {status_seen[-1:]}")
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        status_seen.clear()
        t0 = time.process_time()
        for _ in range(n):
            one()
        cpu = time.process_time() - t0
        ok = sum(1 for s in status_seen if s.startswith("200"))
        print(json.dumps({"us": cpu / n * 1e6, "ok": ok}), flush=True)


def _seed() -> None:
    from netpoint_metrics.sample.dcim.models import Device, Site

    if Device.objects.exists():
        return
    site = Site.objects.create(name="bench", slug="bench")
    for i in range(20):
        Device.objects.create(name=f"dev{i}", site=site, status="active")


# -- Gunicorn + wrk mode ---------------------------------------------------------------------


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children (a Gunicorn master + workers).

    Workers that exited (recycled) are not counted; the bench runs without recycling.
    """
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(x) for x in f.read().split()]
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _wrk_requests(out: str) -> int:
    for line in out.splitlines():
        if " requests in " in line:
            return int(line.split()[0])
    raise RuntimeError(out)


def _wrk(url: str, seconds: int, cpu: int | None) -> float:
    exe = shutil.which("wrk")
    if not exe:
        raise SystemExit("wrk is missing: apt-get install wrk")
    cmd = [exe, "-t1", "-c4", f"-d{seconds}s", url]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    _wrk.last_output = out.stdout  # type: ignore[attr-defined]
    for line in out.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out.stdout)


def _gunicorn(variant: str, tmp: Path, cpu: int | None):  # -> tests.servers.Server
    sys.path.insert(0, str(ROOT))
    from tests import servers

    d = tmp / variant
    d.mkdir()
    env = servers.base_env(d, metrics=variant != "off")
    port = servers.free_port()
    env.update(
        NETPOINT_BIND=f"127.0.0.1:{port}", NETPOINT_WORKERS="2", NETPOINT_LOG_LEVEL="warning"
    )
    conf = ROOT / "gunicorn_conf.py"
    if variant == "ours":
        env["DJANGO_SETTINGS_MODULE"] = "bench.values_settings"
    servers.migrate(env)
    if variant == "stock":
        env["DJANGO_SETTINGS_MODULE"] = "bench.stock_settings"
        conf = ROOT / "bench/stock_gunicorn_conf.py"
    cmd = [servers.binary("gunicorn"), "-c", str(conf)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return servers._start("gunicorn", cmd, d, env, port)


def wrk_mode(rounds: int, seconds: int, path: str) -> dict:
    """Gunicorn, 2 workers, each variant its own server; wrk rounds alternate between them."""
    ncpu = os.cpu_count() or 1
    server_cpu, wrk_cpu = (0, 1) if ncpu >= 2 else (None, None)
    with tempfile.TemporaryDirectory(prefix="per-request-wrk-") as d:
        srvs = {}
        try:
            for v in VARIANTS:
                srvs[v] = _gunicorn(v, Path(d), server_cpu)
                for _ in range(50):
                    assert srvs[v].get(path)[0] == 200
            rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
            cpu_us: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(rounds):
                k = r % len(VARIANTS)
                for v in VARIANTS[k:] + VARIANTS[:k]:
                    before = _tree_cpu(srvs[v].pid)
                    rps[v].append(_wrk(srvs[v].url + path, seconds, wrk_cpu))
                    used = _tree_cpu(srvs[v].pid) - before
                    n = _wrk_requests(_wrk.last_output)  # type: ignore[attr-defined]
                    cpu_us[v].append(used / max(n, 1) * 1e6)
                print(f"round {r + 1}: " + "  ".join(f"{v} {rps[v][-1]:7.0f}/s" for v in VARIANTS))
        finally:
            for s in srvs.values():
                s.stop()
    onoff = {
        v: _spread([rps[v][i] / rps["off"][i] for i in range(rounds)])
        for v in VARIANTS
        if v != "off"
    }
    # Server CPU per request is what decides throughput on a saturated server, and is far
    # less disturbed by the rest of the machine than requests/s: off/on is the capacity ratio.
    capacity = {
        v: _spread([cpu_us["off"][i] / cpu_us[v][i] for i in range(rounds)])
        for v in VARIANTS
        if v != "off"
    }
    print(f"\nGunicorn 2 workers, wrk -c4 {seconds}s x {rounds} rounds on {path}")
    print("  requests/s on/off, min / median / max")
    for v, s in onoff.items():
        print(f"    {v:7s} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")
    print("  server CPU per request, off/on (capacity ratio), min / median / max")
    for v, s in capacity.items():
        print(f"    {v:7s} {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f}")
    print("  server CPU per request, us, min / median / max")
    for v in VARIANTS:
        s = _spread(cpu_us[v])
        print(f"    {v:7s} {s['min']:7.1f} / {s['median']:7.1f} / {s['max']:7.1f}")
    return {
        "requests_per_second": rps,
        "server_cpu_us_per_request": cpu_us,
        "on_over_off": onoff,
        "capacity_on_over_off": capacity,
    }


# -- parent side -----------------------------------------------------------------------------


def _spawn(variant: str, tmp: Path, path: str, cpu: int | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETPOINT_", "PROMETHEUS"))}
    env.pop("prometheus_multiproc_dir", None)
    env["PYTHONPATH"] = str(ROOT)
    env["DJANGO_SETTINGS_MODULE"] = "netpoint_metrics.sample.settings"
    env["NETPOINT_DB_PATH"] = str(tmp / "db.sqlite3")
    env["NETPOINT_CACHE_DIR"] = str(tmp / f"cache-{variant}")
    env["METRICS_ENABLED"] = "0" if variant == "off" else "1"
    if variant != "off":
        mp = tmp / f"mp-{variant}"
        mp.mkdir(mode=0o700)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    cmd = [sys.executable, __file__, "--worker", variant, "--path", path]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"{variant} worker did not start")
    return proc


def _migrate(tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NETPOINT_", "PROMETHEUS"))}
    env.update(
        PYTHONPATH=str(ROOT),
        DJANGO_SETTINGS_MODULE="netpoint_metrics.sample.settings",
        NETPOINT_DB_PATH=str(tmp / "db.sqlite3"),
        METRICS_ENABLED="0",
    )
    subprocess.run(
        [sys.executable, "-m", "netpoint_metrics.sample.manage", "migrate", "--noinput", "-v0"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=300,
    )


def _spread(xs: list[float]) -> dict[str, float]:
    q10 = statistics.quantiles(xs, n=10)[0] if len(xs) >= 2 else xs[0]
    return {"min": min(xs), "q10": q10, "median": statistics.median(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, help="default 301 (in-process), 5 (--wrk)")
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--path", default="/api/devices/")
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="-1: no pinning")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--wrk", type=int, metavar="SECONDS", help="Gunicorn + wrk mode instead")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.path)
        return 0
    if args.wrk:
        res = wrk_mode(args.rounds or 5, args.wrk, args.path)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    args.rounds = args.rounds or 301
    cpu = None if args.cpu < 0 else args.cpu
    with tempfile.TemporaryDirectory(prefix="per-request-") as d:
        tmp = Path(d)
        _migrate(tmp)
        procs = {v: _spawn(v, tmp, args.path, cpu) for v in VARIANTS}
        try:
            us: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(args.rounds):
                k = r % len(VARIANTS)
                order = VARIANTS[k:] + VARIANTS[:k]
                if r % 2:
                    order = tuple(reversed(order))
                for v in order:
                    p = procs[v]
                    assert p.stdin and p.stdout
                    p.stdin.write(f"{args.requests}\n")
                    p.stdin.flush()
                    res = json.loads(p.stdout.readline())
                    if res["ok"] != args.requests:
                        raise SystemExit(f"{v}: only {res['ok']}/{args.requests} answered 200")
                    us[v].append(res["us"])
                if (r + 1) % 50 and r + 1 != args.rounds:
                    continue
                print(
                    f"round {r + 1}: " + "  ".join(f"{v} {us[v][-1]:7.1f} us" for v in VARIANTS),
                    flush=True,
                )
        finally:
            for p in procs.values():
                if p.stdin:
                    p.stdin.close()
                p.wait(timeout=30)
    on = [v for v in VARIANTS if v != "off"]
    cost = {v: [us[v][i] - us["off"][i] for i in range(args.rounds)] for v in on}
    ratios = {
        v: [cost[v][i] / cost["stock"][i] for i in range(args.rounds) if cost["stock"][i] > 0]
        for v in on
        if v != "stock"
    }
    result = {
        "path": args.path,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "cpu_us_per_request": {v: _spread(us[v]) for v in VARIANTS},
        "metrics_cost_us": {v: _spread(cost[v]) for v in cost},
        "cost_over_stock": {v: _spread(r) for v, r in ratios.items() if r},
        # Robust to a loaded machine: the least disturbed slices (min) and the typical ones
        # (median) of each variant, then the cost ratio of those.
        "cost_over_stock_of_min": {
            v: (min(us[v]) - min(us["off"])) / (min(us["stock"]) - min(us["off"])) for v in ratios
        },
        "cost_over_stock_of_q10": {
            v: (_spread(us[v])["q10"] - _spread(us["off"])["q10"])
            / (_spread(us["stock"])["q10"] - _spread(us["off"])["q10"])
            for v in ratios
        },
        "cost_over_stock_of_median": {
            v: (statistics.median(us[v]) - statistics.median(us["off"]))
            / (statistics.median(us["stock"]) - statistics.median(us["off"]))
            for v in ratios
        },
        "raw_us": us,
    }
    print(
        f"\nCPU per request on {args.path} ({args.rounds} rounds x {args.requests}),"
        " min / 10th percentile / median / max"
    )
    for v in VARIANTS:
        s = result["cpu_us_per_request"][v]
        print(
            f"  {v:7s} {s['min']:7.1f} / {s['q10']:7.1f} / {s['median']:7.1f} / {s['max']:7.1f} us"
        )
    for v in cost:
        s = result["metrics_cost_us"][v]
        print(f"  metrics cost {v:7s} {s['min']:6.1f} / {s['median']:6.1f} / {s['max']:6.1f} us")
    for v, s in result["cost_over_stock"].items():
        print(
            f"  {v}/stock metrics cost, per round {s['min']:.2f} / {s['median']:.2f} /"
            f" {s['max']:.2f}; of the minimums {result['cost_over_stock_of_min'][v]:.2f};"
            f" of the 10th percentiles {result['cost_over_stock_of_q10'][v]:.2f};"
            f" of the medians {result['cost_over_stock_of_median'][v]:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
