"""One order for the keys of every process's counter, histogram and summary files.

A value file's layout (where each value sits) is fixed by the order its keys were first
written in, and each worker writes a key the first time it serves a request that needs
it. Left alone, 48 workers produce ~48 different layouts of the same keys (measured: 46
distinct counter layouts and 38 histogram layouts among 48 workers' files), and a
collector that has never read the directory (a worker's first scrape) has to work out
each of them. This module makes every process append its keys in one shared order, so
every file of a kind is a prefix of the same sequence and all of them share a handful of
layouts.

The order is a file per kind in the directory, ``netpoint-order-<prefix>.keys``: one
JSON key per line, append-only, each line added under an exclusive ``flock`` by the first
process that needs a key nobody has written yet. A process that needs key ``K`` appends
to its own value file, in order, every key of the shared sequence it has not written yet
up to and including ``K`` (with value 0). Zero entries change no sum, which is why only
the kinds that are added up across processes take part (counters, histograms, summaries;
never gauges, where a 0 would be a value of its own), and every key in the sequence was
written by some process of this directory's life, so no series appears that would not
have appeared anyway.

This is an optimisation and nothing depends on it: any problem with the order file (it
cannot be created, is damaged, is too big, the disk is full) makes this process append
keys as they come, as stock prometheus-client does, after one warning. Lines are accepted
only if they are keys exactly as :func:`valuefile.mmap_key` writes them, so a damaged or
planted file cannot put anything but real keys into value files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat

from netpoint_metrics.core import names

log = logging.getLogger(__name__)

ORDER_PREFIX = names.ORDER_PREFIX
ORDER_SUFFIX = names.ORDER_SUFFIX
#: Kinds whose files take part: values that are summed across processes, where 0 is no-op.
ORDERED_PREFIXES = frozenset({"counter", "histogram", "summary"})
#: Past this many keys (or bytes) the order stops growing; keys are then appended as they
#: come. It bounds what every process copies into its files to a sane cardinality.
MAX_KEYS = 20_000
MAX_BYTES = 8 << 20


def filename(prefix: str) -> str:
    return f"{ORDER_PREFIX}{prefix}{ORDER_SUFFIX}"


def _valid(line: str) -> bool:
    """True for a key exactly as ``mmap_key`` writes it: [metric, sample, labels, help]."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return False
    if not (
        isinstance(parsed, list)
        and len(parsed) == 4
        and isinstance(parsed[0], str)
        and isinstance(parsed[1], str)
        and isinstance(parsed[2], dict)
        and isinstance(parsed[3], str)
        and all(isinstance(v, str) for v in parsed[2].values())
    ):
        return False
    return json.dumps(parsed, sort_keys=True) == line


class KeyOrder:
    """This process's view of one kind's shared key order; not thread safe (the value
    class's lock is held around every call)."""

    def __init__(self, directory: str, prefix: str) -> None:
        self.path = os.path.join(directory, filename(prefix))
        self.keys: list[str] = []
        self.position: dict[str, int] = {}
        self._fd = -1
        self._read_to = 0  # bytes of the file consumed (always just after a newline)
        self.broken = False

    def sequence(self, key: str, start: int) -> tuple[list[str], int]:
        """Keys to append for ``key``: the shared order from ``start`` up to ``key``.

        Returns (keys, next start). Never raises: on any problem, ``[key]`` and ``start``
        unchanged, and the order is not used by this process again.
        """
        if self.broken:
            return [key], start
        try:
            at = self.position.get(key)
            if at is None:
                self._refresh()
                at = self.position.get(key)
                if at is None:
                    at = self._register(key)
            if at is None or at < start:
                return [key], start
            return self.keys[start : at + 1], at + 1
        except Exception as exc:  # an optimisation must never break an update
            self._give_up(f"{type(exc).__name__}: {exc}")
            return [key], start

    def _open(self) -> int:
        if self._fd < 0:
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                0o600,
            )
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                os.close(fd)
                raise OSError(errno.EPERM, f"{self.path} is not a regular file of ours")
            self._fd = fd
        return self._fd

    def _refresh(self) -> None:
        """Read lines other processes added since the last read."""
        fd = self._open()
        size = os.fstat(fd).st_size
        if size > MAX_BYTES:
            raise OSError(errno.EFBIG, f"{self.path} is over {MAX_BYTES} bytes")
        if size < self._read_to:
            raise OSError(errno.EIO, f"{self.path} shrank: replaced or damaged")
        if size == self._read_to:
            return
        data = os.pread(fd, size - self._read_to, self._read_to)
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        if end == 0:
            return
        for raw in data[:end].split(b"\n")[:-1]:
            line = raw.decode("utf-8")
            if not _valid(line):
                raise ValueError(f"{self.path} holds a line that is not a key: {line[:80]!r}")
            if line not in self.position:  # two processes racing before the lock existed
                self.position[line] = len(self.keys)
                self.keys.append(line)
        self._read_to += end

    def _register(self, key: str) -> int | None:
        """Add ``key`` to the shared order (under its lock); its position, None if full."""
        if len(self.keys) >= MAX_KEYS:
            return None
        line = (key + "\n").encode("utf-8")
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            at = self.position.get(key)
            if at is not None:
                return at
            size = os.fstat(fd).st_size
            if size != self._read_to:
                # A partial line (a write cut short, say by a full disk, that could not be
                # undone): nobody reads it, since readers stop at the last newline. Drop it
                # under the lock so the next line starts clean.
                os.ftruncate(fd, self._read_to)
                size = self._read_to
            try:
                written = os.write(fd, line)
            except OSError:
                written = -1
            if written != len(line):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # leave no partial line for the others
                raise OSError(errno.ENOSPC, f"could not append to {self.path}")
            self._read_to += len(line)
            self.position[key] = len(self.keys)
            self.keys.append(key)
            return self.position[key]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _give_up(self, why: str) -> None:
        self.broken = True
        log.warning(
            "netpoint-metrics: shared key order %s unusable (%s); this process appends "
            "keys as they come (slower first scrapes, values unaffected)",
            self.path,
            why,
        )
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
