"""Property tests of the core: random writers, deaths, folds and crashes inside folds.

Invariants checked after every step:
* integer-valued counters and histogram buckets collected equal exactly the sum of
  everything every process (live or dead) ever wrote: nothing lost, nothing twice;
* float sums are never below the exact sum of what was written, and never decrease;
* live gauges of dead processes are gone; max gauges keep their value;
* the directory holds the files of live processes plus archives, once folds have run.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from netpoint_metrics.core import archive
from netpoint_metrics.core.collect import DirectoryCollector
from tests.core_support import FakeProcess, db_files, key, samples

COUNTER_KEYS = [key("c", "c_total", {"view": v}) for v in ("a", "b", "c")]
SUM_KEY = key("h", "h_sum", {})
BUCKET_KEYS = [key("h", "h_bucket", {"le": le}) for le in ("0.1", "1.0", "+Inf")]
LIVE_KEY = key("inflight", "inflight", {})
MAX_KEY = key("peak", "peak", {})


class Crash(Exception):
    """Stands for the folding process dying at one step."""


class DirectoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="npm-prop-")
        self.procs: list[FakeProcess] = []
        self.collector = DirectoryCollector(self.dir)
        self.truth_counts: dict[str, float] = {}
        self.truth_sum: list[float] = []
        self.last_sum = -math.inf
        self.last_counts: dict = {}
        self.peak = None

    def teardown(self) -> None:
        archive._fault = None
        for p in self.procs:
            p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule()
    def spawn(self) -> None:
        if sum(p.alive for p in self.procs) < 5:
            self.procs.append(FakeProcess(self.dir).start())

    @precondition(lambda self: any(p.alive for p in self.procs))
    @rule(data=st.data(), n=st.integers(1, 5), x=st.floats(0.0001, 3.0))
    def write(self, data, n: int, x: float) -> None:
        p = data.draw(st.sampled_from([p for p in self.procs if p.alive]))
        k = data.draw(st.sampled_from(COUNTER_KEYS))
        p.add("counter", k, n)
        self.truth_counts[k] = self.truth_counts.get(k, 0) + n
        p.add("histogram", SUM_KEY, x)
        self.truth_sum.append(x)
        b = data.draw(st.sampled_from(BUCKET_KEYS))
        for bk in BUCKET_KEYS:  # a real histogram child writes all its buckets
            p.add("histogram", bk, 0)
        p.add("histogram", b, 1)
        self.truth_counts[b] = self.truth_counts.get(b, 0) + 1
        p.set("gauge_livesum", LIVE_KEY, 1)
        p.set("gauge_max", MAX_KEY, n)
        # max mode: the largest current value over every process, dead ones included
        self.peak = max(q.values[("gauge_max", MAX_KEY)] for q in self.procs if q.values)

    @precondition(lambda self: any(p.alive for p in self.procs))
    @rule(data=st.data())
    def die(self, data) -> None:
        p = data.draw(st.sampled_from([p for p in self.procs if p.alive]))
        p.kill()

    @rule()
    def fold(self) -> None:
        result = archive.fold(self.dir)
        assert not result.busy

    @rule(
        step=st.sampled_from(
            [
                "merged",
                "archive-written",
                "copy-written",
                "committed",
                "old-archive-deleted",
                "ident-deleted",
            ]
        )
    )
    def fold_and_crash(self, step: str) -> None:
        def fault(name: str) -> None:
            if name == step:
                raise Crash(step)

        archive._fault = fault
        try:
            archive.fold(self.dir)
        except Crash:
            pass
        finally:
            archive._fault = None

    @rule(garble=st.booleans())
    def damage_manifest(self, garble: bool) -> None:
        """An operator deletes or overwrites the manifest (maybe with a fold half done):
        recovery from the generation copies must neither lose nor double count."""
        path = os.path.join(self.dir, "netpoint-archive.json")
        if garble:
            with open(path, "wb") as f:
                f.write(b"{not json")
        elif os.path.exists(path):
            os.unlink(path)

    @invariant()
    def totals_exact_and_monotone(self) -> None:
        got = samples(self.collector.collect())
        for k, want in self.truth_counts.items():
            if k in BUCKET_KEYS:
                continue
            view = k.split('"view": "')[1].split('"')[0]
            assert got[("c_total", (("view", view),))] == want
        if self.truth_sum:
            s = got[("h_sum", ())]
            exact = sum(Fraction(v) for v in self.truth_sum)
            # Every writer accumulates in floating point itself; the archive rounds up.
            assert s >= self.last_sum, "a histogram sum went down"
            assert math.isclose(s, float(exact), rel_tol=1e-9)
            self.last_sum = s
            total = sum(v for k, v in self.truth_counts.items() if k in BUCKET_KEYS)
            assert got[("h_count", ())] == total
            assert got[("h_bucket", (("le", "+Inf"),))] == total
        live = sum(1 for p in self.procs if p.alive and ("gauge_livesum", LIVE_KEY) in p.values)
        if live:
            assert got[("inflight", ())] == live
        else:
            assert ("inflight", ()) not in got
        if self.peak is not None:
            assert got[("peak", ())] == self.peak

    @invariant()
    def folded_directory_is_bounded(self) -> None:
        # After a clean fold nothing of a dead process is left behind.
        if archive._fault is None and random.random() < 0.2:
            archive.fold(self.dir)
            dead = {p.ident for p in self.procs if not p.alive}
            assert not any(any(d in f for d in dead) for f in os.listdir(self.dir))


TestDirectoryMachine = DirectoryMachine.TestCase
TestDirectoryMachine.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["counter", "histogram", "gauge_livesum", "gauge_max", "gauge_all", "gauge_min"]
            ),
            st.integers(0, 4),
            st.floats(-1e6, 1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 5),
)
def test_stock_order_mode_is_byte_identical_to_stock(writes, nprocs) -> None:
    """With exact=False our reader must equal prometheus-client's own, byte for byte."""
    d = tempfile.mkdtemp(prefix="npm-eq-")
    try:
        procs = [FakeProcess(d).start() for _ in range(nprocs)]
        for i, (prefix, label, value) in enumerate(writes):
            p = procs[i % nprocs]
            if prefix == "histogram":
                k = key(
                    "hist",
                    "hist_bucket" if label % 2 else "hist_sum",
                    {"le": str(label)} if label % 2 else {},
                )
            else:
                k = key(
                    f"m_{prefix.replace('gauge_', 'g')}",
                    f"m_{prefix.replace('gauge_', 'g')}",
                    {"l": str(label)},
                )
            if prefix == "counter":
                value = abs(value)
            p.set(prefix, k, value)
        ours = CollectorRegistry()
        ours.register(
            DirectoryCollector(d, exact=False, use_manifest=False, drop_dead_live_gauges=False)
        )
        stock = CollectorRegistry()
        MultiProcessCollector(stock, d)
        assert generate_latest(ours) == generate_latest(stock)
        # The product mode (exact sums) has the same series and values, up to stock's own
        # rounding of its order-dependent float sums.
        exact = CollectorRegistry()
        exact.register(DirectoryCollector(d, drop_dead_live_gauges=False))
        a, b = parsed(generate_latest(exact)), parsed(generate_latest(stock))
        assert a.keys() == b.keys()
        for k in a:
            assert math.isclose(a[k], b[k], rel_tol=1e-12, abs_tol=1e-9), (k, a[k], b[k])
        for p in procs:
            p.kill()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def parsed(text: bytes) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (smp.name, tuple(sorted(smp.labels.items()))): smp.value
        for fam in text_string_to_metric_families(text.decode())
        for smp in fam.samples
    }


@given(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_add_up_never_rounds_down(a: float, b: float) -> None:
    s = archive.add_up(a, b)
    assume(math.isfinite(s))
    exact = Fraction(a) + Fraction(b)
    assert Fraction(s) >= exact
    below = math.nextafter(s, -math.inf)
    assert not math.isfinite(below) or Fraction(below) < exact  # at most one step up


@pytest.mark.parametrize("seed", range(3))
def test_fold_order_cannot_lower_a_float_sum(seed: int) -> None:
    """Folding in any order never shows a float sum below what a scrape showed before."""
    rng = random.Random(seed)
    d = tempfile.mkdtemp(prefix="npm-ulp-")
    try:
        collector = DirectoryCollector(d)
        last = -math.inf
        procs = []
        for _ in range(60):
            p = FakeProcess(d).start()
            for _ in range(rng.randint(1, 4)):
                p.add("histogram", SUM_KEY, rng.uniform(0.0001, 0.5) / 3)
            procs.append(p)
            if rng.random() < 0.7:
                rng.choice([q for q in procs if q.alive]).kill()
            if rng.random() < 0.5:
                archive.fold(d)
            s = samples(collector.collect())[("h_sum", ())]
            assert s >= last
            last = s
        for p in procs:
            p.kill()
        archive.fold(d)
        assert samples(collector.collect())[("h_sum", ())] >= last
        assert len(db_files(d)) == 1  # just the histogram archive
    finally:
        shutil.rmtree(d, ignore_errors=True)
