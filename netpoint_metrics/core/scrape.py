"""What one scrape of ``/metrics`` serves: the directory's aggregate plus the metrics
system's own health and every live process's resource use.

:class:`ScrapeCollector` wraps a :class:`~netpoint_metrics.core.collect.DirectoryCollector`
rather than changing it, so the reader stays one concern. It adds nothing that needs another
pass over the directory: file and byte counts, unreadable and quarantined files, and the
list of leases and which of them are held come from what the collector saw while
collecting (its ``stats``), so per-process metrics ask no lease twice. A
collector without ``stats`` (older versions) gives the file count only; then the directory
is listed once per scrape (names and sizes, no reads) for the leases, bytes and quarantined
files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from netpoint_metrics.core import lifecycle, names, processmetrics, render, selfmetrics

log = logging.getLogger(__name__)


class ScrapeCollector:
    """A prometheus-client collector: ``inner``'s families, then self and process metrics.

    ``fold_every``: seconds between opportunistic folds a scrape may run (None: never).
    Servers fold on their own events; this catches what they cannot see (a uWSGI worker
    cheaped away with no respawn, a fold that found the lock busy). Both leave a free
    lease, which the per-process metrics see anyway, so a scrape folds only when it saw
    one (with process metrics off, on the clock alone). It runs through
    :func:`lifecycle.worker_died`, so it is counted and logged like any fold.
    """

    def __init__(
        self,
        inner: Any,
        *,
        fold_every: float | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.inner = inner
        self.directory: str = inner.directory
        self.fold_every = fold_every
        self.process_metrics = process_metrics
        self._last_fold = -math.inf
        self._unreadable_seen: float | None = None
        self._warned = False

    def collect(self) -> Iterable[Metric]:
        now = time.monotonic()
        fold_due = self.fold_every is not None and now - self._last_fold >= self.fold_every
        if fold_due and not self.process_metrics:
            # No lease check of our own here: fold on the clock alone.
            self._fold(now)
        t0 = time.perf_counter()
        metrics = list(self.inner.collect())
        seconds = time.perf_counter() - t0
        seen = self._seen()
        selfmetrics.record_collect(seconds, self._unreadable_delta(seen))
        if self.process_metrics and seen.get("lease_idents") is None:
            seen = _with_listing(self.directory, seen)
        metrics.extend(self._directory_families(seen))
        if self.process_metrics:
            free: list[str] = []
            families = self._process_families(
                seen.get("lease_idents"), seen.get("alive_idents") or (), free
            )
            metrics.extend(families or ())
            if fold_due and (free or families is None):
                # A free lease is a dead process nobody folded (a uWSGI worker cheaped away
                # with no respawn, a fold that found the lock busy): fold it now. Without
                # one there is nothing a fold could do, so the scrape does not pay for
                # the lock, listing and lease checks of an empty fold. (If the leases
                # could not be checked, fold on the clock.)
                self._fold(now)
        return metrics

    def _fold(self, now: float) -> None:
        self._last_fold = now
        lifecycle.worker_died(self.directory)

    def _seen(self) -> dict[str, Any]:
        """What the inner collector reports about its last pass (never raises)."""
        stats = getattr(self.inner, "stats", None)
        if stats is not None:
            return {
                key: getattr(stats, key, None)
                for key in (
                    "files",
                    "bytes",
                    "unreadable_total",
                    "quarantined",
                    "lease_idents",
                    "alive_idents",
                )
            }
        last = getattr(self.inner, "last_stats", None) or {}
        return {"files": last.get("files"), "unreadable": last.get("skipped")}

    def _unreadable_delta(self, seen: dict[str, Any]) -> int:
        total = seen.get("unreadable_total")
        if total is None:
            return int(seen.get("unreadable") or 0)
        prev, self._unreadable_seen = self._unreadable_seen, float(total)
        if prev is None or total < prev:
            return int(total)
        return int(total - prev)

    def _directory_families(self, seen: dict[str, Any]) -> list[Metric]:
        out: list[Metric] = []
        for name, help_text, key in (
            ("netpoint_metrics_directory_files", "Value files the last scrape read", "files"),
            ("netpoint_metrics_directory_bytes", "Bytes of value files in the directory", "bytes"),
            (
                "netpoint_metrics_quarantined_files",
                "Damaged files set aside as corrupt-*.bad; inspect and delete them",
                "quarantined",
            ),
        ):
            value = seen.get(key)
            if value is not None:
                out.append(GaugeMetricFamily(name, help_text, value=float(value)))
        return out

    def _process_families(
        self,
        lease_idents: list[str] | None,
        alive_idents: Collection[str],
        free: list[str] | None = None,
    ) -> list[Metric] | None:
        """The per-process families; None if they could not be read (never raises)."""
        try:
            procs = processmetrics.gather(self.directory, lease_idents, alive_idents, free)
            return processmetrics.families(procs)
        except Exception as exc:  # a missing /proc must not fail the scrape
            if not self._warned:
                self._warned = True
                log.warning("process metrics unavailable for %s: %s", self.directory, exc)
            return None


def warm_up() -> None:
    """Do once, before the first scrape, what every process would do on its first one.

    The renderer's self-check and the boot time are the same for every process: a server
    master calls this before it forks, so its workers inherit the answers, and each
    process serving ``/metrics`` calls it again at start (a no-op when inherited). Never
    raises: a scrape would simply do it later.
    """
    try:
        render.matches_stock()
        processmetrics.boot_time()
    except Exception:
        log.debug("scrape warm-up failed; the first scrape does it", exc_info=True)


def _with_listing(directory: str, seen: dict[str, Any]) -> dict[str, Any]:
    """``seen`` plus lease identifiers, quarantined files and value-file bytes, from one
    listing of the directory.

    For a collector that does not report what it saw: names, plus one ``lstat`` per value
    file (cached by ``os.scandir``) when the collector gave no byte count; no file is read.
    """
    idents: list[str] = []
    quarantined = 0
    size = 0
    want_bytes = seen.get("bytes") is None
    try:
        with os.scandir(directory) as it:
            for entry in it:
                name = entry.name
                ident = names.parse_lease_name(name)
                if ident is not None:
                    idents.append(ident)
                elif name.startswith(names.QUARANTINE_PREFIX) and name.endswith(".bad"):
                    quarantined += 1
                elif want_bytes and name.endswith(".db"):
                    with contextlib.suppress(OSError):  # removed meanwhile by a fold
                        size += entry.stat(follow_symlinks=False).st_size
    except OSError as exc:
        log.debug("cannot list %s: %s", directory, exc)
        return seen
    out = dict(seen, lease_idents=idents)
    if out.get("quarantined") is None:
        out["quarantined"] = quarantined
    if want_bytes:
        out["bytes"] = size
    return out
