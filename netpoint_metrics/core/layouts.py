"""Where every value of a value file lives, learned once and shared between files.

A file's layout (the offset of each value) follows from its keys alone: prometheus-client
appends entries and never moves one. Every worker writes much the same keys, so a scrape by
a worker that has never read the directory meets the same layouts over and over: one per
distinct key sequence, not one per file. :class:`LayoutCache` keeps them by kind of file
and used size, and a candidate is accepted only after one compiled ``struct`` call has
read back every key length and key of the file and found them equal: a file is never read
with a layout that is not exactly its own.

A file nobody has seen the like of is split into keys by a regular expression (C speed)
and checked the same way; if that fails (a help text with ``]`` in it, damage), the
entries are walked one by one with :func:`dbfile.iter_entries`, which raises
:class:`dbfile.CorruptFile` on anything that is not the format.
"""

from __future__ import annotations

import logging
import operator
import re
import struct
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from netpoint_metrics.core import dbfile

log = logging.getLogger(__name__)

Unpack = Callable[[bytes], tuple[Any, ...]]

# A key is JSON of [metric, sample, labels, help]: it starts with '["' (which an entry's
# length bytes never hold) and, unless a string holds ']', ends at the first ']'. Taking
# the padding and the 16 value bytes along keeps the scan out of the value bytes. The
# bound on the key length keeps the scan linear on any input (garbage full of '["' and no
# ']' would otherwise cost the square of its size); longer keys are found by walking. The
# keys found are only candidates: Layout.fits reads every length and key back.
_KEY_RE = re.compile(rb'(?s)(\["[^\]]{0,1022}\]) {1,8}.{16}')
_HEADER = 8
#: An entry's key length as the writer packs it (native int32, as prometheus-client does).
_LEN = struct.Struct("i")
#: Layouts kept before starting over; the reader also drops those of vanished files.
_MAX_LAYOUTS = 4096


def _pad(klen: int) -> int:
    """Spaces after a key of ``klen`` bytes (prometheus-client pads to 8, 1 to 8 of them)."""
    return 8 - (klen + 4) % 8


class _SizeByLength(dict[int, int]):
    def __missing__(self, klen: int) -> int:
        if len(self) > 65536:
            self.clear()
        size = self[klen] = 4 + klen + _pad(klen) + 16
        return size


_ENTRY_SIZE = _SizeByLength()
_structs: dict[str, struct.Struct] = {}


class _Fields(dict[int, str]):
    """One entry's ``struct`` fields by key length: a format is these joined, and a
    first read builds formats of hundreds of entries (an f-string per entry costs more
    than compiling the format)."""

    def __init__(self, field: Callable[[int], str]) -> None:
        super().__init__()
        self._field = field

    def __missing__(self, klen: int) -> str:
        if len(self) > 65536:
            self.clear()
        text = self[klen] = self._field(klen)
        return text

    def format(self, lens: tuple[int, ...]) -> str:
        return "=8x" + "".join(map(self.__getitem__, lens))


#: Each entry's length and key as one field (value and timestamp skipped).
_HEAD_FIELDS = _Fields(lambda k: f"{4 + k}s{_pad(k)}x16x")
#: Each entry's value (length, key, padding and timestamp skipped).
_VALUE_FIELDS = _Fields(lambda k: f"{4 + k + _pad(k)}xd8x")
#: Each entry's value and timestamp.
_PAIR_FIELDS = _Fields(lambda k: f"{4 + k + _pad(k)}x2d")


def _compiled(fmt: str) -> struct.Struct:
    """Compile a format once per process: files with the same key lengths share it."""
    st = _structs.get(fmt)
    if st is None:
        if len(_structs) > 4096:
            _structs.clear()
        st = _structs[fmt] = struct.Struct(fmt)
    return st


#: (values, timestamps) of one file; timestamps None when not read (asked for separately).
Read = tuple[tuple[float, ...], "tuple[float, ...] | None"]


class Layout:
    """The keys of a file in order, and compiled reads of its values.

    :meth:`fits` reads a file's key lengths and keys in one call, says whether they are
    this layout's, and if so reads the values; :meth:`unpack_values` reads just the values of a
    file already known to have it. ``check_at``/``check`` is the last key at its offset:
    a cheap guard used with the inode and size to recognise a file seen before. Formats
    are compiled on first use: most layouts learned in a scrape are read once.

    ``slots``, ``vlists`` and ``tlists`` belong to the series table
    (:mod:`.series`): which series each value is, bound once per layout.
    """

    __slots__ = (
        "keys",
        "lens",
        "used",
        "_all",
        "_heads",
        "_values",
        "_pairs",
        "check_at",
        "check",
        "_probes",
        "slots",
        "vlists",
        "tlists",
    )

    def __init__(self, keys: tuple[bytes, ...], used: int) -> None:
        self.keys = keys
        self.lens = tuple(map(len, keys))
        self.used = used
        self._all: Unpack | None = None
        self._heads: tuple[bytes, ...] = ()
        self._values: Unpack | None = None
        self._pairs: Unpack | None = None
        last = keys[-1] if keys else b""
        self.check_at = used - 16 - _pad(len(last)) - len(last)
        self.check = last
        # A few keys at their offsets: files of one kind often differ only in key order,
        # and comparing these rules most wrong candidates out before the full check.
        starts = list(accumulate(map(_ENTRY_SIZE.__getitem__, self.lens), initial=_HEADER))
        n = len(keys)
        self._probes = tuple(
            (starts[i] + 4, keys[i]) for i in sorted({n // 4, n // 2, (3 * n) // 4}) if i < n
        )
        self.slots: tuple[int, ...] | None = None
        self.vlists: tuple[list[float], ...] | None = None
        self.tlists: tuple[list[float], ...] | None = None

    def fits(self, data: bytes, last_key_checked: bool = False) -> Read | None:
        """(values, None) if ``data`` has exactly these key lengths and keys, else None.

        ``last_key_checked``: the caller found this layout by the file's last key, so the
        quick rejections (last key, a few probes) would only repeat; the full check runs.
        """
        if len(data) < self.used:
            return None  # keeps unpack_from in bounds
        if not last_key_checked:
            if not self.same_file(data):
                return None
            for at, key in self._probes:
                if data[at : at + len(key)] != key:
                    return None
        if self._all is None:
            # Each entry's length and key as one field (value and timestamp skipped):
            # one object per entry to compare, where reading them apart makes four.
            self._all = _compiled(_HEAD_FIELDS.format(self.lens)).unpack_from
            self._heads = tuple(map(operator.add, map(_LEN.pack, self.lens), self.keys))
        if self._all(data) != self._heads:
            return None
        return self.unpack_values(data), None

    def same_file(self, data: bytes) -> bool:
        """The cheap check for a file already read with this layout (same inode and size)."""
        return data[self.check_at : self.check_at + len(self.check)] == self.check

    def unpack_values(self, data: bytes) -> tuple[float, ...]:
        if self._values is None:
            self._values = _compiled(_VALUE_FIELDS.format(self.lens)).unpack_from
        return self._values(data)

    def unpack_pairs(self, data: bytes) -> tuple[float, ...]:
        """(value0, ts0, value1, ts1, ...)."""
        if self._pairs is None:
            self._pairs = _compiled(_PAIR_FIELDS.format(self.lens)).unpack_from
        return self._pairs(data)


class LayoutCache:
    """Layouts by kind of file, used size and last key, shared by every file of that kind.

    Keyed by the file's prefix (``counter``, ``gauge_max``, ...) because a layout carries
    its series slots, and the same key is a different series in a different kind of file.
    Workers' files of one kind usually have the same size (the same keys in a different
    order), so the last key (at its offset) picks the candidates; :meth:`Layout.fits`
    decides.
    """

    def __init__(self) -> None:
        # (prefix, used) -> (offset, length) of a last key -> that key -> layouts
        self._index: dict[tuple[str, int], dict[tuple[int, int], dict[bytes, list[Layout]]]] = {}
        self._count = 0
        self.built = 0  # layouts learned from scratch, for tests and the benchmark

    def find(self, prefix: str, data: bytes, used: int) -> tuple[Layout, Read]:
        """The layout of ``data`` and its values; raises dbfile.CorruptFile."""
        lasts = self._index.get((prefix, used))
        if lasts:
            for (at, n), by_key in lasts.items():
                cands = by_key.get(data[at : at + n])
                if cands:
                    if len(cands) == 1:  # the usual case: one layout per kind and size
                        got = cands[0].fits(data, last_key_checked=True)
                        if got is not None:
                            return cands[0], got
                        continue
                    for layout in cands:
                        got = layout.fits(data)
                        if got is not None:
                            return layout, got
        layout, got = _learn(data, used)
        if self._count >= _MAX_LAYOUTS:
            self.clear()
        self._add(prefix, layout)
        self.built += 1
        return layout, got

    def _add(self, prefix: str, layout: Layout) -> None:
        lasts = self._index.setdefault((prefix, layout.used), {})
        by_key = lasts.setdefault((layout.check_at, len(layout.check)), {})
        by_key.setdefault(layout.check, []).append(layout)
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def keep_only(self, keep: list[tuple[str, Layout]]) -> None:
        """Forget every layout but these (prefix, layout): those of files that still exist."""
        self.clear()
        for prefix, layout in {id(lay): (p, lay) for p, lay in keep}.values():
            self._add(prefix, layout)

    def layouts(self) -> list[Layout]:
        return [
            layout
            for lasts in self._index.values()
            for by_key in lasts.values()
            for cands in by_key.values()
            for layout in cands
        ]

    def clear(self) -> None:
        self._index.clear()
        self._count = 0


def _learn(data: bytes, used: int) -> tuple[Layout, Read]:
    """Work out the layout of a file never seen before, and read its values."""
    keys = tuple(_KEY_RE.findall(data, _HEADER, used))
    if keys and _HEADER + sum(map(_ENTRY_SIZE.__getitem__, map(len, keys))) == used:
        layout = Layout(keys, used)
        got = layout.fits(data)  # every length and key read back where the keys say
        if got is not None:
            return layout, got
    # The slow, exact way: follow each entry's length.
    walked = tuple(key for key, _ in dbfile.iter_entries(data, used))
    layout = Layout(walked, used)
    got = layout.fits(data)
    if got is None:  # cannot happen for what iter_entries accepted; never trust it blindly
        raise dbfile.CorruptFile("entries do not read back as walked")
    return layout, got
