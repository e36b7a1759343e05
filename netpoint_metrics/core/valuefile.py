"""One value file in prometheus-client's ``mmap_dict`` layout, written without SIGBUS.

The layout is the stock one byte for byte (int32 "used", 4 bytes padding, then entries of
int32 key length, the JSON key padded to 8 bytes, float64 value, float64 timestamp), so the
stock ``MultiProcessCollector`` and our own reader see no difference.

What differs is how space is obtained. prometheus-client grows a file with ``truncate`` and
then touches the new pages through ``mmap``: on a full tmpfs the kernel cannot back the page
and kills the writer with SIGBUS, in the middle of a request. Here every byte is reserved
with ``posix_fallocate`` *before* it is mapped, so a full disk is an ``OSError`` at the
moment we ask for space, which the caller can handle (drop the update and count it), and a
mapped page can never fault.

A new file is built unnamed (``O_TMPFILE``), reserved and given its header, and only then
linked under its final name: a reader never sees a zero-byte or header-less ``.db`` file
(the stock collector fails on those, prometheus/client_python #1199), and a file that could
not be reserved leaves nothing behind. The link must follow ``/proc/self/fd/N``
(``linkat`` with ``AT_SYMLINK_FOLLOW``): plain ``os.link`` calls ``link(2)``, which links
the magic symlink itself and always fails with ``EXDEV``. Without ``O_TMPFILE`` or
``/proc`` a named temporary file is used; a fold deletes every temporary name it finds,
including one being built here, so a temporary file that vanished before its link is built
again under a new name.

Values are written through :attr:`ValueFile.view`, a ``memoryview`` of the mapping cast to
float64, at an index fixed when the key was added: one C-level 8-byte store per update, no
``struct`` call, no dict lookup.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import mmap
import os
import secrets
import struct
from typing import Any, Protocol

from netpoint_metrics.core.keyorder import KeyOrder

log = logging.getLogger(__name__)

#: Same first size as prometheus-client (``mmap_dict._INITIAL_MMAP_SIZE``).
INITIAL_SIZE = 1 << 16
HEADER_SIZE = 8
_INT = struct.Struct("<i")
_PAGE = mmap.PAGESIZE
#: Temporary names start like the toolkit's other temporary files (``names.TMP_PREFIX``), so
#: the directory's clean-up knows them; they never end in ``.db``.
_TMP_PREFIX = ".netpoint-tmp-"
#: Errors that mean "no space now, try again later", not "this can never work".
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM})


class Bindable(Protocol):
    """What a file re-points when its mapping moves: anything holding its view."""

    _view: Any


def mmap_key(metric_name: str, name: str, labelnames: Any, labelvalues: Any, help_text: str) -> str:
    """The entry key, exactly as ``prometheus_client.mmap_dict.mmap_key`` builds it."""
    labels = dict(zip(labelnames, labelvalues, strict=False))
    return json.dumps([metric_name, name, labels, help_text], sort_keys=True)


def _entry(key: str) -> bytes:
    encoded = key.encode("utf-8")
    padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
    return _INT.pack(len(encoded)) + padded + bytes(16)


def _reserve(fd: int, offset: int, length: int) -> None:
    """Reserve real blocks; a full disk raises ``OSError(ENOSPC)`` here, not SIGBUS later."""
    if length > 0:
        os.posix_fallocate(fd, offset, length)


def _create_unnamed(directory: str) -> int:
    """An anonymous file in ``directory`` (``O_TMPFILE``), or -1 if unsupported."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return -1
    try:
        return os.open(directory, flag | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return -1
        raise


def _prepare(fd: int) -> None:
    _reserve(fd, 0, INITIAL_SIZE)
    os.pwrite(fd, _INT.pack(HEADER_SIZE), 0)


def _link_unnamed(fd: int, path: str) -> None:
    """Give the ``O_TMPFILE`` file open as ``fd`` the name ``path``.

    ``linkat(<dir of /proc/self/fd>, "N", AT_FDCWD, path, AT_SYMLINK_FOLLOW)``. Passing a
    ``src_dir_fd`` is what makes CPython call ``linkat`` with ``AT_SYMLINK_FOLLOW``; plain
    ``os.link("/proc/self/fd/N", path)`` calls ``link(2)``, which does not follow the magic
    symlink and fails with ``EXDEV`` every time (seen with CPython 3.11 on Linux).
    """
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


#: Attempts at building a named temporary file that a concurrent fold keeps deleting.
_TMP_ATTEMPTS = 8


def _create_named(directory: str, path: str) -> int:
    """The fallback of :func:`_create`: a named temporary file, reserved, then linked.

    Its name starts with the toolkit's temporary prefix so that a fold removes one left by
    a process that died here; but a fold (``archive._finish_earlier_folds``, under the
    directory lock, which a writer does not take) removes *every* such name, also one a
    live process is building. Then the link fails with ``ENOENT`` although nothing is wrong
    with the disk: build it again under a new name instead of failing the update.
    """
    for attempt in range(_TMP_ATTEMPTS):
        tmp = os.path.join(directory, f"{_TMP_PREFIX}value-{secrets.token_hex(6)}.tmp")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600)
        try:
            _prepare(fd)
            os.link(tmp, path)
            return fd
        except FileNotFoundError:
            os.close(fd)
            if attempt + 1 == _TMP_ATTEMPTS or not os.path.isdir(directory):
                raise
        except BaseException:
            os.close(fd)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    raise AssertionError("unreachable")  # pragma: no cover


def _create(path: str) -> int:
    """Create ``path`` fully reserved with its header written; return an open descriptor.

    Raises ``FileExistsError`` if the name exists, ``OSError`` when there is no space (then
    nothing is left in the directory).
    """
    directory = os.path.dirname(path) or "."
    fd = _create_unnamed(directory)
    if fd >= 0:
        try:
            _prepare(fd)
            _link_unnamed(fd, path)
            return fd
        except FileExistsError:
            os.close(fd)
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EACCES):
                os.close(fd)
                raise
            os.close(fd)  # no /proc, or linking refused: fall back to a named temp file
    return _create_named(directory, path)


class ValueFile:
    """The writer side of one ``.db`` file. Not thread safe: the caller holds its lock.

    With an ``order`` (:class:`~.keyorder.KeyOrder`), a new key brings along every key of
    the shared order before it that this file lacks, so the files of all processes are
    prefixes of one key sequence and readers meet few layouts.
    """

    __slots__ = (
        "path",
        "view",
        "users",
        "order",
        "_cursor",
        "_fd",
        "_mmap",
        "_capacity",
        "_used",
        "_positions",
    )
    path: str
    view: Any  # memoryview cast to float64 ("d")
    users: list[Bindable]
    order: KeyOrder | None
    _cursor: int  # keys of the shared order this file has been given so far
    _fd: int
    _mmap: mmap.mmap
    _capacity: int
    _used: int
    _positions: dict[str, int]

    def __init__(self, path: str, order: KeyOrder | None = None) -> None:
        """Open ``path``, creating it reserved if missing; ``OSError`` if there is no space."""
        self.path = path
        self.users: list[Bindable] = []
        self.order = order
        self._cursor = 0
        self._positions: dict[str, int] = {}
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            try:
                fd = _create(path)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self._open_mapping(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _open_mapping(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        capacity = max(INITIAL_SIZE, -(-size // _PAGE) * _PAGE)
        # An existing file (reopened by this same process) may be sparse: reserve it whole.
        _reserve(fd, 0, capacity)
        mm = mmap.mmap(fd, capacity, access=mmap.ACCESS_WRITE)
        used: int = _INT.unpack_from(mm, 0)[0]
        if used < HEADER_SIZE or used > capacity:
            used = HEADER_SIZE
            mm[0:4] = _INT.pack(used)
        self._mmap = mm
        self._capacity = capacity
        self._used = used
        self.view = memoryview(mm).cast("d")
        self._scan()

    def _scan(self) -> None:
        pos = HEADER_SIZE
        mm = self._mmap
        while pos + 4 <= self._used:
            n: int = _INT.unpack_from(mm, pos)[0]
            if n < 0 or pos + 4 + n > self._used:
                break
            key = bytes(mm[pos + 4 : pos + 4 + n]).decode("utf-8", "replace")
            pos += 4 + n + (8 - (n + 4) % 8)
            if pos + 16 > self._used:
                break
            self._positions[key] = pos
            pos += 16
        self._used = pos if pos <= self._used else self._used

    def index(self, key: str, *, ordered: bool = True) -> int:
        """The float64 index of ``key``'s value (its timestamp is the next one).

        Adds the entry if new (after the keys of the shared order it comes behind, when
        there is one and ``ordered``), reserving more space first when needed; raises
        ``OSError`` (ENOSPC and friends) when the disk cannot give it, leaving the file
        unchanged.
        """
        pos = self._positions.get(key)
        if pos is None:
            if ordered and self.order is not None:
                keys, cursor = self.order.sequence(key, self._cursor)
                try:
                    self._append(keys)
                    self._cursor = cursor
                except OSError:
                    if len(keys) == 1:
                        raise
                    # No room for the zeros: this key alone, if it fits (below).
                if key not in self._positions:
                    self._append([key])
            else:
                self._append([key])
            pos = self._positions[key]
        return pos // 8

    def _append(self, keys: list[str]) -> None:
        """Append entries for the keys not in the file yet, then publish them at once."""
        new = [k for k in dict.fromkeys(keys) if k not in self._positions]
        if not new:
            return
        entries = [_entry(k) for k in new]
        start = self._used
        end = start + sum(map(len, entries))
        if end > self._capacity:
            self._grow(end)
        self._mmap[start:end] = b"".join(entries)
        self._used = end
        # The stock writer updates "used" after the entries, with a slice store; so do we:
        # a reader sees all of them or none.
        self._mmap[0:4] = _INT.pack(end)
        pos = start
        for k, e in zip(new, entries, strict=True):
            pos += len(e)
            self._positions[k] = pos - 16

    def _grow(self, need: int) -> None:
        capacity = self._capacity
        target = capacity
        while target < need:
            target *= 2
        try:
            _reserve(self._fd, capacity, target - capacity)
        except OSError as exc:
            if exc.errno not in SPACE_ERRNOS:
                raise
            # Doubling failed: ask only for the pages this entry needs.
            target = -(-need // _PAGE) * _PAGE
            _reserve(self._fd, capacity, target - capacity)
        mm = mmap.mmap(self._fd, target, access=mmap.ACCESS_WRITE)
        view = memoryview(mm).cast("d")
        old_view, old_mm = self.view, self._mmap
        self._mmap, self.view, self._capacity = mm, view, target
        for user in self.users:
            user._view = view
        # The old mapping shares the same pages; drop it once nobody points at it.
        with contextlib.suppress(BufferError, ValueError):
            old_view.release()
            old_mm.close()

    @property
    def capacity(self) -> int:
        return self._capacity

    def close(self) -> None:
        """Unmap and close; values bound to this file must be re-bound before writing."""
        with contextlib.suppress(BufferError, ValueError):
            self.view.release()
            self._mmap.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    def forget(self) -> None:
        """After ``fork``: drop this (parent's) file without touching its mapping's users."""
        with contextlib.suppress(OSError):
            if self._fd >= 0:
                os.close(self._fd)
        self._fd = -1
