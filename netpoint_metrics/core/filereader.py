"""Reading one value file's values into the series table, and what to do when it is bad.

A file seen before with the same inode and used size is read with its remembered layout:
one ``pread`` and one compiled ``struct`` call. Any other file gets its layout from the
:class:`~.layouts.LayoutCache` (shared with every file of the same keys, checked against
the file's bytes) and is remembered from then on.

Files that cannot be read never fail a scrape: they are skipped, logged once per file
(path and inode, so a new bad file under an old name is reported again) and counted in
:attr:`FileReader.unreadable_total`. An empty file is a writer caught between creating and
growing it; that is normal while the writer lives and damage once it is dead (a SIGKILL at
that moment leaves it behind for good, prometheus/client_python#1199).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import struct
from collections.abc import Callable

from netpoint_metrics.core import dbfile, names
from netpoint_metrics.core.layouts import Layout, LayoutCache, Read
from netpoint_metrics.core.series import PID_MODES, Lists, SeriesTable

log = logging.getLogger(__name__)

RECENT_MODES = frozenset({"mostrecent", "livemostrecent"})
#: What one file gave: its slots, their value and timestamp lists, its values, and its
#: timestamps (mostrecent only).
FileValues = tuple[
    tuple[int, ...],
    Lists,
    Lists,
    tuple[float, ...],
    "tuple[float, ...] | None",
]


def _fd_budget() -> int:
    """How many value files a reader keeps open: a quarter of the soft descriptor limit,
    at most 1,024, so a server with a low limit never runs short because of us."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(0, min(1024, soft // 4))


class OpenFiles:
    """Descriptors of value files kept open between scrapes, by path and inode.

    A scrape reads every live worker's files; with a kept descriptor that is one ``pread``
    instead of ``open`` + ``fstat`` + ``pread`` + ``close``. A descriptor is used only
    while the directory listing shows the same inode under the name (a fold deletes, a
    wipe replaces) and is closed as soon as the name is gone. Reads go through ``pread``,
    so a descriptor shared with a forked child is harmless.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = _fd_budget() if budget is None else budget
        self._fds: dict[str, tuple[int, int]] = {}  # path -> (fd, inode)

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, path: str, inode: int) -> int | None:
        entry = self._fds.get(path)
        if entry is None:
            return None
        if entry[1] == inode:
            return entry[0]
        del self._fds[path]  # the name now belongs to another file
        _close(entry[0])
        return None

    def keep(self, path: str, fd: int, inode: int) -> bool:
        """Keep ``fd`` for later reads; False (the caller closes it) when over budget."""
        if len(self._fds) >= self.budget or path in self._fds:
            return False
        self._fds[path] = (fd, inode)
        return True

    def forget_missing(self, present: set[str]) -> None:
        if len(self._fds) > len(present) or any(p not in present for p in self._fds):
            for path in [p for p in self._fds if p not in present]:
                _close(self._fds.pop(path)[0])

    def close(self) -> None:
        for fd, _ in self._fds.values():
            _close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class FileReader:
    """Reads value files of one directory for one collector."""

    def __init__(self, table: SeriesTable, is_alive: Callable[[str], bool]) -> None:
        self.table = table
        self.layouts = LayoutCache()
        self._is_alive = is_alive
        self._memo: dict[str, tuple[int, Layout, str]] = {}  # path -> (inode, layout, prefix)
        self.open_files = OpenFiles()
        self._hint: dict[str, int] = {}  # used size of the last file read, by kind
        self._warned: set[tuple[str, int]] = set()
        # Files found unreadable, by path: (inode, used size). Value files only grow, so
        # the same inode and size is the same damage: skip it without parsing it again.
        self._bad: dict[str, tuple[int, int]] = {}
        #: Unreadable files skipped, summed over every read since this reader was made.
        self.unreadable_total = 0
        #: Used bytes of the files read since the owner last set it to 0 (once per collect).
        self.bytes_read = 0

    def read(self, path: str, parsed: names.DbName, listed_inode: int) -> FileValues | None:
        """The values of one file; None if it has none to give (gone, empty or unreadable).

        ``listed_inode`` is the inode the directory listing gave: what "once per file"
        means for warnings, since a file that cannot be opened has no other.
        """
        snap = None
        try:
            memo = self._memo.get(path)
            # A file seen before: its size; a new one: the size of the last file of its
            # kind (workers' files of one kind are much alike), so most reads are one pread.
            hint = memo[1].used if memo is not None else self._hint.get(parsed.prefix, 0)
            snap = self._snapshot(path, listed_inode, hint)
            if snap is None:
                return None  # deleted since the directory was listed: a fold or a wipe
            if snap.used == 0:
                if parsed.is_archive or not self._is_alive(parsed.ident):
                    raise dbfile.CorruptFile("empty file of a process that is gone")
                return None
            if self._bad and self._bad.get(path) == (snap.inode, snap.used):
                raise dbfile.CorruptFile("unreadable, as before")
            got: Read | None = None
            if memo is not None and memo[0] == snap.inode and memo[1].used == snap.used:
                layout = memo[1]
                if not layout.same_file(snap.data):
                    layout, got = self.layouts.find(parsed.prefix, snap.data, snap.used)
            else:
                layout, got = self.layouts.find(parsed.prefix, snap.data, snap.used)
            if got is not None:
                if len(self._memo) > 65536:
                    self._memo.clear()
                self._memo[path] = (snap.inode, layout, parsed.prefix)
            values = self._values(parsed, layout, snap.data, got)
        except (dbfile.CorruptFile, OSError, ValueError, struct.error) as exc:
            self._memo.pop(path, None)
            if snap is not None and snap.used:
                if len(self._bad) > 10000:
                    self._bad.clear()
                self._bad[path] = (snap.inode, snap.used)
            self._unreadable(path, listed_inode, exc)
            return None
        self.bytes_read += snap.used
        self._hint[parsed.prefix] = snap.used
        return values

    def _snapshot(self, path: str, listed_inode: int, hint: int) -> dbfile.Snapshot | None:
        """The file's bytes, through a kept descriptor when there is one for this inode."""
        fd = self.open_files.get(path, listed_inode)
        if fd is not None:
            return dbfile.read_open(fd, path, listed_inode, hint)
        try:
            fd = dbfile.open_value_file(path)
        except FileNotFoundError:
            return None
        kept = False
        try:
            # No fstat: the listing's inode names the file (value files are never renamed
            # over, and archives only under the exclusive lock, which excludes this read);
            # a file shorter than its header says is caught as a short read.
            snap = dbfile.read_open(fd, path, listed_inode, hint)
            if snap.used:
                kept = self.open_files.keep(path, fd, listed_inode)
            return snap
        finally:
            if not kept:
                os.close(fd)

    def _values(
        self, parsed: names.DbName, layout: Layout, data: bytes, got: Read | None
    ) -> FileValues:
        mode = parsed.mode
        if mode and mode in PID_MODES:
            slots, vlists, tlists = self.table.bind(parsed.kind, mode, layout, parsed.ident)
        elif layout.slots is not None and layout.vlists is not None and layout.tlists is not None:
            slots, vlists, tlists = layout.slots, layout.vlists, layout.tlists  # bound before
        else:
            slots, vlists, tlists = self.table.bind(parsed.kind, mode, layout, None)
        if mode in RECENT_MODES:
            if got is not None and got[1] is not None:
                return slots, vlists, tlists, got[0], got[1]
            pairs = layout.unpack_pairs(data)
            return slots, vlists, tlists, pairs[0::2], pairs[1::2]
        vals = got[0] if got is not None else layout.unpack_values(data)
        return slots, vlists, tlists, vals, None

    def _unreadable(self, path: str, inode: int, exc: Exception) -> None:
        self.unreadable_total += 1
        key = (path, inode)
        if key not in self._warned:
            if len(self._warned) > 10000:
                self._warned.clear()
            self._warned.add(key)
            reason = str(exc).removeprefix(f"{path}: ")
            log.warning("skipping unreadable metrics file %s: %s", path, reason)

    def remembered(self) -> dict[str, Layout]:
        """Layouts of the files read so far, by path: what makes their next read cheap."""
        return {path: layout for path, (_, layout, _) in self._memo.items()}

    def forget_missing(self, present: set[str]) -> None:
        """Drop what is remembered about files that are gone, and layouts nobody has.

        Recycled workers leave new files with layouts of their own behind them; without
        this the layout cache would grow with every recycle.
        """
        if len(self._memo) > len(present):
            for path in [p for p in self._memo if p not in present]:
                del self._memo[path]
        self.open_files.forget_missing(present)
        if self._bad:
            for path in [p for p in self._bad if p not in present]:
                del self._bad[path]
        if len(self.layouts) > 2 * len(self._memo) + 256:
            self.layouts.keep_only([(prefix, lay) for _, lay, prefix in self._memo.values()])

    def forget_slots(self) -> None:
        """The series table was renumbered: no layout's bound slots are valid any more."""
        for layout in self.layouts.layouts():
            layout.slots = layout.vlists = layout.tlists = None
        for _, layout, _ in self._memo.values():
            layout.slots = layout.vlists = layout.tlists = None
