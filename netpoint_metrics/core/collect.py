"""The collector ``/metrics`` and the CLI read the directory with.

It gives what prometheus-client's ``MultiProcessCollector`` gives for the same files, with
three differences that are the point of this project:

* archives: it reads only the current archive generation and ignores files of ids the
  manifest lists as folded (:mod:`.manifest`), so a fold never shows as a dip or a double;
* dead processes' live gauges (``live*`` and ``all`` modes) are left out as soon as their
  lease is free, fold or no fold;
* sums are exact (``math.fsum``), so the order files are listed in, and folds, cannot move
  a total down by one ULP. ``exact=False`` adds in file order like the stock collector and
  is byte-identical to it; the benchmark and tests use that to prove the reader right.

The work is split so each part can be read alone: this module picks which files count;
:mod:`.filereader` reads one file's values (with layouts from :mod:`.layouts`, shared by
files with the same keys, so a first scrape learns each key sequence once, not each
file); :mod:`.series`
numbers the series and holds their values; :mod:`.families` turns those into metric
families. Unreadable files are skipped with one warning each and never fail the scrape;
:attr:`DirectoryCollector.stats` counts them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import Metric

from netpoint_metrics.core import archive, lease, lock, manifest, names
from netpoint_metrics.core.families import FamilyBuilder
from netpoint_metrics.core.filereader import FileReader, FileValues
from netpoint_metrics.core.layouts import Layout
from netpoint_metrics.core.series import SeriesTable

log = logging.getLogger(__name__)

_drain: Callable[[Iterator[Any]], None] = deque(maxlen=0).extend  # consume in C
# Unbound, called by map with (list, item): no bound method per series is ever made.
_append: Callable[[list[float], float], None] = list.append
_extend: Callable[[list[float], Any], None] = list.extend


class _GaveWay(Exception):
    """A background read stopped because a scrape wants the collector."""


@dataclass(frozen=True, slots=True)
class CollectStats:
    """What the last collect saw; a new object per collect, so it is never half-updated.

    Meant for self-metrics (``netpoint_metrics_directory_files`` and friends) without a
    second directory scan.
    """

    #: Value files whose values the last collect used (live, dead and archives).
    files: int = 0
    #: Bytes of values in them (the "used" size in each file's header).
    bytes: int = 0
    #: Unreadable files the last collect skipped.
    unreadable: int = 0
    #: Unreadable files skipped, summed over every collect (a counter).
    unreadable_total: int = 0
    #: Seconds the last collect took, folding and lock wait included.
    last_duration: float = 0.0
    #: Collects run by this collector.
    collects_total: int = 0
    #: Identifiers of every lease file the last collect's listing saw (alive or not).
    lease_idents: tuple[str, ...] = ()
    #: Files set aside as ``corrupt-*.bad`` in that listing.
    quarantined: int = 0
    #: Identifiers whose lease the last collect found held (so the scrape need not ask again).
    alive_idents: frozenset[str] = frozenset()


@dataclass
class _Frozen:
    """Values of files nobody writes any more (archives, dead processes), read once.

    Kept as raw per-series value lists, not pre-summed, so the exact sum over everything
    is the same as without this cache: no order or rounding can change.
    """

    key: frozenset[tuple[str, int]] | None = None
    series: tuple[tuple[int, list[float], list[float]], ...] = ()
    files: int = 0
    bytes: int = 0
    unreadable: int = 0


class DirectoryCollector:
    """A prometheus-client collector over one multiprocess directory.

    Keep one per process: its caches are what make repeated scrapes cheap.
    """

    def __init__(
        self,
        directory: str,
        *,
        exact: bool = True,
        lock_timeout: float = 5.0,
        use_lock: bool = True,
        use_manifest: bool = True,
        drop_dead_live_gauges: bool = True,
        fold_every: float | None = None,
    ) -> None:
        self.directory = directory
        self.exact = exact
        self.lock_timeout = lock_timeout
        self.use_lock = use_lock
        self.use_manifest = use_manifest
        self.drop_dead_live_gauges = drop_dead_live_gauges
        #: Seconds between opportunistic folds before a scrape (None: never). Servers fold
        #: on their own events; this catches what they cannot see, e.g. a uWSGI worker
        #: cheaped away with no respawn, or a fold that found the lock busy.
        self.fold_every = fold_every
        # Counted from creation, not from -inf: a worker's first scrape is the expensive
        # one already (nothing learned yet) and should not pay for compaction as well.
        self._last_fold = time.perf_counter()
        self._lock = threading.Lock()  # threaded workers may scrape concurrently
        self._scrape_waiting = threading.Event()
        self._table = SeriesTable()
        self._reader = FileReader(self._table, self._is_alive)
        self._families = FamilyBuilder(exact)
        self._names: dict[str, names.DbName] = {}
        self._alive: dict[str, bool] = {}  # liveness by identifier, for one collect
        self._dead: set[str] = set()  # our identifiers are never reused: dead stays dead
        self._frozen = _Frozen()
        self.stats = CollectStats()
        self._lease_idents: list[str] = []
        self._quarantined = 0
        #: ``time.monotonic()`` of the last collect (None before the first): how long the
        #: caches have gone without a read (see :mod:`netpoint_metrics.warmup`).
        self.last_collect: float | None = None

    @property
    def _layouts(self) -> dict[str, Layout]:
        """Layouts remembered by path (read by tests that check the cache stays warm)."""
        return self._reader.remembered()

    @property
    def last_stats(self) -> dict[str, float]:
        """The older dict form of :attr:`stats`."""
        s = self.stats
        return {"files": s.files, "skipped": s.unreadable, "seconds": s.last_duration}

    def collect(self) -> list[Metric]:
        self.last_collect = time.monotonic()
        t0 = time.perf_counter()
        if self.fold_every is not None and t0 - self._last_fold >= self.fold_every:
            self._last_fold = t0
            try:
                archive.fold(self.directory, wait=False)
            except Exception:  # a scrape must not fail because compaction did
                log.exception("opportunistic fold of %s failed", self.directory)
        self._scrape_waiting.set()  # a background read gives the lock up (between files)
        with self._lock:
            self._scrape_waiting.clear()
            return self._collect_locked(t0, None)

    def collect_in_background(self) -> list[Metric] | None:
        """Read the directory to keep the caches warm; None if it gave way to a scrape.

        Never makes a scrape wait: it does not start while a scrape holds the collector,
        and stops between two files as soon as one asks for it. What it learned until
        then (layouts, series) is kept; the values it read are not used.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self.last_collect = time.monotonic()
            return self._collect_locked(time.perf_counter(), self._scrape_waiting.is_set)
        except _GaveWay:
            return None
        finally:
            self._lock.release()

    def _collect_locked(self, t0: float, give_way: Callable[[], bool] | None) -> list[Metric]:
        """The read itself, collector lock held: directory lock, files, families, stats.

        A background read (``give_way`` given) leaves :attr:`stats` and the unreadable
        count alone: they describe scrapes.
        """
        unreadable_before = self._reader.unreadable_total
        try:
            if self.use_lock:
                with lock.shared(self.directory, self.lock_timeout):
                    order, files, nbytes = self._read_all(give_way)
            else:
                order, files, nbytes = self._read_all(give_way)
            metrics = self._families.build(self._table, order)
        finally:
            if give_way is not None:
                self._reader.unreadable_total = unreadable_before
        if give_way is not None:
            return metrics
        total = self._reader.unreadable_total
        self.stats = CollectStats(
            files=files,
            bytes=nbytes,
            unreadable=total - unreadable_before,
            unreadable_total=total,
            last_duration=time.perf_counter() - t0,
            collects_total=self.stats.collects_total + 1,
            lease_idents=tuple(self._lease_idents),
            quarantined=self._quarantined,
            alive_idents=frozenset(i for i, ok in self._alive.items() if ok),
        )
        return metrics

    # -- which files count -------------------------------------------------------------

    def _read_all(
        self, give_way: Callable[[], bool] | None = None
    ) -> tuple[list[int], int, int]:
        """Read every file that counts into the series table: (series order, files, bytes).

        ``give_way``: asked before each file; True abandons the read (:class:`_GaveWay`).
        """
        self._alive = {}
        self._table.clear_values()
        self._reader.bytes_read = 0
        seen: set[int] = set()
        order: list[int] = []
        frozen: list[tuple[str, int, names.DbName]] = []
        present: set[str] = set()
        use_frozen = self.exact and self.drop_dead_live_gauges
        pending: Pending | None = {} if self.exact else None
        files = 0
        for path, inode, parsed in self._value_files():
            if give_way is not None and give_way():
                raise _GaveWay
            present.add(path)
            if use_frozen and self._is_frozen(parsed):
                frozen.append((path, inode, parsed))
                continue
            got = self._reader.read(path, parsed, inode)
            if got is not None:
                files += 1
                _take(got, seen, order, pending)
        if pending:
            _add_pending(pending)
        nbytes = self._reader.bytes_read
        if frozen:
            self._add_frozen(frozen, seen, order)
            files += self._frozen.files
            nbytes += self._frozen.bytes
            self._reader.unreadable_total += self._frozen.unreadable
        self._reader.forget_missing(present)
        if self._table.needs_compaction(len(order)):
            order = self._table.compact(order)
            self._reader.forget_slots()
            self._frozen = _Frozen()
        return order, files, nbytes

    def _value_files(self) -> Iterator[tuple[str, int, names.DbName]]:
        """(path, inode, parsed name) of every value file whose values count now."""
        directory = self.directory
        dir_prefix = os.path.join(directory, "")
        man = manifest.load(directory) if self.use_manifest else manifest.Manifest()
        archive_ident = man.archive_ident()
        with os.scandir(directory) as it:
            entries = [(e.name, e.inode()) for e in it]
        if len(self._names) > 2 * len(entries) + 1024:
            self._names.clear()
        # The same listing tells the self-metrics which leases and set-aside files exist.
        self._lease_idents = []
        self._quarantined = 0
        for filename, inode in entries:
            parsed = self._names.get(filename)
            if parsed is None:
                if not filename.endswith(".db"):
                    if filename.startswith(names.LEASE_PREFIX):
                        ident = names.parse_lease_name(filename)
                        if ident is not None:
                            self._lease_idents.append(ident)
                    elif filename.startswith(names.QUARANTINE_PREFIX):
                        self._quarantined += 1
                    continue
                parsed = names.parse_db_name(filename)
                if parsed is None:
                    continue
                self._names[filename] = parsed
            if self.use_manifest:
                if parsed.is_archive:
                    if parsed.ident != archive_ident:
                        continue  # an older generation, or a newer one not committed yet
                elif parsed.ident in man.folded:
                    continue  # already in the archive; its deletion is pending
            if (
                self.drop_dead_live_gauges
                and parsed.live_only
                and not parsed.is_archive
                and not self._is_alive(parsed.ident)
            ):
                continue
            yield dir_prefix + filename, inode, parsed

    def _is_alive(self, ident: str) -> bool:
        ok = self._alive.get(ident)
        if ok is None:
            ok = self._alive[ident] = lease.is_alive(self.directory, ident)
        return ok

    def _is_frozen(self, parsed: names.DbName) -> bool:
        """True for files nobody can write any more: archives, and dead processes' files.

        Our identifiers are never reused, so once dead always dead; a stock pid-named
        file is checked again every scrape (its pid may come back).
        """
        ident = parsed.ident
        if parsed.is_archive or ident in self._dead:
            return True
        if self._is_alive(ident):
            return False
        if "-" in ident:
            self._dead.add(ident)
        return True

    def _add_frozen(
        self, frozen: list[tuple[str, int, names.DbName]], seen: set[int], order: list[int]
    ) -> None:
        """Add the values of files nobody writes any more, read once per change of that set."""
        key = frozenset((p, i) for p, i, _ in frozen)
        if key != self._frozen.key:
            self._frozen = self._read_frozen(key, frozen, order)
        values, stamps = self._table.values, self._table.stamps
        for slot, vs, ts in self._frozen.series:
            if slot not in seen:
                seen.add(slot)
                order.append(slot)
            values[slot].extend(vs)
            if ts:
                stamps[slot].extend(ts)
        if len(self._dead) > 4 * len(frozen) + 1024:
            self._dead = {p.ident for _, _, p in frozen if p.ident in self._dead}

    def _read_frozen(
        self,
        key: frozenset[tuple[str, int]],
        frozen: list[tuple[str, int, names.DbName]],
        live_order: list[int],
    ) -> _Frozen:
        """Read the frozen files alone into the series lists, then put the live values back."""
        table, reader = self._table, self._reader
        live = [(s, table.values[s][:], table.stamps[s][:]) for s in live_order]
        live_bytes = reader.bytes_read
        before = reader.unreadable_total
        table.clear_values()
        reader.bytes_read = 0
        fseen: set[int] = set()
        forder: list[int] = []
        files = 0
        pending: Pending = {}  # only exact collectors keep frozen files apart
        for path, inode, parsed in frozen:
            got = reader.read(path, parsed, inode)
            if got is not None:
                files += 1
                _take(got, fseen, forder, pending)
        _add_pending(pending)
        result = _Frozen(
            key=key,
            series=tuple((s, table.values[s][:], table.stamps[s][:]) for s in forder),
            files=files,
            bytes=reader.bytes_read,
            unreadable=reader.unreadable_total - before,
        )
        # Counted per collect by the caller, like every other unreadable file.
        reader.unreadable_total = before
        reader.bytes_read = live_bytes
        table.clear_values()
        for s, vs, ts in live:
            table.values[s].extend(vs)
            table.stamps[s].extend(ts)
        return result


#: Files read with one layout, waiting to be added column by column: id(value lists) ->
#: (value lists, value rows).
Pending = dict[int, tuple[tuple[list[float], ...], list[tuple[float, ...]]]]


def _take(
    got: FileValues, seen: set[int], order: list[int], pending: Pending | None = None
) -> None:
    """Append one file's values to their series; first-seen order is the output order.

    With ``pending`` (exact sums only, where the order of a series' values is free), files
    without timestamps are set aside by layout and added by :func:`_add_pending`, one
    column per series instead of one call per value.
    """
    slots, vlists, tlists, vals, stamps = got
    if not seen.issuperset(slots):
        for s in slots:
            if s not in seen:
                seen.add(s)
                order.append(s)
    if stamps is None and pending is not None:
        group = pending.get(id(vlists))
        if group is None:
            pending[id(vlists)] = (vlists, [vals])
        else:
            group[1].append(vals)
        return
    _drain(map(_append, vlists, vals))
    if stamps is not None:
        _drain(map(_append, tlists, stamps))


def _add_pending(pending: Pending) -> None:
    """Add the files set aside by :func:`_take` to their series, a layout at a time.

    Workers' files share a handful of layouts; the values of all files of one layout are
    transposed in C (``zip``) and each series gets its column with one ``extend``.
    """
    for vlists, rows in pending.values():
        if len(rows) == 1:
            _drain(map(_append, vlists, rows[0]))
        else:
            _drain(map(_extend, vlists, zip(*rows, strict=True)))
    pending.clear()
