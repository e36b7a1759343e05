"""The multiprocess directory itself: checking it is safe, preparing it, wiping it.

Safety rules this module keeps: never follow a symlink for the directory or its files,
refuse a directory another user can write to or that other programs share (someone else
could plant files we would read, or own files we would delete), refuse a directory that
holds files that are not ours, and only ever delete names from :func:`names.is_ours`.
Only the directory's owner (:mod:`.ownership`) prepares it; the CLI wipes it only while
nobody owns it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import stat
import tempfile
from dataclasses import dataclass

from netpoint_metrics.core import archive, lease, lock, manifest, names, ownership
from netpoint_metrics.core.listing import scan, unlink

log = logging.getLogger(__name__)

#: Directories other programs share: a metrics directory must be a dedicated one below them.
SHARED_PATHS = frozenset(
    {
        "/", "/bin", "/boot", "/dev", "/dev/shm", "/etc", "/home", "/lib", "/media", "/mnt",
        "/opt", "/proc", "/root", "/run", "/run/user", "/sbin", "/srv", "/sys", "/tmp", "/usr",
        "/var", "/var/lib", "/var/run", "/var/tmp",
    }
)  # fmt: skip

#: How many foreign names an error message lists.
_FOREIGN_SHOWN = 5


class UnsafeDirectory(RuntimeError):
    """The multiprocess directory is missing, not a directory, or not safe to use."""


class DirectoryInUse(RuntimeError):
    """An operation that needs the directory idle found a live owner or writer."""


def ensure_directory(path: str, *, create: bool = True, check_contents: bool = True) -> str:
    """Return an absolute path to a usable directory, creating it (mode 0700) if asked.

    Raises :class:`UnsafeDirectory` with a message that names the problem and the fix.
    """
    if not path:
        raise UnsafeDirectory("PROMETHEUS_MULTIPROC_DIR is empty")
    path = os.path.abspath(path)
    _refuse_shared(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise UnsafeDirectory(f"{path} does not exist (PROMETHEUS_MULTIPROC_DIR)") from None
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UnsafeDirectory(f"cannot create {path}: {exc.strerror or exc}") from None
        st = os.lstat(path)
    _check_mode(path, st)
    if check_contents:
        _refuse_foreign(path)
    return path


def _refuse_shared(path: str) -> None:
    real = os.path.realpath(path)
    homes = {os.path.expanduser("~")}
    with contextlib.suppress(OSError, KeyError):
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    for candidate in {path, real}:
        if candidate in SHARED_PATHS or candidate in homes:
            raise UnsafeDirectory(
                f"{path} is a shared directory; give the metrics their own directory below "
                "it (for example /run/netpoint/metrics, or systemd's RuntimeDirectory=)"
            )


def _check_mode(path: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(
            f"{path} is a symlink; point PROMETHEUS_MULTIPROC_DIR at the real directory"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory (PROMETHEUS_MULTIPROC_DIR)")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"{path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()}); "
            "give each server its own directory"
        )
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeDirectory(
            f"{path} is world-writable; use a private directory (chmod 700 {path}, or a "
            "subdirectory the server creates)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafeDirectory(f"{path} is not writable by this user")


def _refuse_foreign(path: str) -> None:
    foreign = sorted(scan(path).foreign)
    if foreign:
        shown = ", ".join(foreign[:_FOREIGN_SHOWN])
        more = f" and {len(foreign) - _FOREIGN_SHOWN} more" if len(foreign) > _FOREIGN_SHOWN else ""
        raise UnsafeDirectory(
            f"{path} holds {len(foreign)} file(s) that are not netpoint-metrics files "
            f"({shown}{more}); use an empty directory dedicated to metrics"
        )


def make_private(prefix: str = "netpoint-metrics-") -> str:
    """Create a fresh 0700 directory only this user can have made, for a server's own use.

    Under ``$XDG_RUNTIME_DIR`` when that is a private tmpfs of ours, else the temp dir;
    ``mkdtemp`` picks an unpredictable name, so nobody can create it first.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or ""
    try:
        st = os.stat(base) if base else None
    except OSError:
        st = None
    if st is None or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        base = tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def remove_private(path: str, *, self_ident: str | None = None) -> bool:
    """Remove a directory we made, if no live process still writes there. True if gone."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    listing = scan(path)
    if any(i != self_ident and lease.is_alive(path, i) for i in listing.idents()):
        return False
    for name in os.listdir(path):
        if names.is_ours(name):
            unlink(path, name)
    try:
        os.rmdir(path)
    except OSError as exc:
        log.warning("netpoint-metrics: could not remove %s: %s", path, exc)
        return False
    return True


@dataclass(frozen=True)
class PrepareResult:
    wiped: int
    kept_live: int
    reason: str


def prepare(
    directory: str, *, continued: bool = False, self_ident: str | None = None
) -> PrepareResult:
    """Get the directory ready for the server master that owns it.

    A new owner starts from zero, as with the stock recipe: archives and every dead
    process's files are deleted; files of processes still alive are kept. An owner that
    continues a running one (Gunicorn's USR2 upgrade, a uWSGI reload of the same master)
    only folds, so no counter goes backwards.
    """
    if ownership.held() != directory:
        raise RuntimeError(f"prepare({directory!r}) without owning it (ownership.claim first)")
    with lock.exclusive(directory, timeout=10.0) as got:
        if not got:
            log.warning("netpoint-metrics: %s stayed locked; not preparing it", directory)
            return PrepareResult(0, 0, "locked")
        listing = scan(directory)
        live = {i for i in listing.idents() if i == self_ident or lease.is_alive(directory, i)}
        reason = "continued" if continued else "fresh start"
        if continued:
            wiped = 0  # the fold below finishes or recovers whatever is there
        else:
            wiped = _wipe(directory, keep=live)
            # An explicit generation 0, so a missing manifest always means damage.
            manifest.store(directory, manifest.Manifest())
    if continued:
        archive.fold(directory, wait=True)
    return PrepareResult(wiped, len(live - {self_ident}), reason)


def wipe(directory: str, *, force: bool = False) -> PrepareResult:
    """Reset an idle directory to empty (the CLI's ``wipe``); never while it is owned.

    Holds the owner lock for the duration (without writing an owner record), so a server
    cannot start half-way through. Live writers that are not a server (say, a job worker)
    make it refuse unless ``force``, and their files are kept either way.
    """
    pid = ownership.owner_pid(directory)
    if pid is not None:
        raise DirectoryInUse(
            f"{directory} is owned by a running server (pid {pid}); stop it before wiping"
        )
    fd = os.open(
        os.path.join(directory, names.OWNER_LOCK_FILE),
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o600,
    )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryInUse(f"{directory}: a server is starting; try again") from None
        with lock.exclusive(directory, timeout=10.0) as got:
            if not got:
                raise DirectoryInUse(f"{directory} stayed locked; try again")
            live = {i for i in scan(directory).idents() if lease.is_alive(directory, i)}
            if live and not force:
                raise DirectoryInUse(
                    f"{len(live)} live process(es) still write to {directory} "
                    f"({', '.join(sorted(live)[:5])}); stop them, or pass --force to wipe "
                    "everything else"
                )
            wiped = _wipe(directory, keep=live)
            unlink(directory, names.OWNER_FILE)
    finally:
        os.close(fd)
    log.info(
        "netpoint-metrics event=wipe dir=%s files=%d kept_live=%d", directory, wiped, len(live)
    )
    return PrepareResult(wiped, len(live), "wiped")


def _wipe(directory: str, keep: set[str]) -> int:
    """Delete every toolkit file except the live ones in ``keep``, locks and set-asides."""
    n = 0
    spared = {names.LOCK_FILE, names.OWNER_LOCK_FILE, names.OWNER_FILE}
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not names.is_ours(name) or name in spared:
                continue
            if name.startswith(names.QUARANTINE_PREFIX):
                continue  # set aside for a human to look at; never deleted by us
            parsed = names.parse_db_name(name)
            ident = parsed.ident if parsed else names.parse_lease_name(name)
            if ident in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                continue
            if unlink(directory, name):
                n += 1
    return n
