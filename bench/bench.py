"""netpoint-metrics benchmarks (issue #4), run by hand: ``python bench/bench.py [--quick]``.

Everything is measured side by side in one run on this machine, ours against the stock
recipe (wipe at start + ``mark_process_dead`` in ``child_exit``, pid-named files, stock
``MultiProcessCollector``), and reported as ratios: the machine is shared and noisy.

B1 scrape latency of /metrics after N worker recycles, Gunicorn and uWSGI, ours vs stock.
   A recycle leaves a dead worker's file set behind. Real recycles through a server cost
   ~10-500 ms each (uWSGI throttles respawns), so N dead workers are *added* as copies of a
   real worker's files (stock keeps what stock keeps: everything but live gauges), then
   real recycles run so each server's own hooks act on them, then 30 scrapes are timed.
B2 collecting one directory, stock MultiProcessCollector vs ours, 1..1000 workers' files
   cloned from real workers; asserts byte-identical output (exact=False) and equality
   within one ULP (exact=True, the product default).
B3 request throughput, metrics on vs off (wrk, 127.0.0.1 only).
B4 fold time for one dead worker (median, p99), and the Gunicorn master's longest
   ``child_exit`` while scrapes hammer the directory lock.
MEM resident size of master and workers, metrics on vs off.

Results: ``bench/results/<date>-<host>.json``; ``bench/report.py`` turns them into the
README table and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from netpoint_metrics.core import archive, dbfile, lock, names  # noqa: E402
from netpoint_metrics.core.collect import DirectoryCollector  # noqa: E402
from tests import servers  # noqa: E402

FAKE_PID = 5_000_000  # above Linux's pid_max: such a pid never exists


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- servers ---------------------------------------------------------------------------------


def start(kind: str, variant: str, tmp: Path, metrics: bool = True, **env_extra: str):
    env = servers.base_env(tmp, metrics=metrics, **env_extra)
    port = servers.free_port()
    env["NETPOINT_BIND"] = f"127.0.0.1:{port}"
    env.setdefault("NETPOINT_WORKERS", "4")
    env["NETPOINT_LOG_LEVEL"] = "warning"
    servers.migrate(env)
    if kind == "gunicorn":
        conf = {
            "ours": ROOT / "gunicorn_conf.py",
            "stock": ROOT / "bench/stock_gunicorn_conf.py",
            "timed": ROOT / "bench/timed_gunicorn_conf.py",
        }[variant]
        cmd = [servers.binary("gunicorn"), "-c", str(conf)]
    else:
        ini = ROOT / ("uwsgi.ini" if variant == "ours" else "bench/stock_uwsgi.ini")
        cmd = [servers.binary("uwsgi"), "--ini", str(ini), "--disable-logging"]
    return servers._start(kind, cmd, tmp, env, port)


def warm(srv, n: int = 120) -> int:
    """Realistic traffic: creates, reads (cached), updates, 404s. Returns a device id."""
    status, _, body = srv.request("POST", "/api/devices/", {"name": "bench"})
    pk = json.loads(body)["id"]
    for i in range(n):
        op = i % 6
        if op == 0:
            srv.request("POST", "/api/devices/", {"name": f"b{i}"})
        elif op == 1:
            srv.request("GET", "/api/devices/")
        elif op == 2:
            srv.request("PATCH", f"/api/devices/{pk}/", {"status": "planned"})
        elif op == 3:
            srv.request("GET", "/nope")
        else:
            srv.request("GET", f"/api/devices/{pk}/")
    return pk


def catch_up(srv, limit: float = 300.0) -> None:
    """Keep recycling until our hooks have folded the injected backlog (bounded in time).

    Real deaths arrive one at a time and are folded as they come; an injected backlog of
    thousands is worked off 200 per fold, on each later recycle or scrape.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")]) <= 64:
            return
        warm(srv, 40)
        srv.get("/metrics")
    log("B1 catch-up did not finish in time")


def timed_scrapes(srv, n: int = 30) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, _, body = srv.get("/metrics")
        out.append(time.perf_counter() - t0)
        assert status == 200, body[:200]
    return out


def pctl(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)]


# -- file templates --------------------------------------------------------------------------


def snapshot_templates(mp: Path) -> list[dict[str, bytes]]:
    """Each live process's files as {prefix: bytes}: what one dead worker leaves behind."""
    by_ident: dict[str, dict[str, bytes]] = {}
    for name in os.listdir(mp):
        p = names.parse_db_name(name)
        if p is None or p.is_archive:
            continue
        snap = dbfile.read_snapshot(str(mp / name))
        if snap is not None:
            by_ident.setdefault(p.ident, {})[p.prefix] = snap.data
    # the busiest workers are the realistic ones
    return sorted(by_ident.values(), key=lambda t: -sum(len(b) for b in t.values()))[:4]


def inject(mp: Path, templates, n: int, stock: bool, start_at: int) -> None:
    """Add ``n`` dead workers' file sets (hard links to one copy per template and kind)."""
    cache = mp.parent / "templates"
    cache.mkdir(exist_ok=True)
    for i in range(n):
        t = templates[(start_at + i) % len(templates)]
        pid = FAKE_PID + start_at + i
        ident = str(pid) if stock else f"{pid}-{secrets.token_hex(6)}"
        for prefix, data in t.items():
            if stock and prefix.startswith("gauge_live"):
                continue  # stock's mark_process_dead removed these
            src = cache / f"{(start_at + i) % len(templates)}-{prefix}.db"
            if not src.exists():
                src.write_bytes(data)
            os.link(src, mp / f"{prefix}_{ident}.db")


# -- B1 --------------------------------------------------------------------------------------


B1_RUNS = ["gunicorn/ours", "gunicorn/stock", "uwsgi/ours", "uwsgi/stock"]


def b1(quick: bool, runs: list[str] | None = None) -> dict:
    points = [0, 100, 1000] if quick else [0, 100, 1000, 10000]
    out: dict = {"points": points, "runs": {}}
    for key in runs or B1_RUNS:
        kind, variant = key.split("/")
        if True:
            tmp = Path(tempfile.mkdtemp(prefix=f"b1-{kind}-{variant}-"))
            extra = {"NETPOINT_MAX_REQUESTS": "40", "NETPOINT_MIN_WORKER_LIFETIME": "0"}
            srv = start(kind, variant, tmp, **extra)
            try:
                warm(srv, 60)
                templates = snapshot_templates(srv.metrics_dir)
                res = []
                injected = 0
                for n in points:
                    inject(srv.metrics_dir, templates, n - injected, variant == "stock", injected)
                    injected = n
                    warm(srv, 200)  # real recycles: the server's own hooks run
                    if variant == "ours":
                        catch_up(srv)
                    timed_scrapes(srv, 3)
                    lat = timed_scrapes(srv, 30)
                    files = len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")])
                    res.append(
                        {
                            "recycles": n,
                            "median_ms": statistics.median(lat) * 1000,
                            "p95_ms": pctl(lat, 0.95) * 1000,
                            "db_files": files,
                        }
                    )
                    log(
                        f"B1 {kind:8} {variant:5} N={n:>5} median {res[-1]['median_ms']:8.1f} ms"
                        f"  p95 {res[-1]['p95_ms']:8.1f} ms  files {files}"
                    )
                out["runs"][f"{kind}/{variant}"] = res
            finally:
                srv.stop()
                shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- B2 --------------------------------------------------------------------------------------


def real_templates() -> list[dict[str, bytes]]:
    tmp = Path(tempfile.mkdtemp(prefix="b2-src-"))
    srv = start("gunicorn", "ours", tmp)
    try:
        warm(srv, 400)
        return snapshot_templates(srv.metrics_dir)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _within_one_ulp(a: bytes, b: bytes) -> bool:
    fa = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(a.decode())
        for s in f.samples
    }
    fb = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(b.decode())
        for s in f.samples
    }
    if fa.keys() != fb.keys():
        return False
    return all(
        x == y or abs(x - y) <= math.ulp(max(abs(x), abs(y))) * 2
        for x, y in ((fa[k], fb[k]) for k in fa)
    )


def b2(quick: bool) -> dict:
    templates = real_templates()
    res = []
    for n in (1, 10, 100, 1000):
        d = Path(tempfile.mkdtemp(prefix=f"b2-{n}-"))
        d.chmod(0o700)
        inject(d, templates, n, stock=True, start_at=0)  # pid-named: both readers take them
        shutil.rmtree(d.parent / "templates", ignore_errors=True) if False else None
        stock = CollectorRegistry()
        MultiProcessCollector(stock, str(d))
        same = CollectorRegistry(auto_describe=False)
        same.register(DirectoryCollector(str(d), exact=False))
        exact = CollectorRegistry(auto_describe=False)
        exact.register(DirectoryCollector(str(d)))
        t0 = time.perf_counter()
        first = generate_latest(exact)
        first_s = time.perf_counter() - t0
        generate_latest(same)
        ref = generate_latest(stock)
        assert generate_latest(same) == ref, f"exact=False is not byte-identical at {n}"
        assert _within_one_ulp(first, ref), f"exact=True differs by more than 1 ULP at {n}"
        rounds = 3 if n >= 1000 else (5 if quick else 9)
        ts, to, te = [], [], []
        for _ in range(rounds):  # interleaved, so drift hits all three alike
            for reg, acc in ((stock, ts), (same, to), (exact, te)):
                t0 = time.perf_counter()
                generate_latest(reg)
                acc.append(time.perf_counter() - t0)
        files = len(os.listdir(d))
        row = {
            "workers": n,
            "files": files,
            "stock_ms": statistics.median(ts) * 1000,
            "ours_stock_order_ms": statistics.median(to) * 1000,
            "ours_exact_ms": statistics.median(te) * 1000,
            "ours_first_scrape_ms": first_s * 1000,
            "byte_identical": True,
            "exact_within_1ulp": True,
        }
        row["speedup_stock_order"] = row["stock_ms"] / row["ours_stock_order_ms"]
        row["speedup_exact"] = row["stock_ms"] / row["ours_exact_ms"]
        res.append(row)
        log(
            f"B2 workers={n:>5} files={files:>5} stock {row['stock_ms']:8.1f} ms  ours "
            f"{row['ours_exact_ms']:7.1f} ms ({row['speedup_exact']:.1f}x)  stock-order "
            f"{row['ours_stock_order_ms']:7.1f} ms ({row['speedup_stock_order']:.1f}x)"
        )
        shutil.rmtree(d, ignore_errors=True)
    return {"rows": res}


# -- B3 and memory ---------------------------------------------------------------------------


def wrk(url: str, seconds: int) -> float:
    exe = shutil.which("wrk")
    if not exe:
        raise SystemExit("wrk is missing: apt-get install wrk")
    out = subprocess.run(
        [exe, "-t2", "-c8", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    raise RuntimeError(out)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def b3_mem(quick: bool) -> dict:
    """Throughput on vs off, ours and the stock recipe, two endpoints, alternating runs."""
    seconds = 5 if quick else 15
    res = {}
    for kind in ("gunicorn", "uwsgi"):
        for endpoint in ("detail", "list"):
            row: dict = {
                "endpoint": "GET /api/devices/<id>/ (cached)"
                if endpoint == "detail"
                else "GET /api/devices/ (DB read)"
            }
            for setup in ("on", "off", "stock", "on", "off", "stock"):
                tmp = Path(tempfile.mkdtemp(prefix=f"b3-{kind}-"))
                srv = start(
                    kind, "stock" if setup == "stock" else "ours", tmp, metrics=setup != "off"
                )
                try:
                    pk = warm(srv, 60)
                    path = f"/api/devices/{pk}/" if endpoint == "detail" else "/api/devices/"
                    row.setdefault(f"rps_{setup}", []).append(wrk(srv.url + path, seconds))
                    workers = servers_children(srv.pid)
                    row[f"master_rss_kb_{setup}"] = rss_kb(srv.pid)
                    row[f"worker_rss_kb_{setup}"] = statistics.median(rss_kb(p) for p in workers)
                finally:
                    srv.stop()
                    shutil.rmtree(tmp, ignore_errors=True)
            for setup in ("on", "off", "stock"):
                row[f"rps_{setup}_median"] = statistics.median(row[f"rps_{setup}"])
            row["ratio"] = row["rps_on_median"] / row["rps_off_median"]
            row["ratio_stock"] = row["rps_stock_median"] / row["rps_off_median"]
            log(
                f"B3 {kind:8} {endpoint:6} on {row['rps_on_median']:7.0f}  off "
                f"{row['rps_off_median']:7.0f}  stock-on {row['rps_stock_median']:7.0f} rps; "
                f"ours/off {row['ratio']:.2f}, stock/off {row['ratio_stock']:.2f}"
            )
            res[f"{kind}/{endpoint}"] = row
    return res


def servers_children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


# -- B4 --------------------------------------------------------------------------------------


def b4(quick: bool) -> dict:
    templates = real_templates()
    d = Path(tempfile.mkdtemp(prefix="b4-"))
    d.chmod(0o700)
    # four live workers' worth of files stays in place; each round adds one dead worker
    from netpoint_metrics.core import lease

    live = []
    for t in templates:
        ident = f"{os.getpid()}-{secrets.token_hex(6)}"
        live.append(lease.acquire(str(d), ident))
        for prefix, data in t.items():
            (d / f"{prefix}_{ident}.db").write_bytes(data)
    times = []
    rounds = 100 if quick else 400
    for i in range(rounds):
        inject(d, templates, 1, stock=False, start_at=i)
        r = archive.fold(str(d))
        assert r.folded and not r.busy
        times.append(r.seconds)
    # The master never waits: with a scrape holding the shared lock, fold returns at once.
    busy_times = []
    with lock.shared(str(d)):
        for _ in range(50):
            t0 = time.perf_counter()
            assert archive.fold(str(d)).busy
            busy_times.append(time.perf_counter() - t0)
    for fd in live:
        os.close(fd)
    shutil.rmtree(d, ignore_errors=True)
    res = {
        "fold_median_ms": statistics.median(times) * 1000,
        "fold_p99_ms": pctl(times, 0.99) * 1000,
        "busy_return_max_ms": max(busy_times) * 1000,
    }
    # A real Gunicorn master: time every child_exit while a thread keeps scraping.
    tmp = Path(tempfile.mkdtemp(prefix="b4-gunicorn-"))
    stall_log = tmp / "stalls.txt"
    srv = start(
        "gunicorn", "timed", tmp, NETPOINT_MAX_REQUESTS="5", NETPOINT_BENCH_STALL_LOG=str(stall_log)
    )
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            with contextlib.suppress(OSError):
                srv.get("/metrics", timeout=10)

    th = threading.Thread(target=scraper, daemon=True)
    th.start()
    try:
        warm(srv, 300 if quick else 1500)
    finally:
        stop.set()
        th.join(15)
        srv.stop()
    stalls = [tuple(line.split()) for line in stall_log.read_text().splitlines()]
    durs = [float(s[0]) for s in stalls]
    res.update(
        {
            "child_exit_count": len(durs),
            "child_exit_median_ms": statistics.median(durs) * 1000 if durs else None,
            "child_exit_max_ms": max(durs) * 1000 if durs else None,
            "child_exit_busy": sum(int(s[1]) for s in stalls),
        }
    )
    shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"B4 fold median {res['fold_median_ms']:.2f} ms p99 {res['fold_p99_ms']:.2f} ms; "
        f"busy return max {res['busy_return_max_ms']:.3f} ms; child_exit n={len(durs)} "
        f"median {res['child_exit_median_ms']:.2f} ms max {res['child_exit_max_ms']:.2f} ms "
        f"(lock busy {res['child_exit_busy']} times)"
    )
    return res


# -- main ------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    from importlib.metadata import version

    def v(p):
        try:
            return version(p)
        except Exception:
            return None

    return {
        "uname": " ".join(platform.uname()),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "versions": {
            p: v(p)
            for p in (
                "prometheus-client",
                "django",
                "django-prometheus",
                "gunicorn",
                "uwsgi",
                "netpoint-metrics",
            )
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="about a minute or two per bench")
    ap.add_argument(
        "--only", nargs="*", default=["b2", "b4", "b1", "b3"], choices=["b1", "b2", "b3", "b4"]
    )
    ap.add_argument("--into", type=Path, help="merge these parts into an existing results file")
    ap.add_argument("--b1-runs", nargs="*", choices=B1_RUNS, help="only these B1 server/set-ups")
    args = ap.parse_args(argv)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
    }
    fns = {"b1": b1, "b2": b2, "b3": b3_mem, "b4": b4}
    if args.into:  # re-run some parts (e.g. on a quieter machine) into an earlier run
        result = json.loads(args.into.read_text())
        result.setdefault("reruns", []).append(
            {
                "parts": args.only,
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "mode": "quick" if args.quick else "full",
            }
        )
    out = (
        ROOT / "bench" / "results" / f"{result['date'][:19].replace(':', '')}-{result['mode']}.json"
    )
    if args.into:
        out = args.into
    for name in args.only:
        t0 = time.perf_counter()
        if name == "b1" and args.b1_runs:
            part = b1(args.quick, args.b1_runs)
            if "b1" in result and result["b1"]["points"] == part["points"]:
                result["b1"]["runs"].update(part["runs"])  # replace just those rows
                part = result["b1"]
            result["b1"] = part
        else:
            result[name] = fns[name](args.quick)
        result[name]["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=2))  # after each part: a crash keeps the rest
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
