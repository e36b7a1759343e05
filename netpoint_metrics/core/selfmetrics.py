"""Counters about the metrics system itself, recorded where the events happen.

Folds run in a server master (Gunicorn's ``child_exit``), in a new uWSGI worker, or in a
scrape; worker exits are seen by the Gunicorn master or by the exiting uWSGI worker. Each of
those processes records into its own multiprocess files, like any metric, so the values are
summed over processes, survive worker recycles (the files are folded, never dropped) and
master reloads (a HUP keeps the process; a uWSGI reload or USR2 leaves the old process's
files to be folded), and reset on a fresh start like every other counter.

Nothing happens at import: the metric objects are made on first use, and only when the
multiprocess value class is installed. Creating one opens a file, which must not happen in
a process that never records (the package promises importing it does nothing), nor in a
single-process set-up where nobody would read the in-memory values.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from netpoint_metrics.core import identity

log = logging.getLogger(__name__)

#: Folds and scrapes take milliseconds; the tail buckets catch a stuck disk or a backlog.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Exit causes a server adapter may report (``worker_exits_total{cause=...}``).
EXIT_CAUSES = frozenset(
    {"max_requests", "graceful", "timeout", "killed", "signal", "error", "unknown"}
)


@dataclass(frozen=True)
class _Metrics:
    folds: Counter
    folded: Counter
    fold_seconds: Histogram
    fold_busy: Counter
    fold_errors: Counter
    worker_exits: Counter
    collect_seconds: Histogram
    unreadable: Counter
    background: Counter


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _make() -> _Metrics:
    # registry=None: these are read back from the directory by the collector, like every
    # other multiprocess metric; a registry would only duplicate them in-process.
    return _Metrics(
        folds=Counter(
            "netpoint_metrics_folds",
            "Folds that got the directory lock and ran (whether or not anything was dead)",
            registry=None,
        ),
        folded=Counter(
            "netpoint_metrics_folded_processes",
            "Dead processes whose files were folded into the archives",
            registry=None,
        ),
        fold_seconds=Histogram(
            "netpoint_metrics_fold_duration_seconds",
            "Time a fold that got the lock took, lock included",
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        fold_busy=Counter(
            "netpoint_metrics_fold_busy",
            "Folds that found the directory lock held and returned at once (retried later)",
            registry=None,
        ),
        fold_errors=Counter(
            "netpoint_metrics_fold_errors",
            "Folds that failed with an error, or found a damaged archive and folded nothing",
            registry=None,
        ),
        worker_exits=Counter(
            "netpoint_metrics_worker_exits",
            "Worker processes that ended, by server and cause",
            ["server", "cause"],
            registry=None,
        ),
        collect_seconds=Histogram(
            "netpoint_metrics_collect_duration_seconds",
            "Time one scrape took to read and aggregate the directory",
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        unreadable=Counter(
            "netpoint_metrics_unreadable_files",
            "Value files a scrape skipped because they could not be read (one per file per scrape)",
            registry=None,
        ),
        background=Counter(
            "netpoint_metrics_background_collects",
            "Directory reads a worker made between scrapes to keep its scrape cache warm",
            registry=None,
        ),
    )


def _get() -> _Metrics | None:
    """The metric objects, made on first use; None when values are not kept in files."""
    global _metrics
    if identity.installed() != "multiprocess":
        return None
    m = _metrics
    if m is None:
        with _lock:
            if _metrics is None:
                _metrics = _make()
            m = _metrics
    return m


def record_fold(
    *, busy: bool = False, folded: int = 0, seconds: float = 0.0, error: bool = False
) -> None:
    """Count one fold attempt. Never raises: a metrics failure must not stop a fold."""
    try:
        m = _get()
        if m is None:
            return
        if error:
            m.fold_errors.inc()
        elif busy:
            m.fold_busy.inc()
        else:
            m.folds.inc()
            m.fold_seconds.observe(seconds)
            if folded:
                m.folded.inc(folded)
    except Exception:
        log.debug("could not record a fold", exc_info=True)


def record_worker_exit(server: str, cause: str) -> None:
    """Count one worker exit; unknown cause words are counted as ``unknown``."""
    try:
        m = _get()
        if m is None:
            return
        m.worker_exits.labels(server, cause if cause in EXIT_CAUSES else "unknown").inc()
    except Exception:
        log.debug("could not record a worker exit", exc_info=True)


def record_collect(seconds: float, unreadable: int = 0) -> None:
    """Count one scrape of the directory (its duration, files it had to skip)."""
    try:
        m = _get()
        if m is None:
            return
        m.collect_seconds.observe(seconds)
        if unreadable > 0:
            m.unreadable.inc(unreadable)
    except Exception:
        log.debug("could not record a scrape", exc_info=True)


def record_background_collect() -> None:
    """Count one background read of the directory (:mod:`netpoint_metrics.warmup`)."""
    try:
        m = _get()
        if m is not None:
            m.background.inc()
    except Exception:
        log.debug("could not record a background collect", exc_info=True)
