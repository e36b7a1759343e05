"""The directory lock: scrapes share it, a fold takes it alone.

A fold replaces archives and deletes folded files; a scrape must see the directory either
before or after that, never half-way (both the archive and a folded file: double count;
neither: a dip). ``flock`` on ``netpoint.lock`` gives that, and the kernel releases it if
the holder dies. The lock file is opened per operation with ``O_CLOEXEC`` and closed before
returning: flock belongs to the open file description, so a descriptor kept across a fork
would be shared with the child.

Only writers (a master preparing the directory, a fold) create the lock file. A scrape or
a read-only CLI command never creates anything: if the file does not exist yet, nobody has
ever folded here, so there is nothing to keep apart from.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from netpoint_metrics.core import names

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    """A scrape could not get the shared lock in time (a fold is stuck)."""


def _open(directory: str) -> int:
    return os.open(
        os.path.join(directory, names.LOCK_FILE),
        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
        0o600,
    )


def _open_existing(directory: str) -> int | None:
    try:
        return os.open(
            os.path.join(directory, names.LOCK_FILE),
            os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
        )
    except FileNotFoundError:
        return None


@contextmanager
def shared(directory: str, timeout: float = 5.0) -> Iterator[None]:
    """Hold the shared lock; raise :class:`LockTimeout` after ``timeout`` seconds."""
    fd = _open_existing(directory)
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"shared lock on {directory} not granted in {timeout}s"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        yield
    finally:
        os.close(fd)


@contextmanager
def exclusive_nowait(directory: str) -> Iterator[bool]:
    """Try the exclusive lock once; yield whether we hold it. Never waits."""
    fd = _open(directory)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)


@contextmanager
def exclusive(directory: str, timeout: float = 10.0) -> Iterator[bool]:
    """Wait up to ``timeout`` for the exclusive lock (for the CLI, never a master)."""
    fd = _open(directory)
    try:
        deadline = time.monotonic() + timeout
        held = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
        yield held
    finally:
        os.close(fd)
