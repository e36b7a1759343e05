"""Per-process resource metrics for every live process of the server, read at scrape time.

Stock multiprocess mode serves no ``process_*`` metrics at all (prometheus/client_python
#186, #433): the default ``ProcessCollector`` describes only the process that answers the
scrape, which under a pre-fork server is a random worker. Here the scraping process reads
``/proc/<pid>/stat`` and ``/proc/<pid>/fd`` of every live process that writes to the
directory, plus the server master, and labels each series with ``role`` and ``pid``.

Why at scrape time rather than each process publishing its own values: nothing is written
(no per-request or per-second cost in workers, no files), the values are as fresh as the
scrape, an idle worker and the master are covered although they serve no requests, and a
dead process's series disappears at the very next scrape because only live processes are
read. The price is a few ``/proc`` reads per live process per scrape (about 20 microseconds
each), and it needs Linux ``/proc`` and the same user as the server, which a scraping
worker always is.

Who is alive comes from the leases (:mod:`.lease`): a held lease is an exact liveness test
with no pid-reuse race, so a recycled pid never shows up under a dead worker's name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from netpoint_metrics.core import lease, names

log = logging.getLogger(__name__)

ROLE_MASTER = "master"
ROLE_WORKER = "worker"
ROLE_JOB = "job"
_ROLE_ORDER = {ROLE_MASTER: 0, ROLE_WORKER: 1, ROLE_JOB: 2}

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_boot_time: float | None = None


@dataclass(frozen=True)
class ProcessStats:
    """One process's resource use as the kernel reports it."""

    pid: int
    ppid: int
    rss_bytes: float
    cpu_seconds: float
    start_time: float
    open_fds: int | None  # None when /proc/<pid>/fd cannot be listed (another user)
    role: str = ROLE_JOB


def boot_time() -> float:
    """Seconds since the epoch at boot (``btime`` in ``/proc/stat``), read once."""
    global _boot_time
    if _boot_time is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_time = float(line.split()[1])
                    break
            else:
                raise OSError("no btime line in /proc/stat")
    return _boot_time


def read_process(pid: int) -> ProcessStats | None:
    """Read one process from ``/proc``; None if it is gone (a normal race with its exit)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        # The command name is in parentheses and may itself contain ") "; split at the last.
        fields = raw.rsplit(b")", 1)[1].split()
        ppid = int(fields[1])
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS
        start = boot_time() + int(fields[19]) / _TICKS
        rss = int(fields[21]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return ProcessStats(pid, ppid, float(rss), cpu, start, fds)


def owner_pid(directory: str) -> int | None:
    """The pid of the server master that owns the directory, if it is alive."""
    try:
        from netpoint_metrics.core import ownership  # type: ignore[attr-defined, unused-ignore]

        pid = ownership.owner_pid(directory)
        return int(pid) if pid else None
    except ImportError:
        pass
    # Before the owner lock existed: the owner file names the master by pid and kernel
    # start time, which together cannot be reused.
    try:
        with open(os.path.join(directory, names.OWNER_FILE), "rb") as f:
            owner = json.loads(f.read(4096))
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if owner.get("start") is None or _start_ticks(pid) != str(owner["start"]):
        return None
    return pid


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def live_pids(directory: str, lease_idents: Iterable[str] | None = None) -> set[int]:
    """Pids of processes holding a lease in ``directory``.

    ``lease_idents`` is what the caller already listed (a collector that has just scanned
    the directory); without it, the lease names are listed here.
    """
    if lease_idents is None:
        lease_idents = []
        with os.scandir(directory) as it:
            for entry in it:
                ident = names.parse_lease_name(entry.name)
                if ident is not None:
                    lease_idents.append(ident)
    pids = set()
    for ident in lease_idents:
        pid = names.ident_pid(ident)
        if pid is not None and lease.is_alive(directory, ident):
            pids.add(pid)
    return pids


def assign_roles(procs: list[ProcessStats], master: int | None) -> list[ProcessStats]:
    """Label each process master, worker (child of a master) or job (anything else).

    Masters are the directory's owner and, during a Gunicorn USR2 upgrade, the old master
    whose child the new owner is; both keep workers.
    """
    by_pid = {p.pid: p for p in procs}
    masters: set[int] = set()
    if master is not None:
        masters.add(master)
        owner = by_pid.get(master)
        if owner is not None and owner.ppid in by_pid:
            masters.add(owner.ppid)
    out = []
    for p in procs:
        if p.pid in masters:
            role = ROLE_MASTER
        elif p.ppid in masters:
            role = ROLE_WORKER
        else:
            role = ROLE_JOB
        out.append(
            ProcessStats(p.pid, p.ppid, p.rss_bytes, p.cpu_seconds, p.start_time, p.open_fds, role)
        )
    out.sort(key=lambda p: (_ROLE_ORDER[p.role], p.pid))
    return out


def gather(directory: str, lease_idents: Iterable[str] | None = None) -> list[ProcessStats]:
    """Every live process of the directory (and its master), read now, with roles."""
    master = owner_pid(directory)
    pids = live_pids(directory, lease_idents)
    if master is not None:
        pids.add(master)
    procs = [s for s in map(read_process, sorted(pids)) if s is not None]
    return assign_roles(procs, master)


def families(procs: list[ProcessStats]) -> list[Metric]:
    """The ``netpoint_process_*`` families for ``procs`` (one series per process)."""
    labels = ["role", "pid"]
    rss = GaugeMetricFamily(
        "netpoint_process_resident_memory_bytes",
        "Resident memory of each live server process",
        labels=labels,
    )
    cpu = CounterMetricFamily(
        "netpoint_process_cpu_seconds",
        "User and system CPU time of each live server process",
        labels=labels,
    )
    fds = GaugeMetricFamily(
        "netpoint_process_open_fds",
        "Open file descriptors of each live server process",
        labels=labels,
    )
    start = GaugeMetricFamily(
        "netpoint_process_start_time_seconds",
        "Start time of each live server process, seconds since the epoch",
        labels=labels,
    )
    for p in procs:
        values = [p.role, str(p.pid)]
        rss.add_metric(values, p.rss_bytes)
        cpu.add_metric(values, p.cpu_seconds)
        if p.open_fds is not None:
            fds.add_metric(values, float(p.open_fds))
        start.add_metric(values, p.start_time)
    return [rss, cpu, fds, start]
