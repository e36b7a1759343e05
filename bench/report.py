"""Regenerate the benchmark table and plot from a results JSON (never typed by hand).

    python bench/report.py [bench/results/<run>.json]

Writes ``bench/results/TABLE.md``, ``bench/results/b1_scrape_vs_recycles.png`` and the part
of README.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def latest() -> Path:
    """The newest full run (else the newest run of any mode)."""
    runs = sorted((HERE / "results").glob("*.json"))
    full = [p for p in runs if p.name.endswith("-full.json")]
    if not runs:
        raise SystemExit("no results: run python bench/bench.py first")
    return (full or runs)[-1]


def mmm(x: dict, fmt: str = ".1f") -> str:
    """median [min-max] of a spread."""
    return f"{x['median']:{fmt}} [{x['min']:{fmt}}-{x['max']:{fmt}}]"


def _b2_rows(rows: list[dict]) -> list[str]:
    """Collect alone (what the readers differ in), then with the text rendered."""
    out = [
        "| workers | `.db` files | stock collect | ours cold | ours warm | speed-up cold | speed-up warm | cold / warm | with text: stock, speed-up cold / warm | stock-order cold / warm (text) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        if "stock_collect" not in x:  # results from before the collect-only columns
            x = {**x, "stock_collect": x["stock"], "cold_collect": x["cold"],
                 "warm_collect": x["warm"], "speedup_cold_collect": x["speedup_cold"],
                 "speedup_warm_collect": x["speedup_warm"],
                 "cold_over_warm_collect": x["cold_over_warm"]}  # fmt: skip
        out.append(
            f"| {x['workers']:,} | {x['files']:,} | {mmm(x['stock_collect'])} | "
            f"{mmm(x['cold_collect'])} | {mmm(x['warm_collect'])} | "
            f"{mmm(x['speedup_cold_collect'])}x | {mmm(x['speedup_warm_collect'])}x | "
            f"{mmm(x['cold_over_warm_collect'], '.2f')} | {x['stock']['median']:.1f} ms, "
            f"{x['speedup_cold']['median']:.1f}x / {x['speedup_warm']['median']:.1f}x | "
            f"{x['cold_stock_order']['median']:.1f} / {x['warm_stock_order']['median']:.1f} |"
        )
    return out


def table(r: dict, source: str) -> str:
    m = r["machine"]
    v = m["versions"]
    pin = r.get("pinning") or {}
    out = [
        f"Run `{source}` ({r['mode']} mode, parts {', '.join(p for p in ('b1', 'b2', 'b3', 'b4') if p in r)}), {r['date']}, "
        f"on {m['cpu']} ({m['nproc']} cores, {m['memory_gib']} GiB), Python {m['python']}, "
        f"prometheus-client {v.get('prometheus-client')}, Django {v.get('django')}, "
        f"django-prometheus {v.get('django-prometheus')}, gunicorn {v.get('gunicorn')}, "
        f"uWSGI {v.get('uwsgi')}. Servers pinned to CPU {pin.get('server_cpu')}, load "
        f"generator and in-process measurements to CPU {pin.get('load_cpu')}. Shared, noisy "
        "machine: cells are median [min-max] over alternating rounds; compare within a row.",
        "",
    ]
    if "b1" in r:
        pts = r["b1"]["points"]
        out += [
            "**B1 — /metrics latency (median / p95 ms, `.db` files) after N worker recycles**",
            "",
            "| server | set-up | " + " | ".join(f"N={n:,}" for n in pts) + " | ours N=max / N=0 |",
            "|---|---|" + "---|" * len(pts) + "---|",
        ]
        for key, rows in r["b1"]["runs"].items():
            kind, variant = key.split("/")
            cells = [f"{x['median_ms']:.1f} / {x['p95_ms']:.1f} ({x['db_files']})" for x in rows]
            ratio = rows[-1]["median_ms"] / rows[0]["median_ms"]
            out.append(f"| {kind} | {variant} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
        out.append("")
    if "b2" in r:
        b2 = r["b2"]
        h = b2["http"]
        out += [
            "**B2 — collecting a directory, ms (cold: a collector's first scrape; warm: later ones)**",
            "",
            f"Gunicorn, {b2['workers']} live workers after {b2['requests']:,} requests "
            f"({h['files']} `.db` files), `/metrics` over HTTP, each scrape's worker known: "
            f"first scrape on a worker (cold) {mmm(h['cold'])} ms (n={h['cold']['n']}), later "
            f"scrapes (warm) {mmm(h['warm'])} ms (n={h['warm']['n']}); the stock collector "
            f"alone, in-process, on the same files: {mmm(h['stock_inprocess'])} ms. "
            f"HTTP cold is **{h['speedup_cold']:.1f}x** faster than stock alone, warm "
            f"**{h['speedup_warm']:.1f}x**; cold / warm {h['cold_over_warm']:.2f}."
            + (
                f" Of that, collecting inside the worker took {mmm(h['collect_cold'])} ms cold "
                f"and {mmm(h['collect_warm'])} ms warm (the rest is Django, rendering, HTTP)."
                if h.get("collect_cold") and h.get("collect_warm")
                else ""
            ),
            *(
                [
                    "",
                    f"The same with background warm-up off (`NETPOINT_METRICS_WARM_EVERY=0`: "
                    f"a worker's first scrape really is its first read of the directory): "
                    f"cold {mmm(h0['cold'])} ms, warm {mmm(h0['warm'])} ms, stock alone "
                    f"{mmm(h0['stock_inprocess'])} ms: cold **{h0['speedup_cold']:.1f}x** "
                    f"faster than stock, cold / warm {h0['cold_over_warm']:.2f}"
                    + (
                        f"; collecting inside the worker {mmm(h0['collect_cold'])} ms cold, "
                        f"{mmm(h0['collect_warm'])} ms warm."
                        if h0.get("collect_cold") and h0.get("collect_warm")
                        else "."
                    ),
                ]
                if (h0 := b2.get("http_no_warmup"))
                else []
            ),
            "",
            "Live workers' files (in-process, copies of those workers' files with their "
            "leases held):",
            "",
            *_b2_rows(b2["live"]),
            "",
            "Dead workers' files (what the stock recipe keeps; ours folds them away):",
            "",
            *_b2_rows(b2["dead"]),
            "",
            "Before timing, every directory is checked: stock-order mode byte-identical to "
            "stock (cold and warm), product mode (exact sums) within 1 ULP.",
            "",
        ]
    if "b3" in r:
        b3 = r["b3"]
        out += [
            f"**B3 — throughput, metrics on vs off vs the stock recipe (wrk 1 thread, 8 "
            f"connections, {b3['seconds_per_run']} s per run, {b3['rounds']} alternating "
            f"rounds, {b3.get('workers', 4)} workers), and memory**",
            "",
            "| server | endpoint | off rps | ours on rps | ours / off | stock rps | stock / off | server CPU us/request off / ours / stock | CPU-bound throughput ours / off | stock / off | worker RSS off / ours / stock kB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, x in b3["rows"].items():
            cpu_cells = (
                f"{x['server_cpu_us_off']['median']:.0f} / {x['server_cpu_us_on']['median']:.0f}"
                f" / {x['server_cpu_us_stock']['median']:.0f} | {mmm(x['cpu_ratio'], '.2f')} | "
                f"{mmm(x['cpu_ratio_stock'], '.2f')}"
                if "cpu_ratio" in x
                else "- | - | -"
            )
            out.append(
                f"| {key.split('/')[0]} | {x['endpoint']} | {mmm(x['rps_off'], '.0f')} | "
                f"{mmm(x['rps_on'], '.0f')} | {mmm(x['ratio'], '.2f')} | "
                f"{mmm(x['rps_stock'], '.0f')} | {mmm(x['ratio_stock'], '.2f')} | "
                f"{cpu_cells} | {x['worker_rss_kb_off']:.0f} / {x['worker_rss_kb_on']:.0f} / "
                f"{x['worker_rss_kb_stock']:.0f} |"
            )
        out += [
            "",
            "Server CPU per request: CPU time of the server's processes (master and workers, "
            "from `/proc`) during each wrk run over the requests it completed; off's over "
            "ours (per round) is the throughput ratio the server's own work allows. Throughput "
            "on the pinned CPU also falls when another tenant of this shared machine runs "
            "there, CPU per request does not; where the two columns agree, the server had "
            "its CPU to itself.",
        ]
        c = b3["cpu"]
        out += [
            "",
            f"CPU time per request in-process (`bench/cpu_per_request.py`, WSGI app called "
            f"directly, {c['endpoint']}, {c['requests']:,} requests x {c['rounds']} "
            f"alternating rounds), us: off {mmm(c['cpu_us_off'], '.0f')}, ours "
            f"{mmm(c['cpu_us_on'], '.0f')}, stock {mmm(c['cpu_us_stock'], '.0f')}. What "
            f"metrics add: ours {mmm(c['metrics_cpu_us_ours'], '.0f')}, stock "
            f"{mmm(c['metrics_cpu_us_stock'], '.0f')} (ours / stock {c['ours_over_stock']:.2f}).",
            "",
        ]
    if "b4" in r:
        x = r["b4"]
        out += [
            "**B4 — folding**",
            "",
            f"- fold of one dead worker: median {x['fold_median_ms']:.2f} ms, p99 {x['fold_p99_ms']:.2f} ms",
            f"- fold while a scrape holds the lock returns at once: max {x['busy_return_max_ms']:.3f} ms",
            f"- real Gunicorn master, {x['child_exit_count']} `child_exit` calls under constant "
            f"scraping: median {x['child_exit_median_ms']:.2f} ms, longest {x['child_exit_max_ms']:.2f} ms; "
            f"{x['child_exit_busy']} found the lock busy and were retried later (the master never waited)",
            "",
        ]
    return "\n".join(out)


def plot(r: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install -r bench/requirements.txt): no plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, rows in r["b1"]["runs"].items():
        xs = [max(x["recycles"], 1) for x in rows]
        ys = [x["median_ms"] for x in rows]
        ax.plot(xs, ys, marker="o", linestyle="-" if "ours" in key else "--", label=key)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("worker recycles (N=0 drawn at 1)")
    ax.set_ylabel("/metrics median latency, ms")
    ax.set_title("Scrape latency vs worker recycles: netpoint-metrics vs stock")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    src = Path(args[0]) if args else latest()
    r = json.loads(src.read_text())
    text = table(r, src.name)
    if "b1" in r and plot(r, HERE / "results" / "b1_scrape_vs_recycles.png"):
        text += "\n![scrape latency vs recycles](bench/results/b1_scrape_vs_recycles.png)\n"
    (HERE / "results" / "TABLE.md").write_text(text + "\n")
    readme = ROOT / "README.md"
    body = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
