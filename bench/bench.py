"""netpoint-metrics benchmarks, run by hand: ``python bench/bench.py [--quick] [--only ...]``.

Everything is measured side by side in one run on this machine, ours against the stock
recipe (wipe at start + ``mark_process_dead`` in ``child_exit``, pid-named files, stock
``MultiProcessCollector``), and reported as ratios with min/median/max over rounds: the
machine is shared and noisy. On a machine with two or more CPUs, servers run pinned to
the first (``taskset``) and the load generator (wrk, or this process when it scrapes or
collects) to the last, so they never take turns on one core.

B1 scrape latency of /metrics after N worker recycles, Gunicorn and uWSGI, ours vs stock.
   A recycle leaves a dead worker's file set behind. Real recycles through a server cost
   ~10-500 ms each (uWSGI throttles respawns), so N dead workers are *added* as copies of a
   real worker's files (stock keeps what stock keeps: everything but live gauges), then
   real recycles run so each server's own hooks act on them, then 30 scrapes are timed.
B2 collecting a directory, stock ``MultiProcessCollector`` vs ours, cold (a collector's
   first scrape: a worker that never scraped, or was just recycled) and warm:
   * http: Gunicorn with 48 live workers after 3,000 requests; /metrics over HTTP, each
     scrape's worker known from a response header, so a worker's first scrape (cold) and
     its later ones (warm) are timed apart; against the stock collector alone, in-process,
     on the same files;
   * live: in-process on copies of 4, 16 and 48 of those workers' files, their leases held
     (live workers: the real case);
   * dead: in-process on 1..1,000 dead workers' file sets (what the stock recipe keeps and
     ours folds away).
   Asserts byte-identical output (exact=False, cold and warm) and equality within one
   ULP (exact=True, the product default) before timing.
B3 request throughput, metrics on vs off vs the stock recipe (wrk, 127.0.0.1 only), five
   alternating rounds per row, worker memory, and the CPU time per request measured
   in-process (``bench/cpu_per_request.py``: the WSGI app called directly), also in
   alternating rounds.
B4 fold time for one dead worker (median, p99), and the Gunicorn master's longest
   ``child_exit`` while scrapes hammer the directory lock.

Results: ``bench/results/<date>-<mode>.json`` (one run); ``bench/report.py`` turns one
results file into the README table and a PNG plot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
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
from collections.abc import Callable
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


def start(
    kind: str,
    variant: str,
    tmp: Path,
    metrics: bool = True,
    cpu: int | None = None,
    **env_extra: str,
):
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
    return servers._start(kind, pinned(cmd, cpu), tmp, env, port)


# -- CPUs and spreads ----------------------------------------------------------------------

_CPUS = sorted(os.sched_getaffinity(0))
#: The server gets one CPU and the load generator (wrk, or this process scraping) the other,
#: so they do not take turns on one core and the numbers say something about each.
SERVER_CPU: int | None = _CPUS[0] if len(_CPUS) > 1 else None
LOAD_CPU: int | None = _CPUS[-1] if len(_CPUS) > 1 else None


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return cmd
    exe = shutil.which("taskset")
    if not exe:
        raise SystemExit("taskset is missing: apt-get install util-linux")
    return [exe, "-c", str(cpu), *cmd]


@contextlib.contextmanager
def pin_self(cpu: int | None):
    """Run this process (the in-process measurements, the scraper) on ``cpu``."""
    old = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def spread(xs: list[float], scale: float = 1.0) -> dict:
    """min / median / max (and n) of repeated measurements, times ``scale``."""
    return {
        "min": min(xs) * scale,
        "median": statistics.median(xs) * scale,
        "max": max(xs) * scale,
        "n": len(xs),
    }


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


def timed_scrapes(srv, n: int = 30, errors: list[str] | None = None) -> list[float]:
    """``n`` timed scrapes. With ``errors`` (the stock recipe), a failed scrape is noted
    there and retried rather than fatal: stock's collector can fail on a file a new
    worker has created but not grown yet (prometheus/client_python#1199)."""
    out: list[float] = []
    for _ in range(3 * n):
        t0 = time.perf_counter()
        status, _, body = srv.get("/metrics")
        dt = time.perf_counter() - t0
        if status != 200 and errors is not None:
            errors.append(f"{status}: {body[:80]!r}")
            continue
        assert status == 200, body[:200]
        out.append(dt)
        if len(out) == n:
            break
    assert len(out) == n, f"only {len(out)} of {n} scrapes answered: {errors}"
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
        if snap is not None and snap.used:
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
                    errors: list[str] | None = [] if variant == "stock" else None
                    timed_scrapes(srv, 3, errors)
                    lat = timed_scrapes(srv, 30, errors)
                    files = len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")])
                    res.append(
                        {
                            "recycles": n,
                            "median_ms": statistics.median(lat) * 1000,
                            "p95_ms": pctl(lat, 0.95) * 1000,
                            "db_files": files,
                            "failed_scrapes": len(errors or []),
                        }
                    )
                    if errors:
                        log(f"B1 {kind} {variant} N={n}: {len(errors)} failed scrapes: {errors[0]}")
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


def _ours(d: Path, exact: bool) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DirectoryCollector(str(d), exact=exact))
    return reg


def forget_process_caches() -> None:
    """What a new worker process does not have yet: compiled formats and their fields,
    bucket-bound texts.

    Collectors share these within a process; measuring "cold" with them warm from an
    earlier round would flatter the first scrape of a worker that was just started.
    """
    from netpoint_metrics.core import families, layouts

    layouts._structs.clear()
    for fields in (layouts._HEAD_FIELDS, layouts._VALUE_FIELDS, layouts._PAIR_FIELDS):
        fields.clear()
    families._go_floats.clear()


def collect_rounds(d: Path, rounds: int) -> dict:
    """Stock vs ours on one directory: cold (a collector's first scrape) and warm.

    Two figures per reader: the collect alone (the collector's ``collect()``: what the
    readers differ in) and a scrape's text (collect + ``generate_latest`` on both sides).
    Every round runs every variant once, starting at a different variant each round, so
    drift on a shared machine and whatever one variant leaves behind hit them alike; a
    variant's objects are dropped and garbage-collected after its timing, never inside
    another's (a worker keeps its collector for life). Checks first that the stock-order
    mode is byte-identical to stock, cold and warm, and the product mode equal within
    1 ULP.
    """
    stock = CollectorRegistry()
    MultiProcessCollector(stock, str(d))
    stock_alone = MultiProcessCollector(None, str(d))  # type: ignore[arg-type]
    warm_exact, warm_same = _ours(d, True), _ours(d, False)
    warm_collector = DirectoryCollector(str(d), exact=True)
    warm_collector.collect()
    ref = generate_latest(stock)
    assert generate_latest(_ours(d, False)) == ref, f"cold exact=False is not stock's ({d})"
    assert generate_latest(warm_same) == ref, f"exact=False is not byte-identical ({d})"
    assert _within_one_ulp(generate_latest(warm_exact), ref), f"exact differs > 1 ULP ({d})"

    def cold_text(exact: bool) -> object:
        reg = _ours(d, exact)
        return reg, generate_latest(reg)

    def cold_collect() -> object:
        collector = DirectoryCollector(str(d), exact=True)
        return collector, collector.collect()

    variants: dict[str, Callable[[], object]] = {
        "stock": lambda: generate_latest(stock),
        "stock_collect": lambda: list(stock_alone.collect()),
        "cold": lambda: cold_text(True),
        "cold_collect": cold_collect,
        "warm": lambda: generate_latest(warm_exact),
        "warm_collect": warm_collector.collect,
        "cold_stock_order": lambda: cold_text(False),
        "warm_stock_order": lambda: generate_latest(warm_same),
    }
    names_ = list(variants)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in names_[r % len(names_) :] + names_[: r % len(names_)]:
            if name.startswith("cold"):
                forget_process_caches()
            gc.collect()
            t0 = time.perf_counter()
            kept = variants[name]()
            times[name].append(time.perf_counter() - t0)
            del kept
    row: dict = {k: spread(v, 1000) for k, v in times.items()}  # ms
    row["files"] = len([f for f in os.listdir(d) if f.endswith(".db")])

    def ratios(a: str, b: str) -> dict:
        return spread([x / y for x, y in zip(times[a], times[b], strict=True)])

    row["speedup_cold"] = ratios("stock", "cold")
    row["speedup_warm"] = ratios("stock", "warm")
    row["cold_over_warm"] = ratios("cold", "warm")
    row["speedup_cold_collect"] = ratios("stock_collect", "cold_collect")
    row["speedup_warm_collect"] = ratios("stock_collect", "warm_collect")
    row["cold_over_warm_collect"] = ratios("cold_collect", "warm_collect")
    row["byte_identical"] = True
    row["exact_within_1ulp"] = True
    return row


def http_scrapes(srv, want: int, limit: int) -> dict:
    """Scrape until ``want`` first-on-a-worker (cold) and later (warm) scrapes are timed."""
    seen: dict[str, int] = {}
    cold: list[float] = []
    warm_: list[float] = []
    collect: dict[str, list[float]] = {"cold": [], "warm": []}  # inside the worker, ms
    n = 0
    for n in range(1, limit + 1):  # noqa: B007  (n is reported)
        t0 = time.perf_counter()
        status, headers, body = srv.get("/metrics")
        dt = time.perf_counter() - t0
        assert status == 200, body[:200]
        pid = headers["x-bench-pid"]
        (warm_ if pid in seen else cold).append(dt)
        if "x-bench-collect-ms" in headers:
            collect["warm" if pid in seen else "cold"].append(float(headers["x-bench-collect-ms"]))
        seen[pid] = seen.get(pid, 0) + 1
        if len(cold) >= want and len(warm_) >= want:
            break
    return {
        "cold": spread(cold, 1000),
        "warm": spread(warm_, 1000),
        "collect_cold": spread(collect["cold"]) if collect["cold"] else None,
        "collect_warm": spread(collect["warm"]) if collect["warm"] else None,
        "scrapes": n,
        "workers_scraped": len(seen),
    }


def copy_live(src: Path, idents: list[str], leases: list[int]) -> Path:
    """The files of ``idents`` in a new directory, their leases held here: live workers."""
    from netpoint_metrics.core import lease

    d = Path(tempfile.mkdtemp(prefix=f"b2-live-{len(idents)}-"))
    d.chmod(0o700)
    for ident in idents:
        leases.append(lease.acquire(str(d), ident))
    for name in os.listdir(src):
        p = names.parse_db_name(name)
        if p is not None and p.ident in idents:
            snap = dbfile.read_snapshot(str(src / name))
            with open(d / name, "wb") as f:  # the used bytes, then the same (sparse) size
                f.write(snap.data if snap is not None else b"")
                f.truncate((src / name).stat().st_size)
    return d


def start_b2(tmp: Path, nworkers: int, **env: str):
    """Gunicorn with ``nworkers`` workers answering with which worker it was (B2)."""
    return start(
        "gunicorn",
        "ours",
        tmp,
        cpu=SERVER_CPU,
        NETPOINT_WORKERS=str(nworkers),
        NETPOINT_WSGI_APP="bench.pid_wsgi:application",
        NETPOINT_TIMEOUT="120",
        **env,
    )


def b2_http(nworkers: int, requests_: int, rounds: int, quick: bool, warm_every: str) -> dict:
    """The HTTP case alone, on its own server (the product default runs inside :func:`b2`)."""
    tmp = Path(tempfile.mkdtemp(prefix="b2-http-"))
    srv = start_b2(tmp, nworkers, NETPOINT_METRICS_WARM_EVERY=warm_every)
    try:
        warm(srv, requests_)
        with pin_self(LOAD_CPU):
            http = http_scrapes(srv, want=20 if quick else nworkers, limit=150 if quick else 500)
            stock = collect_rounds(srv.metrics_dir, rounds)["stock"]
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    http["warm_every"] = warm_every
    http["stock_inprocess"] = stock
    http["speedup_cold"] = stock["median"] / http["cold"]["median"]
    http["speedup_warm"] = stock["median"] / http["warm"]["median"]
    http["cold_over_warm"] = http["cold"]["median"] / http["warm"]["median"]
    log(
        f"B2 http 48 live workers, warm-up every {warm_every} s: cold "
        f"{http['cold']['median']:.1f} ms, warm {http['warm']['median']:.1f} ms, stock alone "
        f"{stock['median']:.1f} ms ({http['speedup_cold']:.1f}x cold)"
    )
    return http


def b2(quick: bool) -> dict:
    """Live workers' files (the real case: Gunicorn, 48 workers), over HTTP and in-process,
    then dead workers' files (what the stock recipe accumulates), cold and warm."""
    nworkers = 48
    requests_ = 600 if quick else 3000
    rounds = 5 if quick else 9
    out: dict = {"workers": nworkers, "requests": requests_, "rounds": rounds}
    # First without background warm-up: each worker's first scrape is its first read.
    out["http_no_warmup"] = b2_http(nworkers, requests_, rounds, quick, warm_every="0")
    tmp = Path(tempfile.mkdtemp(prefix="b2-live-"))
    srv = start_b2(tmp, nworkers)
    leases: list[int] = []
    live_dirs: list[Path] = []
    try:
        warm(srv, requests_)
        mp = srv.metrics_dir
        with pin_self(LOAD_CPU):
            http = http_scrapes(srv, want=20 if quick else nworkers, limit=150 if quick else 500)
            # The same files, in-process (no traffic now): stock alone vs ours.
            inproc = collect_rounds(mp, rounds)
        http["stock_inprocess"] = inproc["stock"]
        http["speedup_cold"] = inproc["stock"]["median"] / http["cold"]["median"]
        http["speedup_warm"] = inproc["stock"]["median"] / http["warm"]["median"]
        http["cold_over_warm"] = http["cold"]["median"] / http["warm"]["median"]
        http["files"] = inproc["files"]
        out["http"] = http
        log(
            f"B2 http 48 live workers: cold {http['cold']['median']:.1f} ms, warm "
            f"{http['warm']['median']:.1f} ms, stock collector alone "
            f"{inproc['stock']['median']:.1f} ms ({http['speedup_cold']:.1f}x cold, "
            f"{http['workers_scraped']} workers in {http['scrapes']} scrapes); collect inside "
            f"the worker: cold {(http['collect_cold'] or {}).get('median', float('nan')):.1f} "
            f"ms, warm {(http['collect_warm'] or {}).get('median', float('nan')):.1f} ms"
        )
        idents = sorted(
            {p.ident for p in map(names.parse_db_name, os.listdir(mp)) if p and not p.is_archive}
        )
        templates = snapshot_templates(mp)
        sizes = (4, 16, len(idents)) if not quick else (len(idents),)
        copies = [(n, copy_live(mp, idents[:n], leases)) for n in sizes]  # before the stop
        live_dirs.extend(d for _, d in copies)
        srv.stop()
        out["live"] = []
        for n, d in copies:
            with pin_self(LOAD_CPU):
                row = {"workers": n, **collect_rounds(d, rounds)}
            out["live"].append(row)
            _log_row("live", row)
    finally:
        srv.stop()
        for fd in leases:
            os.close(fd)
        for d in [tmp, *live_dirs]:
            shutil.rmtree(d, ignore_errors=True)
    out["dead"] = []
    for n in (1, 10, 100, 1000):
        base = Path(tempfile.mkdtemp(prefix=f"b2-dead-{n}-"))  # inject() keeps templates here
        d = base / "metrics"
        d.mkdir(mode=0o700)
        try:
            inject(d, templates, n, stock=True, start_at=0)  # pid-named: both readers take them
            with pin_self(LOAD_CPU):
                row = {"workers": n, **collect_rounds(d, 5 if n >= 1000 else rounds)}
        finally:
            shutil.rmtree(base, ignore_errors=True)
        out["dead"].append(row)
        _log_row("dead", row)
    return out


def _log_row(kind: str, row: dict) -> None:
    log(
        f"B2 {kind} workers={row['workers']:>5} files={row['files']:>5} stock "
        f"{row['stock_collect']['median']:8.1f} ms  ours cold {row['cold_collect']['median']:7.1f}"
        f" ms ({row['speedup_cold_collect']['median']:.1f}x; with text "
        f"{row['speedup_cold']['median']:.1f}x)  warm {row['warm_collect']['median']:7.1f} ms "
        f"({row['speedup_warm_collect']['median']:.1f}x)  cold/warm "
        f"{row['cold_over_warm_collect']['median']:.2f}"
    )


# -- B3 and memory ---------------------------------------------------------------------------

B3_ENDPOINTS = {
    "detail": ("/api/devices/<id>/", "GET /api/devices/<id>/ (cached)"),
    "list": ("/api/devices/", "GET /api/devices/ (DB read)"),
}
SETUPS = ("on", "off", "stock")


def wrk(url: str, seconds: int) -> tuple[float, int]:
    """(requests per second, requests completed) of one wrk run."""
    exe = shutil.which("wrk")
    if not exe:
        raise SystemExit("wrk is missing: apt-get install wrk")
    out = subprocess.run(
        pinned([exe, "-t1", "-c8", f"-d{seconds}s", url], LOAD_CPU),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = done = None
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        elif " requests in " in line:
            done = int(line.split()[0])
    if rps is None or done is None:
        raise RuntimeError(out)
    return rps, done


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by a server: its master, its live workers, and reaped ones.

    Throughput on the server's pinned CPU also drops whenever another tenant of this
    shared machine runs there; the CPU the server itself spends per request does not.
    """

    def stat(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    master = stat(pid)  # fields after "(comm)": utime, stime, cutime, cstime at 11..14
    ticks = sum(int(x) for x in master[11:15])
    for child in servers_children(pid):
        with contextlib.suppress(OSError):
            ticks += sum(int(x) for x in stat(child)[11:13])
    return ticks / _TICK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def servers_children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def _rotated(r: int) -> tuple[str, ...]:
    """on/off/stock in a different order each round, so none always runs first."""
    k = r % len(SETUPS)
    return SETUPS[k:] + SETUPS[:k]


#: The issue's goal is stated for two workers (one per core would be the usual choice).
B3_WORKERS = 2


def b3(quick: bool) -> dict:
    """Throughput on vs off vs stock (wrk, alternating rounds), memory, CPU per request."""
    seconds = 3 if quick else 6
    rounds = 5 if quick else 7
    res: dict = {
        "seconds_per_run": seconds,
        "rounds": rounds,
        "workers": B3_WORKERS,
        "server_cpu": SERVER_CPU,
        "load_cpu": LOAD_CPU,
        "rows": {},
    }
    for kind in ("gunicorn", "uwsgi"):
        srvs: dict = {}
        tmps: list[Path] = []
        try:
            pks = {}
            for setup in SETUPS:
                tmp = Path(tempfile.mkdtemp(prefix=f"b3-{kind}-{setup}-"))
                tmps.append(tmp)
                variant = "stock" if setup == "stock" else "ours"
                srvs[setup] = start(
                    kind,
                    variant,
                    tmp,
                    metrics=setup != "off",
                    cpu=SERVER_CPU,
                    NETPOINT_WORKERS=str(B3_WORKERS),
                )
                pks[setup] = warm(srvs[setup], 60)
            for endpoint, (path, label) in B3_ENDPOINTS.items():
                rps: dict[str, list[float]] = {s: [] for s in SETUPS}
                cpu: dict[str, list[float]] = {s: [] for s in SETUPS}  # server us/request
                for r in range(rounds):
                    for setup in _rotated(r):
                        url = srvs[setup].url + path.replace("<id>", str(pks[setup]))
                        before = tree_cpu_seconds(srvs[setup].pid)
                        got, done = wrk(url, seconds)
                        rps[setup].append(got)
                        used = tree_cpu_seconds(srvs[setup].pid) - before
                        cpu[setup].append(used / max(done, 1) * 1e6)
                row: dict = {"endpoint": label}
                for setup in SETUPS:
                    row[f"rps_{setup}"] = spread(rps[setup])
                    row[f"server_cpu_us_{setup}"] = spread(cpu[setup])
                row["ratio"] = spread([a / b for a, b in zip(rps["on"], rps["off"], strict=True)])
                row["ratio_stock"] = spread(
                    [a / b for a, b in zip(rps["stock"], rps["off"], strict=True)]
                )
                # The throughput the server's own CPU allows, on over off: off's CPU per
                # request over on's, per round.
                row["cpu_ratio"] = spread(
                    [b / a for a, b in zip(cpu["on"], cpu["off"], strict=True)]
                )
                row["cpu_ratio_stock"] = spread(
                    [b / a for a, b in zip(cpu["stock"], cpu["off"], strict=True)]
                )
                for setup in SETUPS:
                    workers = servers_children(srvs[setup].pid)
                    row[f"worker_rss_kb_{setup}"] = statistics.median(rss_kb(p) for p in workers)
                res["rows"][f"{kind}/{endpoint}"] = row
                log(
                    f"B3 {kind:8} {endpoint:6} rps on {row['rps_on']['median']:7.0f} off "
                    f"{row['rps_off']['median']:7.0f} stock {row['rps_stock']['median']:7.0f}; "
                    f"on/off {row['ratio']['median']:.2f} "
                    f"[{row['ratio']['min']:.2f}-{row['ratio']['max']:.2f}], stock/off "
                    f"{row['ratio_stock']['median']:.2f}; server CPU us/request on "
                    f"{row['server_cpu_us_on']['median']:.0f} off "
                    f"{row['server_cpu_us_off']['median']:.0f} stock "
                    f"{row['server_cpu_us_stock']['median']:.0f}: off/on "
                    f"{row['cpu_ratio']['median']:.2f} [{row['cpu_ratio']['min']:.2f}-"
                    f"{row['cpu_ratio']['max']:.2f}], off/stock "
                    f"{row['cpu_ratio_stock']['median']:.2f}"
                )
        finally:
            for srv in srvs.values():
                srv.stop()
            for tmp in tmps:
                shutil.rmtree(tmp, ignore_errors=True)
    res["cpu"] = cpu_per_request(quick)
    return res


def cpu_per_request(quick: bool) -> dict:
    """CPU time per request in-process (``bench/cpu_per_request.py``), alternating rounds."""
    n = 300 if quick else 1500
    rounds = 5
    tmp = Path(tempfile.mkdtemp(prefix="b3-cpu-"))
    try:
        base = servers.base_env(tmp, metrics=True)
        servers.migrate(base)
        cpu: dict[str, list[float]] = {s: [] for s in SETUPS}
        path = B3_ENDPOINTS["detail"][0]
        for r in range(rounds):
            for setup in _rotated(r):
                env = dict(base, METRICS_ENABLED="0" if setup == "off" else "1")
                env.pop("PROMETHEUS_MULTIPROC_DIR")
                if setup != "off":
                    mp = tmp / f"mp-{setup}-{r}"
                    mp.mkdir(mode=0o700)
                    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
                cmd = [sys.executable, str(ROOT / "bench/cpu_per_request.py"), setup, str(n), path]
                proc = subprocess.run(
                    pinned(cmd, LOAD_CPU),
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if proc.returncode:
                    raise RuntimeError(f"cpu_per_request {setup}: {proc.stderr[-2000:]}")
                rec = json.loads(proc.stdout.strip().splitlines()[-1])
                if setup != "off" and not rec["db_files"]:
                    raise RuntimeError(f"{setup}: metrics were not recorded (no .db file)")
                cpu[setup].append(rec["cpu_us"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict = {"endpoint": B3_ENDPOINTS["detail"][1], "requests": n, "rounds": rounds}
    for setup in SETUPS:
        out[f"cpu_us_{setup}"] = spread(cpu[setup])
    ours = [a - b for a, b in zip(cpu["on"], cpu["off"], strict=True)]
    stock = [a - b for a, b in zip(cpu["stock"], cpu["off"], strict=True)]
    out["metrics_cpu_us_ours"] = spread(ours)
    out["metrics_cpu_us_stock"] = spread(stock)
    out["ours_over_stock"] = statistics.median(ours) / statistics.median(stock)
    log(
        f"B3 CPU per request (in-process, {out['endpoint']}): off "
        f"{out['cpu_us_off']['median']:.0f} us, on {out['cpu_us_on']['median']:.0f} us, "
        f"stock {out['cpu_us_stock']['median']:.0f} us; metrics cost ours "
        f"{out['metrics_cpu_us_ours']['median']:.0f} us vs stock "
        f"{out['metrics_cpu_us_stock']['median']:.0f} us ({out['ours_over_stock']:.2f})"
    )
    return out


# -- B4 --------------------------------------------------------------------------------------


def b4(quick: bool) -> dict:
    templates = real_templates()
    base = Path(tempfile.mkdtemp(prefix="b4-"))  # inject() keeps its templates here
    d = base / "metrics"
    d.mkdir(mode=0o700)
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
    shutil.rmtree(base, ignore_errors=True)
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
    ap.add_argument("--quick", action="store_true", help="a minute or two per bench")
    ap.add_argument(
        "--only", nargs="*", default=["b2", "b4", "b1", "b3"], choices=["b1", "b2", "b3", "b4"]
    )
    args = ap.parse_args(argv)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "parts": args.only,
        "machine": machine(),
        "pinning": {"server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU},
    }
    fns = {"b1": b1, "b2": b2, "b3": b3, "b4": b4}
    out = (
        ROOT / "bench" / "results" / f"{result['date'][:19].replace(':', '')}-{result['mode']}.json"
    )
    for name in args.only:
        t0 = time.perf_counter()
        result[name] = fns[name](args.quick)
        result[name]["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=2))  # after each part: a crash keeps the rest
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
