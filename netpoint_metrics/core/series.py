"""The series table: every series a collector has met, numbered, with its value lists.

A series is what the stock collector would key a sample by before adding processes up:
kind, gauge mode, metric, sample name, labels and, for ``all`` gauges, the process. Each
has a number (its slot), one list of the values read for it in the current scrape and one
of their timestamps. The lists live as long as the table, so a :class:`~.layouts.Layout`
can hold the lists of its values and reading a file into them is one C-level ``map`` of
``list.append``, with no Python loop per value (and no bound method per series: a first
read makes hundreds of series, and every object it makes is one more for the cyclic
garbage collector to walk).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from netpoint_metrics.core import dbfile
from netpoint_metrics.core.layouts import Layout

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
#: The value (or timestamp) lists of a file's series, in the file's order.
Lists = tuple[list[float], ...]
PID_MODES = frozenset({"all", "liveall"})


class Plan(NamedTuple):
    """What building a series' samples needs, worked out once when the series appears.

    ``group`` is what stock groups samples by: labels without ``pid`` (or with it, for
    "all" gauges) and, for histogram buckets, without ``le``, whose bound is ``le``.
    A named tuple, not a dataclass: a worker's first scrape makes one per series, and a
    frozen dataclass costs several times more to make.
    """

    kind: str
    mode: str
    metric_name: str
    help_text: str
    name: str
    group: Labels
    le: float | None
    key: tuple[str, Labels]  # (sample name, group): the sample this series feeds


_new_plan = tuple.__new__  # a Plan from its fields, without NamedTuple's Python-level __new__


def make_plan(
    kind: str,
    mode: str,
    metric_name: str,
    name: str,
    labels: Labels,
    help_text: str,
    pid: str | None,
) -> Plan:
    le = None
    group = labels
    if kind == "histogram":
        for k, v in labels:
            if k == "le":
                le = float(v)  # ValueError for a bound that is not a number: the file is bad
                group = tuple(kv for kv in labels if kv[0] != "le")
                break
    elif pid is not None and kind == "gauge":
        group = labels + (("pid", pid),)
    return _new_plan(Plan, (kind, mode, metric_name, help_text, name, group, le, (name, group)))


class SeriesTable:
    """Slots by series identity; per slot a plan, a value list and a timestamp list."""

    def __init__(self) -> None:
        self._slot_of: dict[tuple[str, str, str, str, Labels, str | None], int] = {}
        self._parsed: dict[bytes, tuple[str, str, Labels, str]] = {}
        # key bytes -> slot, per (kind, mode, pid): lets a new layout of known keys be bound
        # with one C-level map instead of a Python loop per key.
        self._by_key: dict[tuple[str, str, str | None], dict[bytes, int]] = {}
        self._identities: list[tuple[str, str, str, str, Labels, str | None]] = []
        self.plans: list[Plan] = []
        self.values: list[list[float]] = []
        self.stamps: list[list[float]] = []

    def __len__(self) -> int:
        return len(self.plans)

    def bind(
        self, kind: str, mode: str, layout: Layout, pid: str | None
    ) -> tuple[tuple[int, ...], Lists, Lists]:
        """The slot of each value of a file with this layout, and their value and timestamp
        lists.

        For every kind but "all" gauges (``pid`` given) the answer depends on the layout
        alone and is kept on it, so the next file with that layout costs nothing. Raises
        dbfile.CorruptFile for a key that is not prometheus-client's.
        """
        bound = layout.slots, layout.vlists, layout.tlists
        if pid is None and bound[0] is not None and bound[1] is not None and bound[2] is not None:
            return bound[0], bound[1], bound[2]
        by_key = self._by_key.get((kind, mode, pid))
        if by_key is None:
            by_key = self._by_key[(kind, mode, pid)] = {}
        try:
            slots = tuple(map(by_key.__getitem__, layout.keys))
        except KeyError:
            slots = self._new_keys(kind, mode, layout.keys, pid, by_key)
        vlists = tuple(map(self.values.__getitem__, slots))
        tlists = tuple(map(self.stamps.__getitem__, slots))
        if pid is None:
            layout.slots, layout.vlists, layout.tlists = slots, vlists, tlists
        return slots, vlists, tlists

    def _new_keys(
        self,
        kind: str,
        mode: str,
        keys: tuple[bytes, ...],
        pid: str | None,
        by_key: dict[bytes, int],
    ) -> tuple[int, ...]:
        """Slots of keys some of which are new: parse them and add their series.

        A worker's first scrape runs this once per distinct key of the directory.
        """
        out: list[int] = []
        append = out.append
        parsed = self._parsed
        slot_of = self._slot_of
        for key in keys:
            slot = by_key.get(key)
            if slot is None:
                p = parsed.get(key)
                if p is None:
                    p = parsed[key] = dbfile.parse_key(key)
                metric_name, name, labels, help_text = p
                skey = (kind, mode, metric_name, name, labels, pid)
                slot = slot_of.get(skey)
                if slot is None:
                    try:
                        plan = make_plan(kind, mode, metric_name, name, labels, help_text, pid)
                    except ValueError as exc:
                        raise dbfile.CorruptFile(f"bad histogram bound in {key[:80]!r}") from exc
                    slot = self._add(skey, plan)
                by_key[key] = slot
            append(slot)
        return tuple(out)

    def _add(self, skey: tuple[str, str, str, str, Labels, str | None], plan: Plan) -> int:
        slot = len(self.plans)
        self._slot_of[skey] = slot
        self._identities.append(skey)
        self.plans.append(plan)
        self.values.append([])
        self.stamps.append([])
        return slot

    def clear_values(self) -> None:
        for lst in self.values:
            lst.clear()
        for lst in self.stamps:
            lst.clear()

    def needs_compaction(self, in_use: int) -> bool:
        """True when far more slots exist than are in use (ids of "all" gauges never return)."""
        return len(self.plans) > 4 * in_use + 4096

    def compact(self, order: list[int]) -> list[int]:
        """Keep only the slots in ``order`` (with their values), renumbered 0..n-1.

        Every layout's bound slots become stale: the caller must forget them.
        """
        keep = [
            (self._identities[s], self.plans[s], self.values[s][:], self.stamps[s][:])
            for s in order
        ]
        self._slot_of.clear()
        self._by_key.clear()
        self._identities.clear()
        self._parsed.clear()
        self.plans.clear()
        self.values.clear()
        self.stamps.clear()
        for skey, plan, vals, stamps in keep:
            slot = self._add(skey, plan)
            self.values[slot].extend(vals)
            self.stamps[slot].extend(stamps)
        return list(range(len(keep)))
