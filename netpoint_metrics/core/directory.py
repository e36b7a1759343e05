"""The multiprocess directory itself: checking it is safe, listing it, preparing it.

Safety rules this module keeps: never follow a symlink for the directory or its files,
refuse a directory another user can write to (someone else could plant files we would
read or delete), and only ever delete names from :func:`names.is_ours`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field

from netpoint_metrics.core import dbfile, lease, lock, names

log = logging.getLogger("netpoint_metrics")


class UnsafeDirectory(RuntimeError):
    """The multiprocess directory is missing, not a directory, or not safe to use."""


def ensure_directory(path: str, *, create: bool = True) -> str:
    """Return an absolute path to a usable directory, creating it (mode 0700) if asked.

    Raises :class:`UnsafeDirectory` with a message that names the problem and the fix.
    """
    if not path:
        raise UnsafeDirectory("PROMETHEUS_MULTIPROC_DIR is empty")
    path = os.path.abspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise UnsafeDirectory(f"{path} does not exist (PROMETHEUS_MULTIPROC_DIR)") from None
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectory(
            f"{path} is a symlink; point PROMETHEUS_MULTIPROC_DIR at the real directory"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory (PROMETHEUS_MULTIPROC_DIR)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise UnsafeDirectory(
            f"{path} belongs to uid {st.st_uid}, not to this user ({os.getuid()}); "
            "give each server its own directory"
        )
    if st.st_mode & stat.S_IWOTH:
        raise UnsafeDirectory(f"{path} is world-writable; use a private directory (chmod 700)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnsafeDirectory(f"{path} is not writable by this user")
    return path


@dataclass
class Listing:
    """One pass over the directory, grouped by process identifier."""

    files: dict[str, list[names.DbName]] = field(default_factory=lambda: defaultdict(list))
    archives: dict[int, list[names.DbName]] = field(default_factory=lambda: defaultdict(list))
    leases: set[str] = field(default_factory=set)
    lease_tmps: list[str] = field(default_factory=list)
    tmps: list[str] = field(default_factory=list)

    def idents(self) -> set[str]:
        return set(self.files) | self.leases


def scan(directory: str) -> Listing:
    listing = Listing()
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            parsed = names.parse_db_name(name)
            if parsed is not None:
                if parsed.generation is not None:
                    listing.archives[parsed.generation].append(parsed)
                else:
                    listing.files[parsed.ident].append(parsed)
                continue
            ident = names.parse_lease_name(name)
            if ident is not None:
                listing.leases.add(ident)
            elif name.startswith(names.LEASE_TMP_PREFIX):
                listing.lease_tmps.append(name)
            elif name.startswith(names.TMP_PREFIX):
                listing.tmps.append(name)
    return listing


def unlink(directory: str, filename: str) -> bool:
    """Delete one of our files; True if it is gone. Refuses names that are not ours."""
    if not names.is_ours(filename) or "/" in filename:
        raise ValueError(f"refusing to delete {filename!r}: not a netpoint-metrics file")
    try:
        os.unlink(os.path.join(directory, filename))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("netpoint-metrics: cannot delete %s/%s: %s", directory, filename, exc)
        return False
    return True


def process_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (Linux), so a pid plus it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return raw.rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class PrepareResult:
    wiped: int
    kept_live: int
    reason: str


def prepare(
    directory: str,
    owner_pid: int,
    *,
    self_ident: str | None = None,
    inherit: bool = False,
) -> PrepareResult:
    """Get the directory ready for a server master that is starting.

    A new master starts from zero, as with the stock recipe: archives and every dead
    process's files are deleted. Files of processes still alive are kept, whoever they
    belong to. Nothing is wiped, only folded, when the same master process comes back
    (uWSGI re-runs its start-up in the same pid on reload) or when the caller says this
    master continues another one (``inherit``: Gunicorn's USR2 upgrade, where the old
    master's workers keep serving and their counts must not go backwards).
    """
    directory = ensure_directory(directory)
    owner = {"pid": owner_pid, "start": process_start_time(owner_pid)}
    with lock.exclusive(directory, timeout=10.0) as held:
        if not held:
            log.warning("netpoint-metrics: %s stayed locked; not preparing it", directory)
            return PrepareResult(0, 0, "locked")
        listing = scan(directory)
        live = {i for i in listing.idents() if i == self_ident or lease.is_alive(directory, i)}
        if inherit:
            reason = "inherited from another master"
        elif _read_owner(directory) == owner:
            reason = "same master restarted"
        else:
            reason = "fresh start"
        wiped = _wipe(directory, keep=live) if reason == "fresh start" else 0
        dbfile.write_atomic(
            directory, names.OWNER_FILE, json.dumps(owner).encode(), str(os.getpid())
        )
    if reason != "fresh start":
        from netpoint_metrics.core import archive  # here: archive imports this module

        archive.fold(directory, wait=True)
    return PrepareResult(wiped, len(live - {self_ident}), reason)


def _read_owner(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, names.OWNER_FILE), "rb") as f:
            return json.loads(f.read(4096))
    except (OSError, ValueError):
        return None


def _wipe(directory: str, keep: set[str]) -> int:
    """Delete every toolkit file except the live ones in ``keep`` and the lock file."""
    n = 0
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if not names.is_ours(name) or name == names.LOCK_FILE:
                continue
            parsed = names.parse_db_name(name)
            ident = parsed.ident if parsed else names.parse_lease_name(name)
            if ident in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                continue
            if unlink(directory, name):
                n += 1
    return n
