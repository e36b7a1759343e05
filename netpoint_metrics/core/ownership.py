"""One owning server per directory, held by a kernel lock for the owner's whole life.

Why: a server that starts on a directory decides what is in it (a fresh start wipes the
previous run's archives). If a second server started on a directory a live server uses
(a copied unit file, two instances on one host), that decision would delete the first
server's totals, which Prometheus reads as a counter reset. So the master that prepares a
directory first takes an exclusive ``flock`` on ``netpoint-owner.lock`` and keeps the
descriptor open until it dies. The kernel drops the lock however the master dies (exit,
SIGKILL, OOM), so "is there an owner?" has an exact answer, as leases give for workers.

Two continuations keep ownership without a gap:

* Gunicorn's USR2 upgrade: the old master forks and execs a new one. The owner descriptor
  is handed over across ``exec`` (:func:`handover_env`), so both masters hold the same
  lock (one open file description) and the new one keeps it when the old one exits.
* uWSGI's reload re-executes the master in the same pid, and uWSGI closes every
  descriptor on the way. The owner record (pid plus kernel start time, which together
  name one process for good) covers that window: a lock that is free while the recorded
  owner is still alive is not free for anybody but that same process.

Workers must not keep the descriptor (a worker outliving its master would keep the
directory owned): adapters call :func:`close_in_child` right after a fork.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
from dataclasses import dataclass

from netpoint_metrics.core import dbfile, names, procinfo

log = logging.getLogger(__name__)

#: Environment variable naming the inherited owner descriptor (Gunicorn USR2 hand-over).
ENV_OWNER_FD = "NETPOINT_METRICS_OWNER_FD"

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


class DirectoryOwned(RuntimeError):
    """Another live server owns the directory; nothing was changed."""

    def __init__(self, directory: str, pid: int | None) -> None:
        self.directory = directory
        self.pid = pid
        who = f"server pid {pid}" if pid else "another live server"
        super().__init__(
            f"{directory} is already in use by {who} (it holds {names.OWNER_LOCK_FILE}). "
            "Refusing to start, nothing was deleted. Give each server its own "
            "PROMETHEUS_MULTIPROC_DIR, or stop the other server first."
        )


@dataclass(frozen=True)
class Owner:
    """Who owns a directory, as the owner recorded it."""

    pid: int
    start: str | None

    def alive(self) -> bool:
        """True while the very process that wrote the record runs (pid reuse excluded)."""
        if not procinfo.pid_exists(self.pid):
            return False
        if self.start is None:
            return True
        return procinfo.start_time(self.pid) == self.start


#: (directory, fd, pid) of the ownership this process holds.
_held: tuple[str, int, int] | None = None


def claim(directory: str) -> bool:
    """Take ownership of ``directory`` for this process's life; idempotent.

    Returns True when this process continues an owner that was already running on the
    directory (a USR2 hand-over or a uWSGI reload of the same master), False for a new
    owner. Raises :class:`DirectoryOwned` when another live server owns it.
    """
    global _held
    if _held is not None and _held[0] == directory and _held[2] == os.getpid():
        return True
    fd = _inherited_fd(directory)
    continued = fd is not None
    if fd is None:
        fd = _open_and_lock(directory)
    record = read_record(directory)
    me = Owner(os.getpid(), procinfo.start_time(os.getpid()))
    if not continued:
        if record is not None and record != me and record.alive():
            # The lock was free but the recorded owner runs: a uWSGI master between
            # closing its descriptors and re-executing. It is not ours to take.
            os.close(fd)
            raise DirectoryOwned(directory, record.pid)
        continued = record == me
    _write_record(directory, me)
    _held = (directory, fd, os.getpid())
    return continued


def held() -> str | None:
    """The directory this process owns, if any."""
    if _held is not None and _held[2] == os.getpid():
        return _held[0]
    return None


def release() -> None:
    """Give ownership up early (tests, an orderly exit); the kernel does it at death."""
    global _held
    if _held is not None and _held[2] == os.getpid():
        with contextlib.suppress(OSError):
            os.close(_held[1])
    _held = None


def close_in_child() -> None:
    """Drop the inherited owner descriptor in a freshly forked worker.

    Only close, never unlock: the lock belongs to the open file description the master
    shares, and LOCK_UN here would release the master's ownership.
    """
    global _held
    if _held is not None and _held[2] != os.getpid():
        with contextlib.suppress(OSError):
            os.close(_held[1])
        _held = None


def handover_env() -> dict[str, str]:
    """Environment that lets an exec'd successor (Gunicorn USR2) continue our ownership.

    Called in the forked child just before ``exec``: marks the descriptor inheritable in
    that child only, so the parent keeps its own descriptor closed on exec.
    """
    if _held is None:
        return {}
    directory, fd, _pid = _held
    os.set_inheritable(fd, True)
    return {ENV_OWNER_FD: f"{fd}:{directory}"}


def owner_pid(directory: str) -> int | None:
    """Pid of the live server owning ``directory``, None if nobody does. Creates nothing."""
    path = os.path.join(directory, names.OWNER_LOCK_FILE)
    record = read_record(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        locked = False
    except OSError:
        locked = True  # cannot tell: assume owned, never destroy a live server's data
    else:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            locked = False
        except OSError:
            locked = True
        finally:
            os.close(fd)
    if locked:
        return record.pid if record is not None else -1
    if record is not None and record.alive():
        return record.pid  # a uWSGI master in the middle of a reload
    return None


def read_record(directory: str) -> Owner | None:
    """The owner record (pid and start time of the owning master), if readable."""
    try:
        with open(os.path.join(directory, names.OWNER_FILE), "rb") as f:
            doc = json.loads(f.read(4096))
        pid = doc["pid"]
        start = doc.get("start")
        if not isinstance(pid, int) or pid <= 0:
            return None
        return Owner(pid, start if isinstance(start, str) else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(directory: str, owner: Owner) -> None:
    payload = json.dumps({"pid": owner.pid, "start": owner.start}).encode()
    dbfile.write_atomic(directory, names.OWNER_FILE, payload, f"owner-{os.getpid()}")


def _open_and_lock(directory: str) -> int:
    fd = os.open(os.path.join(directory, names.OWNER_LOCK_FILE), _OPEN_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            record = read_record(directory)
            raise DirectoryOwned(directory, record.pid if record else None) from None
        raise
    return fd


def _inherited_fd(directory: str) -> int | None:
    """The owner descriptor handed over by a predecessor, after checking it is real."""
    raw = os.environ.pop(ENV_OWNER_FD, "")
    fd_text, _, path = raw.partition(":")
    if not fd_text.isdigit() or path != directory:
        return None
    fd = int(fd_text)
    try:
        st = os.fstat(fd)
        on_disk = os.lstat(os.path.join(directory, names.OWNER_LOCK_FILE))
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            on_disk.st_dev,
            on_disk.st_ino,
        ):
            return None
        # Same open file description as the predecessor's: this succeeds while it holds
        # the lock, and keeps it held after the predecessor exits.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd
