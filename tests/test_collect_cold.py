"""Cold collectors (a worker's first scrape) read exactly what stock reads.

Layouts are shared between files with the same keys (:mod:`netpoint_metrics.core.layouts`),
so these tests build directories where sharing could go wrong: many files with one layout,
layouts that differ in a single key of the same length, the same keys in another order,
and files that grow between scrapes. A fresh collector per directory state (cold) and one
kept across all states (warm) must both equal prometheus-client's own collector.
"""

from __future__ import annotations

import math
import shutil
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from netpoint_metrics.core.collect import DirectoryCollector
from tests.core_support import FakeProcess, key

# Same lengths, one character apart: the layouts of files holding them differ in one key.
CODES = ["200", "201", "404", "500"]
VIEWS = ["a", "b"]
PREFIXES = ["counter", "gauge_max", "gauge_livesum", "gauge_all", "gauge_mostrecent", "histogram"]


def _key(prefix: str, code: str, view: str) -> str:
    if prefix == "histogram":
        return key("lat", "lat_bucket", {"code": code, "le": "0.5" if view == "a" else "+Inf"})
    name = "m_" + prefix.replace("gauge_", "g")
    return key(name, name, {"code": code, "view": view})


write = st.tuples(
    st.integers(0, 5),  # which process
    st.sampled_from(PREFIXES),
    st.sampled_from(CODES),
    st.sampled_from(VIEWS),
    st.integers(1, 1000),
)


def _stock(d: str) -> bytes:
    reg = CollectorRegistry()
    MultiProcessCollector(reg, d)
    return generate_latest(reg)


def _ours(collector: DirectoryCollector) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg)


def _parsed(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
    }


def _same_as_stock(exact: DirectoryCollector, stock_order: DirectoryCollector, d: str) -> None:
    ref = _stock(d)
    assert _ours(stock_order) == ref
    a, b = _parsed(_ours(exact)), _parsed(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-9), (k, a[k], b[k])


def _pair(d: str) -> tuple[DirectoryCollector, DirectoryCollector]:
    opts = {"use_manifest": False, "drop_dead_live_gauges": False}
    return DirectoryCollector(d, **opts), DirectoryCollector(d, exact=False, **opts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(write, min_size=1, max_size=12), min_size=1, max_size=5))
def test_cold_and_warm_collectors_equal_stock_as_files_grow(rounds) -> None:
    """Rounds of writes (files grow, keys appear in any order); compare after each."""
    d = tempfile.mkdtemp(prefix="npm-cold-")
    procs = [FakeProcess(d).start() for _ in range(6)]
    warm = _pair(d)
    try:
        for writes in rounds:
            for p, prefix, code, view, value in writes:
                procs[p].set(prefix, _key(prefix, code, view), float(value), ts=float(value))
            _same_as_stock(*warm, d)
            _same_as_stock(*_pair(d), d)  # cold: a worker that never scraped
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=40, deadline=None)
@given(
    st.permutations([(c, v) for c in CODES for v in VIEWS]),
    st.integers(2, 12),
    st.data(),
)
def test_shared_layouts_and_one_key_differences(order, nprocs, data) -> None:
    """Many files with one layout, some differing in one same-length key or in order."""
    d = tempfile.mkdtemp(prefix="npm-shared-")
    procs = [FakeProcess(d).start() for _ in range(nprocs)]
    try:
        for i, p in enumerate(procs):
            mine = list(order)
            tweak = data.draw(st.sampled_from(["same", "one-key", "swap", "prefix"]))
            if tweak == "one-key":  # same length, same size, one key different
                j = data.draw(st.integers(0, len(mine) - 1))
                c, v = mine[j]
                mine[j] = (CODES[(CODES.index(c) + 1) % len(CODES)], v)
            elif tweak == "swap":
                j = data.draw(st.integers(0, len(mine) - 2))
                mine[j], mine[j + 1] = mine[j + 1], mine[j]
            elif tweak == "prefix":  # a file caught mid-growth
                mine = mine[: data.draw(st.integers(1, len(mine)))]
            for c, v in mine:
                p.set("counter", _key("counter", c, v), float(i + 1))
                p.set("histogram", _key("histogram", c, v), 1.0)
        cold = _pair(d)
        _same_as_stock(*cold, d)
        # the same collectors again (warm), after one more file grows
        procs[0].set("counter", _key("counter", "500", "b") + " ", 7.0)
        _same_as_stock(*cold, d)
        _same_as_stock(*_pair(d), d)
    finally:
        for p in procs:
            p.kill()
        shutil.rmtree(d, ignore_errors=True)


def test_layouts_are_shared_between_files_with_the_same_keys(tmp_path) -> None:
    d = str(tmp_path)
    procs = [FakeProcess(d).start() for _ in range(20)]
    for p in procs:
        for c in CODES:
            p.set("counter", _key("counter", c, "a"), 1.0)
    c = DirectoryCollector(d)
    c.collect()
    assert c._reader.layouts.built == 1  # one layout learned for 20 files
    procs[3].set("counter", _key("counter", "200", "b"), 1.0)  # that file grows
    c.collect()
    assert c._reader.layouts.built == 2
    for p in procs:
        p.kill()


def test_new_layouts_are_learned_in_one_pass_and_odd_keys_by_walking(tmp_path, monkeypatch):
    from netpoint_metrics.core import dbfile, layouts

    def good(v: float) -> bytes:  # a value whose first byte is a space (0x20)
        return dbfile.encode(
            [(key("m", "m_total", {"l": "x" * n}).encode(), v, v) for n in range(9)]
        )

    spacey = struct.unpack("d", b" " + struct.pack("d", 1.5)[1:])[0]
    odd = dbfile.encode([(key("m", "m_total", {}, help_text="in [s]").encode(), 2.0, 0.0)])
    walked: list[int] = []
    real = dbfile.iter_entries

    def counting(data: bytes, used: int):
        walked.append(used)
        return real(data, used)

    monkeypatch.setattr(dbfile, "iter_entries", counting)
    for data, must_walk in ((good(1.0), False), (good(spacey), False), (odd, True)):
        used = struct.unpack_from("i", data)[0]
        walked.clear()
        layout, (vals, stamps) = layouts.LayoutCache().find("counter", data, used)
        assert bool(walked) == must_walk
        assert list(layout.keys) == [k for k, _ in real(data, used)]
        assert list(vals) == [struct.unpack_from("d", data, p)[0] for _, p in real(data, used)]


def test_layouts_of_vanished_files_are_forgotten(tmp_path) -> None:
    """Recycled workers bring new layouts; the cache must not keep every one of them."""
    import os
    import random

    d = str(tmp_path)
    c = DirectoryCollector(d, use_manifest=False)
    rng = random.Random(7)
    pairs = [(code, view) for code in CODES for view in VIEWS]
    for _ in range(600):
        p = FakeProcess(d).start()
        for code, view in rng.sample(pairs, len(pairs)):  # a new key order: a new layout
            p.set("counter", _key("counter", code, view), 1.0)
        c.collect()
        p.kill()
        os.unlink(os.path.join(d, f"counter_{p.ident}.db"))
    assert c._reader.layouts.built > 300
    assert len(c._reader.layouts) <= 2 * 1 + 256


def test_series_table_compaction_keeps_output_equal_to_stock(tmp_path) -> None:
    """Processes come and go with "all" gauges and counters; the slot table is renumbered
    (compacted) along the way; shared layouts must follow the new numbers."""
    import os

    d = str(tmp_path)
    opts = {"use_manifest": False, "drop_dead_live_gauges": False}
    warm = DirectoryCollector(d, exact=False, **opts)
    live: list[FakeProcess] = []
    compactions = 0
    for i in range(170):
        p = FakeProcess(d).start()
        for j in range(30):
            p.set("gauge_all", key("m_gall", "m_gall", {"j": str(j)}), float(j))
        p.set("counter", _key("counter", "200", "a"), float(i))
        live.append(p)
        if len(live) > 3:
            gone = live.pop(0)
            gone.kill()
            for prefix in ("gauge_all", "counter"):
                os.unlink(os.path.join(d, f"{prefix}_{gone.ident}.db"))
        before = len(warm._table)
        assert _ours(warm) == _stock(d)
        compactions += len(warm._table) < before
    assert compactions >= 1  # the renumbering really happened
    for p in live:
        p.kill()
