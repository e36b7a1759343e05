"""The value class that prometheus-client writes every metric update through.

It replaces ``prometheus_client.values.MultiProcessValue`` and writes the same files in the
same format (:mod:`.valuefile`), with three differences that matter in production:

* **Cheap writes.** The stock class calls the process identifier (``os.getpid()`` or ours,
  a system call) on every ``inc``/``set``/``get`` to notice a fork, then looks the key up in
  a dict and packs 16 bytes with ``struct``. Here a normal update is one read of a
  wipe-on-fork guard byte (:func:`_fork_guard`), one lock, one float add and one 8-byte
  store through a ``memoryview`` at an index fixed when the value was bound. A fork is
  noticed by ``os.register_at_fork`` (forks made through Python) or by the guard byte
  reading 0 (forks made from C, as uWSGI does); either switches every value to a slow class
  (``__class__`` assignment) that re-binds on first use. ``Value.inc_many`` applies a
  group of increments (one middleware hook's) under one lock, with the same checks.
* **A child never writes into its parent's files.** After a fork, the first update in the
  child (any thread) re-binds every value to new files named by the child's own identifier
  (``identity.current``: ``<pid>-<nonce>`` and a new lease), starting from zero, as stock
  prometheus-client does after a pid change.
* **A full disk is survivable.** Space is reserved with ``posix_fallocate`` before it is
  mapped (no SIGBUS). An update that cannot be stored (its file could not be created or
  grown) is dropped and counted in ``netpoint_metrics_dropped_updates_total``; a retry for
  space happens at most every :data:`RETRY_SECONDS`, and recording resumes by itself when
  space returns. A counter's, histogram's or summary's dropped updates stay dropped (what is
  stored never includes them, so nothing is counted twice); a gauge keeps its state in
  memory and writes it once it has a slot, since a gauge is a state, not a sum. What was
  already stored stays as it was.

The dropped-updates counter must not itself need space: its entry is the first one written
into the process's counter file, in the space reserved when the file is created, so updating
it never allocates. The count is kept in memory as well; if even the counter file cannot be
created, the count is written into it as soon as it exists (it is a new file of this process,
so that is the whole count, once). It reaches every scrape through the files like any
counter, summed over processes and folded like one.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from netpoint_metrics.core.keyorder import ORDERED_PREFIXES, KeyOrder
from netpoint_metrics.core.valuefile import SPACE_ERRNOS, ValueFile, mmap_key

log = logging.getLogger(__name__)

#: Least time between two attempts to find space once the disk was found full.
RETRY_SECONDS = 1.0
DROPPED_NAME = "netpoint_metrics_dropped_updates"
DROPPED_HELP = (
    "Metric updates not stored because their value file could not be created or grown "
    "(for example a full disk), summed over processes"
)


class _State:
    """Everything one installed value class shares (one per process)."""

    def __init__(self, process_identifier: Callable[[], str]) -> None:
        self.process_identifier = process_identifier
        self.lock = threading.Lock()
        self.files: dict[str, ValueFile] = {}
        self.values: list[Any] = []
        self.stale = False  # set in a forked child until its first update re-binds
        self.retry_at = 0.0
        self.dropping = False
        self.dropped = 0
        self.dropped_file: ValueFile | None = None
        self.dropped_index = -1
        self.generation = 0
        self.pid = os.getpid()
        self.shared_order = True
        self.orders: dict[str, KeyOrder] = {}

    def order_for(self, prefix: str) -> KeyOrder | None:
        """The shared key order of ``prefix`` files (:mod:`.keyorder`), if they use one."""
        if not self.shared_order or prefix not in ORDERED_PREFIXES:
            return None
        order = self.orders.get(prefix)
        if order is None:
            order = self.orders[prefix] = KeyOrder(_directory(), prefix)
        return order

    def forget_orders(self) -> None:
        for order in self.orders.values():
            order.close()
        self.orders.clear()


def _directory() -> str:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112  (prometheus-client's deprecated name)
    )
    if not path:
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR is not set")
    return path


#: ``madvise`` advice: the child of a fork sees this private page zero-filled (Linux 4.14).
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def _fork_guard() -> tuple[Any, bool]:
    """One byte that reads 1 in the process that set it and 0 in any forked child.

    ``os.register_at_fork`` handlers only run for forks made through Python (``os.fork``,
    Gunicorn, multiprocessing). uWSGI forks its workers from C and, unless
    ``py-call-osafterfork`` is set, runs none of them; a child that kept writing through
    the inherited mappings would corrupt its parent's files. A wipe-on-fork page catches
    every fork for the cost of one memory read (~10 ns against ~150 ns for ``getpid()``).
    Where the kernel lacks it, a plain byte that only the at-fork handler resets is used.
    """
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(_MADV_WIPEONFORK)
        page[0] = 1
        return page, True
    except (OSError, ValueError, AttributeError) as exc:
        log.warning(
            "netpoint-metrics: no wipe-on-fork memory (%s); only forks through Python's "
            "os.fork are noticed (uWSGI needs py-call-osafterfork = true)",
            exc,
        )
        return bytearray(b"\x01"), False


def new_process_flag() -> Any:
    """A one-byte flag, 0 until set, that reads 0 again in every forked child.

    For "once per process" work on a hot path (the request middleware marks the worker up
    on its first request), where ``os.getpid()`` on every call would cost a system call:
    the same wipe-on-fork page as the values' guard, so forks made from C (uWSGI) clear it
    too. Where the kernel lacks it, an at-fork handler clears it (forks through Python).
    Call it once per use (each registers a handler in that case), not per request.
    """
    flag, wipes = _fork_guard()
    flag[0] = 0
    if not wipes:
        os.register_at_fork(after_in_child=lambda: flag.__setitem__(0, 0))
    return flag


def make_value_class(process_identifier: Callable[[], str], *, shared_order: bool = True) -> type:
    """A ``ValueClass`` for prometheus-client writing files named by ``process_identifier``.

    Install it as ``prometheus_client.values.ValueClass`` before any metric is created.
    ``shared_order=False`` writes keys in first-use order, as stock (see :mod:`.keyorder`).
    """
    state = _State(process_identifier)
    state.shared_order = shared_order
    guard, _ = _fork_guard()

    def file_for(prefix: str) -> ValueFile:
        """The file of ``prefix`` for this process; the counter file (with the dropped
        counter's reserved entry) always comes first. Raises ``OSError`` for no space."""
        if prefix != "counter" and "counter" not in state.files:
            file_for("counter")
        f = state.files.get(prefix)
        if f is None:
            ident = state.process_identifier()
            path = os.path.join(_directory(), f"{prefix}_{ident}.db")
            f = ValueFile(path, state.order_for(prefix))
            state.files[prefix] = f
            if prefix == "counter":
                bind_dropped(f)
        return f

    def bind_dropped(f: ValueFile) -> None:
        key = mmap_key(DROPPED_NAME, DROPPED_NAME + "_total", (), (), DROPPED_HELP)
        # A fresh file: lands in the space reserved at creation, first, in every process
        # (so outside the shared order, which could ask for more room than is reserved).
        index = f.index(key, ordered=False)
        state.dropped_file, state.dropped_index = f, index
        f.view[index] = float(state.dropped)

    def count_drop() -> None:
        state.dropped += 1
        if not state.dropping:
            state.dropping = True
            log.warning(
                "netpoint-metrics: no space for metric values in %s; updates are dropped "
                "and counted in %s_total until space returns",
                os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
                DROPPED_NAME,
            )
        f = state.dropped_file
        if f is not None:
            f.view[state.dropped_index] = float(state.dropped)

    def bind(value: Any, keep_memory: bool = False) -> bool:
        """Give ``value`` its slot in this process's file; False (and slow class) if no space.

        A new slot normally tells the value where it stands (0 in a new file). When space
        comes back, a gauge instead writes the state it kept in memory meanwhile: a gauge is
        a state, and an ``inc`` dropped before a ``dec`` that is stored would leave it wrong
        for good. Counters, histograms and summaries are cumulative: their dropped updates
        stay dropped (and counted), so what is stored never includes them.
        """
        try:
            f = file_for(value._prefix)
            index = f.index(value._key)
        except Exception as exc:  # metrics must never break the request that updates them
            if getattr(exc, "errno", None) not in SPACE_ERRNOS and not state.dropping:
                log.warning("netpoint-metrics: cannot store metric values: %s", exc)
            state.retry_at = time.monotonic() + RETRY_SECONDS
            value._view = None
            value.__class__ = SlowValue
            return False
        view = f.view
        value._view = view
        value._index = index
        if keep_memory and value._gauge:
            view[index] = value._value
            view[index + 1] = value._timestamp
        else:
            value._value = view[index]
            value._timestamp = view[index + 1]
        f.users.append(value)
        value.__class__ = Value
        return True

    def rebind_all() -> None:
        """In a forked child: move every value to this process's own new files."""
        state.stale = False
        for value in state.values:
            # As stock prometheus-client after a pid change: start from the new file (0),
            # also for a value that cannot be bound yet.
            value._value = 0.0
            value._timestamp = 0.0
            bind(value)

    def ensure_bound(value: Any) -> bool:
        """Slow path, lock held: is ``value`` bound now (after a fork or a full disk)?"""
        if state.stale:
            rebind_all()
        if value._view is not None:
            return True
        if time.monotonic() < state.retry_at:
            return False
        if bind(value, keep_memory=True):
            state.retry_at = 0.0
            if state.dropping:
                state.dropping = False
                log.warning("netpoint-metrics: space for metric values is back; recording resumes")
            return True
        return False

    class Value:
        """A metric value stored in this process's mmapped file (the fast path)."""

        __slots__ = (
            "_params",
            "_prefix",
            "_gauge",
            "_key",
            "_value",
            "_timestamp",
            "_view",
            "_index",
        )
        _multiprocess = True
        _netpoint_state = state

        def __init__(
            self,
            typ: str,
            metric_name: str,
            name: str,
            labelnames: Any,
            labelvalues: Any,
            help_text: str,
            multiprocess_mode: str = "",
            **kwargs: Any,
        ) -> None:
            self._params = (typ, metric_name, name, labelnames, labelvalues, help_text)
            self._prefix = f"gauge_{multiprocess_mode}" if typ == "gauge" else typ
            self._gauge = typ == "gauge"
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            self._value = 0.0
            self._timestamp = 0.0
            self._view: Any = None
            self._index = -1
            if not guard[0]:
                forked()
            with state.lock:
                if state.stale:
                    rebind_all()
                state.values.append(self)
                bind(self)

        def inc(self, amount: float) -> None:
            if not guard[0]:
                forked()
                self.inc(amount)  # now the slow class: re-binds first
                return
            with state.lock:
                v = self._value + amount
                self._value = v
                self._view[self._index] = v

        def set(self, value: float, timestamp: float | None = None) -> None:
            if not guard[0]:
                forked()
                self.set(value, timestamp)
                return
            with state.lock:
                self._value = value
                self._timestamp = ts = timestamp or 0.0
                view, i = self._view, self._index
                view[i] = value
                view[i + 1] = ts

        def set_exemplar(self, exemplar: Any) -> None:
            return  # as stock: exemplars are not stored in multiprocess mode

        def get(self) -> float:
            if not guard[0]:
                forked()
            with state.lock:
                if state.stale:
                    rebind_all()
                return float(self._value)

        def get_exemplar(self) -> None:
            return None

        @classmethod
        def close_all_files(cls) -> None:
            close_all()

    class SlowValue(Value):
        """A value that must be (re-)bound first: after a fork, or while the disk is full."""

        __slots__ = ()

        def inc(self, amount: float) -> None:
            if not guard[0]:
                forked()
            with state.lock:
                if not ensure_bound(self):
                    count_drop()
                    if self._gauge:  # a gauge's state goes on (see ``bind``)
                        self._value += amount
                    return
                v = self._value + amount
                self._value = v
                self._view[self._index] = v

        def set(self, value: float, timestamp: float | None = None) -> None:
            if not guard[0]:
                forked()
            with state.lock:
                if not ensure_bound(self):
                    count_drop()
                    if self._gauge:
                        self._value = value
                        self._timestamp = timestamp or 0.0
                    return
                self._value = value
                self._timestamp = ts = timestamp or 0.0
                view, i = self._view, self._index
                view[i] = value
                view[i + 1] = ts

    def inc_many(updates: Iterable[tuple[Any, float]]) -> None:
        """Add each ``amount`` to its ``value``, taking the lock once for all of them.

        A request updates a dozen values in one middleware hook; one lock round-trip
        (~120 ns) and one method call per value is most of what each update costs. Same
        result as ``value.inc(amount)`` for every pair, in one critical section for the
        values bound here. Any other value (unbound: after a fork or while the disk is
        full, or made by another value class) goes through its own ``inc`` after the
        lock is released, so it re-binds, counts a dropped update or keeps a gauge's state
        exactly as ``inc`` would.
        """
        if not guard[0]:
            forked()  # every value is slow now: all take their own inc below
        slow: list[tuple[Any, float]] = []
        with state.lock:
            for value, amount in updates:
                # Checked under the lock: close_all may unbind a value meanwhile.
                if value.__class__ is Value:
                    v = value._value + amount
                    value._value = v
                    value._view[value._index] = v
                else:
                    slow.append((value, amount))
        for value, amount in slow:
            value.inc(amount)

    def close_all() -> None:
        with state.lock:
            for f in state.files.values():
                for user in f.users:
                    user._view = None
                    user.__class__ = SlowValue
                f.close()
            state.files.clear()
            state.forget_orders()
            state.values.clear()
            state.dropped_file = None

    def forked() -> None:
        """In a forked child (at-fork handler, or the guard byte read 0): start over.

        Only the forking thread exists right after a fork, and the parent's lock may have
        been held by a thread that does not exist here: replace it. No I/O: the first
        update re-binds every value to this process's own new files (``ensure_bound``).
        """
        pid = os.getpid()
        if state.pid == pid:
            guard[0] = 1
            return
        state.pid = pid
        state.lock = threading.Lock()
        for f in state.files.values():
            f.forget()
        state.files.clear()
        state.forget_orders()
        state.stale = True
        state.dropped = 0
        state.dropping = False
        state.dropped_file = None
        state.retry_at = 0.0
        state.generation += 1
        for value in state.values:
            value.__class__ = SlowValue
        guard[0] = 1

    os.register_at_fork(after_in_child=forked)
    Value.inc_many = staticmethod(inc_many)  # type: ignore[attr-defined]
    Value.__qualname__ = Value.__name__ = "NetpointValue"
    SlowValue.__qualname__ = SlowValue.__name__ = "NetpointSlowValue"
    return Value


def dropped_updates(value_class: type) -> float:
    """This process's dropped-update count (for tests and diagnostics)."""
    state = getattr(value_class, "_netpoint_state", None)
    if not isinstance(state, _State):
        raise TypeError(f"{value_class!r} was not made by make_value_class")
    return float(state.dropped)
