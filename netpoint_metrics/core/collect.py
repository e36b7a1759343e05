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

It is fast because most of the stock collector's time goes into per-entry work that a
file's layout makes unnecessary: while a file's inode and used size are unchanged its keys
are too (writers only append), so one compiled ``struct`` call reads all of its values.
Unreadable files are skipped with one warning each and never fail the scrape.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from netpoint_metrics.core import archive, dbfile, lease, lock, manifest, names

log = logging.getLogger("netpoint_metrics")

_SUMMED_GAUGE_MODES = frozenset({"sum", "livesum"})
_PID_MODES = frozenset({"all", "liveall"})


class DirectoryCollector:
    """A prometheus-client collector over one multiprocess directory.

    Keep one per process: its per-file cache is what makes repeated scrapes cheap.
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
        self._last_fold = -math.inf
        self._layouts: dict[str, dbfile.Layout] = {}
        self._slot_of: dict[tuple, int] = {}
        self._slot_info: list[tuple] = []
        self._parsed: dict[bytes, tuple] = {}
        self._warned: set[tuple] = set()
        #: What the last collect() saw, for self-metrics and the CLI.
        self.last_stats: dict[str, float] = {}

    # -- reading ---------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        t0 = time.perf_counter()
        if self.fold_every is not None and t0 - self._last_fold >= self.fold_every:
            self._last_fold = t0
            try:
                archive.fold(self.directory, wait=False)
            except Exception:  # a scrape must not fail because compaction did
                log.exception("netpoint-metrics: opportunistic fold of %s failed", self.directory)
        if self.use_lock:
            with lock.shared(self.directory, self.lock_timeout):
                per_slot, order, files, skipped = self._read_all()
        else:
            per_slot, order, files, skipped = self._read_all()
        metrics = self._build(per_slot, order)
        self.last_stats = {
            "files": files,
            "skipped": skipped,
            "seconds": time.perf_counter() - t0,
        }
        return metrics

    def _read_all(self):
        directory = self.directory
        man = manifest.load(directory) if self.use_manifest else manifest.Manifest()
        archive_ident = man.archive_ident()
        folded = man.folded
        alive: dict[str, bool] = {}
        values: dict[int, list] = {}
        stamps: dict[int, list] = {}
        seen_paths = set()
        files = skipped = 0
        with os.scandir(directory) as it:
            entries = [e.name for e in it]
        for filename in entries:
            if not filename.endswith(".db"):
                continue
            parsed = names.parse_db_name(filename)
            if parsed is None:
                continue
            ident = parsed.ident
            if self.use_manifest:
                if parsed.is_archive:
                    if ident != archive_ident:
                        continue
                elif ident in folded:
                    continue
            if self.drop_dead_live_gauges and parsed.live_only and not parsed.is_archive:
                ok = alive.get(ident)
                if ok is None:
                    ok = alive[ident] = lease.is_alive(directory, ident)
                if not ok:
                    continue
            path = os.path.join(directory, filename)
            seen_paths.add(path)
            try:
                snap = dbfile.read_snapshot(path)
                if snap is None:
                    continue
                layout = self._layouts.get(path)
                if layout is None or not layout.matches(snap):
                    layout = self._layouts[path] = dbfile.Layout.build(snap)
                slots = layout.slots
                if slots is None or parsed.mode in _PID_MODES:
                    slots = self._slots_for(layout, parsed)
                raw = layout.unpack(snap.data)
            except (dbfile.CorruptFile, OSError, ValueError) as exc:
                skipped += 1
                self._layouts.pop(path, None)
                self._warn_once(path, exc)
                continue
            files += 1
            vals = raw[0::2]
            if parsed.kind == "gauge":
                ts = raw[1::2]
                for s, v, t in zip(slots, vals, ts, strict=False):
                    lst = values.get(s)
                    if lst is None:
                        values[s] = [v]
                        stamps[s] = [t]
                    else:
                        lst.append(v)
                        stamps[s].append(t)
            else:
                for s, v in zip(slots, vals, strict=False):
                    lst = values.get(s)
                    if lst is None:
                        values[s] = [v]
                    else:
                        lst.append(v)
        # Forget layouts of files that are gone, and reset the slot table if it has grown
        # far past what is in use (ids of "all" gauges never come back).
        if len(self._layouts) > len(seen_paths):
            for path in [p for p in self._layouts if p not in seen_paths]:
                del self._layouts[path]
        if len(self._slot_info) > 4 * len(values) + 4096:
            self._reset_slots()
        return (values, stamps), list(values), files, skipped

    def _slots_for(self, layout: dbfile.Layout, parsed: names.DbName) -> tuple[int, ...]:
        """Map each value of a file to a series slot (kind and gauge mode included)."""
        out = []
        pid = parsed.ident if parsed.mode in _PID_MODES else None
        for key in layout.keys:
            p = self._parsed.get(key)
            if p is None:
                p = self._parsed[key] = dbfile.parse_key(key)
            metric_name, name, labels_key, help_text = p
            skey = (parsed.kind, parsed.mode, metric_name, name, labels_key, pid)
            slot = self._slot_of.get(skey)
            if slot is None:
                slot = self._slot_of[skey] = len(self._slot_info)
                self._slot_info.append(
                    (parsed.kind, parsed.mode, metric_name, name, labels_key, help_text, pid)
                )
            out.append(slot)
        slots = tuple(out)
        if pid is None:
            layout.slots = slots
        return slots

    def _reset_slots(self) -> None:
        self._slot_of.clear()
        self._slot_info.clear()
        self._parsed.clear()
        for layout in self._layouts.values():
            layout.slots = None

    def _warn_once(self, path: str, exc: Exception) -> None:
        key = (path, str(exc))
        if key not in self._warned:
            if len(self._warned) > 10000:
                self._warned.clear()
            self._warned.add(key)
            log.warning("netpoint-metrics: skipping unreadable %s: %s", path, exc)

    # -- building metric families ------------------------------------------------------

    def _build(self, per_slot, order) -> list[Metric]:
        """Turn per-series value lists into metric families, in stock's order and shape."""
        values, stamps = per_slot
        info = self._slot_info
        total = math.fsum if self.exact else _sequential_sum
        metrics: dict[str, Metric] = {}
        # State mirroring MultiProcessCollector._accumulate_metrics, fed one aggregated
        # value per series in first-seen order, which yields the same sample order.
        samples: dict[str, dict] = {}
        buckets: dict[str, dict] = {}
        for slot in order:
            kind, mode, metric_name, name, labels_key, help_text, pid = info[slot]
            metric = metrics.get(metric_name)
            if metric is None:
                metric = metrics[metric_name] = Metric(metric_name, help_text, kind)
                samples[metric_name] = defaultdict(dict)
                buckets[metric_name] = defaultdict(dict)
            vals = values[slot]
            if kind == "gauge":
                metric._multiprocess_mode = mode
                msamples = samples[metric_name]
                if pid is not None:
                    labels = labels_key + (("pid", pid),)
                    msamples[labels][(name, labels)] = vals[-1]
                    continue
                group = msamples[labels_key]
                if mode in _SUMMED_GAUGE_MODES:
                    value = total(vals)
                elif mode in ("min", "livemin"):
                    value = min(vals)
                elif mode in ("max", "livemax"):
                    value = max(vals)
                else:  # mostrecent: newest positive timestamp wins, first on ties
                    best_t, value = 0.0, None
                    for v, t in zip(vals, stamps[slot], strict=False):
                        if best_t < t:
                            best_t, value = t, v
                    if value is None:
                        continue
                _merge_gauge(group, (name, labels_key), value, mode, total)
            elif kind == "histogram":
                le = None
                for k, v in labels_key:
                    if k == "le":
                        le = v
                        break
                if le is None:
                    group = samples[metric_name][labels_key]
                    key = (name, labels_key)
                    group[key] = total(vals) if key not in group else total([group[key], *vals])
                else:
                    without_le = tuple(kv for kv in labels_key if kv[0] != "le")
                    b = buckets[metric_name][without_le]
                    bv = float(le)
                    b[bv] = total(vals) if bv not in b else total([b[bv], *vals])
            else:
                group = samples[metric_name][labels_key]
                key = (name, labels_key)
                group[key] = total(vals) if key not in group else total([group[key], *vals])

        out = []
        for metric_name, metric in metrics.items():
            msamples = samples[metric_name]
            if metric.type == "histogram":
                for labels, bvals in buckets[metric_name].items():
                    acc = 0.0
                    group = msamples[labels]
                    for bucket, value in sorted(bvals.items()):
                        acc += value
                        group[
                            (metric_name + "_bucket", labels + (("le", floatToGoString(bucket)),))
                        ] = acc
                    group[(metric_name + "_count", labels)] = acc
            metric.samples = [
                Sample(name_, dict(labels), value)
                for group in msamples.values()
                for (name_, labels), value in group.items()
            ]
            out.append(metric)
        return out


def _merge_gauge(group: dict, key: tuple, value: float, mode: str, total) -> None:
    """Combine two series that stock would merge (same labels once ``pid`` is dropped)."""
    old = group.get(key)
    if old is None:
        group[key] = value
    elif mode in _SUMMED_GAUGE_MODES:
        group[key] = total([old, value])
    elif mode in ("min", "livemin"):
        group[key] = min(old, value)
    elif mode in ("max", "livemax"):
        group[key] = max(old, value)
    else:
        group[key] = value


def _sequential_sum(vals: list[float]) -> float:
    """Add in order from 0.0, exactly as the stock collector's ``+=`` does."""
    acc = 0.0
    for v in vals:
        acc += v
    return acc
