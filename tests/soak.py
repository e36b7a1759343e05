"""Soak driver shared by the lifecycle tests: load, scrapes, kills and the checks on them.

A :class:`Soak` sends ``total`` requests to one API path from a few client threads while
the calling (main) thread scrapes ``/metrics`` every ``scrape_every`` completed requests and
runs the test's events (SIGKILL a worker, reload, scale, upgrade) at given request counts.
Scrapes are strictly sequential, so "never decreases between consecutive scrapes" is a
property of the server, not of overlapping readers.

Counting rules (see :class:`Tally`): a request that got a response was counted by the app;
one that failed at connection level (refused, reset, cut off, timed out) *may* have been
counted, if its worker was killed after django-prometheus incremented the counter. So the
final counter must lie in ``[ok, ok + failed]``.

Every wait here is a poll against a deadline; every loop is bounded in count and time.
Processes are only ever signalled by pid, and only pids under a master the test started.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: Metric families whose samples may never go down.
MONOTONE_TYPES = frozenset({"counter", "histogram", "summary"})
MONOTONE_SUFFIXES = ("_total", "_bucket", "_count", "_sum")

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
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            out.extend(int(x) for x in f.read().split())
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


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, *, interval: float = 0.02
) -> object:
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
        delay = min(delay * 2, interval)


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


def http_get(host: str, port: int, path: str, timeout: float = 15.0) -> tuple[int, bytes]:
    """One GET on a fresh connection; :class:`HTTPFailure` if no full response came back."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
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
    """One parsed /metrics response and the directory as it was right after it."""

    index: int
    monotone: dict[SeriesKey, float]
    gauges: list[tuple[str, dict[str, str], float]]
    db_files: list[str]
    text: str

    @property
    def db_count(self) -> int:
        return len(self.db_files)

    def total(self, sample: str, **labels: str) -> float:
        """Sum of ``sample`` over every series whose labels include ``labels``."""
        want = set(labels.items())
        return sum(
            v for (name, lk), v in self.monotone.items() if name == sample and want <= set(lk)
        )

    def gauge_pids(self) -> set[str]:
        """Every ``pid`` label on a gauge sample: the idents of live-per-process gauges."""
        return {labels["pid"] for _, labels, _ in self.gauges if "pid" in labels}


def parse_metrics(text: str) -> tuple[dict[SeriesKey, float], list]:
    monotone: dict[SeriesKey, float] = {}
    gauges: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if family.type in MONOTONE_TYPES:
                if s.name.endswith(MONOTONE_SUFFIXES):
                    key = (s.name, tuple(sorted(s.labels.items())))
                    if key in monotone:
                        raise AssertionError(f"series {key} appears twice in one scrape")
                    monotone[key] = s.value
            elif family.type == "gauge":
                gauges.append((s.name, dict(s.labels), s.value))
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
    prefix = f"{pid}-"
    out = []
    for name in os.listdir(directory):
        stem = name.removesuffix(".db").removesuffix(".lock")
        ident = stem.rsplit("_", 1)[-1]
        if ident.startswith(prefix) or ident == str(pid):
            out.append(name)
    return out


# -- the soak -------------------------------------------------------------------------------


@dataclass
class Event:
    at: int  # run once this many requests have completed
    name: str
    action: Callable[[Soak], None]


class Soak:
    """Drive load, scrapes and events against one server; collect evidence to assert on."""

    def __init__(
        self,
        host: str,
        port: int,
        directory: str,
        *,
        path: str,
        total: int,
        workers: Callable[[], list[int]],
        db_bound: int,
        threads: int = 3,
        scrape_every: int = 40,
        time_limit: float = 120.0,
        seed: int | None = None,
    ) -> None:
        self.host, self.port, self.directory = host, port, directory
        self.path = path
        self.total = total
        self.workers = workers
        self.db_bound = db_bound
        self.threads = threads
        self.scrape_every = scrape_every
        self.time_limit = time_limit
        self.rng = random.Random(seed)
        self.api = Tally()
        self.metrics = Tally()  # the /metrics requests, which the app counts too
        self.scrapes: list[Scrape] = []
        self.problems: list[str] = []  # monotonicity and bound violations, in order
        self.killed: list[int] = []
        self.log: list[str] = []
        self._tickets = iter(range(total))
        self._tickets_lock = threading.Lock()
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.baseline: Scrape | None = None

    # -- load -----------------------------------------------------------------------------

    def _client(self) -> None:
        while not self._stop.is_set():
            with self._tickets_lock:
                ticket = next(self._tickets, None)
            if ticket is None:
                return
            try:
                status, body = http_get(self.host, self.port, self.path)
            except HTTPFailure as exc:
                self.api.record(None, str(exc))
                time.sleep(0.005)  # a dying worker: do not spin on it
            else:
                self.api.record(status, body[:300].decode("utf-8", "replace"))

    # -- scrapes --------------------------------------------------------------------------

    def scrape(self, *, check: bool = True) -> Scrape | None:
        """Scrape once (sequentially); check it against the previous good one."""
        try:
            status, body = http_get(self.host, self.port, "/metrics")
        except HTTPFailure as exc:
            self.metrics.record(None, str(exc))
            return None
        self.metrics.record(status, body[:300].decode("utf-8", "replace"))
        if status != 200:
            self.problems.append(f"scrape returned {status}")
            return None
        text = body.decode()
        monotone, gauges = parse_metrics(text)
        files = db_files(self.directory)
        cur = Scrape(len(self.scrapes), monotone, gauges, files, text)
        if check:
            if self.scrapes:
                for d in decreases(self.scrapes[-1], cur):
                    self.problems.append(f"scrape {cur.index}: {d}")
            if cur.db_count >= self.db_bound:
                self.problems.append(
                    f"scrape {cur.index}: {cur.db_count} .db files >= bound {self.db_bound}"
                )
        self.scrapes.append(cur)
        return cur

    def scrape_ok(self, attempts: int = 20) -> Scrape:
        """A scrape that must succeed (retried only on connection-level failures)."""
        for _ in range(attempts):
            s = self.scrape()
            if s is not None:
                return s
            if self.problems and self.problems[-1].startswith("scrape returned"):
                break
            time.sleep(0.05)
        raise AssertionError(f"no successful scrape; problems: {self.problems[-3:]}")

    # -- events ---------------------------------------------------------------------------

    def kill_random_worker(self, *, wait_replaced: bool = True, expect: int | None = None) -> int:
        """SIGKILL a random worker; wait until it is gone (and replaced), then verify that
        its live gauges are no longer served."""
        before = self.scrape_ok()
        pids = self.workers()
        assert pids, "no worker to kill"
        # Prefer a worker whose per-process gauges the last scrape showed, so that their
        # disappearance is a real observation.
        shown = {int(p.split("-", 1)[0]) for p in before.gauge_pids() if p[:1].isdigit()}
        candidates = [p for p in pids if p in shown] or pids
        self.check_victims_cleaned(self.killed)
        victim = self.rng.choice(candidates)
        self.log.append(f"{self.elapsed():.1f}s kill {victim} (shown={victim in shown})")
        send_signal(victim, signal.SIGKILL)
        self.killed.append(victim)
        wait_for(lambda: not is_running(victim), 10, f"killed worker {victim} to be gone")
        if wait_replaced and expect is not None:
            wait_for(
                lambda: len([p for p in self.workers() if p != victim]) >= expect,
                30,
                f"worker {victim} to be replaced ({expect} workers)",
            )
        after = self.scrape_ok()
        stale = {p for p in after.gauge_pids() if p.split("-", 1)[0] == str(victim)}
        if stale:
            self.problems.append(f"killed worker {victim}: its gauges still served: {stale}")
        return victim

    def check_victims_cleaned(self, victims: Iterable[int]) -> None:
        """Earlier victims' files and leases must have been folded away by now."""
        for pid in victims:
            left = files_of_pid(self.directory, pid)
            if left:
                self.problems.append(f"killed worker {pid}: files left after folds: {left}")

    # -- run ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

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
                        f"{[e.name for e in pending]}; log {self.log}"
                    )
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
        for event in pending:  # load finished before these: still run them, in order
            self.log.append(f"{self.elapsed():.1f}s @end {event.name}")
            event.action(self)
        return self.scrape_ok()

    # -- final assertions -----------------------------------------------------------------

    def assert_exact(
        self,
        final: Scrape,
        view: str,
        *,
        min_ok_fraction: float = 0.9,
        max_failed: int | None = None,
    ) -> None:
        """The common acceptance checks on a finished soak."""
        api = self.api
        report = (
            f"ok={api.ok} failed={api.failed} bad={len(api.bad)} scrapes={len(self.scrapes)} "
            f"metrics ok/failed={self.metrics.ok}/{self.metrics.failed} killed={self.killed} "
            f"errors={api.errors[:5]} log={self.log}"
        )
        assert not api.bad, f"non-200 API responses: {api.bad[:5]}; {report}"
        assert not self.metrics.bad, f"non-200 scrapes: {self.metrics.bad[:5]}; {report}"
        assert not self.problems, "\n".join(self.problems[:20]) + f"\n{report}"
        assert api.done == self.total, report
        assert api.ok >= min_ok_fraction * self.total, f"too many failed requests; {report}"
        if max_failed is not None:
            assert api.failed <= max_failed, f"more failures than kills explain; {report}"
        # Every request that got a response was counted once; a failed one maybe.
        for sample, labels in (
            ("django_http_requests_total_by_view_transport_method_total", {"view": view}),
            ("django_http_responses_total_by_status_view_method_total", {"view": view}),
            ("django_http_requests_latency_seconds_by_view_method_count", {"view": view}),
        ):
            got = final.total(sample, **labels)
            if self.baseline is not None:
                got -= self.baseline.total(sample, **labels)
            assert api.ok <= got <= api.ok + api.failed, (
                f"{sample}{labels} = {got}, expected in [{api.ok}, {api.ok + api.failed}]; "
                f"{report}"
            )
        assert final.db_count < self.db_bound, (final.db_count, self.db_bound)
        # Scrapes that were checked: at least one per scrape_every requests, roughly.
        assert len(self.scrapes) >= self.total // self.scrape_every // 2, report
