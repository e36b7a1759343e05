"""Keeping every worker's scrape cache warm between scrapes.

Prometheus scrapes ``/metrics`` every 15 to 60 seconds and the server hands each scrape to
whichever worker accepts it: with N workers a worker answers about one scrape in N, and a
recycled worker has answered none. A collector that has not read the directory lately has
to learn the files' layouts and series first (the cold scrape, about twice a warm one).
So each worker reads (and renders) the directory in a background thread a few seconds
after it starts (and loads, once, the migration graph the migration gauges need), again
once its first traffic has settled the keys, and then about every
``NETPOINT_METRICS_WARM_EVERY`` seconds (default 30; 0 turns this off) that it goes
without a scrape, and whichever worker gets the scrape finds its caches warm.

The cost is bounded and small: at most one read per worker per period, none at all in a
worker that is scraped more often than that (a warm read of 48 workers' files takes a few
milliseconds). A read holds the directory's shared lock like a scrape; a fold in the
master never waits for it (it retries later). The thread is a daemon: it never delays a
worker's exit, and nothing it does can fail a request.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Iterator

from netpoint_metrics import config

log = logging.getLogger(__name__)

ENV = "NETPOINT_METRICS_WARM_EVERY"
DEFAULT_EVERY = 30
#: Seconds after the worker starts before the first read (plus up to twice as much again
#: at random, so workers started together do not read together): the application loads first.
FIRST_DELAY = 2.0
#: Seconds after that before the second read (plus up to twice as much again at random).
SECOND_DELAY = 12.0

_started_pid: int | None = None
_graphs_loaded_in: int | None = None  # the process that has loaded them
_guard = threading.Lock()


def every() -> float | None:
    """The period in seconds, None when turned off (the start-up check refuses bad values)."""
    try:
        value = config.env_int(ENV, DEFAULT_EVERY)
    except config.SettingError as exc:
        log.warning("netpoint-metrics: %s; using %d", exc, DEFAULT_EVERY)
        value = DEFAULT_EVERY
    return float(value) if value > 0 else None


def start() -> bool:
    """Start this process's warm-up thread once (a forked child starts its own)."""
    global _started_pid
    period = every()
    if period is None:
        return False
    with _guard:
        if _started_pid == os.getpid():
            return False
        _started_pid = os.getpid()
    thread = threading.Thread(
        target=_run, args=(period,), name="netpoint-metrics-warmup", daemon=True
    )
    thread.start()
    return True


def schedule(period: float, rng: random.Random) -> Iterator[tuple[float, float]]:
    """(seconds to sleep, least idle time to act) for each check, for ever.

    Soon after the start (a recycled worker joins a directory full of other workers'
    files), again once the first traffic has settled the keys (new workers are still
    adding theirs during the first seconds), then about once per period. Every delay is
    spread at random so that workers started together do not read together, and a
    worker that a scrape has just read skips its turn.
    """
    yield FIRST_DELAY * (1.0 + 2.0 * rng.random()), 2.0
    second = min(period, SECOND_DELAY)
    yield second * (1.0 + 2.0 * rng.random()), second / 2
    while True:
        yield period * (0.75 + 0.5 * rng.random()), period / 2


#: The thread's nice value (Linux: per thread): a background read gives way to the scrapes
#: and requests of every other worker on the CPU. Not 19: a worker's own request may wait
#: for the interpreter lock this thread holds, so it must still get its turns soon.
NICE = 10


def _lower_priority() -> None:
    if sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, max(NICE, os.getpriority(os.PRIO_PROCESS, tid)))
        except (OSError, AttributeError):
            log.debug("netpoint-metrics: warm-up thread keeps its priority", exc_info=True)


def _run(period: float) -> None:
    _lower_priority()
    rng = random.Random()
    for delay, idle in schedule(period, rng):  # a daemon thread: it ends with the process
        time.sleep(delay)
        try:
            warm_once(idle)
        except Exception:  # never let the thread die of a passing problem
            log.debug("netpoint-metrics: background collect failed", exc_info=True)


def warm_once(idle: float) -> bool:
    """Read the directory if this worker's collector has not read it for ``idle`` s."""
    from netpoint_metrics import views  # here: Django is loaded by the time this runs
    from netpoint_metrics.core import selfmetrics

    collector = views.directory_collector()
    if collector is None:
        return False
    global _graphs_loaded_in
    if _graphs_loaded_in != os.getpid():
        _graphs_loaded_in = os.getpid()  # once per process, whatever happens: an optimisation
        migrations = views.migration_collector()
        if migrations is not None:
            try:
                migrations.load_graphs()
            except Exception:
                log.debug("netpoint-metrics: migration graph not preloaded", exc_info=True)
    last = collector.last_collect
    if last is not None and time.monotonic() - last < idle:
        return False
    if not views.background_collect(collector):
        return False  # gave way to a scrape, which leaves the caches warm anyway
    selfmetrics.record_background_collect()
    return True
