"""``netpoint-metrics``: look after a multiprocess directory from the shell.

    netpoint-metrics doctor            check settings and the directory, exit 1 on problems
    netpoint-metrics inspect [--json]  processes, liveness, files, archive generation
    netpoint-metrics collect           print what /metrics would serve (text format)
    netpoint-metrics compact           fold dead processes now (waits for the lock)
    netpoint-metrics wipe              delete archives and dead processes' files

The directory is ``--dir`` or ``PROMETHEUS_MULTIPROC_DIR``. Nothing here imports Django.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from netpoint_metrics.core import archive, dbfile, directory, lease, listing, manifest, names


def _dir(args: argparse.Namespace) -> str:
    path = args.dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        raise SystemExit("no directory: pass --dir or set PROMETHEUS_MULTIPROC_DIR")
    return directory.ensure_directory(path, create=False)


def cmd_inspect(args: argparse.Namespace) -> int:
    path = _dir(args)
    found = listing.scan(path)
    man = manifest.load(path)
    procs = []
    for ident in sorted(found.idents()):
        files = found.files.get(ident, [])
        size = 0
        for f in files:
            with contextlib.suppress(OSError):
                size += os.stat(os.path.join(path, f.filename)).st_size
        procs.append(
            {
                "ident": ident,
                "pid": names.ident_pid(ident),
                "alive": lease.is_alive(path, ident),
                "folded": ident in man.folded,
                "files": sorted(f.filename for f in files),
                "bytes": size,
            }
        )
    report = {
        "directory": path,
        "archive_generation": man.generation,
        "archives": sorted(f.filename for f in found.archives.get(man.generation, [])),
        "stale_archives": sorted(
            f.filename for g, fs in found.archives.items() if g != man.generation for f in fs
        ),
        "processes": procs,
        "db_files": sum(len(p["files"]) for p in procs)
        + sum(len(fs) for fs in found.archives.values()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"directory  {path}")
    print(f"archive    generation {man.generation}: {', '.join(report['archives']) or '-'}")
    print(f"db files   {report['db_files']}")
    for p in procs:
        state = "folded" if p["folded"] else ("alive" if p["alive"] else "dead")
        print(f"  {p['ident']:<28} {state:<7} {len(p['files']):>2} files {p['bytes']:>9} bytes")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest

    from netpoint_metrics.core.collect import DirectoryCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectoryCollector(_dir(args)))
    sys.stdout.write(generate_latest(registry).decode())
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    path = _dir(args)
    folded, corrupt, seconds, generation = 0, 0, 0.0, 0
    for _ in range(10_000):  # batches; bounded
        result = archive.fold(path, wait=True, timeout=args.timeout)
        if result.busy:
            print("directory stayed locked; stopping", file=sys.stderr)
            return 1
        folded += len(result.folded)
        corrupt += len(result.corrupt)
        seconds += result.seconds
        generation = result.generation
        if not result.more:
            break
    print(
        f"folded {folded} dead process(es) into generation {generation} "
        f"in {seconds * 1000:.1f} ms; {corrupt} unreadable file(s) set aside"
    )
    return 0


def cmd_wipe(args: argparse.Namespace) -> int:
    path = _dir(args)
    try:
        result = directory.wipe(path, force=args.force)
    except directory.DirectoryInUse as exc:
        print(f"netpoint-metrics: {exc}", file=sys.stderr)
        return 1
    print(f"wiped {result.wiped} file(s); kept {result.kept_live} live process(es)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from netpoint_metrics.bootstrap import metrics_enabled

    problems = 0

    def report(ok: bool, text: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {text}")

    try:
        enabled = metrics_enabled()
        report(True, f"METRICS_ENABLED parses ({enabled})")
    except ValueError as exc:
        report(False, str(exc))
    raw = args.dir or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not raw:
        report(False, "PROMETHEUS_MULTIPROC_DIR is not set (the servers make a private one)")
        return 1
    try:
        path = directory.ensure_directory(raw, create=False)
        report(True, f"{path} is a private directory we own")
    except directory.UnsafeDirectory as exc:
        report(False, str(exc))
        return 1
    bad = []
    for entry in os.scandir(path):
        if entry.name.endswith(".db") and names.parse_db_name(entry.name) is None:
            bad.append(entry.name)
        elif entry.name.endswith(".db"):
            try:
                dbfile.read_entries(entry.path)
            except dbfile.CorruptFile as exc:
                bad.append(f"{entry.name} ({exc})")
    report(not bad, f"{len(bad)} unreadable or foreign .db file(s) {bad[:5] if bad else ''}")
    quarantined = [n for n in os.listdir(path) if n.startswith(names.QUARANTINE_PREFIX)]
    report(not quarantined, f"{len(quarantined)} quarantined file(s) set aside by folds")
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    report(free > 64 << 20, f"{free >> 20} MiB free on the directory's filesystem")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netpoint-metrics", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="multiprocess directory (default: PROMETHEUS_MULTIPROC_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list processes, files and archives")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    sub.add_parser("collect", help="print the aggregate in text format").set_defaults(
        func=cmd_collect
    )
    p = sub.add_parser("compact", help="fold dead processes now")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_compact)
    p = sub.add_parser("wipe", help="delete archives and dead processes' files")
    p.add_argument("--force", action="store_true", help="even while live processes exist")
    p.set_defaults(func=cmd_wipe)
    sub.add_parser("doctor", help="check settings and directory").set_defaults(func=cmd_doctor)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except directory.UnsafeDirectory as exc:
        print(f"netpoint-metrics: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
