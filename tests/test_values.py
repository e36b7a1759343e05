"""Our value class (core.values / core.valuefile): stock format, fork safety, threads, no space.

Each test builds its own value class with ``make_value_class`` and creates metrics with it
(``registry=None``), so tests do not share state; the global ``ValueClass`` is restored.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import values as pc_values

from netpoint_metrics.core import identity, valuefile
from netpoint_metrics.core import values as nv
from tests.core_support import in_forked_child, stock_text, use_value_class


def _workload(tag: str) -> None:
    c = Counter(f"{tag}_c", "a counter", ["k"], registry=None)
    g_max = Gauge(f"{tag}_gmax", "a max gauge", multiprocess_mode="max", registry=None)
    g_live = Gauge(f"{tag}_glive", "a livesum gauge", multiprocess_mode="livesum", registry=None)
    g_recent = Gauge(f"{tag}_grecent", "recent", multiprocess_mode="mostrecent", registry=None)
    h = Histogram(f"{tag}_h", "a histogram", ["v"], registry=None)
    for i in range(300):
        c.labels(str(i % 7)).inc(i % 3)
        h.labels(str(i % 5)).observe(i / 97.0)
    g_max.set(42)
    g_live.inc(3)
    g_live.dec(1)
    g_recent.set(7.5)
    c.labels("reset").inc(5)
    c.labels("reset").reset()
    c.labels("reset").inc(2)


def test_files_are_stock_format_and_read_the_same_by_the_stock_collector(
    mpdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_value_class(nv.make_value_class(lambda: "101-aaaaaa"))
    _workload("m")
    ours = stock_text(mpdir)

    stock_dir = tmp_path / "stock"
    stock_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(stock_dir))
    use_value_class(pc_values.MultiProcessValue(process_identifier=lambda: "101"))
    _workload("m")
    stock = stock_text(stock_dir)

    ours_lines = [ln for ln in ours.splitlines() if "netpoint_metrics_dropped" not in ln]
    # mostrecent gauges carry a timestamp-free value in the exposition: lines must match.
    assert sorted(ours_lines) == sorted(stock.splitlines())
    assert 'm_c_total{k="6"}' in ours
    assert "netpoint_metrics_dropped_updates_total 0.0" in ours
    names = sorted(os.listdir(mpdir))
    assert "counter_101-aaaaaa.db" in names and "histogram_101-aaaaaa.db" in names
    # Files are reserved, not sparse: every byte of the file has a block behind it.
    for name in (n for n in names if n.endswith(".db")):  # not lease or key-order files
        st = os.stat(mpdir / name)
        assert st.st_size % valuefile.INITIAL_SIZE == 0
        assert st.st_blocks * 512 >= st.st_size, f"{name} is sparse"


def test_file_grows_past_first_size_and_keeps_every_value(mpdir: Path) -> None:
    use_value_class(nv.make_value_class(lambda: "102-bbbbbb"))
    c = Counter("grow", "many series", ["k"], registry=None)
    first = c.labels("first")
    first.inc(1)
    for i in range(3000):  # ~100 bytes per key: several doublings
        c.labels(f"key-{i:05d}").inc(i)
    first.inc(1)  # written through the re-pointed view after growth
    size = os.stat(mpdir / "counter_102-bbbbbb.db").st_size
    assert size > valuefile.INITIAL_SIZE
    text = stock_text(mpdir)
    assert 'grow_total{k="first"} 2.0' in text
    assert 'grow_total{k="key-02999"} 2999.0' in text
    assert text.count("grow_total{") == 3001


def test_threads_lose_no_update_while_files_grow(mpdir: Path) -> None:
    use_value_class(nv.make_value_class(lambda: "103-cccccc"))
    c = Counter("threads", "shared by threads", ["k"], registry=None)
    shared = c.labels("shared")
    n, per = 8, 5000

    def work(t: int) -> None:
        for i in range(per):
            shared.inc()
            if i % 10 == 0:  # new keys force growth under the other threads' writes
                c.labels(f"t{t}-{i}").inc()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert shared._value.get() == n * per
    text = stock_text(mpdir)
    assert f'threads_total{{k="shared"}} {float(n * per)}' in text
    assert text.count("threads_total{") == 1 + n * per // 10


def test_fork_child_gets_new_identity_and_files_never_the_parents(mpdir: Path) -> None:
    use_value_class(nv.make_value_class(identity.current))
    c = Counter("forked", "fork", ["who"], registry=None)
    c.labels("parent").inc(5)
    parent_ident = identity.current()
    parent_file = mpdir / f"counter_{parent_ident}.db"
    before = parent_file.read_bytes()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its identity, write, exit without cleanup
        code = 1
        try:
            os.close(r)
            c.labels("parent").inc(100)
            c.labels("child").inc(1)
            os.write(w, identity.current().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    child_ident = os.read(r, 200).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_ident.startswith(f"{pid}-") and child_ident != parent_ident
    assert parent_file.read_bytes() == before, "the child wrote into its parent's file"
    assert (mpdir / f"counter_{child_ident}.db").exists()
    assert (mpdir / f"lease_{child_ident}.lock").exists()
    text = stock_text(mpdir)
    # The child's "parent" series started from 0 in its own file: 5 + 100.
    assert 'forked_total{who="parent"} 105.0' in text
    assert 'forked_total{who="child"} 1.0' in text
    c.labels("parent").inc(1)  # the parent still writes its own file
    assert 'forked_total{who="parent"} 106.0' in stock_text(mpdir)


def test_threads_in_a_forked_child_rebind_once(mpdir: Path) -> None:
    use_value_class(nv.make_value_class(identity.current))
    c = Counter("forkthreads", "fork then threads", registry=None)
    c.inc()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ts = [threading.Thread(target=lambda: [c.inc() for _ in range(2000)]) for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            code = 0 if c._value.get() == 8000 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "forkthreads_total 8001.0" in stock_text(mpdir)
    assert len([n for n in os.listdir(mpdir) if n.startswith("counter_")]) == 2


def _run_with_file_size_limit(mpdir: Path, limit: int) -> None:
    """In a child: cap file size (EFBIG, like a full disk), drop, then lift it and resume."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    nv.RETRY_SECONDS = 0.0
    cls = nv.make_value_class(lambda: "104-dddddd")
    use_value_class(cls)
    c = Counter("limited", "under a size limit", ["k"], registry=None)
    c.labels("early").inc(3)  # stored: the first 64 KiB are reserved at creation
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    for i in range(2000):  # needs growth past the limit: later keys are dropped
        c.labels(f"k{i:04d}").inc()
    c.labels("early").inc(1)  # an existing slot needs no space: stored
    dropped = nv.dropped_updates(cls)
    assert dropped > 0
    text = stock_text(mpdir)
    assert 'limited_total{k="early"} 4.0' in text
    assert f"netpoint_metrics_dropped_updates_total {dropped}" in text
    stored = text.count("limited_total{")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    c.labels("k1999").inc(5)  # space is back: bound now, counts only from here
    text = stock_text(mpdir)
    assert 'limited_total{k="k1999"} 5.0' in text
    assert text.count("limited_total{") == stored + 1
    assert nv.dropped_updates(cls) == dropped


def test_no_space_drops_and_counts_then_resumes(mpdir: Path) -> None:
    in_forked_child(lambda: _run_with_file_size_limit(mpdir, valuefile.INITIAL_SIZE))


def test_a_file_that_cannot_be_created_leaves_nothing_behind(mpdir: Path) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            cls = nv.make_value_class(lambda: "105-eeeeee")
            use_value_class(cls)
            c = Counter("nofile", "no space at all", registry=None)
            c.inc()
            c.inc()
            code = 0 if nv.dropped_updates(cls) == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [n for n in os.listdir(mpdir) if not n.startswith(".")] == []
    assert os.listdir(mpdir) == [], "a temporary file was left behind"


def test_fork_from_c_without_python_handlers_is_noticed(mpdir: Path) -> None:
    """uWSGI forks workers from C and runs no ``os.register_at_fork`` handler by default."""
    import ctypes

    use_value_class(nv.make_value_class(identity.current))
    c = Counter("cfork", "forked from C", registry=None)
    c.inc(5)
    parent_ident = identity.current()
    parent_file = mpdir / f"counter_{parent_ident}.db"
    before = parent_file.read_bytes()
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.fork()  # no Python at-fork handlers run in this child
    assert pid >= 0
    if pid == 0:
        code = 1
        try:
            c.inc(100)
            code = 0 if identity.current() != parent_ident else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent_file.read_bytes() == before, "the C-forked child wrote into its parent's file"
    assert "cfork_total 105.0" in stock_text(mpdir)
    assert len([n for n in os.listdir(mpdir) if n.startswith("counter_")]) == 2


def test_gthread_workers_count_every_request_exactly(server_factory) -> None:
    """Gunicorn ``gthread`` workers: many threads update the same values at once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests import servers

    srv = server_factory(
        "gunicorn", workers=2, extra_args=["--worker-class", "gthread", "--threads", "8"]
    )
    base = srv.scrape()
    api = ("rest_api_requests_total_by_view_method_total", {"view": "device-list", "method": "GET"})
    start = servers.total(base, api[0], **api[1])

    def one(_: int) -> int:
        return srv.get("/api/devices/")[0]

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(400)))
    assert codes == [200] * 400
    s = srv.scrape()
    assert servers.total(s, api[0], **api[1]) == start + 400
    view = "django_http_requests_total_by_view_transport_method_total"
    assert servers.value(s, view, view="device-list", transport="http", method="GET") == 400
    lat = "django_http_requests_latency_seconds_by_view_method_count"
    assert servers.value(s, lat, view="device-list", method="GET") == 400


def test_valuefile_matches_prometheus_client_reader_for_any_keys(tmp_path: Path) -> None:
    """Whatever keys (any text, any length, growth included), the stock reader agrees."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from prometheus_client.mmap_dict import MmapedDict

    counter = iter(range(10**6))

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(st.text(min_size=0, max_size=3000), st.floats(allow_nan=False)),
            min_size=1,
            max_size=60,
        )
    )
    def check(entries: list[tuple[str, float]]) -> None:
        path = tmp_path / f"counter_{next(counter)}.db"
        f = valuefile.ValueFile(str(path))
        want: dict[str, float] = {}
        for key, v in entries:
            i = f.index(key)
            f.view[i] = v
            want[key] = v
        f.close()
        got = {k: v for k, v, _, _ in MmapedDict.read_all_values_from_file(str(path))}
        assert got == want
        # Reopened (as after close_all_files), the same slots come back.
        again = valuefile.ValueFile(str(path))
        for key, v in want.items():
            assert again.view[again.index(key)] == v
        again.close()

    check()


def test_a_gauge_keeps_its_state_through_no_space_counters_drop(mpdir: Path) -> None:
    """An in-progress gauge inc'd without space and dec'd with space must read 1, not -1."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            nv.RETRY_SECONDS = 0.0
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # no file can be made
            cls = nv.make_value_class(lambda: "106-ffffff")
            use_value_class(cls)
            g = Gauge("inprog", "in progress", multiprocess_mode="livesum", registry=None)
            c = Counter("done", "done", registry=None)
            g.inc()
            g.inc()
            c.inc()
            assert nv.dropped_updates(cls) == 3
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            g.dec()
            c.inc()
            text = stock_text(mpdir)
            assert "inprog 1.0" in text, text
            assert "done_total 1.0" in text, text
            assert "netpoint_metrics_dropped_updates_total 3.0" in text, text
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "see the child's traceback above"
