"""The archive manifest: which archive generation is current, and which ids it holds.

A fold is committed by one atomic rename of this file. Before the rename the old archives
are current and the dead processes' own files count; after it the new archives count and
any of those files still on disk (a crash before their deletion) are ignored because their
ids are listed here. So every dead process is counted exactly once at every instant, and
recovery is just "finish deleting what the manifest says is folded".
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from netpoint_metrics.core import dbfile, names

log = logging.getLogger("netpoint_metrics")
FORMAT = 1


@dataclass(frozen=True)
class Manifest:
    generation: int = 0
    folded: frozenset[str] = field(default_factory=frozenset)

    def archive_ident(self) -> str:
        return names.archive_ident(self.generation)


def load(directory: str) -> Manifest:
    """Read the manifest; a missing one means "no archive yet"."""
    path = os.path.join(directory, names.MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 22)
    except FileNotFoundError:
        return Manifest()
    try:
        doc = json.loads(raw)
        gen = doc["generation"]
        folded = doc["folded"]
        if doc.get("format") != FORMAT or not isinstance(gen, int) or gen < 0:
            raise ValueError("unknown format")
        if not isinstance(folded, list) or not all(isinstance(i, str) for i in folded):
            raise ValueError("bad folded list")
        return Manifest(gen, frozenset(folded))
    except (ValueError, KeyError, TypeError) as exc:
        # Only a foreign writer can damage it (we write by rename). Use the newest
        # archive generation on disk: its ids' files were deleted after it was made.
        gen = _newest_generation(directory)
        log.warning(
            "netpoint-metrics: %s is unreadable (%s); using archive generation %d",
            path,
            exc,
            gen,
        )
        return Manifest(gen, frozenset())


def store(directory: str, manifest: Manifest) -> None:
    doc = {"format": FORMAT, "generation": manifest.generation, "folded": sorted(manifest.folded)}
    dbfile.write_atomic(directory, names.MANIFEST_FILE, json.dumps(doc).encode(), f"{os.getpid()}")


def _newest_generation(directory: str) -> int:
    best = 0
    for entry in os.scandir(directory):
        parsed = names.parse_db_name(entry.name)
        if parsed is not None and parsed.generation is not None:
            best = max(best, parsed.generation)
    return best
