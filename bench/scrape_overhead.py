"""What a ``/metrics`` scrape costs besides collecting the directory, run by hand:
``python bench/scrape_overhead.py [--requests 3000] [--workers 48] [--label before]``.

Gunicorn with 48 live workers after 3,000 requests of realistic traffic, as B2 in
``bench/bench.py`` starts it (same helpers, server and scraper pinned to different CPUs).
Each scrape's worker and collect time come from response headers (``bench/pid_wsgi.py``),
so a worker's first scrape (cold) and its later ones (warm) are reported apart, each as
total HTTP milliseconds and total minus collecting (the overhead this script is about).
``NETPOINT_BENCH_PHASES=1`` makes the worker time each part of the scrape path as well
(view baking, per-process metrics, self-metrics, migration gauges, the rest of Django),
reported as medians; the stock ``MultiProcessCollector`` alone on the same files, in this
process, is the yardstick issue 11 measures against.

Results: ``bench/results/<date>-scrape-overhead[-label].json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

from bench.bench import LOAD_CPU, SERVER_CPU, log, pin_self, spread, start, warm  # noqa: E402


def _phases(header: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = float(v)
    return out


def _derived(p: dict[str, float], total_ms: float) -> dict[str, float]:
    """Exclusive times from the nested ones the worker reports (all ms)."""
    d = dict(p)
    collect = p.get("collect", 0.0)
    scrape = p.get("scrape", 0.0)
    bake = p.get("bake", 0.0)
    app = p.get("app", 0.0)
    d["total"] = total_ms
    d["non_collect"] = total_ms - collect
    d["http_outside_app"] = total_ms - app
    d["django_outside_bake"] = app - bake
    d["render_and_registry"] = bake - scrape - p.get("migrations", 0.0)
    d["scrape_outside_collect"] = scrape - collect
    return d


def scrapes(srv, want: int, limit: int, headers: dict[str, str] | None = None) -> dict:
    seen: set[str] = set()
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    n = 0
    for n in range(1, limit + 1):  # noqa: B007  (n is reported)
        t0 = time.perf_counter()
        status, got, body = srv.get("/metrics", headers=headers)
        total = (time.perf_counter() - t0) * 1000
        assert status == 200, body[:200]
        pid = got["x-bench-pid"]
        kind = "warm" if pid in seen else "cold"
        seen.add(pid)
        p = _phases(got.get("x-bench-phases"))
        p["collect"] = float(got.get("x-bench-collect-ms", "nan"))
        rows[kind].append(_derived(p, total))
        if len(rows["cold"]) >= want and len(rows["warm"]) >= want:
            break
    out: dict = {"scrapes": n, "workers_scraped": len(seen)}
    for kind, rs in rows.items():
        if not rs:
            continue
        keys = sorted({k for r in rs for k in r})
        out[kind] = {
            k: spread([r[k] for r in rs if k in r]) for k in keys if any(k in r for r in rs)
        }
    return out


def stock_alone(mp: Path, rounds: int = 9) -> dict:
    reg = CollectorRegistry()
    MultiProcessCollector(reg, str(mp))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate_latest(reg)
        times.append(time.perf_counter() - t0)
    return spread(times, 1000)


def summarise_profiles(d: Path, top: int = 35) -> None:
    """Cumulative time per function over every cold, then every warm, scrape profiled."""
    import pstats

    for kind in ("cold", "warm"):
        files = sorted(str(p) for p in d.glob(f"*-{kind}.prof"))
        if not files:
            continue
        stats = pstats.Stats(files[0])
        for f in files[1:]:
            stats.add(f)
        print(f"\n=== {kind}: {len(files)} scrapes, cumulative seconds summed ===")
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=48)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--label", default="")
    ap.add_argument("--limit", type=int, default=600, help="most scrapes to try")
    ap.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus always does")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile every scrape in the workers into DIR (slower: for finding where the "
        "time goes, not for the figures); summarised at the end",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scrape-overhead-"))
    srv = start(
        "gunicorn",
        "ours",
        tmp,
        cpu=SERVER_CPU,
        NETPOINT_WORKERS=str(args.workers),
        NETPOINT_WSGI_APP="bench.pid_wsgi:application",
        NETPOINT_BENCH_PHASES="1",
        NETPOINT_TIMEOUT="120",
        **({"NETPOINT_BENCH_PROFILE": str(Path(args.profile).resolve())} if args.profile else {}),
    )
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    try:
        log(f"warming: {args.requests} requests over {args.workers} workers")
        warm(srv, args.requests)
        with pin_self(LOAD_CPU):
            hdrs = {"Accept-Encoding": "gzip"} if args.gzip else None
            res = scrapes(srv, want=args.workers, limit=args.limit, headers=hdrs)
            res["stock_inprocess"] = stock_alone(srv.metrics_dir)
        res["files"] = len([f for f in os.listdir(srv.metrics_dir) if f.endswith(".db")])
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res.update(
        workers=args.workers,
        requests=args.requests,
        server_cpu=SERVER_CPU,
        load_cpu=LOAD_CPU,
        python=platform.python_version(),
        kernel=platform.release(),
        label=args.label,
        gzip=args.gzip,
    )
    for kind in ("cold", "warm"):
        r = res.get(kind)
        if not r:
            continue
        med = {k: v["median"] for k, v in r.items()}
        log(
            f"{kind}: n={r['total']['n']} total {med['total']:.2f} ms "
            f"(min {r['total']['min']:.2f} max {r['total']['max']:.2f}), collect "
            f"{med['collect']:.2f}, non-collect {med['non_collect']:.2f} "
            f"(min {r['non_collect']['min']:.2f} max {r['non_collect']['max']:.2f})"
        )
        log(
            "   medians ms: "
            + ", ".join(f"{k}={v:.2f}" for k, v in med.items() if k not in ("total",))
        )
    log(f"stock MultiProcessCollector alone: {res['stock_inprocess']['median']:.2f} ms")
    if args.profile:
        summarise_profiles(Path(args.profile))
        return
    stamp = dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    suffix = f"-{args.label}" if args.label else ""
    path = ROOT / "bench" / "results" / f"{stamp}-scrape-overhead{suffix}.json"
    path.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    log(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
