"""Regressions of the value class: no update is dropped in a healthy run.

Found in the Gunicorn end-to-end test: ``netpoint_metrics_dropped_updates_total`` ended at 1
from a recycled worker on a disk with plenty of space. The worker's log said ``cannot store
metric values: [Errno 2] No such file or directory: '.netpoint-tmp-value-….tmp' ->
'histogram_<ident>.db'``. Two faults together:

* ``os.link("/proc/self/fd/N", path)`` calls ``link(2)``, which links the magic symlink
  itself and fails with ``EXDEV``; so every new value file took the fallback, a named
  ``.netpoint-tmp-value-*.tmp`` file linked to its final name.
* A fold (the master folds dead workers' files about every second) deletes every
  ``.netpoint-tmp-*`` name it finds, also one a live worker is still building. The worker's
  link then failed, the value stayed unbound and its next update was dropped (a real lost
  increment, counted).

These tests run a real folding process in a tight loop next to processes creating their
value files, and require that nothing is ever dropped.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Histogram
from prometheus_client import values as pc_values

from netpoint_metrics.core import identity, valuefile
from netpoint_metrics.core import values as nv

_FOLDER = """
import sys, time
from netpoint_metrics.core import archive
directory, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
archive.fold(directory, wait=True)
print("ready", flush=True)
while time.monotonic() < deadline:
    archive.fold(directory, wait=True)
"""


@pytest.fixture
def folding(mpdir: Path) -> Iterator[subprocess.Popen[str]]:
    """A real process folding ``mpdir`` back to back (as a busy master does), until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FOLDER, str(mpdir), "120"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        line = ""
        while not line and time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stdout.readline()
                if not line:
                    break
        sel.close()
        assert line.strip() == "ready", f"folding process did not start (rc={proc.poll()})"
        yield proc
        assert proc.poll() is None, "the folding process died during the test"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _run_for_at_least(seconds: float, at_least: int) -> Iterator[int]:
    """Indexes 0, 1, ... until both ``at_least`` were given and ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    i = 0
    while i < at_least or time.monotonic() < deadline:
        yield i
        i += 1


def test_new_value_files_are_created_while_a_fold_runs(mpdir: Path, folding) -> None:
    failures: list[str] = []
    n = 0
    for i in _run_for_at_least(1.0, 2000):
        path = mpdir / f"counter_{os.getpid()}-{i:012x}.db"
        try:
            valuefile.ValueFile(str(path)).close()
        except OSError as exc:
            failures.append(repr(exc))
        path.unlink(missing_ok=True)
        n = i + 1
    assert failures == [], f"{len(failures)} of {n} value files not created: {failures[:3]}"


def test_named_fallback_survives_a_fold_deleting_its_temporary_file(mpdir: Path, folding) -> None:
    """Without ``O_TMPFILE`` or ``/proc`` the named temporary file is still safe."""
    failures: list[str] = []
    n = 0
    for i in _run_for_at_least(1.0, 2000):
        path = mpdir / f"counter_{os.getpid()}-{i:012x}.db"
        try:
            os.close(valuefile._create_named(str(mpdir), str(path)))
        except OSError as exc:
            failures.append(repr(exc))
        path.unlink(missing_ok=True)
        n = i + 1
    assert failures == [], f"{len(failures)} of {n} value files not created: {failures[:3]}"
    assert [n for n in os.listdir(mpdir) if n.startswith(".netpoint-tmp-value-")] == []


def test_forked_workers_drop_nothing_while_the_master_folds(mpdir: Path, folding) -> None:
    """As Gunicorn: forked workers each re-bind to new files while the master folds."""
    cls = nv.make_value_class(identity.current)
    pc_values.ValueClass = cls
    c = Counter("reg_requests", "requests", ["k"], registry=None)
    h = Histogram("reg_latency", "latency", registry=None)
    c.labels("a").inc()
    h.observe(0.2)
    dropped = 0
    children = 0
    for _ in _run_for_at_least(2.0, 600):
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                c.labels("a").inc()
                h.observe(0.01)
                c.labels("b").inc(2)
                code = min(int(nv.dropped_updates(cls)), 50)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code != 99, "a worker failed; see its traceback above"
        dropped += code
        children += 1
    assert nv.dropped_updates(cls) == 0
    assert dropped == 0, f"{dropped} updates dropped in {children} workers on a healthy disk"
