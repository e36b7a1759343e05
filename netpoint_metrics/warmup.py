"""Keeping every worker's scrape cache warm between scrapes.

Prometheus scrapes ``/metrics`` every 15 to 60 seconds and the server hands each scrape to
whichever worker accepts it: with N workers a worker answers about one scrape in N, and a
recycled worker has answered none. A collector that has not read the directory lately has
to learn the files' layouts and series first (the cold scrape, about twice a warm one).
So each worker reads (and renders) the directory now and then on its own: after its first
response (and it loads, once, the migration graph the migration gauges need), a few
seconds later, again once its first traffic has settled the keys, and then about every
``NETPOINT_METRICS_WARM_EVERY`` seconds (default 30; 0 turns this off) that it goes
without a scrape. Whichever worker gets the scrape then finds its caches warm.

The read runs in the worker's own thread, right after a response has been sent (Django's
``request_finished``, which servers fire when they close the response): the client has
its answer, and the worker takes its next request a few milliseconds later, once per
period at most. Not in a thread of its own: measured with 48 Gunicorn workers on one
CPU, merely having a second (sleeping) thread in each worker made a cold scrape take 3x
as long, and a thread would compete with the worker's requests for the interpreter lock.
A worker that serves nothing reads nothing; its first scrape reads for it. Nothing here
can fail a request: any error is logged at debug level and the schedule goes on.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

from netpoint_metrics import config

log = logging.getLogger(__name__)

ENV = "NETPOINT_METRICS_WARM_EVERY"
DEFAULT_EVERY = 30
#: Seconds after the worker starts before the first read (plus up to twice as much again
#: at random, so workers started together do not read together): the application loads first.
FIRST_DELAY = 2.0
#: Seconds after that before the second read (plus up to twice as much again at random).
SECOND_DELAY = 12.0


def every() -> float | None:
    """The period in seconds, None when turned off (the start-up check refuses bad values)."""
    try:
        value = config.env_int(ENV, DEFAULT_EVERY)
    except config.SettingError as exc:
        log.warning("netpoint-metrics: %s; using %d", exc, DEFAULT_EVERY)
        value = DEFAULT_EVERY
    return float(value) if value > 0 else None


def schedule(period: float, rng: random.Random) -> Iterator[tuple[float, float]]:
    """(seconds until the next read is due, least idle time to do it) for each turn.

    At the worker's first response (a recycled worker joins a directory full of other
    workers' files, and may get no more traffic before its first scrape: measured, 48
    Gunicorn workers that each served ~60 requests in their first two seconds and then
    waited were all cold at their first scrape), a few seconds later, again once the
    first traffic has settled the keys (new workers are still adding theirs during the
    first seconds), then about once per period. Every later delay is spread at random so
    that workers started together do not read together, and a worker that a scrape has
    just read skips its turn.
    """
    yield 0.0, 0.0
    yield FIRST_DELAY * (1.0 + 2.0 * rng.random()), 2.0
    second = min(period, SECOND_DELAY)
    yield second * (1.0 + 2.0 * rng.random()), second / 2
    while True:
        yield period * (0.75 + 0.5 * rng.random()), period / 2


class _Plan:
    """This process's schedule: when the next read is due."""

    __slots__ = ("pid", "turns", "due", "idle")

    def __init__(self, period: float) -> None:
        self.pid = os.getpid()
        self.turns = schedule(period, random.Random())
        delay, self.idle = next(self.turns)
        self.due = time.monotonic() + delay

    def advance(self) -> None:
        delay, self.idle = next(self.turns)
        self.due = time.monotonic() + delay


_plan: _Plan | None = None


def arm() -> bool:
    """Start this process's schedule (a worker at its start; a forked child re-arms).

    Called by the server adapters after the fork; the Django app connects
    :func:`request_finished` so that each due read happens after a response.
    """
    global _plan
    period = every()
    if period is None:
        _plan = None
        return False
    _plan = _Plan(period)
    return True


def request_finished(sender: Any = None, **kwargs: Any) -> None:
    """Django's ``request_finished`` receiver: read the directory if a turn is due."""
    plan = _plan
    if plan is None or time.monotonic() < plan.due:
        return  # the common case: one comparison
    if plan.pid != os.getpid():
        arm()  # a fork we were not told about: this process starts its own schedule
        return
    try:
        plan.advance()
        warm_once(plan.idle)
    except Exception:  # the response is out; never let this reach the server
        log.debug("netpoint-metrics: background collect failed", exc_info=True)


def warm_once(idle: float) -> bool:
    """Read the directory if this worker's collector has not read it for ``idle`` s."""
    from netpoint_metrics import views
    from netpoint_metrics.core import selfmetrics

    collector = views.directory_collector()
    if collector is None:
        return False
    last = collector.last_collect
    if last is not None and time.monotonic() - last < idle:
        return False
    migrations = views.migration_collector()
    if migrations is not None:
        try:  # the graph once per process, the counts each time (see FRESH_FOR)
            migrations.load_graphs()
        except Exception:
            log.debug("netpoint-metrics: migration gauges not preloaded", exc_info=True)
    if not views.background_collect(collector):
        return False  # gave way to a scrape, which leaves the caches warm anyway
    selfmetrics.record_background_collect()
    return True
