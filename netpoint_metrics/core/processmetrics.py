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
read. The price is two ``/proc`` system calls per live process per scrape, and it needs
Linux ``/proc`` and the same user as the server, which a scraping worker always is.

With 48 workers this runs for 49 processes on every scrape, so it is kept to the bare
system calls: ``/proc/<pid>/stat`` read with one ``os.open``/``os.read``, the open file
count from ``stat()`` of ``/proc/<pid>/fd`` (its size is the count since Linux 6.2; older
kernels report 0 and the directory is listed instead), no lease asked twice (the
collector has just tested the same leases), and samples built straight into the families.

Who is alive comes from the leases (:mod:`.lease`): a held lease is an exact liveness test
with no pid-reuse race, so a recycled pid never shows up under a dead worker's name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable
from typing import NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from netpoint_metrics.core import lease, names

log = logging.getLogger(__name__)

ROLE_MASTER = "master"
ROLE_WORKER = "worker"
ROLE_JOB = "job"
_ROLE_ORDER = {ROLE_MASTER: 0, ROLE_WORKER: 1, ROLE_JOB: 2}

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_boot_time: float | None = None
#: False once this kernel showed it does not count fds in the size of ``/proc/<pid>/fd``
#: (before Linux 6.2 the size is 0); then the directory is listed, as it always was.
_fd_size_counts = True
#: Lease identifier -> pid, parsed once per identifier (the same ~50 at every scrape).
_ident_pids: dict[str, int | None] = {}


class ProcessStats(NamedTuple):
    """One process's resource use as the kernel reports it.

    A named tuple, not a dataclass: ~50 are made per scrape, and a tuple is the cheapest
    object Python builds.
    """

    pid: int
    ppid: int
    rss_bytes: float
    cpu_seconds: float
    start_time: float
    open_fds: int | None  # None when /proc/<pid>/fd cannot be read (another user)
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


def open_fds(pid: int) -> int | None:
    """Open file descriptors of ``pid``; None if they cannot be counted.

    Linux >= 6.2 reports the count as the size of ``/proc/<pid>/fd``, one ``stat`` instead
    of a directory listing (the count is the same: both read the process's fd table). A
    size of 0 means an older kernel: list the directory, now and from then on.
    """
    global _fd_size_counts
    path = f"/proc/{pid}/fd"
    if _fd_size_counts:
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        if size > 0:
            return size
    try:
        n = len(os.listdir(path))
    except OSError:
        return None
    if n > 0 and _fd_size_counts:
        _fd_size_counts = False
        log.debug("this kernel does not count fds in /proc/<pid>/fd's size; listing instead")
    return n


def read_process(pid: int) -> ProcessStats | None:
    """Read one process from ``/proc``; None if it is gone (a normal race with its exit)."""
    got = read_processes([pid])
    return got[0] if got else None


def read_processes(pids: Iterable[int]) -> list[ProcessStats]:
    """:func:`read_process` for many pids in one tight loop (~50 per scrape); the gone
    are left out."""
    boot = boot_time()
    out: list[ProcessStats] = []
    append = out.append
    for pid in pids:
        try:
            fd = os.open(f"/proc/{pid}/stat", _OPEN_FLAGS)
        except OSError:
            continue
        try:
            raw = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        try:
            # The command name is in parentheses and may itself contain ") "; split at
            # the last.
            fields = raw[raw.rindex(b")") + 2 :].split()
            stats = ProcessStats(
                pid,
                int(fields[1]),
                float(int(fields[21]) * _PAGE),
                (int(fields[11]) + int(fields[12])) / _TICKS,
                boot + int(fields[19]) / _TICKS,
                open_fds(pid),
            )
        except (IndexError, ValueError):
            continue
        append(stats)
    return out


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


def _ident_pid(ident: str) -> int | None:
    try:
        return _ident_pids[ident]
    except KeyError:
        if len(_ident_pids) > 4096:
            _ident_pids.clear()
        pid = _ident_pids[ident] = names.ident_pid(ident)
        return pid


def live_pids(
    directory: str,
    lease_idents: Iterable[str] | None = None,
    alive_idents: Collection[str] = (),
    free: list[str] | None = None,
) -> set[int]:
    """Pids of processes holding a lease in ``directory``.

    ``lease_idents`` is what the caller already listed (a collector that has just scanned
    the directory); without it, the lease names are listed here. ``alive_idents`` are
    leases the caller has just found held: they are not asked again (a lease, once free,
    is never held again, so "held a moment ago" can only be stale for a process that
    exited since, whose ``/proc`` entry is then gone as well). Identifiers whose lease is
    free (a dead process not folded yet) are appended to ``free`` when it is given.
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
        pid = _ident_pid(ident)
        if pid is None:
            continue
        if ident in alive_idents or lease.is_alive(directory, ident):
            pids.add(pid)
        elif free is not None:
            free.append(ident)
    return pids


def assign_roles(procs: list[ProcessStats], master: int | None) -> list[ProcessStats]:
    """Label each process master, worker (child of a master) or job (anything else).

    Masters are the directory's owner and, during a Gunicorn USR2 upgrade, the old master
    whose child the new owner is; both keep workers.
    """
    masters: set[int] = set()
    if master is not None:
        masters.add(master)
        for p in procs:
            if p.pid == master:
                if any(q.pid == p.ppid for q in procs):
                    masters.add(p.ppid)
                break
    out = []
    for p in procs:
        if p.pid in masters:
            role = ROLE_MASTER
        elif p.ppid in masters:
            role = ROLE_WORKER
        else:
            role = ROLE_JOB
        out.append(p._replace(role=role) if role != p.role else p)
    out.sort(key=lambda p: (_ROLE_ORDER[p.role], p.pid))
    return out


def gather(
    directory: str,
    lease_idents: Iterable[str] | None = None,
    alive_idents: Collection[str] = (),
    free: list[str] | None = None,
) -> list[ProcessStats]:
    """Every live process of the directory (and its master), read now, with roles.

    ``free`` collects the identifiers of free leases seen on the way (see :func:`live_pids`).
    """
    master = owner_pid(directory)
    pids = live_pids(directory, lease_idents, alive_idents, free)
    if master is not None:
        pids.add(master)
    return assign_roles(read_processes(sorted(pids)), master)


_FAMILIES = (
    (
        "netpoint_process_resident_memory_bytes",
        "Resident memory of each live server process",
        "gauge",
    ),
    (
        "netpoint_process_cpu_seconds",
        "User and system CPU time of each live server process",
        "counter",
    ),
    (
        "netpoint_process_open_fds",
        "Open file descriptors of each live server process",
        "gauge",
    ),
    (
        "netpoint_process_start_time_seconds",
        "Start time of each live server process, seconds since the epoch",
        "gauge",
    ),
)


def families(procs: list[ProcessStats]) -> list[Metric]:
    """The ``netpoint_process_*`` families for ``procs`` (one series per process).

    The same families and samples ``GaugeMetricFamily``/``CounterMetricFamily`` would
    give, with one label dict per process shared by its four samples.
    """
    rss, cpu, fds, start = out = [Metric(n, h, t) for n, h, t in _FAMILIES]
    rss_s, cpu_s, fds_s, start_s = rss.samples, cpu.samples, fds.samples, start.samples
    rss_n, cpu_n, fds_n, start_n = (
        rss.name,
        cpu.name + "_total",
        fds.name,
        start.name,
    )
    for p in procs:
        labels = {"role": p.role, "pid": str(p.pid)}
        rss_s.append(Sample(rss_n, labels, p.rss_bytes))
        cpu_s.append(Sample(cpu_n, labels, p.cpu_seconds))
        if p.open_fds is not None:
            fds_s.append(Sample(fds_n, labels, float(p.open_fds)))
        start_s.append(Sample(start_n, labels, p.start_time))
    return out
