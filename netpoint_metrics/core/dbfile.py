"""Reading and writing prometheus-client's ``*.db`` value files.

The format (``prometheus_client/mmap_dict.py``): an int32 "bytes used", 4 bytes of
padding, then entries of int32 key length, the UTF-8 key padded with spaces to an 8-byte
boundary, a float64 value and a float64 timestamp. Writers never rewrite a key in place,
they only append and then bump "bytes used", so a file whose size and used count have not
changed still has the same layout: :mod:`.layouts` builds on that.

Reads never use mmap: a file that shrinks or vanishes under us gives a short read or an
``OSError``, not a SIGBUS.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

_INT = struct.Struct("i")
_TWO_DOUBLES = struct.Struct("dd")
_PAGE = mmap.PAGESIZE
# The decoder's C scanner (set in its __init__, missing from the type stubs).
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_JSON_SPACE = " \t\n\r"
#: Sanity bound: prometheus-client doubles its file from 64 KiB; 1 GiB is far past sane.
MAX_USED = 1 << 30
_STR_ONLY = frozenset({str})


class CorruptFile(ValueError):
    """A value file that cannot be parsed: truncated, garbage, or not this format."""


class Snapshot(NamedTuple):
    """The bytes of one value file as read at one instant.

    ``used == 0`` (and empty ``data``) for a file that exists but holds nothing yet:
    prometheus-client creates the file, then grows and initialises it. A named tuple:
    one is made per file per scrape, and a frozen dataclass costs several times more.
    """

    data: bytes
    used: int
    inode: int
    size: int


def read_snapshot(path: str, hint: int = 0) -> Snapshot | None:
    """Read a value file; None if it is gone, ``used == 0`` if it is empty.

    ``hint`` is the used size seen last time: reading that much at once makes a known
    file one ``pread``. Raises :class:`CorruptFile` when the header cannot be right.
    """
    try:
        fd = open_value_file(path)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        return read_open(fd, path, st.st_ino, hint, st.st_size)
    finally:
        os.close(fd)


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def open_value_file(path: str) -> int:
    """A read-only descriptor for a value file (never through a symlink)."""
    return os.open(path, _OPEN_FLAGS)


def read_open(fd: int, path: str, inode: int, hint: int = 0, size: int | None = None) -> Snapshot:
    """:func:`read_snapshot` for a file already open as ``fd`` (a kept descriptor).

    Without ``size`` (no ``fstat``), a file shorter than its header says is caught by the
    short read instead.
    """
    head = os.pread(fd, hint if hint > _PAGE else _PAGE, 0)
    if not head:
        # prometheus-client creates the file, then grows it: an empty file is a
        # process caught between the two (or killed there: the caller decides).
        return Snapshot(b"", 0, inode, 0)
    if len(head) < 8:
        raise CorruptFile(f"{path}: {len(head)} bytes, shorter than the 8-byte header")
    used = _INT.unpack_from(head, 0)[0]
    if used == 0 and not head.strip(b"\0"):
        return Snapshot(b"", 0, inode, len(head))  # grown, not yet initialised
    if used < 8 or used > MAX_USED or (size is not None and used > size):
        raise CorruptFile(f"{path}: header says {used} bytes used, file has {size}")
    data = head[:used] if used <= len(head) else head + os.pread(fd, used - len(head), len(head))
    if len(data) < used:
        raise CorruptFile(f"{path}: short read ({len(data)} of {used} bytes)")
    return Snapshot(data, used, inode, size if size is not None else used)


def iter_entries(data: bytes, used: int) -> Iterable[tuple[bytes, int]]:
    """Yield (encoded key, offset of its value) for every entry, validating bounds."""
    pos = 8
    while pos < used:
        if pos + 4 > used:
            raise CorruptFile(f"entry header at {pos} runs past used size {used}")
        klen = _INT.unpack_from(data, pos)[0]
        if klen <= 0 or pos + 4 + klen > used:
            raise CorruptFile(f"key length {klen} at {pos} runs past used size {used}")
        key = data[pos + 4 : pos + 4 + klen]
        vpos = pos + 4 + klen + (8 - (klen + 4) % 8)
        if vpos + 16 > used:
            raise CorruptFile(f"value at {vpos} runs past used size {used}")
        yield key, vpos
        pos = vpos + 16


def parse_key(key: bytes) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
    """Decode a key to (metric name, sample name, sorted labels, help text).

    Accepts exactly what ``json.loads`` accepts, without its Python-level wrapper: a cold
    scrape parses every distinct key once, and that wrapper costs more than the parse.
    """
    try:
        text = key.decode("utf-8").strip(_JSON_SPACE)
        value, end = _scan_json(text, 0)
        if end != len(text):
            raise ValueError("extra data after the key")
        metric_name, name, labels, help_text = value
    except (ValueError, TypeError, RecursionError, StopIteration) as exc:
        raise CorruptFile(f"undecodable key {key[:80]!r}") from exc
    if not (
        isinstance(metric_name, str)
        and isinstance(name, str)
        and isinstance(labels, dict)
        and isinstance(help_text, str)
        # JSON object keys are always str; the values must be too (a C-level check: a
        # cold scrape parses every distinct key).
        and set(map(type, labels.values())) <= _STR_ONLY
    ):
        raise CorruptFile(f"key of the wrong shape {key[:80]!r}")
    return metric_name, name, tuple(sorted(labels.items())), help_text


def read_entries(path: str) -> list[tuple[bytes, float, float]] | None:
    """All (key, value, timestamp) of a file, None if empty or gone; raises CorruptFile."""
    snap = read_snapshot(path)
    if snap is None or snap.used == 0:
        return None
    out = []
    for key, vpos in iter_entries(snap.data, snap.used):
        parse_key(key)  # validate: a fold must never copy garbage into an archive
        value, ts = _TWO_DOUBLES.unpack_from(snap.data, vpos)
        out.append((key, value, ts))
    return out


def encode(entries: Iterable[tuple[bytes, float, float]]) -> bytes:
    """Encode entries exactly as prometheus-client lays them out."""
    chunks = [b""]
    used = 8
    for key, value, ts in entries:
        padded = key + b" " * (8 - (len(key) + 4) % 8)
        chunk = _INT.pack(len(key)) + padded + _TWO_DOUBLES.pack(value, ts)
        chunks.append(chunk)
        used += len(chunk)
    chunks[0] = _INT.pack(used) + b"\0\0\0\0"
    return b"".join(chunks)


def write_atomic(directory: str, filename: str, payload: bytes, tmp_tag: str) -> None:
    """Write ``payload`` to ``directory/filename`` by temp file and rename.

    The temp file lives in the same directory (a rename cannot cross filesystems) and has a
    name no reader globs. No fsync: the directory holds per-boot state that a restart
    wipes, so only crashes of processes, not of the machine, must leave it consistent, and
    rename is atomic for those.
    """
    tmp = os.path.join(directory, f".netpoint-tmp-{tmp_tag}-{filename}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, os.path.join(directory, filename))
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
