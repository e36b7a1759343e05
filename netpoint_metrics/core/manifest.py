"""The archive manifest: which archive generation is current, and which ids it holds.

A fold is committed by one atomic rename of ``netpoint-archive.json``. Before the rename
the old archives are current and the dead processes' own files count; after it the new
archives count and any of those files still on disk (a crash before their deletion) are
ignored because their ids are listed here. So every dead process is counted exactly once
at every instant, and recovery is just "finish deleting what the manifest says is folded".

Only a foreign hand can damage or delete the manifest (we only ever replace it by
rename). Guessing the newest archive generation on disk would be wrong in exactly the
case that matters: a fold that wrote generation N+1 but crashed before committing it has
N+1 on disk while the folded processes' files are still there too, so adopting N+1 with
an empty "folded" list would count those processes twice. Instead every fold writes a
copy of the manifest it is about to commit, ``netpoint-archive-<N+1>.json``, after the
generation's archives and before the commit. Recovery adopts the newest such copy whose
archives are all on disk, *with its folded list*: if that generation was committed, this
is what the manifest said; if it was not, its folded processes' files are still on disk
and the list makes readers ignore them, so either way each process counts once. When no
copy can be trusted, the archives on disk cannot be accounted for: they are set aside,
never deleted, and the totals restart (counters reset once; the README says so).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from netpoint_metrics.core import dbfile, names

log = logging.getLogger(__name__)
FORMAT = 1

#: (directory, reason) pairs already logged, so a damaged manifest is reported once per
#: process rather than on every scrape.
_reported: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Manifest:
    generation: int = 0
    folded: frozenset[str] = field(default_factory=frozenset)
    #: Archive files of this generation (recorded in generation copies; informative).
    archives: tuple[str, ...] = ()
    #: True when the manifest was missing or damaged and archives on disk could not be
    #: accounted for: folds must set them aside instead of deleting them.
    unaccounted: bool = False
    #: True when this manifest was rebuilt from a generation copy, not read directly.
    recovered: bool = False

    def archive_ident(self) -> str:
        return names.archive_ident(self.generation)


def load(directory: str) -> Manifest:
    """Read the manifest; rebuild it from generation copies if it is missing or damaged."""
    path = os.path.join(directory, names.MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 22)
    except FileNotFoundError:
        return _recover(directory, "missing")
    try:
        return _parse(raw)
    except (ValueError, KeyError, TypeError) as exc:
        return _recover(directory, f"unreadable ({exc})")


def store(directory: str, manifest: Manifest) -> None:
    """Commit ``manifest`` by atomic rename."""
    dbfile.write_atomic(directory, names.MANIFEST_FILE, _encode(manifest), f"{os.getpid()}")


def store_generation_copy(directory: str, manifest: Manifest) -> None:
    """Write the copy recovery relies on; call after the generation's archives exist."""
    filename = names.generation_filename(manifest.generation)
    dbfile.write_atomic(directory, filename, _encode(manifest), f"{os.getpid()}")


def _encode(manifest: Manifest) -> bytes:
    doc = {
        "format": FORMAT,
        "generation": manifest.generation,
        "folded": sorted(manifest.folded),
        "archives": sorted(manifest.archives),
    }
    return json.dumps(doc).encode()


def _parse(raw: bytes) -> Manifest:
    doc = json.loads(raw)
    gen = doc["generation"]
    folded = doc["folded"]
    archives = doc.get("archives", [])
    if doc.get("format") != FORMAT or not isinstance(gen, int) or gen < 0:
        raise ValueError("unknown format")
    if not isinstance(folded, list) or not all(isinstance(i, str) for i in folded):
        raise ValueError("bad folded list")
    if not isinstance(archives, list) or not all(isinstance(a, str) for a in archives):
        raise ValueError("bad archive list")
    return Manifest(gen, frozenset(folded), tuple(archives))


def _recover(directory: str, reason: str) -> Manifest:
    copies: list[tuple[int, str]] = []
    archives_on_disk: set[str] = set()
    with os.scandir(directory) as it:
        for entry in it:
            gen = names.parse_generation_name(entry.name)
            if gen is not None:
                copies.append((gen, entry.name))
                continue
            parsed = names.parse_db_name(entry.name)
            if parsed is not None and parsed.generation is not None:
                archives_on_disk.add(entry.name)
    if not copies and not archives_on_disk:
        return Manifest()  # a directory no fold has touched yet: nothing to recover
    for gen, filename in sorted(copies, reverse=True):
        try:
            with open(os.path.join(directory, filename), "rb") as f:
                candidate = _parse(f.read(1 << 22))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if candidate.generation != gen or not set(candidate.archives) <= archives_on_disk:
            continue  # a damaged copy, or one whose archives are gone: not trustworthy
        _report(directory, reason, f"rebuilt from {filename} (generation {gen})", error=False)
        return Manifest(candidate.generation, candidate.folded, candidate.archives, recovered=True)
    _report(
        directory,
        reason,
        f"no trustworthy generation copy; {len(archives_on_disk)} archive file(s) will be "
        "set aside and archived totals restart from zero",
        error=True,
    )
    return Manifest(unaccounted=bool(archives_on_disk), recovered=True)


def _report(directory: str, reason: str, outcome: str, *, error: bool) -> None:
    key = (directory, reason + outcome)
    if key in _reported:
        return
    _reported.add(key)
    log.log(
        logging.ERROR if error else logging.WARNING,
        "netpoint-metrics event=recovery dir=%s manifest=%s outcome=%r",
        directory,
        reason,
        outcome,
    )
