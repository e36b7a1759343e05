"""Soak driver shared by the lifecycle tests: load, scrapes, kills and the checks on them.

A :class:`Soak` sends ``total`` requests to one API path from a few client threads while
the calling (main) thread scrapes ``/metrics`` every ``scrape_every`` completed requests and
runs the test's events (SIGKILL a worker, reload, scale, upgrade) at given request counts.
Scrapes are strictly sequential, so "never decreases between consecutive scrapes" is a
property of the server, not of overlapping readers.

Counting rules (see :class:`Tally`): a request that got a response was counted by the app;
one that failed at connection level (refused, reset, cut off, timed out) *may* have been
counted, if its worker was killed after django-prometheus incremented the counter. So the
final counter, minus what a scrape before the load showed, must lie in ``[ok, ok + failed]``.

Live gauges of dead workers: the sample app's ``netpoint_worker_up`` (livesum, 1 per worker
that served a request) and ``netpoint_http_requests_in_progress`` (livesum). A dead
worker that was still counted would push the first above the number of live workers, and
the second above 1 once the load is over (the final scrape is the only request in flight).

Every wait here is a poll against a deadline; every loop is bounded in count and time.
Processes are only ever signalled by pid, and only pids under a master the test started.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from netpoint_metrics.core.names import LOCK_FILE

#: Metric families whose samples may never go down.
MONOTONE_TYPES = frozenset({"counter", "histogram", "summary"})
MONOTONE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")
WORKER_UP = "netpoint_worker_up"
IN_PROGRESS = "netpoint_http_requests_in_progress"

LabelKey = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, LabelKey]


# -- processes ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads), from /proc; [] if it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue  # the thread or the process went away meanwhile
    return sorted(set(out))


def is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    state = raw.rsplit(b")", 1)[1].split()[0]
    return state not in (b"Z", b"X")


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def send_signal(pid: int, sig: int) -> bool:
    """Signal one pid; False if it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# -- HTTP -----------------------------------------------------------------------------------


class HTTPFailure(Exception):
    """A request that got no complete response (connection-level failure)."""


def http_get(port: int, path: str, timeout: float = 20.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; :class:`HTTPFailure` if no full response came back."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise HTTPFailure(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


@dataclass
class Tally:
    """Outcome counts for one kind of request, thread-safe."""

    ok: int = 0  # a 200 came back: certainly counted
    failed: int = 0  # connection-level failure: maybe counted
    bad: list[str] = field(default_factory=list)  # a non-200 response: never acceptable
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> int:
        return self.ok + self.failed + len(self.bad)

    def record(self, status: int | None, detail: str = "") -> None:
        with self.lock:
            if status == 200:
                self.ok += 1
            elif status is None:
                self.failed += 1
                if len(self.errors) < 50:
                    self.errors.append(detail)
            else:
                self.bad.append(f"{status}: {detail[:300]}")


# -- scrapes --------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One parsed /metrics response, the directory right after it, and the live workers."""

    index: int
    monotone: dict[SeriesKey, float]
    gauges: dict[SeriesKey, float]
    db_files: list[str]
    workers: set[int]  # workers alive just before or just after the scrape

    @property
    def db_count(self) -> int:
        return len(self.db_files)

    def total(self, sample: str, **labels: str) -> float:
        """Sum of counter/histogram ``sample`` over series whose labels include ``labels``."""
        return _sum(self.monotone, sample, labels)

    def gauge(self, sample: str, **labels: str) -> float:
        return _sum(self.gauges, sample, labels)


def _sum(series: dict[SeriesKey, float], sample: str, labels: dict[str, str]) -> float:
    want = set(labels.items())
    return sum(v for (name, lk), v in series.items() if name == sample and want <= set(lk))


def parse_metrics(text: str) -> tuple[dict[SeriesKey, float], dict[SeriesKey, float]]:
    """(monotone samples, gauge samples) of a text exposition; a duplicate series fails."""
    monotone: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type in MONOTONE_TYPES:
            target = monotone
        elif family.type == "gauge":
            target = gauges
        else:
            continue
        for s in family.samples:
            if target is monotone and not s.name.endswith(MONOTONE_SUFFIXES):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            if key in target:
                raise AssertionError(f"series {key} appears twice in one scrape")
            target[key] = s.value
    return monotone, gauges


def db_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".db"))


def decreases(prev: Scrape, cur: Scrape) -> list[str]:
    """Every counter/histogram series that went down (or vanished) from ``prev`` to ``cur``."""
    out = []
    for key, old in prev.monotone.items():
        new = cur.monotone.get(key)
        if new is None:
            out.append(f"{key} vanished (was {old!r})")
        elif new < old:
            out.append(f"{key} went down {old!r} -> {new!r}")
    return out


def files_of_pid(directory: str, pid: int) -> list[str]:
    """Value files and leases in ``directory`` whose identifier belongs to ``pid``."""
    out = []
    for name in os.listdir(directory):
        ident = name.removesuffix(".db").removesuffix(".lock").rsplit("_", 1)[-1]
        if ident.split("-", 1)[0] == str(pid):
            out.append(name)
    return out


@contextlib.contextmanager
def holding_folds(directory: str) -> Iterator[None]:
    """Hold the directory lock shared, as a scrape does: scrapes go on, folds cannot."""
    fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


# -- the soak -------------------------------------------------------------------------------


@dataclass
class Event:
    at: int  # run once this many requests have completed
    name: str
    action: Callable[[Soak], object]


class Soak:
    """Drive load, scrapes and events against one server; collect evidence to assert on."""

    def __init__(
        self,
        port: int,
        directory: str | os.PathLike,
        *,
        path: str,
        total: int,
        workers: Callable[[], list[int]],
        db_bound: int,
        threads: int = 3,
        scrape_every: int = 40,
        time_limit: float = 120.0,
        seed: int = 0,
        log_tail: Callable[[], str] = lambda: "",
    ) -> None:
        self.port, self.directory = port, os.fspath(directory)
        self.path = path
        self.total = total
        self.workers = workers
        self.db_bound = db_bound
        self.threads = threads
        self.scrape_every = scrape_every
        self.time_limit = time_limit
        self.rng = random.Random(seed)
        self.log_tail = log_tail
        self.api = Tally()
        self.metrics = Tally()  # the /metrics requests
        self.scrapes: list[Scrape] = []
        self.problems: list[str] = []  # monotonicity, bound and live-gauge violations
        self.killed: list[int] = []
        #: Scrapes checked while a killed worker's live-gauge files were still on disk.
        self.unfolded_checks = 0
        self.log: list[str] = []
        self.baseline: Scrape | None = None
        self._tickets = iter(range(total))
        self._tickets_lock = threading.Lock()
        self._stop = threading.Event()
        self._scrape_lock = threading.Lock()
        self.t0 = time.monotonic()

    # -- load -----------------------------------------------------------------------------

    def _client(self) -> None:
        while not self._stop.is_set():
            with self._tickets_lock:
                ticket = next(self._tickets, None)
            if ticket is None:
                return
            try:
                status, body = http_get(self.port, self.path)
            except HTTPFailure as exc:
                self.api.record(None, str(exc))
                time.sleep(0.005)  # a dying worker: do not spin on it
            else:
                self.api.record(status, body[:300].decode("utf-8", "replace"))

    # -- scrapes --------------------------------------------------------------------------

    def scrape(self) -> Scrape | None:
        """Scrape once; check it against the previous good one. None on a connection-level
        failure (recorded); a non-200 answer is recorded as a problem."""
        with self._scrape_lock:  # scrapes never overlap each other
            before = set(self.workers())
            try:
                status, body = http_get(self.port, "/metrics")
            except HTTPFailure as exc:
                self.metrics.record(None, str(exc))
                return None
            files = db_files(self.directory)
            live = before | set(self.workers())
            self.metrics.record(status, body[:300].decode("utf-8", "replace"))
            if status != 200:
                self.problems.append(
                    f"scrape {len(self.scrapes)} answered {status}: {body[:200]!r}"
                )
                return None
            monotone, gauges = parse_metrics(body.decode())
            cur = Scrape(len(self.scrapes), monotone, gauges, files, live)
            if self.scrapes:
                for d in decreases(self.scrapes[-1], cur):
                    self.problems.append(f"scrape {cur.index}: {d}")
            if cur.db_count >= self.db_bound:
                self.problems.append(
                    f"scrape {cur.index}: {cur.db_count} .db files >= bound {self.db_bound}: "
                    f"{files[:12]}..."
                )
            up = cur.gauge(WORKER_UP)
            if up > len(live):
                self.problems.append(
                    f"scrape {cur.index}: {WORKER_UP}={up} but only {len(live)} live workers "
                    f"{sorted(live)}: a dead worker's live gauge is still served"
                )
            self.scrapes.append(cur)
            return cur

    def scrape_ok(self, attempts: int = 20) -> Scrape:
        """A scrape that must succeed; retried only after connection-level failures."""
        for _ in range(attempts):
            n_problems = len(self.problems)
            s = self.scrape()
            if s is not None:
                return s
            if len(self.problems) > n_problems:
                break  # it answered, but not 200
            time.sleep(0.05)
        raise AssertionError(
            f"no successful scrape; problems: {self.problems[-3:]}; "
            f"errors: {self.metrics.errors[-3:]}\n{self.log_tail()}"
        )

    # -- events ---------------------------------------------------------------------------

    def kill_random_worker(self, expect: int, *, hold_folds: bool = False) -> int:
        """SIGKILL a random worker, wait until ``expect`` workers serve again, then check
        the dead one's live gauges are no longer served and earlier victims are folded.

        With ``hold_folds`` the test holds the directory's shared lock (as a slow scrape
        would) from before the kill until every live worker has served, so no fold can
        remove the dead worker's files: its live gauges must still not be served.
        """
        self.check_victims_cleaned(self.killed)
        pids = self.workers()
        assert pids, "no worker to kill"
        victim = self.rng.choice(pids)
        self.log.append(f"{self.elapsed():.1f}s kill {victim} hold_folds={hold_folds}")
        with holding_folds(self.directory) if hold_folds else contextlib.nullcontext():
            send_signal(victim, signal.SIGKILL)
            self.killed.append(victim)
            wait_for(lambda: not is_running(victim), 10, f"killed worker {victim} to be gone")
            wait_for(
                lambda: len(self.workers()) >= expect,
                30,
                f"worker {victim} to be replaced ({expect} workers)",
            )
            if not hold_folds:
                self.scrape_ok()  # checks netpoint_worker_up against the live workers
                return victim
            # Scrape until every live worker has served (netpoint_worker_up == expect) and
            # for a second after: a dead worker still counted would show as one more than
            # the live ones, which every scrape checks.
            deadline = time.monotonic() + 30
            settled = None
            unfolded = False
            while not self.problems:
                unfolded |= any("_live" in f for f in files_of_pid(self.directory, victim))
                s = self.scrape_ok()
                now = time.monotonic()
                if settled is None and s.gauge(WORKER_UP) >= expect:
                    settled = now
                if settled is not None and now - settled > 1.0:
                    break
                if now > deadline:
                    self.problems.append(
                        f"{WORKER_UP} stayed at {s.gauge(WORKER_UP)} < {expect} for 30s"
                    )
                    break
                time.sleep(0.05)
            self.unfolded_checks += unfolded
        return victim

    def check_victims_cleaned(self, victims: Iterable[int]) -> None:
        """Earlier victims' files and leases must have been folded away by now."""
        for pid in victims:
            left = files_of_pid(self.directory, pid)
            if left:
                self.problems.append(f"killed worker {pid}: files left after folds: {left}")

    def scrape_kill_race(self, rounds: int, expect: int) -> dict[str, int]:
        """Start a scrape and SIGKILL a random worker while it runs, ``rounds`` times.

        A scrape may fail at connection level (its own worker died); it must never answer
        anything but 200, and every 200 must be monotone against the previous one.
        """
        stats = {"rounds": 0, "in_flight": 0, "answered": 0, "cut": 0}
        for _ in range(rounds):
            pids = self.workers()
            assert pids, "no worker to kill"
            victim = self.rng.choice(pids)
            answered = len(self.scrapes)
            cut = self.metrics.failed
            th = threading.Thread(target=self.scrape, name="race-scrape", daemon=True)
            th.start()
            time.sleep(self.rng.uniform(0.0005, 0.004))
            in_flight = th.is_alive()
            send_signal(victim, signal.SIGKILL)
            self.killed.append(victim)
            th.join(30)
            assert not th.is_alive(), "a scrape hung for 30s"
            stats["rounds"] += 1
            stats["in_flight"] += in_flight
            stats["answered"] += len(self.scrapes) - answered
            stats["cut"] += self.metrics.failed - cut
            wait_for(lambda v=victim: not is_running(v), 10, f"killed worker {victim} to be gone")
            wait_for(lambda: len(self.workers()) >= expect, 30, f"{expect} workers again")
        self.log.append(f"{self.elapsed():.1f}s race {stats}")
        return stats

    # -- run ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def stop_load(self) -> None:
        """Let the client threads finish their current request and stop."""
        self._stop.set()

    def run(self, events: Iterable[Event] = ()) -> Scrape:
        """Run the load to completion with scrapes and events; return the final scrape."""
        pending = sorted(events, key=lambda e: e.at)
        # Requests made before (readiness polls, warm-up) are in the counters already.
        self.baseline = self.scrape_ok()
        self.t0 = time.monotonic()
        deadline = self.t0 + self.time_limit
        clients = [
            threading.Thread(target=self._client, name=f"soak-client-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for t in clients:
            t.start()
        next_scrape = self.scrape_every
        try:
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"soak did not finish in {self.time_limit:.0f}s: "
                        f"{self.api.done}/{self.total} requests; events left "
                        f"{[e.name for e in pending]}; log {self.log}\n{self.log_tail()}"
                    )
                if self.problems:  # fail fast: the rest of the run cannot undo it
                    raise AssertionError("\n".join(self.problems[:10]) + "\n" + self.report())
                done = self.api.done
                if done >= next_scrape:
                    self.scrape()
                    next_scrape = max(next_scrape + self.scrape_every, done + 1)
                elif pending and done >= pending[0].at:
                    event = pending.pop(0)
                    self.log.append(f"{self.elapsed():.1f}s @{done} {event.name}")
                    event.action(self)
                elif not any(t.is_alive() for t in clients):
                    break
                else:
                    time.sleep(0.002)
        finally:
            self._stop.set()
            for t in clients:
                t.join(timeout=30)
        assert not any(t.is_alive() for t in clients), "client threads did not stop"
        assert not pending, f"events never ran: {[e.name for e in pending]}"
        self.log.append(f"{self.elapsed():.1f}s load done")
        return self.scrape_ok()

    # -- final assertions -----------------------------------------------------------------

    def report(self) -> str:
        api = self.api
        return (
            f"ok={api.ok} failed={api.failed} bad={len(api.bad)} scrapes={len(self.scrapes)} "
            f"metrics ok/failed={self.metrics.ok}/{self.metrics.failed} killed={self.killed} "
            f"errors={api.errors[:5]} log={self.log}"
        )

    def assert_clean(self) -> None:
        """No scrape answered non-200, dipped, broke the file bound or served a dead
        worker's live gauge; no API request answered non-200."""
        report = self.report()
        assert not self.api.bad, f"non-200 API responses: {self.api.bad[:5]}; {report}"
        assert not self.metrics.bad, f"non-200 scrapes: {self.metrics.bad[:5]}; {report}"
        assert not self.problems, "\n".join(self.problems[:20]) + f"\n{report}"

    def assert_exact(self, final: Scrape, view: str, *, complete: bool = True) -> None:
        """The acceptance checks on a finished soak: clean, every answer counted exactly
        once (cut-off requests maybe), and no dead worker's live gauge in the final scrape.
        """
        self.assert_clean()
        api = self.api
        report = self.report()
        if complete:
            assert api.done == self.total, report
        assert api.ok >= 0.9 * api.done, f"too many failed requests; {report}"
        # A connection-level failure needs a worker that died mid-request: kills, or a
        # quick shutdown. Allow a few per kill (there are few client threads).
        assert api.failed <= 3 * len(self.killed) + 5, f"more failures than kills; {report}"
        assert self.baseline is not None
        for sample, labels in (
            ("django_http_requests_total_by_view_transport_method_total", {"view": view}),
            ("django_http_responses_total_by_status_view_method_total", {"view": view}),
            ("django_http_requests_latency_seconds_by_view_method_count", {"view": view}),
            ("netpoint_api_requests_total", {"endpoint": view, "status": "200"}),
        ):
            got = final.total(sample, **labels) - self.baseline.total(sample, **labels)
            assert api.ok <= got <= api.ok + api.failed, (
                f"{sample}{labels} grew by {got}, expected in [{api.ok}, "
                f"{api.ok + api.failed}]; {report}"
            )
        # The load is over: the final scrape is the only request in progress, anywhere.
        in_progress = final.gauge(IN_PROGRESS)
        assert in_progress == 1, f"{IN_PROGRESS}={in_progress} after the load; {report}"
        up = final.gauge(WORKER_UP)
        assert 1 <= up <= len(final.workers), (up, sorted(final.workers), report)
        assert final.db_count < self.db_bound, (final.db_count, self.db_bound)
        assert len(self.scrapes) >= api.done // self.scrape_every // 2, report
