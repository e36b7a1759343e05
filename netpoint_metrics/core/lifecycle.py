"""The three calls a server adapter makes: a master starts, a worker starts, a worker died.

Adapters translate their server's events into these and nothing else, so Gunicorn,
uWSGI and the CLI share one tested path.
"""

from __future__ import annotations

import logging

from netpoint_metrics.core import archive, directory, identity

log = logging.getLogger("netpoint_metrics")


def master_starting(path: str, owner_pid: int, *, inherit: bool = False) -> directory.PrepareResult:
    """A master is starting (or restarting in place): prepare the directory."""
    self_ident = identity.current() if identity.installed() == "multiprocess" else None
    result = directory.prepare(path, owner_pid, self_ident=self_ident, inherit=inherit)
    log.info(
        "netpoint-metrics: %s ready (%s; %d files wiped, %d live processes kept)",
        path,
        result.reason,
        result.wiped,
        result.kept_live,
    )
    return result


def worker_started() -> str:
    """A worker process began: take its identifier and lease before it serves anything."""
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
            "netpoint-metrics: folded %d dead process(es) into generation %d in %.1f ms",
            len(result.folded),
            result.generation,
            result.seconds * 1000,
        )
    return result
