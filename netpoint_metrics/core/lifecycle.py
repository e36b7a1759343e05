"""The calls a server adapter makes: a master starts, a worker starts, a worker died.

Adapters translate their server's events into these and nothing else, so Gunicorn,
uWSGI and the CLI share one tested path.
"""

from __future__ import annotations

import logging

from netpoint_metrics.core import archive, directory, identity, ownership

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
    log.info(
        "netpoint-metrics event=start dir=%s mode=%s wiped=%d kept_live=%d",
        path,
        result.reason.replace(" ", "-"),
        result.wiped,
        result.kept_live,
    )
    return result


def worker_started() -> str:
    """A worker process began: drop the master's ownership, take its own identifier."""
    ownership.close_in_child()
    return identity.current()


def worker_died(path: str) -> archive.FoldResult:
    """Something died: fold whatever is dead, without ever waiting for the lock."""
    try:
        result = archive.fold(path, wait=False)
    except Exception:  # metrics code must never take the master down
        log.exception("netpoint-metrics: fold of %s failed; will retry on the next event", path)
        return archive.FoldResult(busy=True)
    if result.folded:
        log.debug(
            "netpoint-metrics event=fold dir=%s folded=%d generation=%d ms=%.1f",
            path,
            len(result.folded),
            result.generation,
            result.seconds * 1000,
        )
    return result
