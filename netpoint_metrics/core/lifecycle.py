"""The calls a server adapter makes: a master starts, a worker starts, a worker died.

Adapters translate their server's events into these and nothing else, so Gunicorn,
uWSGI and the CLI share one tested path.
"""

from __future__ import annotations

import logging
import os

from netpoint_metrics.core import archive, directory, events, identity, ownership, selfmetrics

log = logging.getLogger(__name__)

#: Why a master refuses to start on a directory (having changed nothing).
REFUSALS: tuple[type[Exception], ...] = (directory.UnsafeDirectory, ownership.DirectoryOwned)


def claim_directory(path: str) -> bool:
    """A master is about to use ``path``: check it is safe and take ownership.

    Returns True when this master continues a running owner (USR2, uWSGI reload).
    Raises :class:`directory.UnsafeDirectory` or :class:`ownership.DirectoryOwned`,
    having changed nothing, when it must not start.
    """
    if ownership.held() == path:
        return True  # Gunicorn re-reads its config on HUP: same master, same ownership
    directory.ensure_directory(path)
    return ownership.claim(path)


def master_starting(path: str, *, continued: bool = False) -> directory.PrepareResult:
    """The owning master is starting (or continuing another): prepare the directory."""
    result = directory.prepare(path, continued=continued, self_ident=identity.peek())
    events.emit(
        log,
        logging.INFO,
        "start",
        dir=path,
        pid=os.getpid(),
        mode=result.reason.replace(" ", "-"),
        wiped=result.wiped,
        kept_live=result.kept_live,
    )
    if result.wiped:
        events.emit(log, logging.INFO, "wipe", dir=path, files=result.wiped)
    return result


def refused(path: str | None, reason: object) -> str:
    """A server will not start: the one ``event=refusal`` line saying why.

    Returned rather than logged: the adapters print it (or exit with it) themselves, since
    no log handler exists yet when they refuse, and they must say it exactly once.
    """
    return events.format_event("refusal", dir=path, reason=str(reason))


def worker_started() -> str:
    """A worker process began: drop the master's ownership, take its own identifier."""
    ownership.close_in_child()
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
