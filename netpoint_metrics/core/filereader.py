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

import logging
import struct
from collections.abc import Callable

from netpoint_metrics.core import dbfile, names
from netpoint_metrics.core.layouts import Layout, LayoutCache, Read
from netpoint_metrics.core.series import PID_MODES, Append, SeriesTable

log = logging.getLogger(__name__)

RECENT_MODES = frozenset({"mostrecent", "livemostrecent"})
#: What one file gave: its slots, their appenders, values, and timestamps (mostrecent only).
FileValues = tuple[
    tuple[int, ...],
    tuple[Append, ...],
    tuple[Append, ...],
    tuple[float, ...],
    "tuple[float, ...] | None",
]


class FileReader:
    """Reads value files of one directory for one collector."""

    def __init__(self, table: SeriesTable, is_alive: Callable[[str], bool]) -> None:
        self.table = table
        self.layouts = LayoutCache()
        self._is_alive = is_alive
        self._memo: dict[str, tuple[int, Layout, str]] = {}  # path -> (inode, layout, prefix)
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
            snap = dbfile.read_snapshot(path, memo[1].used if memo is not None else 0)
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
        return values

    def _values(
        self, parsed: names.DbName, layout: Layout, data: bytes, got: Read | None
    ) -> FileValues:
        pid = parsed.ident if parsed.mode in PID_MODES else None
        slots, vapp, tapp = self.table.bind(parsed.kind, parsed.mode, layout, pid)
        if parsed.mode in RECENT_MODES:
            if got is not None:
                return slots, vapp, tapp, got[0], got[1]
            pairs = layout.unpack_pairs(data)
            return slots, vapp, tapp, pairs[0::2], pairs[1::2]
        vals = got[0] if got is not None else layout.unpack_values(data)
        return slots, vapp, tapp, vals, None

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
        if self._bad:
            for path in [p for p in self._bad if p not in present]:
                del self._bad[path]
        if len(self.layouts) > 2 * len(self._memo) + 256:
            self.layouts.keep_only([(prefix, lay) for _, lay, prefix in self._memo.values()])

    def forget_slots(self) -> None:
        """The series table was renumbered: no layout's bound slots are valid any more."""
        for layout in self.layouts.layouts():
            layout.slots = layout.vapp = layout.tapp = None
        for _, layout, _ in self._memo.values():
            layout.slots = layout.vapp = layout.tapp = None
