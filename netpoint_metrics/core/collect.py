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
import operator
import os
import threading
import time
from collections import deque
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from netpoint_metrics.core import archive, dbfile, lease, lock, manifest, names

log = logging.getLogger("netpoint_metrics")

_drain = deque(maxlen=0).extend  # consume an iterator in C
_call = getattr(operator, "call", lambda f, v: f(v))  # operator.call: Python >= 3.11

_SUMMED_GAUGE_MODES = frozenset({"sum", "livesum"})
_PID_MODES = frozenset({"all", "liveall"})
_RECENT_MODES = frozenset({"mostrecent", "livemostrecent"})


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
        self._plans: list[tuple] = []
        self._sample_meta: dict[tuple, tuple] = {}
        self._bucket_keys: dict[tuple, tuple] = {}
        # One value list and one timestamp list per series slot, kept between scrapes so
        # that a file's layout can hold their bound ``append`` methods: then reading a
        # file's values into them is a single C-level ``map``, no Python loop per value.
        self._vals: list[list[float]] = []
        self._stamps: list[list[float]] = []
        self._vapp: list = []
        self._tapp: list = []
        self._lock = threading.Lock()  # threaded workers may scrape concurrently
        # Files nobody can write any more (archives, dead processes) are read once per
        # change of their set; see _add_frozen.
        self._dead: set[str] = set()
        self._frozen_key: frozenset | None = None
        self._frozen: list[tuple[int, list, list]] = []
        self._frozen_files = 0
        self._parsed: dict[bytes, tuple] = {}
        self._names: dict[str, names.DbName | None] = {}
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
        with self._lock:
            if self.use_lock:
                with lock.shared(self.directory, self.lock_timeout):
                    order, files, skipped = self._read_all()
            else:
                order, files, skipped = self._read_all()
            metrics = self._build(order)
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
        self._clear_lists()
        seen: set[int] = set()
        order: list[int] = []
        seen_paths = set()
        frozen: list[tuple[str, int, names.DbName]] = []
        use_frozen = self.exact and self.drop_dead_live_gauges
        files = skipped = 0
        with os.scandir(directory) as it:
            entries = [(e.name, e.inode()) for e in it]
        for filename, inode in entries:
            if not filename.endswith(".db"):
                continue
            parsed = self._names.get(filename)
            if parsed is None:
                parsed = names.parse_db_name(filename)
                if parsed is None:
                    continue
                self._names[filename] = parsed
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
            if use_frozen and self._is_frozen(parsed, alive):
                frozen.append((path, inode, parsed))
                continue
            got = self._read_file(path, parsed)
            if not got:
                skipped += got is False
                continue
            files += 1
            self._take(got, seen, order)
        if frozen:
            files += self._add_frozen(frozen, seen, order)
        # Forget layouts of files that are gone, and reset the slot table if it has grown
        # far past what is in use (ids of "all" gauges never come back).
        if len(self._names) > 2 * len(entries) + 1024:
            self._names.clear()
        if len(self._layouts) > len(seen_paths):
            for path in [p for p in self._layouts if p not in seen_paths]:
                del self._layouts[path]
        if len(self._slot_info) > 4 * len(order) + 4096:
            order_info = [self._slot_info[s] for s in order]
            values = [list(self._vals[s]) for s in order]
            stamps = [list(self._stamps[s]) for s in order]
            self._reset_slots()
            # Re-home this scrape's values in fresh slots 0..n-1.
            for i, info in enumerate(order_info):
                self._new_slot(info)
                self._vals[i].extend(values[i])
                self._stamps[i].extend(stamps[i])
            order = list(range(len(order_info)))
        return order, files, skipped

    def _clear_lists(self) -> None:
        for lst in self._vals:
            lst.clear()
        for lst in self._stamps:
            lst.clear()

    def _read_file(self, path: str, parsed: names.DbName):
        """(slots, value appenders, stamp appenders, values, stamps) of one file.

        None for an empty or vanished file (normal races), False for an unreadable one.
        """
        try:
            layout = self._layouts.get(path)
            snap = dbfile.read_snapshot(path, layout.used if layout is not None else 0)
            if snap is None:
                return None
            if layout is None or not layout.matches(snap):
                layout = self._layouts[path] = dbfile.Layout.build(snap)
            if parsed.mode in _PID_MODES:
                slots = self._slots_for(layout, parsed)
                vapp = tuple(self._vapp[s] for s in slots)
                tapp = tuple(self._tapp[s] for s in slots)
            else:
                if layout.slots is None:
                    self._slots_for(layout, parsed)
                slots, vapp, tapp = layout.slots, layout.vapp, layout.tapp
            if parsed.mode in _RECENT_MODES:
                raw = layout.unpack(snap.data)
                return slots, vapp, tapp, raw[0::2], raw[1::2]
            return slots, vapp, tapp, layout.unpack_values(snap.data), None
        except (dbfile.CorruptFile, OSError, ValueError) as exc:
            self._layouts.pop(path, None)
            self._warn_once(path, exc)
            return False

    @staticmethod
    def _take(got, seen: set[int], order: list[int]) -> None:
        slots, vapp, tapp, vals, stamps = got
        if not seen.issuperset(slots):  # first-seen order is the output order
            for s in slots:
                if s not in seen:
                    seen.add(s)
                    order.append(s)
        _drain(map(_call, vapp, vals))
        if stamps is not None:
            _drain(map(_call, tapp, stamps))

    def _is_frozen(self, parsed: names.DbName, alive: dict[str, bool]) -> bool:
        """True for files nobody can write any more: archives, and dead processes' files.

        Our identifiers are never reused, so once dead always dead; a stock pid-named
        file is checked again every scrape (its pid may come back).
        """
        ident = parsed.ident
        if parsed.is_archive or ident in self._dead:
            return True
        ok = alive.get(ident)
        if ok is None:
            ok = alive[ident] = lease.is_alive(self.directory, ident)
        if not ok and "-" in ident:
            self._dead.add(ident)
        return not ok

    def _add_frozen(self, frozen: list, seen: set[int], order: list[int]) -> int:
        """Add the values of files nobody writes any more, read once per change of that set.

        They are kept as raw per-series value lists, not pre-summed, so the exact sum over
        everything is the same as without this cache: no order or rounding can change.
        """
        key = frozenset((p, i) for p, i, _ in frozen)
        if key != self._frozen_key:
            # Read them into the (empty) scrape lists first, keep a copy, then read the
            # live ones already gathered back: simplest is to rebuild from scratch here.
            live_v = {s: list(self._vals[s]) for s in order}
            live_t = {s: list(self._stamps[s]) for s in order}
            self._clear_lists()
            fseen: set[int] = set()
            forder: list[int] = []
            n = 0
            for path, _inode, parsed in frozen:
                got = self._read_file(path, parsed)
                if got:
                    n += 1
                    self._take(got, fseen, forder)
            self._frozen = [(s, list(self._vals[s]), list(self._stamps[s])) for s in forder]
            self._frozen_key = key
            self._frozen_files = n
            self._clear_lists()
            for s in order:
                self._vals[s].extend(live_v[s])
                self._stamps[s].extend(live_t[s])
        for slot, vs, ts in self._frozen:
            if slot not in seen:
                seen.add(slot)
                order.append(slot)
            self._vals[slot].extend(vs)
            if ts:
                self._stamps[slot].extend(ts)
        if len(self._dead) > 4 * len(frozen) + 1024:
            self._dead = {p.ident for _, _, p in frozen if p.ident in self._dead}
        return self._frozen_files

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
                slot = self._new_slot(
                    (parsed.kind, parsed.mode, metric_name, name, labels_key, help_text, pid)
                )
            out.append(slot)
        slots = tuple(out)
        if pid is None:
            layout.slots = slots
            layout.vapp = tuple(self._vapp[s] for s in slots)
            layout.tapp = tuple(self._tapp[s] for s in slots)
        return slots

    def _new_slot(self, info: tuple) -> int:
        slot = len(self._slot_info)
        self._slot_of[info[:5] + (info[6],)] = slot
        self._slot_info.append(info)
        self._plans.append(_plan(info))
        v: list[float] = []
        t: list[float] = []
        self._vals.append(v)
        self._stamps.append(t)
        self._vapp.append(v.append)
        self._tapp.append(t.append)
        return slot

    def _reset_slots(self) -> None:
        self._slot_of.clear()
        self._slot_info.clear()
        self._plans.clear()
        self._parsed.clear()
        self._vals.clear()
        self._stamps.clear()
        self._vapp.clear()
        self._tapp.clear()
        for layout in self._layouts.values():
            layout.slots = layout.vapp = layout.tapp = None
        self._frozen_key = None
        self._frozen = []

    def _warn_once(self, path: str, exc: Exception) -> None:
        key = (path, str(exc))
        if key not in self._warned:
            if len(self._warned) > 10000:
                self._warned.clear()
            self._warned.add(key)
            log.warning("netpoint-metrics: skipping unreadable %s: %s", path, exc)

    # -- building metric families ------------------------------------------------------

    def _build(self, order: list[int]) -> list[Metric]:
        """Turn per-series value lists into metric families, in stock's order and shape.

        This mirrors ``MultiProcessCollector._accumulate_metrics`` fed one aggregated value
        per series in first-seen order, which gives the same families, samples and order.
        Per-series facts (bucket bounds, label dicts) are computed once per series, not
        once per scrape.
        """
        values, stamps = self._vals, self._stamps
        plans = self._plans
        total = math.fsum if self.exact else _sequential_sum
        metrics: dict[str, Metric] = {}
        samples: dict[str, dict] = {}
        buckets: dict[str, dict] = {}
        for slot in order:
            kind, mode, metric_name, help_text, key, group_key, le = plans[slot]
            msamples = samples.get(metric_name)
            if msamples is None:
                metrics[metric_name] = Metric(metric_name, help_text, kind)
                msamples = samples[metric_name] = {}
                buckets[metric_name] = {}
            vals = values[slot]
            if kind == "gauge":
                metrics[metric_name]._multiprocess_mode = mode
                group = msamples.get(group_key)
                if group is None:
                    group = msamples[group_key] = {}
                if mode in _PID_MODES:
                    group[key] = vals[-1]
                    continue
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
                _merge_gauge(group, key, value, mode, total)
            elif le is not None:  # a histogram bucket: summed now, made cumulative below
                b = buckets[metric_name].get(group_key)
                if b is None:
                    b = buckets[metric_name][group_key] = {}
                b[le] = total(vals) if le not in b else total([b[le], *vals])
            else:
                group = msamples.get(group_key)
                if group is None:
                    group = msamples[group_key] = {}
                group[key] = total(vals) if key not in group else total([group[key], *vals])

        out = []
        meta = self._sample_meta
        make = Sample._make
        for metric_name, metric in metrics.items():
            msamples = samples[metric_name]
            if metric.type == "histogram":
                for labels, bvals in buckets[metric_name].items():
                    acc = 0.0
                    group = msamples.get(labels)
                    if group is None:
                        group = msamples[labels] = {}
                    for bucket, value in sorted(bvals.items()):
                        acc += value
                        group[self._bucket_key(metric_name, labels, bucket)] = acc
                    group[(metric_name + "_count", labels)] = acc
            samples_out = []
            for group in msamples.values():
                for key, value in group.items():
                    m = meta.get(key)
                    if m is None:
                        m = meta[key] = (key[0], dict(key[1]))
                    samples_out.append(make((m[0], m[1], value, None, None, None)))
            metric.samples = samples_out
            out.append(metric)
        if len(meta) > 8 * len(order) + 4096:
            meta.clear()
            self._bucket_keys.clear()
        return out

    def _bucket_key(self, metric_name: str, labels: tuple, bucket: float) -> tuple:
        k = (metric_name, labels, bucket)
        key = self._bucket_keys.get(k)
        if key is None:
            key = self._bucket_keys[k] = (
                metric_name + "_bucket",
                labels + (("le", floatToGoString(bucket)),),
            )
        return key


def _plan(info: tuple) -> tuple:
    """What building a series' samples needs, worked out once when the series appears.

    Returns (kind, mode, metric name, help, sample key, label group, bucket bound or None)
    where the label group is what stock groups samples by: labels without ``pid`` (or with
    it, for "all" gauges) and, for buckets, without ``le``.
    """
    kind, mode, metric_name, name, labels_key, help_text, pid = info
    le = None
    group = labels_key
    if kind == "gauge" and pid is not None:
        group = labels_key + (("pid", pid),)
    elif kind == "histogram":
        for k, v in labels_key:
            if k == "le":
                le = float(v)
                group = tuple(kv for kv in labels_key if kv[0] != "le")
                break
    return (kind, mode, metric_name, help_text, (name, group), group, le)


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
