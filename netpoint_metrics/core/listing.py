"""One pass over a multiprocess directory, grouped by what each name means.

Kept apart from :mod:`.directory` (which prepares and wipes directories, and so calls
the fold) so that the fold can list and delete files without importing its caller.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

from netpoint_metrics.core import names

log = logging.getLogger(__name__)


@dataclass
class Listing:
    """The directory's names, grouped by process identifier and role."""

    files: dict[str, list[names.DbName]] = field(default_factory=lambda: defaultdict(list))
    archives: dict[int, list[names.DbName]] = field(default_factory=lambda: defaultdict(list))
    generation_copies: list[int] = field(default_factory=list)
    leases: set[str] = field(default_factory=set)
    lease_tmps: list[str] = field(default_factory=list)
    tmps: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def idents(self) -> set[str]:
        return set(self.files) | self.leases


def scan(directory: str) -> Listing:
    """List ``directory`` once; names that are not ours go to ``foreign``."""
    listing = Listing()
    with os.scandir(directory) as it:
        for entry in it:
            _classify(listing, entry.name)
    return listing


def _classify(listing: Listing, name: str) -> None:
    parsed = names.parse_db_name(name)
    if parsed is not None:
        if parsed.generation is not None:
            listing.archives[parsed.generation].append(parsed)
        else:
            listing.files[parsed.ident].append(parsed)
        return
    ident = names.parse_lease_name(name)
    if ident is not None:
        listing.leases.add(ident)
        return
    gen = names.parse_generation_name(name)
    if gen is not None:
        listing.generation_copies.append(gen)
    elif name.startswith(names.LEASE_TMP_PREFIX):
        listing.lease_tmps.append(name)
    elif name.startswith(names.TMP_PREFIX):
        listing.tmps.append(name)
    elif not names.is_ours(name) and name not in names.TOLERATED_FOREIGN:
        listing.foreign.append(name)


def unlink(directory: str, filename: str) -> bool:
    """Delete one of our files; True if it is gone. Refuses names that are not ours."""
    if not names.is_ours(filename) or "/" in filename:
        raise ValueError(f"refusing to delete {filename!r}: not a netpoint-metrics file")
    try:
        os.unlink(os.path.join(directory, filename))
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("netpoint-metrics: cannot delete %s/%s: %s", directory, filename, exc)
        return False
    return True
