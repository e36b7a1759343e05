"""File names in a multiprocess directory: which are ours, and what they mean.

prometheus-client names a value file ``{kind}_{ident}.db`` (gauges:
``gauge_{mode}_{ident}.db``) and its collector splits the name on ``_``, so no identifier
may contain one. Everything this toolkit adds has a name no client would write, so that
"delete only our own files" can be checked by name alone.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: Gauge multiprocess modes, as in ``prometheus_client.metrics.Gauge._MULTIPROC_MODES``.
GAUGE_MODES = frozenset(
    {
        "all",
        "liveall",
        "min",
        "livemin",
        "max",
        "livemax",
        "sum",
        "livesum",
        "mostrecent",
        "livemostrecent",
    }
)
KINDS = frozenset({"counter", "histogram", "summary", "gauge"})

#: Prefixes whose dead-process values are folded into an archive by adding them up.
SUM_PREFIXES = frozenset({"counter", "histogram", "summary", "gauge_sum"})
#: Prefixes folded by min, max or newest timestamp.
MIN_PREFIXES = frozenset({"gauge_min"})
MAX_PREFIXES = frozenset({"gauge_max"})
RECENT_PREFIXES = frozenset({"gauge_mostrecent"})
ARCHIVABLE_PREFIXES = SUM_PREFIXES | MIN_PREFIXES | MAX_PREFIXES | RECENT_PREFIXES

LOCK_FILE = "netpoint.lock"
MANIFEST_FILE = "netpoint-archive.json"
OWNER_FILE = "netpoint-owner.json"
OWNER_LOCK_FILE = "netpoint-owner.lock"
#: Per-generation copy of the manifest, written before the commit (see :mod:`.manifest`).
GENERATION_PREFIX = "netpoint-archive-"
GENERATION_SUFFIX = ".json"
TMP_PREFIX = ".netpoint-tmp-"
LEASE_PREFIX = "lease_"
LEASE_SUFFIX = ".lock"
LEASE_TMP_PREFIX = ".netpoint-lease-"
QUARANTINE_PREFIX = "corrupt-"
#: The shared key order of one kind of value file (:mod:`.keyorder`).
ORDER_PREFIX = "netpoint-order-"
ORDER_SUFFIX = ".keys"

# Our identifiers are "<pid>-<nonce>"; plain "<pid>" is what a stock client writes.
_IDENT_RE = re.compile(r"^(?P<pid>[0-9]{1,10})(?:-(?P<nonce>[0-9a-f]{6,32}))?$")
_ARCHIVE_RE = re.compile(r"^archive-(?P<gen>[0-9]{1,18})$")
_GENERATION_RE = re.compile(r"^netpoint-archive-(?P<gen>[0-9]{1,18})\.json$")
#: Names an operator or the filesystem may put in the directory that we leave alone.
TOLERATED_FOREIGN = frozenset({"lost+found"})


class DbName(NamedTuple):
    """A parsed ``*.db`` file name.

    A named tuple with what every read asks of a name worked out once: a worker's first
    scrape parses every name in the directory, and a frozen dataclass with properties
    costs several times more per name.
    """

    filename: str
    kind: str  # counter, histogram, summary, gauge
    mode: str  # gauge mode, "" for other kinds
    ident: str  # process identifier, or "archive-<gen>"
    #: ``gauge_<mode>`` for gauges, else the kind: the part of the name before the ident.
    prefix: str
    is_archive: bool
    #: True for gauges whose values must vanish with their process.
    live_only: bool

    @property
    def generation(self) -> int | None:
        m = _ARCHIVE_RE.match(self.ident)
        return int(m.group("gen")) if m else None


# One pass over a name: kind, gauge mode and identifier (ours, a stock pid, or an archive).
_DB_NAME_RE = re.compile(
    r"(?P<prefix>counter|histogram|summary|gauge_(?P<mode>[a-z]+))_"
    r"(?P<ident>[0-9]{1,10}(?:-[0-9a-f]{6,32})?|archive-[0-9]{1,18})\.db"
)


def parse_db_name(filename: str) -> DbName | None:
    """Parse a value file's name; None for anything that is not a known value file."""
    m = _DB_NAME_RE.fullmatch(filename)
    if m is None:
        return None
    prefix, mode, ident = m.group("prefix", "mode", "ident")
    if mode is None:
        return DbName(filename, prefix, "", ident, prefix, ident[0] == "a", False)
    if mode not in GAUGE_MODES:
        return None
    live = mode.startswith("live") or mode == "all"
    return DbName(filename, "gauge", mode, ident, prefix, ident[0] == "a", live)


def db_filename(prefix: str, ident: str) -> str:
    return f"{prefix}_{ident}.db"


def archive_ident(generation: int) -> str:
    return f"archive-{generation}"


def ident_pid(ident: str) -> int | None:
    """The pid part of a process identifier, None for archives and unknown names."""
    m = _IDENT_RE.match(ident)
    return int(m.group("pid")) if m else None


def is_process_ident(ident: str) -> bool:
    return _IDENT_RE.match(ident) is not None


def lease_filename(ident: str) -> str:
    return f"{LEASE_PREFIX}{ident}{LEASE_SUFFIX}"


def parse_lease_name(filename: str) -> str | None:
    """The identifier a lease file belongs to, None if it is not a lease."""
    if filename.startswith(LEASE_PREFIX) and filename.endswith(LEASE_SUFFIX):
        ident = filename[len(LEASE_PREFIX) : -len(LEASE_SUFFIX)]
        if _IDENT_RE.match(ident):
            return ident
    return None


def generation_filename(generation: int) -> str:
    return f"{GENERATION_PREFIX}{generation}{GENERATION_SUFFIX}"


def parse_generation_name(filename: str) -> int | None:
    """The generation a per-generation manifest copy belongs to, None for other names."""
    m = _GENERATION_RE.match(filename)
    return int(m.group("gen")) if m else None


def is_ours(filename: str) -> bool:
    """True for every name this toolkit or prometheus-client may create in the directory."""
    return (
        parse_db_name(filename) is not None
        or parse_lease_name(filename) is not None
        or parse_generation_name(filename) is not None
        or filename in (LOCK_FILE, MANIFEST_FILE, OWNER_FILE, OWNER_LOCK_FILE)
        or filename.startswith((TMP_PREFIX, LEASE_TMP_PREFIX))
        or (filename.startswith(QUARANTINE_PREFIX) and filename.endswith(".bad"))
        or (filename.startswith(ORDER_PREFIX) and filename.endswith(ORDER_SUFFIX))
    )
