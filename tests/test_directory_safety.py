"""Hostile and careless directories (issue 10 item 2), and the directories we make.

The core refuses, with a message naming the problem, a directory that is a symlink, a
shared path (``/``, ``/tmp``, a home directory), world-writable (sticky bit or not), owned
by another user, or holding files that are not ours; it deletes nothing while refusing.
Real servers refuse the same way, and the private directory they make when none is set is
0700, has an unpredictable name, and is gone once the server stops, however it stops.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
from pathlib import Path

import pytest

from netpoint_metrics.core import directory
from tests import servers


def test_symlink_shared_paths_and_home_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(directory.UnsafeDirectory, match="symlink"):
        directory.ensure_directory(str(tmp_path / "link"))
    for shared in ("/", "/tmp", "/dev/shm", "/var/tmp", "/run", os.path.expanduser("~")):
        with pytest.raises(directory.UnsafeDirectory, match="shared directory"):
            directory.ensure_directory(shared, create=False)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_world_writable_is_refused_with_or_without_sticky_bit(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(directory.UnsafeDirectory, match="world-writable"):
        directory.ensure_directory(str(d))


def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        raise AssertionError("this test chowns a directory: run the suite as root (CI does)")
    nobody = pwd.getpwnam("nobody")
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(directory.UnsafeDirectory, match=f"belongs to uid {nobody.pw_uid}"):
        directory.ensure_directory(str(d))


def test_foreign_files_are_named_and_nothing_is_deleted(tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir(mode=0o700)
    names = [f"report-{i}.csv" for i in range(7)]
    for n in names:
        (d / n).write_text("someone's data")
    (d / "counter_archive-1.db").write_bytes(b"")
    with pytest.raises(directory.UnsafeDirectory) as err:
        directory.ensure_directory(str(d))
    message = str(err.value)
    assert "7 file(s) that are not netpoint-metrics files" in message
    assert all(n in message for n in sorted(names)[:5]) and "and 2 more" in message
    assert sorted(os.listdir(d)) == sorted([*names, "counter_archive-1.db"])
    # lost+found (the root of a dedicated filesystem) is tolerated.
    clean = tmp_path / "fs"
    clean.mkdir(mode=0o700)
    (clean / "lost+found").mkdir()
    assert directory.ensure_directory(str(clean)) == str(clean)


def test_directories_we_create_are_private(tmp_path: Path) -> None:
    made = directory.ensure_directory(str(tmp_path / "a" / "b"))
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    first, second = directory.make_private(), directory.make_private()
    try:
        for private in (first, second):
            st = os.stat(private)
            assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert first != second  # unpredictable names: nobody can create ours first
    finally:
        os.rmdir(first)
        os.rmdir(second)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uwsgi"])
def test_servers_refuse_a_directory_with_foreign_files_and_delete_nothing(
    tmp_path: Path, kind: str
) -> None:
    env = servers.base_env(tmp_path)
    d = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    (d / "notes.txt").write_text("keep me")
    env["NETPOINT_BIND"] = f"127.0.0.1:{servers.free_port()}"
    servers.migrate(env)
    code, out = servers.run_to_exit(kind, tmp_path, env)
    assert code != 0 and "notes.txt" in out and "Traceback" not in out, out[-2000:]
    assert os.listdir(d) == ["notes.txt"] and (d / "notes.txt").read_text() == "keep me"


def private_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.name.startswith("netpoint-metrics-"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "how"),
    [("gunicorn", "term"), ("uwsgi", "term"), ("gunicorn", "kill"), ("uwsgi", "kill")],
)
def test_private_directory_is_private_and_removed_when_the_server_stops(
    tmp_path: Path, kind: str, how: str
) -> None:
    base = tmp_path / "tmp"
    base.mkdir(mode=0o700)
    env = servers.base_env(tmp_path, TMPDIR=str(base))
    del env["PROMETHEUS_MULTIPROC_DIR"]  # metrics on, no directory: the server makes one
    env.pop("XDG_RUNTIME_DIR", None)
    srv = servers.start(kind, tmp_path, env=env, workers=2)
    try:
        (made,) = private_dirs(base)
        st = made.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert len(made.name) > len("netpoint-metrics-") + 5  # mkdtemp's random suffix
        srv.get("/api/devices/")
        assert any(n.endswith(".db") for n in os.listdir(made))
        if how == "kill":
            os.kill(srv.pid, signal.SIGKILL)  # no on_exit: the watcher must clean up
        else:
            srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(30)
        servers.wait_for(lambda: not private_dirs(base), 60, f"{made} to be removed")
    finally:
        srv.stop()
