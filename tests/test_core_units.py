"""Unit tests of the core's parts: names, file format, leases, lock, prepare, safety."""

from __future__ import annotations

import logging
import os
import signal
import struct
import time

import pytest
from prometheus_client.mmap_dict import MmapedDict

from netpoint_metrics.core import (
    archive,
    dbfile,
    directory,
    identity,
    lease,
    lock,
    names,
    ownership,
)
from netpoint_metrics.core.collect import DirectoryCollector
from tests.core_support import FakeProcess, db_files, key, manifest, samples

K = key("c", "c_total", {"view": "x"})


def test_names_round_trip_and_refuse_foreign() -> None:
    p = names.parse_db_name("gauge_livesum_123-abcdef012345.db")
    assert (p.kind, p.mode, p.ident, p.live_only) == ("gauge", "livesum", "123-abcdef012345", True)
    assert names.parse_db_name("counter_archive-7.db").generation == 7
    assert names.parse_db_name("counter_123.db").ident == "123"  # stock writer
    for bad in ("counter_1_2.db", "gauge_weird_1.db", "notes.db", "counter_../x.db", "x.txt"):
        assert names.parse_db_name(bad) is None
    assert not names.is_ours("important.sqlite3")
    with pytest.raises(ValueError):
        directory.unlink("/tmp", "important.sqlite3")


def test_encode_matches_prometheus_client_layout(tmp_path) -> None:
    path = str(tmp_path / "counter_1.db")
    d = MmapedDict(path)
    keys = [key("m", "m_total", {"a": "x" * n}) for n in range(12)]
    for i, k in enumerate(keys):
        d.write_value(k, float(i), 0.5 * i)
    d.close()
    entries = dbfile.read_entries(path)
    assert [(k.decode(), v, t) for k, v, t in entries] == [
        (k, float(i), 0.5 * i) for i, k in enumerate(keys)
    ]
    with open(path, "rb") as f:
        raw = f.read()
    used = struct.unpack_from("i", raw)[0]
    assert dbfile.encode(entries) == raw[:used]


@pytest.mark.parametrize(
    "content",
    [
        b"\x01\x02\x03",
        b"\xff\xff\xff\x7f\0\0\0\0" + b"x" * 100,
        struct.pack("i", 64) + b"\0" * 4 + b"\x10" * 56,
    ],
    ids=["truncated-header", "used-past-end", "garbage-entries"],
)
def test_corrupt_file_is_skipped_with_warning_and_never_deleted(tmp_path, caplog, content) -> None:
    d = str(tmp_path)
    good = FakeProcess(d).start()
    good.add("counter", K, 5)
    bad = FakeProcess(d).start()
    bad.kill()
    bad_path = tmp_path / f"counter_{bad.ident}.db"
    bad_path.write_bytes(content)
    collector = DirectoryCollector(d)
    with caplog.at_level(logging.WARNING, logger="netpoint_metrics"):
        got = samples(collector.collect())
    assert got[("c_total", (("view", "x"),))] == 5
    assert "unreadable" in caplog.text
    result = archive.fold(d)
    assert result.corrupt == [bad_path.name]
    assert not bad_path.exists()
    assert (tmp_path / f"corrupt-{bad_path.name}.bad").read_bytes() == content
    assert samples(collector.collect())[("c_total", (("view", "x"),))] == 5
    good.kill()


def test_empty_file_being_created_is_not_an_error(tmp_path, caplog) -> None:
    d = str(tmp_path)
    p = FakeProcess(d).start()
    (tmp_path / f"counter_{p.ident}.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="netpoint_metrics"):
        assert samples(DirectoryCollector(d).collect()) == {}
    assert caplog.text == ""


def test_lease_is_released_by_death_of_a_real_process(tmp_path) -> None:
    d = str(tmp_path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: take a lease, report its ident, wait to be killed
        try:
            os.close(r)
            ident = f"{os.getpid()}-0123456789ab"
            lease.acquire(d, ident)
            os.write(w, ident.encode())
            signal.pause()  # until the parent's SIGKILL
        finally:
            os._exit(0)
    os.close(w)
    ident = os.read(r, 100).decode()
    os.close(r)
    try:
        assert lease.is_alive(d, ident)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not lease.is_alive(d, ident)


def test_forked_child_gets_new_identity_and_does_not_hold_parent_lease(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    parent = identity.current()
    # The parent's identity may predate this test's directory; make sure it has a lease here.
    monkeypatch.setattr(identity, "_pid", -1)
    parent = identity.current()
    assert lease.is_alive(str(tmp_path), parent)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, identity.current().encode())
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child != parent and child.split("-")[0] == str(pid)
    assert not lease.is_alive(str(tmp_path), child)  # dead child: its lease is free
    assert lease.is_alive(str(tmp_path), parent)  # the child did not release ours


def test_fold_never_waits_and_scrapes_exclude_folds(tmp_path) -> None:
    d = str(tmp_path)
    p = FakeProcess(d).start()
    p.add("counter", K, 1)
    p.kill()
    # A read-only scrape never creates the lock file; the owner's prepare (or any fold) does.
    with lock.shared(d):
        assert names.LOCK_FILE not in os.listdir(d)
    with lock.exclusive(d):
        pass
    with lock.shared(d):
        t0 = time.perf_counter()
        assert archive.fold(d).busy
        assert time.perf_counter() - t0 < 0.5
    assert archive.fold(d).folded == [p.ident]


def test_scrape_times_out_rather_than_reading_half_a_fold(tmp_path) -> None:
    d = str(tmp_path)
    with lock.exclusive_nowait(d) as held:
        assert held
        with pytest.raises(lock.LockTimeout), lock.shared(d, timeout=0.05):
            pass


def test_file_count_does_not_grow_with_recycles(tmp_path) -> None:
    d = str(tmp_path)
    collector = DirectoryCollector(d)
    live = [FakeProcess(d).start() for _ in range(4)]
    counts = []
    total = 0
    for i in range(1000):
        victim = live.pop(i % len(live))
        victim.add("counter", K, 3)
        victim.add("histogram", key("h", "h_sum", {}), 0.25)
        victim.set("gauge_livesum", key("g", "g", {}), 1)
        total += 3
        victim.kill()
        live.insert(0, FakeProcess(d).start())
        archive.fold(d)
        if i % 100 == 99:
            counts.append(len(os.listdir(d)))
            assert samples(collector.collect())[("c_total", (("view", "x"),))] == total
    # live leases + archives + manifest/lock/owner: the same at 100 and at 1,000 recycles
    assert len(set(counts)) == 1, counts
    assert len(db_files(d)) == 2  # counter and histogram archives
    assert manifest(d)["folded"] == []
    for p in live:
        p.kill()


def test_prepare_wipes_dead_keeps_live_and_continued_owner_only_folds(tmp_path) -> None:
    d = str(tmp_path)
    dead = FakeProcess(d).start()
    dead.add("counter", K, 2)
    dead.kill()
    live = FakeProcess(d).start()
    live.add("counter", K, 5)
    with pytest.raises(RuntimeError, match="without owning"):
        directory.prepare(d)
    assert ownership.claim(d) is False
    try:
        res = directory.prepare(d)
        assert res.reason == "fresh start"
        assert samples(DirectoryCollector(d).collect())[("c_total", (("view", "x"),))] == 5
        # The same owner again (uWSGI reload, USR2 hand-over): fold, never wipe.
        live.kill()
        res = directory.prepare(d, continued=True)
        assert res.reason == "continued"
        assert samples(DirectoryCollector(d).collect())[("c_total", (("view", "x"),))] == 5
        # A new owner: starts from zero.
        res = directory.prepare(d)
        assert res.reason == "fresh start"
        assert samples(DirectoryCollector(d).collect()) == {}
    finally:
        ownership.release()


def test_unsafe_directories_are_refused(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(directory.UnsafeDirectory, match="symlink"):
        directory.ensure_directory(str(link))
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(directory.UnsafeDirectory, match="world-writable"):
        directory.ensure_directory(str(open_dir))
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(directory.UnsafeDirectory, match="not a directory"):
        directory.ensure_directory(str(afile))
    made = directory.ensure_directory(str(tmp_path / "new" / "dir"))
    assert oct(os.stat(made).st_mode & 0o777) == "0o700"


def test_symlinked_value_file_is_not_followed(tmp_path) -> None:
    d = str(tmp_path)
    target = tmp_path.parent / f"{tmp_path.name}-secret.db"
    p = FakeProcess(str(tmp_path.parent)).start()
    p.ident = "1"
    (tmp_path / "counter_999999-aaaaaaaaaaaa.db").symlink_to(target)
    target.write_bytes(b"")
    assert samples(DirectoryCollector(d).collect()) == {}
    p.kill()


def test_dead_process_all_mode_and_live_gauges_vanish_max_stays(tmp_path) -> None:
    d = str(tmp_path)
    a, b = FakeProcess(d).start(), FakeProcess(d).start()
    for p, v in ((a, 3), (b, 7)):
        p.set("gauge_livesum", key("busy", "busy", {}), 1)
        p.set("gauge_all", key("ver", "ver", {}), v)
        p.set("gauge_max", key("peak", "peak", {}), v)
    c = DirectoryCollector(d)
    got = samples(c.collect())
    assert got[("busy", ())] == 2 and got[("peak", ())] == 7
    assert sum(1 for k in got if k[0] == "ver") == 2
    b.kill()
    got = samples(c.collect())  # before any fold
    assert got[("busy", ())] == 1 and got[("peak", ())] == 7
    assert [k for k in got if k[0] == "ver"] == [("ver", (("pid", a.ident),))]
    archive.fold(d)
    assert samples(c.collect()) == got
    a.kill()


def test_scrape_folds_what_no_server_event_reported(tmp_path) -> None:
    d = str(tmp_path)
    p = FakeProcess(d).start()
    p.add("counter", K, 4)
    p.kill()
    c = DirectoryCollector(d, fold_every=0.0)
    assert samples(c.collect())[("c_total", (("view", "x"),))] == 4
    assert not any(p.ident in n for n in os.listdir(d))
    assert samples(c.collect())[("c_total", (("view", "x"),))] == 4


def test_unreadable_file_keeps_its_process_unfolded(tmp_path, monkeypatch) -> None:
    """An I/O error on one file: nothing of that process is archived or deleted."""
    d = str(tmp_path)
    p = FakeProcess(d).start()
    p.add("counter", K, 2)
    p.add("histogram", key("h", "h_sum", {}), 1.5)
    p.kill()
    real = dbfile.read_entries

    def flaky(path):
        if "histogram_" in path:
            raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(dbfile, "read_entries", flaky)
    assert archive.fold(d).folded == []
    assert len(db_files(d)) == 2
    assert samples(DirectoryCollector(d).collect())[("c_total", (("view", "x"),))] == 2
    monkeypatch.setattr(dbfile, "read_entries", real)
    assert archive.fold(d).folded == [p.ident]
    got = samples(DirectoryCollector(d).collect())
    assert got[("c_total", (("view", "x"),))] == 2 and got[("h_sum", ())] == 1.5


def test_a_backlog_is_folded_in_bounded_batches(tmp_path) -> None:
    d = str(tmp_path)
    for _ in range(25):
        p = FakeProcess(d).start()
        p.add("counter", K, 1)
        p.kill()
    c = DirectoryCollector(d)
    r = archive.fold(d, max_ids=10)
    assert len(r.folded) == 10 and r.more
    assert samples(c.collect())[("c_total", (("view", "x"),))] == 25  # mid-backlog: exact
    r = archive.fold(d, max_ids=10)
    r = archive.fold(d, max_ids=10)
    assert len(r.folded) == 5 and not r.more
    assert samples(c.collect())[("c_total", (("view", "x"),))] == 25
    assert db_files(d) == ["counter_archive-3.db"]


def test_db_names_are_parsed_as_the_split_rules_say() -> None:
    """The one-pattern parser accepts exactly what the collector's rules describe."""
    good = {
        "counter_1.db": ("counter", "", "1", "counter", False, False),
        "histogram_123-abcdef.db": ("histogram", "", "123-abcdef", "histogram", False, False),
        "summary_archive-12.db": ("summary", "", "archive-12", "summary", True, False),
        "gauge_all_7-0123456789ab.db": ("gauge", "all", "7-0123456789ab", "gauge_all", False, True),
        "gauge_max_archive-3.db": ("gauge", "max", "archive-3", "gauge_max", True, False),
        "gauge_livesum_9.db": ("gauge", "livesum", "9", "gauge_livesum", False, True),
    }
    for filename, want in good.items():
        p = names.parse_db_name(filename)
        assert p is not None, filename
        assert (p.kind, p.mode, p.ident, p.prefix, p.is_archive, p.live_only) == want
        assert p.filename == filename
    for bad in (
        "counter_12\n.db",  # a name with a newline before the suffix
        "counter_1.db\n",
        "gauge_1.db",  # a gauge needs a mode
        "gauge_bogus_1.db",
        "summary_12-ABCDEF.db",  # nonces are lower-case hex
        "counter_12-abc.db",  # nonce too short
        "counter_12345678901.db",  # pid longer than 10 digits
        "counter_archive-.db",
        "histogram_archive-1234567890123456789.db",
        "counter_1.db.tmp",
        "Counter_1.db",
    ):
        assert names.parse_db_name(bad) is None, bad


def test_files_of_one_layout_add_up_exactly(tmp_path) -> None:
    """Many files with one layout are added a column at a time: every value counts once."""
    procs = [FakeProcess(str(tmp_path)).start() for _ in range(9)]
    keys = [key("c", "c_total", {"view": str(v)}) for v in range(5)]
    want: dict[str, float] = {}
    try:
        for i, p in enumerate(procs):
            for j, k in enumerate(keys if i != 4 else keys[:3]):  # one file a prefix
                v = float(10 * i + j + 1)
                p.add("counter", k, v)
                want[str(j)] = want.get(str(j), 0.0) + v
        got = samples(DirectoryCollector(str(tmp_path)).collect())
        assert {lbl[0][1]: v for (n, lbl), v in got.items() if n == "c_total"} == want
    finally:
        for p in procs:
            p.kill()
