"""Folding dead processes' files into per-kind archives, crash-safely.

Why fold: prometheus-client leaves every dead process's counter and histogram files
behind, and its collector reads them all on every scrape, so a server that recycles
workers gets slower without bound. Deleting them instead makes counters go backwards.
Folding adds a dead process's values into one archive per kind and then deletes its files:
the directory stays the size of the live set and the totals never move.

The protocol (all under the exclusive directory lock, which a master only ever tries):

1. finish any earlier fold: delete files of ids the manifest lists as folded, and archive
   generations other than the current one;
2. find the dead: ids whose lease nobody holds (:mod:`.lease`);
3. merge the current archive with their files into generation N+1, written to temporary
   names and renamed into place;
4. commit: rename a manifest naming generation N+1 and listing the folded ids;
5. delete the old generation and the folded files, then record that in the manifest.

A crash before 4 leaves stray new-generation files that step 1 removes; a crash after 4
leaves folded files that readers ignore and step 1 removes. Either way every process is
counted exactly once. Sums are rounded up, never down (see :func:`add_up`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from netpoint_metrics.core import dbfile, lease, lock, manifest, names
from netpoint_metrics.core import directory as dirmod

log = logging.getLogger("netpoint_metrics")

#: Test seam: called with a step name during a fold, to inject crashes.
_fault: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if _fault is not None:
        _fault(name)


def add_up(a: float, b: float) -> float:
    """``a + b`` rounded towards +inf.

    A fold replaces "archive, plus the dead file" by one stored number. Readers sum exactly
    (``math.fsum``), so the total after the fold is never below the total before it only if
    that stored number is never below the exact sum. Round-to-nearest could lose half an
    ULP, which ``rate()`` would read as a counter reset. TwoSum gives the exact error.
    """
    s = a + b
    if not math.isfinite(s):
        return s
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    if err > 0:
        s = math.nextafter(s, math.inf)
    return s


@dataclass
class FoldResult:
    busy: bool = False
    folded: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    cleaned: int = 0
    generation: int = 0
    seconds: float = 0.0
    more: bool = False


#: Most dead processes one fold takes. A fold holds the exclusive lock, so scrapes wait for
#: it; a backlog (a directory inherited from the stock recipe, a long lock outage) is
#: worked off over several folds instead of one multi-second hold. Readers count unfolded
#: dead processes correctly meanwhile.
MAX_IDS_PER_FOLD = 200


def fold(
    directory: str, *, wait: bool = False, timeout: float = 10.0, max_ids: int = MAX_IDS_PER_FOLD
) -> FoldResult:
    """Fold up to ``max_ids`` dead processes' files into the archives.

    With ``wait=False`` (what a server master uses) it returns at once with
    ``busy=True`` if a scrape or another fold holds the lock; the caller retries later.
    ``result.more`` says dead processes were left for the next fold.
    """
    t0 = time.perf_counter()
    ctx = lock.exclusive(directory, timeout) if wait else lock.exclusive_nowait(directory)
    with ctx as held:
        if not held:
            return FoldResult(busy=True)
        result = _fold_locked(directory, max_ids)
    result.seconds = time.perf_counter() - t0
    return result


def _fold_locked(directory: str, max_ids: int) -> FoldResult:
    result = FoldResult()
    man = manifest.load(directory)
    listing = dirmod.scan(directory)

    # 1. Finish earlier folds.
    still_folded = set()
    for ident in man.folded:
        if not _delete_ident(directory, ident, listing):
            still_folded.add(ident)
        result.cleaned += len(listing.files.get(ident, ()))
        listing.files.pop(ident, None)
        listing.leases.discard(ident)
    for gen, files in list(listing.archives.items()):
        if gen != man.generation:
            for f in files:
                dirmod.unlink(directory, f.filename)
                result.cleaned += 1
            del listing.archives[gen]
    for name in listing.tmps:
        dirmod.unlink(directory, name)  # only folds (under this lock) make these
    for name in listing.lease_tmps:
        _remove_abandoned_lease_tmp(directory, name)
    if still_folded != man.folded:
        man = manifest.Manifest(man.generation, frozenset(still_folded))
        manifest.store(directory, man)

    # 2. Find the dead.
    dead = sorted(
        i
        for i in listing.idents()
        if names.is_process_ident(i) and not lease.is_alive(directory, i)
    )
    result.generation = man.generation
    if not dead:
        return result
    if len(dead) > max_ids:
        dead, result.more = dead[:max_ids], True
    # List again: a process alive at the first scan may have created more files before it
    # died. The dead create nothing, so this listing is complete for them.
    listing = dirmod.scan(directory)

    # 3. Merge into a new generation.
    archives: dict[str, dict[bytes, tuple[float, float]]] = {}
    for f in listing.archives.get(man.generation, ()):
        try:
            entries = dbfile.read_entries(os.path.join(directory, f.filename)) or []
        except dbfile.CorruptFile as exc:
            # An archive we wrote ourselves is unreadable: someone damaged it. Keeping it
            # and folding nothing more is the only way not to lose what it holds.
            log.error("netpoint-metrics: archive %s is corrupt (%s); not folding", f.filename, exc)
            result.corrupt.append(f.filename)
            return result
        archives[f.prefix] = {k: (v, t) for k, v, t in entries}

    folded: list[str] = []
    for ident in dead:
        ok = True
        reads: list[tuple[str, list]] = []
        for f in listing.files.get(ident, ()):
            if f.prefix not in names.ARCHIVABLE_PREFIXES:
                continue  # live and "all" gauges die with their process
            path = os.path.join(directory, f.filename)
            try:
                entries = dbfile.read_entries(path)
            except dbfile.CorruptFile as exc:
                log.warning(
                    "netpoint-metrics: %s is corrupt (%s); set aside, not archived", path, exc
                )
                result.corrupt.append(f.filename)
                # Never delete what we could not read: move it aside, or keep the process
                # unfolded if even that fails.
                ok = _quarantine(directory, f.filename) and ok
                continue
            except OSError as exc:  # e.g. EIO, EACCES: maybe passing; try again next fold
                log.warning("netpoint-metrics: cannot read %s (%s); will retry", path, exc)
                ok = False
                continue
            if entries:
                reads.append((f.prefix, entries))
        if ok:  # all or nothing per process, so a retry cannot count anything twice
            for prefix, entries in reads:
                _merge(archives.setdefault(prefix, {}), prefix, entries)
            folded.append(ident)
    if not folded:
        return result
    _step("merged")

    new = manifest.Manifest(man.generation + 1, frozenset(still_folded | set(folded)))
    ident_new = new.archive_ident()
    tag = f"{os.getpid()}-{new.generation}"
    for prefix, entries in archives.items():
        payload = dbfile.encode((k, v, t) for k, (v, t) in entries.items())
        dbfile.write_atomic(directory, names.db_filename(prefix, ident_new), payload, tag)
        _step("archive-written")

    # 4. Commit.
    manifest.store(directory, new)
    _step("committed")

    # 5. Clean up.
    for f in listing.archives.get(man.generation, ()):
        dirmod.unlink(directory, f.filename)
    _step("old-archive-deleted")
    remaining = set(still_folded)
    for ident in folded:
        if not _delete_ident(directory, ident, listing):
            remaining.add(ident)
        _step("ident-deleted")
    manifest.store(directory, manifest.Manifest(new.generation, frozenset(remaining)))
    result.folded = folded
    result.generation = new.generation
    return result


def _merge(
    archive: dict[bytes, tuple[float, float]],
    prefix: str,
    entries: list[tuple[bytes, float, float]],
) -> None:
    for key, value, ts in entries:
        old = archive.get(key)
        if old is None:
            archive[key] = (value, ts)
        elif prefix in names.SUM_PREFIXES:
            archive[key] = (add_up(old[0], value), 0.0)
        elif prefix in names.MIN_PREFIXES:
            if value < old[0]:
                archive[key] = (value, ts)
        elif prefix in names.MAX_PREFIXES:
            if value > old[0]:
                archive[key] = (value, ts)
        elif prefix in names.RECENT_PREFIXES and ts > old[1]:
            archive[key] = (value, ts)


def _delete_ident(directory: str, ident: str, listing: dirmod.Listing) -> bool:
    """Delete a dead process's value files, then its lease; True if all are gone."""
    ok = True
    for f in listing.files.get(ident, ()):
        ok = dirmod.unlink(directory, f.filename) and ok
    if ok:
        ok = dirmod.unlink(directory, names.lease_filename(ident))
    return ok


def _quarantine(directory: str, filename: str) -> bool:
    """Move an unreadable file out of the way without deleting it; True if moved."""
    target = f"{names.QUARANTINE_PREFIX}{filename}.bad"
    try:
        os.rename(os.path.join(directory, filename), os.path.join(directory, target))
    except OSError as exc:
        log.warning("netpoint-metrics: cannot set aside %s: %s", filename, exc)
        return False
    return True


def _remove_abandoned_lease_tmp(directory: str, name: str) -> None:
    """A lease temp file nobody holds was left by a process that died while starting."""
    path = os.path.join(directory, name)
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    try:
        st = os.fstat(fd)
        if time.time() - st.st_mtime > 5:  # not one being created right now
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
