"""Process leases: the kernel tells us, exactly, whether a writer is still alive.

Every process that writes value files holds an exclusive ``flock`` on
``lease_<ident>.lock`` for as long as it lives. The kernel drops the lock when the last
descriptor of it closes, whatever kills the process (exit, SIGKILL, OOM, harakiri,
``exec``). So "can I take a shared lock on the lease without waiting?" answers "is that
writer dead?" with no pid-reuse race, no server hook and no guessing; Gunicorn's
``child_exit`` and uWSGI's respawn only say *when* to look.

The lease is created under a temporary name, locked, then renamed into place, so nobody
ever sees an unlocked lease of a live process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets

from netpoint_metrics.core import names, procinfo

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def acquire(directory: str, ident: str) -> int:
    """Create and lock the lease of ``ident``; return the descriptor to keep open."""
    final = os.path.join(directory, names.lease_filename(ident))
    for _ in range(5):
        tmp = os.path.join(directory, f"{names.LEASE_TMP_PREFIX}{ident}-{secrets.token_hex(4)}.tmp")
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, final)
            return fd
        except FileNotFoundError:
            # A fold's clean-up removed our temp file between create and lock: try again.
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    raise OSError(errno.EAGAIN, f"could not create lease {final}")


def is_alive(directory: str, ident: str) -> bool:
    """True while the process behind ``ident`` may still write its files.

    Without a lease file (a stock prometheus-client writer, or a lease that could not be
    created) fall back to "does a process with that pid exist": conservative, since a
    reused pid keeps the files alive longer but never lets a live writer be folded.
    """
    path = os.path.join(directory, names.lease_filename(ident))
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return procinfo.pid_exists(names.ident_pid(ident))
    except OSError:
        return True  # cannot tell: never fold what might be live
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)  # closing our own descriptor drops the shared lock we may hold
    return False
