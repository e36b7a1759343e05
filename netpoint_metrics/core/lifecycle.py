"""The three calls a server adapter makes: a master starts, a worker starts, a worker died.

Adapters translate their server's events into these and nothing else, so Gunicorn,
uWSGI and the CLI share one tested path.
"""

from __future__ import annotations

import logging
import os

from netpoint_metrics.core import archive, directory, events, identity, selfmetrics

log = logging.getLogger(__name__)


def master_starting(path: str, owner_pid: int, *, inherit: bool = False) -> directory.PrepareResult:
    """A master is starting (or restarting in place): prepare the directory.

    Logs one ``event=start`` line (INFO when the master itself, or the first process to
    prepare for it, does this; DEBUG for the repeat calls of uWSGI ``lazy-apps`` workers),
    one ``event=wipe`` line when a fresh start deleted files, and ``event=refusal`` when the
    directory is unsafe.
    """
    self_ident = identity.current() if identity.installed() == "multiprocess" else None
    try:
        result = directory.prepare(path, owner_pid, self_ident=self_ident, inherit=inherit)
    except directory.UnsafeDirectory as exc:
        log.error("%s", refused(path, exc))
        raise
    first = os.getpid() == owner_pid or result.reason == "fresh start"
    events.emit(
        log,
        logging.INFO if first else logging.DEBUG,
        "start",
        dir=path,
        pid=owner_pid,
        mode=result.reason.replace(" ", "-"),
        wiped=result.wiped,
        kept_live=result.kept_live,
    )
    if result.wiped:
        events.emit(log, logging.INFO, "wipe", dir=path, files=result.wiped)
    return result


def refused(path: str | None, reason: object) -> str:
    """A server will not start: the one ``event=refusal`` line saying why.

    Returned rather than logged: the adapters print it, log it or exit with it themselves
    (no log handler may exist yet when they refuse), and it must be said exactly once.
    """
    return events.format_event("refusal", dir=path, reason=str(reason))


def worker_started() -> str:
    """A worker process began: take its identifier and lease before it serves anything."""
    return identity.current()


def worker_died(path: str) -> archive.FoldResult:
    """Something died: fold whatever is dead, without ever waiting for the lock."""
    try:
        result = archive.fold(path, wait=False)
    except Exception as exc:  # metrics code must never take the master down
        selfmetrics.record_fold(error=True)
        log.exception(
            "%s", events.format_event("fold_error", dir=path, error=repr(exc), retry="next_event")
        )
        return archive.FoldResult(busy=True)
    if result.busy:
        selfmetrics.record_fold(busy=True)
        events.emit(log, logging.DEBUG, "fold_busy", dir=path)
        return result
    damaged = bool(result.corrupt) and not result.folded
    selfmetrics.record_fold(folded=len(result.folded), seconds=result.seconds, error=damaged)
    if result.cleaned:
        # An earlier fold was interrupted (crash, SIGKILL) after its commit: this one
        # finished its clean-up.
        events.emit(log, logging.INFO, "recovery", dir=path, cleaned=result.cleaned)
    events.emit(
        log,
        logging.DEBUG,
        "fold",
        dir=path,
        folded=len(result.folded),
        generation=result.generation,
        ms=result.seconds * 1000,
        more=result.more or None,
        corrupt=len(result.corrupt) or None,
    )
    return result
