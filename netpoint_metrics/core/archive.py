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
   names and renamed into place, then a copy of the manifest it will commit (recovery's
   anchor if the manifest is ever damaged: see :mod:`.manifest`);
4. commit: rename a manifest naming generation N+1 and listing the folded ids;
5. delete the old generation and the folded files, then record that in the manifest.

A crash before 4 leaves stray new-generation files that step 1 removes; a crash after 4
leaves folded files that readers ignore and step 1 removes. Either way every process is
counted exactly once. Sums are rounded up, never down (see :func:`add_up`).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from netpoint_metrics.core import dbfile, lease, lock, manifest, names
from netpoint_metrics.core import listing as dirmod

log = logging.getLogger(__name__)

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
    """The five protocol steps, in order; each is one function below."""
    result = FoldResult()
    man, listing = _finish_earlier_folds(directory, result)
    result.generation = man.generation
    dead = _find_dead(directory, listing, max_ids, result)
    if not dead:
        return result
    # List again: a process alive at the first scan may have created more files before it
    # died. The dead create nothing, so this listing is complete for them.
    listing = dirmod.scan(directory)
    archives = _read_archives(directory, man, listing, result)
    folded = _merge_dead(directory, dead, listing, archives, result)
    if not folded:
        return result
    _step("merged")
    new = _write_generation(directory, man, folded, archives)
    manifest.store(directory, new)  # step 4: the commit
    _step("committed")
    _clean_up(directory, man, new, folded, listing)
    result.folded = folded
    result.generation = new.generation
    return result


def _finish_earlier_folds(
    directory: str, result: FoldResult
) -> tuple[manifest.Manifest, dirmod.Listing]:
    """Step 1: delete what an interrupted fold left: folded ids' files, stale generations.

    Returns the manifest to build on (rewritten if it changed) and a fresh listing without
    the names deleted here.
    """
    man = manifest.load(directory)
    listing = dirmod.scan(directory)
    still_folded = set()
    for ident in man.folded:
        if not _delete_ident(directory, ident, listing):
            still_folded.add(ident)
        result.cleaned += len(listing.files.get(ident, ()))
        listing.files.pop(ident, None)
        listing.leases.discard(ident)
    for gen, files in list(listing.archives.items()):
        if gen != man.generation or man.unaccounted:
            for f in files:
                if man.unaccounted:
                    # Archives nobody can account for may hold real totals: keep them.
                    _quarantine(directory, f.filename)
                else:
                    dirmod.unlink(directory, f.filename)
                result.cleaned += 1
            del listing.archives[gen]
    for gen in listing.generation_copies:
        if gen != man.generation:
            dirmod.unlink(directory, names.generation_filename(gen))
    for name in listing.tmps:
        _remove_abandoned_tmp(directory, name)
    for name in listing.lease_tmps:
        _remove_abandoned_lease_tmp(directory, name)
    if still_folded != man.folded or man.recovered:
        man = manifest.Manifest(man.generation, frozenset(still_folded), man.archives)
        manifest.store(directory, man)
    return man, listing


def _find_dead(
    directory: str, listing: dirmod.Listing, max_ids: int, result: FoldResult
) -> list[str]:
    """Step 2: ids whose lease nobody holds, at most ``max_ids`` of them."""
    dead = sorted(
        i
        for i in listing.idents()
        if names.is_process_ident(i) and not lease.is_alive(directory, i)
    )
    if len(dead) > max_ids:
        dead, result.more = dead[:max_ids], True
    return dead


def _read_archives(
    directory: str, man: manifest.Manifest, listing: dirmod.Listing, result: FoldResult
) -> dict[str, dict[bytes, tuple[float, float]]]:
    """Step 3a: the current generation's archives, by prefix.

    An archive we wrote ourselves that no longer parses was damaged by someone else. It is
    set aside (renamed, never deleted) and logged once at ERROR; folding goes on with that
    kind's archived totals lost, because stopping would let the directory grow forever.
    """
    archives: dict[str, dict[bytes, tuple[float, float]]] = {}
    for f in listing.archives.get(man.generation, ()):
        path = os.path.join(directory, f.filename)
        try:
            entries = dbfile.read_entries(path) or []
        except dbfile.CorruptFile as exc:
            log.error(
                "netpoint-metrics event=recovery dir=%s archive=%s damaged=%r action=set-aside; "
                "its archived totals are lost",
                directory,
                f.filename,
                str(exc),
            )
            result.corrupt.append(f.filename)
            _quarantine(directory, f.filename)
            continue
        archives[f.prefix] = {k: (v, t) for k, v, t in entries}
    return archives


def _merge_dead(
    directory: str,
    dead: list[str],
    listing: dirmod.Listing,
    archives: dict[str, dict[bytes, tuple[float, float]]],
    result: FoldResult,
) -> list[str]:
    """Step 3b: add each dead process's values into ``archives``; all or nothing per id."""
    folded: list[str] = []
    for ident in dead:
        reads = _read_process(directory, ident, listing, result)
        if reads is None:
            continue
        for prefix, entries in reads:
            _merge(archives.setdefault(prefix, {}), prefix, entries)
        folded.append(ident)
    return folded


def _read_process(
    directory: str, ident: str, listing: dirmod.Listing, result: FoldResult
) -> list[tuple[str, list[tuple[bytes, float, float]]]] | None:
    """Every archivable file of one dead process, or None if any could not be read."""
    ok = True
    reads: list[tuple[str, list[tuple[bytes, float, float]]]] = []
    for f in listing.files.get(ident, ()):
        if f.prefix not in names.ARCHIVABLE_PREFIXES:
            continue  # live and "all" gauges die with their process
        path = os.path.join(directory, f.filename)
        try:
            entries = dbfile.read_entries(path)
        except dbfile.CorruptFile as exc:
            log.warning("netpoint-metrics: %s is corrupt (%s); set aside, not archived", path, exc)
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
    return reads if ok else None


def _write_generation(
    directory: str,
    man: manifest.Manifest,
    folded: list[str],
    archives: dict[str, dict[bytes, tuple[float, float]]],
) -> manifest.Manifest:
    """Step 3c: write generation N+1's archives, then the copy of its manifest."""
    generation = man.generation + 1
    ident_new = names.archive_ident(generation)
    tag = f"{os.getpid()}-{generation}"
    written = []
    for prefix, entries in archives.items():
        payload = dbfile.encode((k, v, t) for k, (v, t) in entries.items())
        filename = names.db_filename(prefix, ident_new)
        dbfile.write_atomic(directory, filename, payload, tag)
        written.append(filename)
        _step("archive-written")
    new = manifest.Manifest(generation, man.folded | set(folded), tuple(sorted(written)))
    manifest.store_generation_copy(directory, new)
    _step("copy-written")
    return new


def _clean_up(
    directory: str,
    old: manifest.Manifest,
    new: manifest.Manifest,
    folded: list[str],
    listing: dirmod.Listing,
) -> None:
    """Step 5: delete the old generation and the folded files; record what is left."""
    for f in listing.archives.get(old.generation, ()):
        dirmod.unlink(directory, f.filename)
    if old.generation:
        dirmod.unlink(directory, names.generation_filename(old.generation))
    _step("old-archive-deleted")
    remaining = set(old.folded)
    for ident in folded:
        if not _delete_ident(directory, ident, listing):
            remaining.add(ident)
        _step("ident-deleted")
    manifest.store(directory, manifest.Manifest(new.generation, frozenset(remaining), new.archives))


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
    """Move an unreadable file out of the way without deleting it; True if moved.

    An earlier file set aside under the same name is never overwritten.
    """
    target = f"{names.QUARANTINE_PREFIX}{filename}.bad"
    for _ in range(5):
        if not os.path.lexists(os.path.join(directory, target)):
            break
        target = f"{names.QUARANTINE_PREFIX}{filename}-{secrets.token_hex(3)}.bad"
    try:
        os.rename(os.path.join(directory, filename), os.path.join(directory, target))
    except OSError as exc:
        log.warning("netpoint-metrics: cannot set aside %s: %s", filename, exc)
        return False
    return True


#: Age after which a temp file is certainly abandoned. Folds are not the only makers of
#: temp names (a writer may build a value file under one, the owner record and manifest
#: copies are written by rename), and none of those takes this lock: a fresh one may be
#: in use right now.
TMP_ABANDONED_AFTER = 60.0


def _remove_abandoned_tmp(directory: str, name: str) -> None:
    """Delete a temp file left by a process that died while writing it."""
    try:
        st = os.lstat(os.path.join(directory, name))
    except OSError:
        return
    if time.time() - st.st_mtime > TMP_ABANDONED_AFTER:
        dirmod.unlink(directory, name)


def _remove_abandoned_lease_tmp(directory: str, name: str) -> None:
    """A lease temp file nobody holds was left by a process that died while starting."""
    path = os.path.join(directory, name)
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
