"""Background reads (the warm-up thread's) never make a scrape wait or change its figures.

Real value files and leases (:mod:`tests.core_support`); the collector is driven from two
threads the way a worker's request thread and its warm-up thread drive it.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest

from netpoint_metrics.core.collect import DirectoryCollector
from tests.core_support import FakeProcess, key


def _directory(tmp_path, workers: int = 6):
    d = str(tmp_path)
    procs = [FakeProcess(d).start() for _ in range(workers)]
    for i, p in enumerate(procs):
        for code in ("200", "404", "500"):
            p.add("counter", key("req", "req_total", {"code": code}), i + 1)
        p.add("histogram", key("lat", "lat_sum", {}), 0.5)
    return d, procs


def _text(collector: DirectoryCollector) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return generate_latest(reg)


def test_a_background_read_warms_the_caches_and_leaves_the_scrape_figures(tmp_path):
    d, procs = _directory(tmp_path)
    c = DirectoryCollector(d)
    got = c.collect_in_background()
    assert got is not None and {m.name for m in got} == {"req", "lat"}
    assert c.stats.collects_total == 0, "a background read is not a scrape"
    assert c.last_collect is not None
    learned = c._reader.layouts.built
    assert learned > 0
    assert _text(c) == _text(DirectoryCollector(d))  # same answer as a cold collector
    assert c._reader.layouts.built == learned, "the scrape had to learn layouts again"
    assert c.stats.collects_total == 1
    for p in procs:
        p.kill()


def test_a_background_read_gives_way_to_a_waiting_scrape(tmp_path):
    d, procs = _directory(tmp_path)
    c = DirectoryCollector(d)
    c._scrape_waiting.set()  # a scrape is waiting for the collector
    assert c.collect_in_background() is None
    c._scrape_waiting.clear()
    assert _text(c) == _text(DirectoryCollector(d))
    for p in procs:
        p.kill()


def test_a_background_read_never_waits_for_a_scrape(tmp_path):
    d, procs = _directory(tmp_path)
    c = DirectoryCollector(d)
    result: list[object] = []
    with c._lock:  # a scrape holds the collector
        t = threading.Thread(target=lambda: result.append(c.collect_in_background()))
        t.start()
        t.join(5)
        assert not t.is_alive(), "the background read waited for the scrape"
    assert result == [None]
    for p in procs:
        p.kill()


def test_a_scrape_during_a_background_read_gets_the_collector_at_once(tmp_path):
    """A scrape asks, the background read stops at the next file and lets it in."""
    d, procs = _directory(tmp_path, workers=40)
    c = DirectoryCollector(d)
    reached = threading.Event()
    proceed = threading.Event()
    reader = c._reader
    original = reader.read

    def slow_read(*args, **kwargs):  # the background read, paused inside a file
        reached.set()
        proceed.wait(5)
        return original(*args, **kwargs)

    reader.read = slow_read  # type: ignore[method-assign]
    bg: list[object] = []
    t = threading.Thread(target=lambda: bg.append(c.collect_in_background()))
    t.start()
    assert reached.wait(5)
    reader.read = original  # type: ignore[method-assign]
    scrape: list[bytes] = []
    s = threading.Thread(target=lambda: scrape.append(_text(c)))
    s.start()
    # The scrape is now waiting: the background read gives way after this file.
    assert c._scrape_waiting.wait(5)
    proceed.set()
    t.join(5)
    s.join(10)
    assert bg == [None], "the background read did not give way"
    assert scrape and scrape[0] == _text(DirectoryCollector(d))
    for p in procs:
        p.kill()
