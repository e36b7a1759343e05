"""The shared key order (:mod:`netpoint_metrics.core.keyorder`): every process's counter
and histogram files become prefixes of one key sequence, so a cold collector learns a
handful of layouts instead of one per worker, and nothing read from the files changes.

Real forked processes write real files with our value class, each touching the same keys
in its own random order (as workers serving different requests do).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import values as pc_values
from prometheus_client.multiprocess import MultiProcessCollector

from netpoint_metrics.core import dbfile, directory, identity, keyorder, names
from netpoint_metrics.core import values as nv
from netpoint_metrics.core.collect import DirectoryCollector

WORKERS = 6
LABELS = [(m, s) for m in ("GET", "POST", "PATCH") for s in ("200", "201", "404", "500")]


def _metrics() -> tuple[Counter, Histogram]:
    c = Counter("req", "requests", ["method", "status"], registry=None)
    h = Histogram("lat", "latency", ["method"], registry=None)
    return c, h


def _serve(c: Counter, h: Histogram, seed: int, count: int) -> None:
    """What a worker does: the same kinds of request, in an order of its own."""
    rng = random.Random(seed)
    todo = LABELS[:]
    rng.shuffle(todo)
    for i in range(count):
        method, status = todo[i % len(todo)] if i < len(todo) else rng.choice(todo)
        c.labels(method, status).inc()
        h.labels(method).observe(rng.random())


def _run_workers(mpdir: Path, shared_order: bool, count: int = 40) -> None:
    pc_values.ValueClass = nv.make_value_class(identity.current, shared_order=shared_order)
    c, h = _metrics()
    pids = []
    for w in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _serve(c, h, seed=w, count=count + w)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def _keys_by_prefix(mpdir: Path) -> dict[str, list[tuple[bytes, ...]]]:
    out: dict[str, list[tuple[bytes, ...]]] = {}
    for name in sorted(os.listdir(mpdir)):
        parsed = names.parse_db_name(name)
        if parsed is None:
            continue
        snap = dbfile.read_snapshot(str(mpdir / name))
        assert snap is not None and snap.used
        keys = tuple(k for k, _ in dbfile.iter_entries(snap.data, snap.used))
        out.setdefault(parsed.prefix, []).append(keys)
    return out


def _stock_text(d: Path) -> list[str]:
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(d))
    return sorted(generate_latest(reg).decode().splitlines())


def _exact_text(d: Path) -> list[str]:
    """Exact sums (fsum): the same whatever order files and entries are added in."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DirectoryCollector(str(d), use_lock=False))
    return sorted(generate_latest(reg).decode().splitlines())


def test_every_file_is_a_prefix_of_the_shared_order(mpdir: Path) -> None:
    _run_workers(mpdir, shared_order=True)
    files = _keys_by_prefix(mpdir)
    for prefix in ("counter", "histogram"):
        order = (mpdir / keyorder.filename(prefix)).read_bytes().decode().splitlines()
        seq = tuple(k.encode() for k in order)
        assert len(files[prefix]) == WORKERS
        for keys in files[prefix]:
            body = keys[1:] if prefix == "counter" else keys  # the dropped counter leads
            assert body == seq[: len(body)], f"a {prefix} file left the shared order"
        assert len({len(k) for k in files[prefix]}) <= 2, "files should end up the same length"
    # Gauges are never given zero entries (0 is a value of its own for a gauge).
    assert not any(n.startswith("netpoint-order-gauge") for n in os.listdir(mpdir))


def test_the_order_changes_no_value_and_no_series(mpdir: Path, tmp_path: Path) -> None:
    _run_workers(mpdir, shared_order=True)
    ordered = _exact_text(mpdir)
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir(mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(plain_dir)
    _run_workers(plain_dir, shared_order=False)
    assert not any(n.startswith(keyorder.ORDER_PREFIX) for n in os.listdir(plain_dir))
    assert ordered == _exact_text(plain_dir)
    # ...and the plain directory really had the per-worker orders the shared one removes.
    plain = _keys_by_prefix(plain_dir)
    assert len(set(plain["histogram"])) > 2


def test_a_cold_collector_learns_few_layouts(mpdir: Path, tmp_path: Path) -> None:
    _run_workers(mpdir, shared_order=True)
    shared = DirectoryCollector(str(mpdir), use_lock=False)
    shared.collect()
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir(mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(plain_dir)
    _run_workers(plain_dir, shared_order=False)
    plain = DirectoryCollector(str(plain_dir), use_lock=False)
    plain.collect()
    # Two kinds (counter, histogram), at most two lengths each, plus nothing else.
    assert shared._reader.layouts.built <= 4
    assert plain._reader.layouts.built > shared._reader.layouts.built + 2


def _one_process(mpdir: Path, keys: int = 5) -> str:
    pc_values.ValueClass = nv.make_value_class(lambda: "4242-abcdef")
    c = Counter("solo", "one process", ["k"], registry=None)
    for i in range(keys):
        c.labels(str(i)).inc(i + 1)
    return "".join(_stock_text(mpdir))


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all\n",
        b'["x","x_total",{},"h"]\n',  # not as mmap_key writes it (spacing)
        b'["x","x_total",{"a":1},"h"]\n',  # a label value that is not a string
        b"\xff\xfe\n",
    ],
)
def test_a_damaged_order_file_is_ignored_with_a_warning(
    mpdir: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (mpdir / keyorder.filename("counter")).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="netpoint_metrics.core.keyorder"):
        text = _one_process(mpdir)
    assert 'solo_total{k="4"} 5.0' in text and 'solo_total{k="0"} 1.0' in text
    assert "x_total" not in text, "a line that is not a real key reached a value file"
    assert any("shared key order" in r.getMessage() for r in caplog.records)
    assert (mpdir / keyorder.filename("counter")).read_bytes() == content


def test_an_order_file_that_is_a_symlink_is_not_followed(
    mpdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (mpdir / keyorder.filename("counter")).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="netpoint_metrics.core.keyorder"):
        text = _one_process(mpdir)
    assert 'solo_total{k="2"} 3.0' in text
    assert target.read_bytes() == b""
    assert any("shared key order" in r.getMessage() for r in caplog.records)


def test_a_partial_last_line_is_never_read_and_is_dropped_before_the_next(
    mpdir: Path,
) -> None:
    path = mpdir / keyorder.filename("counter")
    good = b'["a", "a_total", {}, "h"]\n'
    path.write_bytes(good + b'["cut short')
    text = _one_process(mpdir, keys=2)
    assert 'solo_total{k="1"} 2.0' in text
    lines = path.read_bytes().split(b"\n")
    assert lines[0] + b"\n" == good and b"cut short" not in path.read_bytes()
    assert all(line.startswith(b'["') for line in lines if line)


def test_order_files_are_ours_and_go_with_a_wipe(mpdir: Path) -> None:
    _one_process(mpdir)
    order = mpdir / keyorder.filename("counter")
    assert order.exists()
    assert names.is_ours(order.name)
    directory.ensure_directory(str(mpdir))  # not refused as a foreign file
    os.close(os.open(mpdir / "lease_4242-abcdef.lock", os.O_CREAT | os.O_WRONLY, 0o600))
    directory.wipe(str(mpdir))
    assert not order.exists()
