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
    runs = sorted(p for p in (HERE / "results").glob("*.json"))
    if not runs:
        raise SystemExit("no results: run python bench/bench.py first")
    return runs[-1]


def table(r: dict, source: str) -> str:
    m = r["machine"]
    v = m["versions"]
    out = [
        f"Run `{source}` ({r['mode']} mode), {r['date']}, on {m['cpu']} "
        f"({m['nproc']} cores, {m['memory_gib']} GiB), Python {m['python']}, "
        f"prometheus-client {v.get('prometheus-client')}, Django {v.get('django')}, "
        f"django-prometheus {v.get('django-prometheus')}, gunicorn {v.get('gunicorn')}, "
        f"uWSGI {v.get('uwsgi')}. Shared, noisy machine: compare within a row.",
        "",
    ]
    for rr in r.get("reruns", []):
        out += [
            f"Parts {', '.join(rr['parts'])} re-run {rr['date']} ({rr['mode']} mode).",
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
        out += [
            "**B2 — collecting one directory (median ms; speed-up vs stock)**",
            "",
            "| workers | files | stock | ours (exact, default) | ours (stock order) | ours first scrape | output |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in r["b2"]["rows"]:
            out.append(
                f"| {x['workers']:,} | {x['files']:,} | {x['stock_ms']:.1f} | "
                f"{x['ours_exact_ms']:.1f} ({x['speedup_exact']:.1f}x) | "
                f"{x['ours_stock_order_ms']:.1f} ({x['speedup_stock_order']:.1f}x) | "
                f"{x['ours_first_scrape_ms']:.1f} | byte-identical (stock order); exact within 1 ULP |"
            )
        out.append("")
    if "b3" in r:
        out += [
            "**B3 — throughput, metrics on vs off (wrk, 2 threads, 8 connections, 4 workers) and memory**",
            "",
            "| server | endpoint | off rps | ours on rps | ours/off | stock on rps | stock/off | worker RSS off / ours / stock kB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, x in r["b3"].items():
            if key == "seconds":
                continue
            out.append(
                f"| {key.split('/')[0]} | {x['endpoint']} | {x['rps_off_median']:.0f} | "
                f"{x['rps_on_median']:.0f} | {x['ratio']:.2f} | {x['rps_stock_median']:.0f} | "
                f"{x['ratio_stock']:.2f} | {x['worker_rss_kb_off']:.0f} / "
                f"{x['worker_rss_kb_on']:.0f} / {x['worker_rss_kb_stock']:.0f} |"
            )
        out.append("")
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
