"""``inc_many``: several increments under one lock, with ``inc``'s guarantees kept.

The request middlewares hand each hook's updates to the value class in one call
(:mod:`netpoint_metrics.instrumentation`). These tests hold that call to what ``inc`` does:
no update lost between threads (Gunicorn ``gthread``), a forked child (through Python or
from C) writes its own files and never its parent's, an update without space is dropped and
counted, a gauge keeps its state meanwhile, and values it does not own go through their own
``inc``.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import values as pc_values

from netpoint_metrics.core import identity
from netpoint_metrics.core import values as nv
from tests.core_support import in_forked_child, stock_text, use_value_class


def test_batches_from_many_threads_lose_no_update(mpdir: Path) -> None:
    cls = nv.make_value_class(lambda: "201-aaaaaa")
    use_value_class(cls)
    c = Counter("batched", "batched by threads", ["k"], registry=None)
    h = Histogram("batched_h", "observed in batches", registry=None, buckets=(1, 10))
    a, b = c.labels("a")._value, c.labels("b")._value
    bucket, total = h._buckets[0], h._sum
    n, per = 8, 3000

    def work(t: int) -> None:
        for i in range(per):
            cls.inc_many([(a, 1), (b, 2), (bucket, 1), (total, 0.5)])
            a.inc(1)  # single updates interleave with the batches
            if i % 20 == 0:  # new keys grow the file under the other threads' batches
                c.labels(f"t{t}-{i}").inc()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a missing lock shows up as a lost update
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert a.get() == 2 * n * per and b.get() == 2 * n * per
    text = stock_text(mpdir)
    assert f'batched_total{{k="a"}} {float(2 * n * per)}' in text
    assert f'batched_total{{k="b"}} {float(2 * n * per)}' in text
    assert f'batched_h_bucket{{le="1.0"}} {float(n * per)}' in text
    assert f"batched_h_sum {n * per * 0.5}" in text
    assert text.count("batched_total{") == 2 + n * per // 20


def _fork_child_batches(fork: Callable[[], int]) -> None:
    cls = nv.make_value_class(identity.current)
    use_value_class(cls)
    c = Counter("forkbatch", "fork then batch", ["who"], registry=None)
    g = Gauge("forkbatch_g", "a gauge in the batch", multiprocess_mode="livesum", registry=None)
    parent = c.labels("parent")._value
    child = c.labels("child")._value  # made here: nothing in the child may notice the fork first
    cls.inc_many([(parent, 5), (g._value, 1)])
    parent_ident = identity.current()
    parent_file = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / f"counter_{parent_ident}.db"
    before = parent_file.read_bytes()
    pid = fork()
    assert pid >= 0
    if pid == 0:  # child: batch first (the fork is noticed there), then exit without cleanup
        code = 1
        try:
            cls.inc_many([(parent, 100), (child, 1), (g._value, 1)])
            code = 0 if identity.current() != parent_ident else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent_file.read_bytes() == before, "the child wrote into its parent's file"


def test_a_forked_child_batches_into_its_own_files(mpdir: Path) -> None:
    _fork_child_batches(os.fork)
    text = stock_text(mpdir)
    # The child's "parent" series started from 0 in its own file: 5 + 100.
    assert 'forkbatch_total{who="parent"} 105.0' in text
    assert 'forkbatch_total{who="child"} 1.0' in text
    assert len([n for n in os.listdir(mpdir) if n.startswith("counter_")]) == 2


def test_a_child_forked_from_c_batches_into_its_own_files(mpdir: Path) -> None:
    """uWSGI forks from C: no at-fork handler runs, the guard byte must catch it."""
    libc = ctypes.CDLL(None, use_errno=True)
    _fork_child_batches(libc.fork)
    assert 'forkbatch_total{who="parent"} 105.0' in stock_text(mpdir)
    assert len([n for n in os.listdir(mpdir) if n.startswith("counter_")]) == 2


def _full_disk_batches(mpdir: Path) -> None:
    """In a child: values without a slot (file cannot grow) are dropped and counted."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    nv.RETRY_SECONDS = 0.0
    cls = nv.make_value_class(lambda: "202-bbbbbb")
    use_value_class(cls)
    c = Counter("fullbatch", "under a size limit", ["k"], registry=None)
    early = c.labels("early")._value
    early.inc(3)  # stored: the first 64 KiB are reserved at creation
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # no file can grow or be made
    for i in range(2000):  # needs growth past the reserved space: later keys get no slot
        c.labels(f"k{i:04d}")
    late = c.labels("k1999")._value
    assert late.__class__ is not cls, "the last key should have no slot under the limit"
    # The gauge's file cannot be made: its updates are dropped, its state kept in memory.
    g = Gauge("fullbatch_g", "in progress", multiprocess_mode="livesum", registry=None)
    dropped = nv.dropped_updates(cls)
    cls.inc_many([(early, 1), (late, 1), (late, 1), (g._value, 1)])
    assert nv.dropped_updates(cls) == dropped + 3
    text = stock_text(mpdir)
    assert 'fullbatch_total{k="early"} 4.0' in text
    assert 'fullbatch_total{k="k1999"}' not in text
    assert f"netpoint_metrics_dropped_updates_total {dropped + 3}" in text
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    cls.inc_many([(late, 5), (early, 1)])  # space is back: bound now, counts from here
    g._value.inc(0)  # the gauge writes the state it kept: 1
    text = stock_text(mpdir)
    assert 'fullbatch_total{k="k1999"} 5.0' in text
    assert 'fullbatch_total{k="early"} 5.0' in text
    assert "fullbatch_g 1.0" in text, text
    assert nv.dropped_updates(cls) == dropped + 3


def test_no_space_in_a_batch_is_dropped_and_counted_then_resumes(mpdir: Path) -> None:
    in_forked_child(lambda: _full_disk_batches(mpdir))


def test_values_of_another_class_take_their_own_inc(mpdir: Path) -> None:
    cls = nv.make_value_class(lambda: "203-cccccc")
    use_value_class(cls)
    ours = Counter("mixed", "ours", registry=None)
    memory = pc_values.MutexValue("counter", "mem", "mem_total", (), (), "in memory")
    other_cls = nv.make_value_class(lambda: "204-dddddd")
    use_value_class(other_cls)
    theirs = Counter("mixed_other", "another value class", registry=None)
    cls.inc_many([(ours._value, 2), (memory, 3), (theirs._value, 4)])
    assert (ours._value.get(), memory.get(), theirs._value.get()) == (2.0, 3.0, 4.0)
    text = stock_text(mpdir)
    assert "mixed_total 2.0" in text and "mixed_other_total 4.0" in text
    # Each value went to its own class's file.
    assert (mpdir / "counter_203-cccccc.db").exists() and (mpdir / "counter_204-dddddd.db").exists()


def test_a_batch_after_close_rebinds_like_inc(mpdir: Path) -> None:
    cls = nv.make_value_class(lambda: "205-eeeeee")
    use_value_class(cls)
    c = Counter("closed", "closed then batched", registry=None)
    cls.inc_many([(c._value, 1)])
    cls.close_all_files()
    cls.inc_many([(c._value, 1)])  # unbound now: its own inc binds it again
    assert "closed_total 2.0" in stock_text(mpdir)
    assert nv.dropped_updates(cls) == 0
