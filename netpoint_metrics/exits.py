"""Why a worker ended, as far as its server lets us know, for ``worker_exits_total``.

Causes (``cause`` label): ``max_requests`` (recycled after its request limit),
``graceful`` (asked to stop: reload, scale-down, shutdown, SIGTERM/SIGQUIT), ``timeout``
(Gunicorn's worker timeout), ``killed`` (SIGKILL: the OOM killer or an operator),
``signal`` (another fatal signal, e.g. SIGSEGV), ``error`` (non-zero exit code) and
``unknown``.

Gunicorn: every exit is counted once, in the master's ``child_exit`` (the one hook that
fires for every exit, SIGKILL included). Gunicorn 27 does not pass the exit status to that
hook; ``reap_workers``, its caller, holds it in a local variable, which we read from the
caller's frame after checking that it is that function and that it reaped this very worker.
If a later Gunicorn changes that, we fall back to what the worker object says
(``aborted``: timeout) and ``unknown``, never a wrong cause. An exit status of 0 does not
say whether the worker hit ``max_requests`` or was told to stop, so the worker leaves a
one-byte note in its heartbeat temp file (shared with the master through the file
descriptor the master opened before the fork), which the master reads through its own
duplicate of that descriptor.

uWSGI 2.0 runs no Python in the master when a worker dies, so the exiting worker counts
itself from ``atexit`` (max-requests, reloads, shutdown). Deaths that skip ``atexit``
(SIGKILL, harakiri) are not counted: uWSGI reports them only in its log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from netpoint_metrics.core import events, selfmetrics

log = logging.getLogger(__name__)

#: Attribute of a Gunicorn worker object holding the master's duplicate of the worker's
#: heartbeat file descriptor (set in ``pre_fork``, closed in ``child_exit``).
NOTE_ATTR = "_netpoint_note_fd"
_NOTE_MAX_REQUESTS = b"M"

_QUIET_CAUSES = frozenset({"max_requests", "graceful"})


def cause_of(status: int | None, *, aborted: bool = False, note: bytes = b"") -> str:
    """Map a ``waitpid`` status (None if unknown) and what the worker told us to a cause."""
    if aborted:
        return "timeout"
    if status is None:
        return "max_requests" if note == _NOTE_MAX_REQUESTS else "unknown"
    if os.WIFSIGNALED(status):
        return "killed" if os.WTERMSIG(status) == signal.SIGKILL else "signal"
    if os.WIFEXITED(status):
        if os.WEXITSTATUS(status) != 0:
            return "error"
        return "max_requests" if note == _NOTE_MAX_REQUESTS else "graceful"
    return "unknown"


def _reaped_status(worker: Any) -> int | None:
    """The status Gunicorn's ``reap_workers`` got from ``waitpid`` for ``worker``."""
    frame = sys._getframe(1)
    for _ in range(6):  # our hook may be called from a user's hook of the same name
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        if frame.f_code.co_name == "reap_workers":
            loc = frame.f_locals
            status = loc.get("status")
            if loc.get("worker") is worker and loc.get("wpid") == getattr(worker, "pid", None):
                return status if isinstance(status, int) else None
            return None
    return None


def gunicorn_pre_fork(worker: Any) -> None:
    """Master, before the fork: keep a duplicate of the worker's heartbeat descriptor."""
    tmp = getattr(worker, "tmp", None)
    if tmp is None:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        setattr(worker, NOTE_ATTR, os.dup(tmp.fileno()))  # non-inheritable: not across exec


def gunicorn_post_fork(server: Any, worker: Any) -> None:
    """Worker, after the fork: close the master's duplicates of the siblings' descriptors.

    Its own stays open: Gunicorn closes ``worker.tmp`` before ``worker_exit`` runs, and
    the note is written through this one.
    """
    for sibling in list(getattr(server, "WORKERS", {}).values()):
        fd = getattr(sibling, NOTE_ATTR, None)
        if fd is not None and sibling is not worker:
            with contextlib.suppress(OSError):
                os.close(fd)


def gunicorn_worker_exit(worker: Any) -> None:
    """Worker, on its way out: leave the note "I reached max_requests" for the master."""
    fd = getattr(worker, NOTE_ATTR, None)
    if fd is None:
        return
    if os.getpid() != getattr(worker, "pid", None):
        # The master calls worker_exit itself for a worker that vanished before it could
        # signal it (ESRCH); that worker gets no child_exit, so count it here, once.
        gunicorn_child_exit(worker)
        return
    try:
        if getattr(worker, "nr", 0) >= getattr(worker, "max_requests", sys.maxsize):
            os.pwrite(fd, _NOTE_MAX_REQUESTS, 0)
            # Writing moved the heartbeat's mtime to wall-clock time; put back a monotonic
            # one so the master's timeout check reads what Gunicorn itself would write.
            now = time.monotonic()
            os.utime(fd, (now, now))
    except OSError:
        pass


def gunicorn_child_exit(worker: Any) -> str:
    """Master, after ``waitpid``: count this exit once, by cause; returns the cause."""
    status = _reaped_status(worker)
    note = b""
    fd = getattr(worker, NOTE_ATTR, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            note = os.pread(fd, 1, 0)
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(AttributeError):
            delattr(worker, NOTE_ATTR)
    cause = cause_of(status, aborted=bool(getattr(worker, "aborted", False)), note=note)
    selfmetrics.record_worker_exit("gunicorn", cause)
    _log_exit("gunicorn", getattr(worker, "pid", None), cause, status)
    return cause


def uwsgi_register_exit() -> None:
    """Worker or mule start (uWSGI): count this process's own exit when ``atexit`` runs."""
    import atexit

    import uwsgi

    if uwsgi.worker_id() <= 0:
        return  # mules and the master are not workers
    atexit.register(_uwsgi_exiting, os.getpid())


def _uwsgi_exiting(pid: int) -> None:
    if os.getpid() != pid:
        return  # inherited by a fork: not this process's exit
    cause = "graceful"
    with contextlib.suppress(Exception):
        import uwsgi

        limit = int(uwsgi.opt.get("max-requests", b"0") or 0)
        me = [w for w in uwsgi.workers() if w.get("pid") == pid]
        if limit and me and int(me[0].get("delta_requests", 0)) >= limit:
            cause = "max_requests"
    selfmetrics.record_worker_exit("uwsgi", cause)
    _log_exit("uwsgi", pid, cause, None)


def _log_exit(server: str, pid: int | None, cause: str, status: int | None) -> None:
    fields: dict[str, object] = {"server": server, "pid": pid, "cause": cause}
    if status is not None:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            try:
                fields["signal"] = signal.Signals(sig).name
            except ValueError:
                fields["signal"] = sig
        elif os.WIFEXITED(status):
            fields["code"] = os.WEXITSTATUS(status)
    level = logging.DEBUG if cause in _QUIET_CAUSES else logging.WARNING
    events.emit(log, level, "worker_exit", **fields)
