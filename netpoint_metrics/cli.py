"""``netpoint-metrics``: look after a multiprocess directory from the shell.

    netpoint-metrics doctor            check settings and the directory (exit 1 on problems)
    netpoint-metrics inspect [--json]  processes, liveness, files, archive generation
    netpoint-metrics collect           print what /metrics would serve (text format)
    netpoint-metrics compact           fold dead processes now (waits for the lock)
    netpoint-metrics wipe              delete archives and dead processes' files (server stopped)
    netpoint-metrics serve             serve the aggregate on a port of its own
    netpoint-metrics config SERVER     print the shipped gunicorn or uwsgi configuration

Exit codes: 0 healthy / done, 1 problems found or refused, 2 usage (bad arguments, no
directory). The directory is ``--dir`` or ``PROMETHEUS_MULTIPROC_DIR``; run the commands
with the server's environment. Importing this module installs no value class, takes no
identity and creates no file; ``inspect``, ``doctor``, ``collect`` and ``serve`` never
create a file in the directory, and no command writes the owner record.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from netpoint_metrics.core import (
    archive,
    directory,
    identity,
    lease,
    listing,
    manifest,
    names,
    ownership,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line cannot be acted on (exit 2)."""


class Refused(Exception):
    """The command found a problem or refused to act (exit 1)."""


def _raw_dir(args: argparse.Namespace) -> str:
    path = args.dir or identity.multiproc_dir()
    if not path:
        raise UsageError("no directory: pass --dir or set PROMETHEUS_MULTIPROC_DIR")
    return str(path)


def _dir(args: argparse.Namespace, *, writes: bool = False) -> str:
    """The checked directory; commands that write also refuse one holding foreign files."""
    try:
        return directory.ensure_directory(_raw_dir(args), create=False, check_contents=writes)
    except directory.UnsafeDirectory as exc:
        raise Refused(str(exc)) from None


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
        "owner_pid": ownership.owner_pid(path),
        "archive_generation": man.generation,
        "archives": sorted(f.filename for f in found.archives.get(man.generation, [])),
        "stale_archives": sorted(
            f.filename for g, fs in found.archives.items() if g != man.generation for f in fs
        ),
        "foreign": sorted(found.foreign),
        "quarantined": sorted(n for n in os.listdir(path) if n.startswith(names.QUARANTINE_PREFIX)),
        "processes": procs,
        "db_files": sum(len(p["files"]) for p in procs)
        + sum(len(fs) for fs in found.archives.values()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"directory  {path}")
    print(f"owner      {report['owner_pid'] or 'none alive'}")
    print(f"archive    generation {man.generation}: {', '.join(report['archives']) or '-'}")
    print(f"db files   {report['db_files']}")
    for p in procs:
        state = "folded" if p["folded"] else ("alive" if p["alive"] else "dead")
        print(f"  {p['ident']:<28} {state:<7} {len(p['files']):>2} files {p['bytes']:>9} bytes")
    return EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest

    from netpoint_metrics.core.collect import DirectoryCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectoryCollector(_dir(args)))
    sys.stdout.write(generate_latest(registry).decode())
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    path = _dir(args, writes=True)
    folded, corrupt, seconds, generation = 0, 0, 0.0, 0
    for _ in range(10_000):  # batches; bounded
        result = archive.fold(path, wait=True, timeout=args.timeout)
        if result.busy:
            raise Refused(f"{path} stayed locked for {args.timeout}s; nothing folded")
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
    return EXIT_OK


def cmd_wipe(args: argparse.Namespace) -> int:
    """Delete archives and dead processes' files; never the owner record or the locks.

    Refused while a server master owns the directory (its counters would drop to zero,
    which Prometheus reads as a reset), even with ``--force``; live writers that are not
    a server (a ``manage.py`` command, a job) also stop it unless ``--force``, which keeps
    their files. :func:`netpoint_metrics.core.directory.wipe` does the work.
    """
    path = _dir(args, writes=True)
    try:
        result = directory.wipe(path, force=args.force)
    except directory.DirectoryInUse as exc:
        raise Refused(str(exc)) from None
    print(f"wiped {result.wiped} file(s); kept {result.kept_live} live process(es)")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from netpoint_metrics import doctor

    findings = doctor.run(args.dir)
    for finding in findings:
        print(finding.line())
    code = doctor.exit_code(findings)
    problems = sum(f.level == doctor.FAIL for f in findings)
    print(f"{problems} problem(s) found" if problems else "healthy")
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    from netpoint_metrics import config, serve
    from netpoint_metrics.core import access

    path = _dir(args)
    try:
        serve.parse_bind(args.bind)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        config.check_startup(who="netpoint-metrics serve")
    except config.StartupError as exc:
        raise Refused(str(exc.code).split(": ", 1)[-1]) from None
    try:
        policy = access.Policy.from_env()
    except access.AccessConfigError as exc:
        raise Refused(str(exc)) from None
    try:
        return serve.serve(path, args.bind, policy)
    except OSError as exc:
        raise Refused(f"cannot listen on {args.bind}: {exc.strerror or exc}") from None


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="netpoint-metrics",
        description=doc.split("\n")[0].replace("``", ""),
        epilog=doc.split("\n\n", 2)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", help="multiprocess directory (default: PROMETHEUS_MULTIPROC_DIR)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help: str, description: str) -> argparse.ArgumentParser:  # noqa: A002
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(func=func)
        return p

    add(
        "doctor",
        cmd_doctor,
        "check versions, settings, access, the directory and its files",
        "Report every misconfiguration this command can see, one line each: dependency "
        "versions, boolean and numeric settings, /metrics access settings, directory "
        "safety, foreign, unreadable, corrupt or quarantined files, free space, the owning "
        "server. Exit 1 if any line says FAIL. Reads only; creates nothing.",
    )
    p = add(
        "inspect",
        cmd_inspect,
        "list processes, files and archives",
        "Processes (alive, dead, folded), their files, the owning server and the archive "
        "generation. Reads only; creates nothing.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add(
        "collect",
        cmd_collect,
        "print the aggregate in text format",
        "Print what /metrics would serve, in the Prometheus text format. Reads only.",
    )
    p = add(
        "compact",
        cmd_compact,
        "fold dead processes now",
        "Fold every dead process's files into the archives now (servers do this on their "
        "own events). Totals do not change.",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the lock")
    p = add(
        "wipe",
        cmd_wipe,
        "delete archives and dead processes' files (server stopped)",
        "Delete the archives and every dead process's files: counters restart from zero. "
        "Refused while a server owns the directory. Never touches the owner record or the "
        "lock files.",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the lock")
    p.add_argument(
        "--force",
        action="store_true",
        help="even while non-server processes write here (their files are kept)",
    )
    p = add(
        "serve",
        cmd_serve,
        "serve the aggregate on a port of its own",
        "A small threaded HTTP exporter of the directory's aggregate at /metrics, with a "
        "warm cache and the same access settings as the Django view "
        "(NETPOINT_METRICS_TOKEN[_FILE], NETPOINT_METRICS_ALLOW). Reads only: it never "
        "folds or writes. Stops on SIGTERM/SIGINT.",
    )
    p.add_argument(
        "--bind",
        default=os.environ.get("NETPOINT_SERVE_BIND", "127.0.0.1:9808"),
        help="HOST:PORT to listen on (default: NETPOINT_SERVE_BIND or 127.0.0.1:9808)",
    )
    p = add(
        "config",
        cmd_config,
        "print a server configuration file shipped with the package",
        "Write out the toolkit's Gunicorn or uWSGI configuration, for an installed package "
        "without the repository: `netpoint-metrics config uwsgi > uwsgi.ini`. (Gunicorn can "
        "also load it directly: `gunicorn -c python:netpoint_metrics.gunicorn_conf`.)",
    )
    p.add_argument("server", choices=["gunicorn", "uwsgi"])
    return parser


GUNICORN_CONFIG = """\
# Gunicorn configuration for a NetPoint site: `gunicorn -c gunicorn_conf.py`.
# The settings and hooks live in the installed package; see its README for the settings.
from netpoint_metrics.gunicorn_conf import *  # noqa: F403
"""


def cmd_config(args: argparse.Namespace) -> int:
    """Print a configuration file; needs no directory."""
    if args.server == "gunicorn":
        sys.stdout.write(GUNICORN_CONFIG)
        return 0
    from importlib.resources import files

    sys.stdout.write(files("netpoint_metrics").joinpath("uwsgi.ini").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, do not exit
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"netpoint-metrics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"netpoint-metrics {args.command}: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS


if __name__ == "__main__":
    raise SystemExit(main())
