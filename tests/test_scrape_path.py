"""The scrape path outside the directory reader (issue 11): rendering, per-process
metrics, and the scrape's own fold, each cheaper and each still exact.

* ``core.render`` writes byte for byte what prometheus-client's ``generate_latest``
  writes, for real metric objects, on a first and on later scrapes;
* ``/proc`` is read with fewer system calls: the open fd count from ``stat`` equals the
  directory listing, and a lease the collector found held is not asked again;
* a scrape folds only when it saw a free lease (something to fold), and then it does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest

from netpoint_metrics.core import lease, names, processmetrics, render
from netpoint_metrics.core.collect import DirectoryCollector
from netpoint_metrics.core.scrape import ScrapeCollector
from tests.core_support import FakeProcess, db_files, key
from tests.core_support import samples as flat

# -- rendering -------------------------------------------------------------------------------


def test_renderer_matches_installed_prometheus_client():
    assert render.matches_stock()
    fams = render.probe_families()

    class Probe:
        def collect(self):
            return fams

    assert render.TextRenderer().render(fams) == generate_latest(Probe())


def test_renderer_is_byte_identical_on_real_metrics_across_scrapes():
    reg = CollectorRegistry()
    c = Counter("req", "Requests\nwith \\ odd help", ["method", "path"], registry=reg)
    g = Gauge("temp", "Temperature", ["room"], registry=reg)
    h = Histogram("lat", "Latency", ["view"], registry=reg, buckets=(0.001, 0.1, 1, 1e7))
    s = Summary("size", "Sizes", registry=reg)
    r = render.TextRenderer()
    odd = ['a"b', "back\\slash", "new\nline", "ünïcödé", ""]
    for round_ in range(4):
        for i, label in enumerate(odd):
            c.labels("GET", label).inc(i + round_ * 0.5)
            g.labels(label).set([0.0, -0.0, 1e6, 1_234_567.5, float("nan")][(i + round_) % 5])
            h.labels(label).observe((i + 1) * 10.0**round_)
        g.labels(f"new-{round_}").set(float("inf") if round_ % 2 else -float("inf"))
        s.observe(round_)
        # The same renderer keeps its caches between scrapes: values and new series change.
        assert r.render(reg.collect()) == generate_latest(reg), f"round {round_}"


def test_renderer_on_a_real_directory_matches_the_stock_text(tmp_path):
    d = str(tmp_path)
    procs = [FakeProcess(d).start() for _ in range(3)]
    for n, p in enumerate(procs):
        for view in ("home", "device-list", 'we"ird'):
            p.add("counter", key("hits", "hits_total", {"view": view}), n + 1)
            p.add("histogram", key("t", "t_bucket", {"view": view, "le": "0.5"}), 1)
            p.add("histogram", key("t", "t_bucket", {"view": view, "le": "+Inf"}), 2)
            p.add("histogram", key("t", "t_sum", {"view": view}), 0.75)
    collector = DirectoryCollector(d)
    r = render.TextRenderer()
    for _ in range(2):
        fams = collector.collect()

        class Fixed:
            def collect(self, fams=fams):
                return fams

        assert r.render(fams) == generate_latest(Fixed())
    for p in procs:
        p.kill()


# -- /proc -----------------------------------------------------------------------------------


def _sleeper(extra_fds: int = 0) -> subprocess.Popen:
    code = (
        "import os, sys, time\n"
        f"fds = [os.open(os.devnull, os.O_RDONLY) for _ in range({extra_fds})]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def test_open_fds_from_stat_equals_the_listing():
    child = _sleeper(extra_fds=5)
    try:
        listed = len(os.listdir(f"/proc/{child.pid}/fd"))
        assert processmetrics.open_fds(child.pid) == listed >= 8
        # The listing path (kernels before 6.2) gives the same count.
        saved = processmetrics._fd_size_counts
        processmetrics._fd_size_counts = False
        try:
            assert processmetrics.open_fds(child.pid) == listed
        finally:
            processmetrics._fd_size_counts = saved
        stats = processmetrics.read_process(child.pid)
        assert stats is not None and stats.ppid == os.getpid() and stats.open_fds == listed
    finally:
        child.kill()
        child.wait(10)
    # Gone: no row, and no fd count, never an exception.
    assert processmetrics.read_process(child.pid) is None
    assert processmetrics.open_fds(child.pid) is None


def test_live_pids_trusts_the_collectors_checks_and_reports_free_leases(tmp_path):
    d = str(tmp_path)
    live = FakeProcess(d).start()
    dead = FakeProcess(d).start()
    dead.kill()
    idents = [live.ident, dead.ident]
    free: list[str] = []
    pids = processmetrics.live_pids(d, idents, (), free)
    assert pids == {names.ident_pid(live.ident)} and free == [dead.ident]
    # A lease the collector has just found held is not asked again: here its file is
    # gone (so asking would say "dead" by pid), and it is still counted as live.
    os.unlink(os.path.join(d, names.lease_filename(live.ident)))
    assert not lease.is_alive(d, live.ident)
    assert processmetrics.live_pids(d, idents, frozenset({live.ident})) == {
        names.ident_pid(live.ident)
    }
    live.kill()


def test_collect_stats_name_the_held_leases(tmp_path):
    d = str(tmp_path)
    live = FakeProcess(d).start()
    dead = FakeProcess(d).start()
    for p in (live, dead):
        p.add("counter", key("c", "c_total", {}), 1)
    dead.kill()
    c = DirectoryCollector(d)
    c.collect()
    assert c.stats.alive_idents == frozenset({live.ident})
    assert set(c.stats.lease_idents) == {live.ident, dead.ident}
    live.kill()


# -- the scrape's own fold -------------------------------------------------------------------


def _fold_events(caplog) -> int:
    return sum(1 for r in caplog.records if "event=fold " in r.getMessage() + " ")


def test_scrape_folds_only_when_it_saw_a_free_lease(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="netpoint_metrics")
    d = str(tmp_path)
    live = FakeProcess(d).start()
    live.add("counter", key("c", "c_total", {}), 2)
    scrape = ScrapeCollector(DirectoryCollector(d), fold_every=0.0)
    before = flat(scrape.collect())
    assert _fold_events(caplog) == 0, "nothing was dead, yet the scrape folded"

    dead = FakeProcess(d).start()
    dead.add("counter", key("c", "c_total", {}), 3)
    dead.kill()
    after = flat(scrape.collect())
    assert _fold_events(caplog) == 1
    # The dead process's files went into the archive; its count stays.
    assert not any(dead.ident in f for f in db_files(d))
    assert not os.path.exists(os.path.join(d, names.lease_filename(dead.ident)))
    assert after[("c_total", ())] == 5.0 and before[("c_total", ())] == 2.0
    assert flat(scrape.collect())[("c_total", ())] == 5.0
    live.kill()


# -- the view, on a real server ---------------------------------------------------------------


def _shape(body: bytes) -> list[str]:
    """Each line without its value: comments whole, samples up to the value."""
    return [ln if ln.startswith("#") else ln.rsplit(" ", 1)[0] for ln in body.decode().splitlines()]


def test_view_renders_what_prometheus_client_renders(server_factory):
    import gzip

    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    srv = server_factory("gunicorn", workers=1)
    # Asking for text format 1.0.0 takes prometheus-client's own path (generate_latest).
    stock_accept = {"Accept": "text/plain; version=1.0.0; escaping=underscores"}
    for _ in range(3):  # every series the scrapes themselves create exists after these
        assert srv.get("/api/sites/")[0] == 200
        assert srv.get("/metrics")[0] == 200
        assert srv.get("/metrics", headers=stock_accept)[0] == 200
    status, headers, ours = srv.get("/metrics")
    assert status == 200 and headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    status, headers, stock = srv.get("/metrics", headers=stock_accept)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=1.0.0")
    assert _shape(ours) == _shape(stock)
    assert b"netpoint_process_open_fds{" in ours
    # gzip and name[] filters still work.
    status, headers, body = srv.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert _shape(gzip.decompress(body)) == _shape(ours)
    # Every name[] value filters (prometheus-client's Django view took the last value as
    # one string, i.e. a set of characters, and answered nothing), in both formats.
    query = "/metrics?name[]=netpoint_process_open_fds&name[]=netpoint_metrics_directory_files"
    for accept in ({}, {"Accept": "application/openmetrics-text; version=1.0.0"}):
        status, _, body = srv.get(query, headers=accept)
        fams = {ln.split()[2] for ln in body.decode().splitlines() if ln.startswith("# TYPE")}
        want = {"netpoint_process_open_fds", "netpoint_metrics_directory_files"}
        assert status == 200 and fams == want, body[:300]
