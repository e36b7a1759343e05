"""``netpoint-metrics doctor``: every misconfiguration we can see, one line each.

Each check is a small function yielding :class:`Finding` lines; a check that raises is
itself reported as a failure, so ``doctor`` never crashes on the very damage it is meant to
find. It only reads: no file is created in the directory, no lock is taken, no identity.
It imports neither Django nor a server (Django settings are the application's business;
the environment is what the servers and this toolkit read).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from netpoint_metrics import config
from netpoint_metrics.core import (
    access,
    dbfile,
    directory,
    identity,
    lease,
    listing,
    manifest,
    names,
    ownership,
)

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "FAIL"

#: Below this much free space a worker's next file growth may fail (files grow by 64 KiB
#: doublings, one set per worker).
MIN_FREE_BYTES = 64 << 20
#: Dead, unfolded processes beyond this mean folds are not happening.
MAX_DEAD_UNFOLDED = 50


@dataclass(frozen=True)
class Finding:
    level: str  # OK, WARN or FAIL
    text: str

    def line(self) -> str:
        return f"[{self.level:>4}] {self.text}"


Check = Callable[..., Iterable[Finding]]


def run(path: str | None, environ: Mapping[str, str] | None = None) -> list[Finding]:
    """Run every check; ``path`` is ``--dir`` (None: ``PROMETHEUS_MULTIPROC_DIR``)."""
    env = os.environ if environ is None else environ
    findings: list[Finding] = []

    def guarded(check: Callable[[], Iterable[Finding]], what: str) -> None:
        try:
            findings.extend(check())
        except Exception as exc:  # a check that breaks is a finding, not a crash
            log.debug("doctor check %s failed", what, exc_info=True)
            findings.append(Finding(FAIL, f"could not check {what}: {type(exc).__name__}: {exc}"))

    guarded(check_versions, "dependency versions")
    guarded(lambda: check_settings(env), "settings")
    guarded(lambda: check_access(env), "metrics access")
    raw = path or env.get(identity.ENV_DIR) or env.get("prometheus_multiproc_dir")
    if not raw:
        guarded(lambda: no_directory(env), "the directory")
        return findings
    state: dict[str, str] = {}
    guarded(lambda: check_directory(raw, state), "the directory")
    if "path" in state:
        d = state["path"]
        guarded(lambda: check_files(d), "the directory's files")
        guarded(lambda: check_processes(d), "processes")
        guarded(lambda: check_space(d), "free space")
        guarded(lambda: check_filesystem(d), "the filesystem")
    return findings


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.level == FAIL for f in findings) else 0


def check_versions() -> Iterator[Finding]:
    for c in config.version_checks():
        if c.too_old:
            yield Finding(FAIL, c.message() + "; servers refuse to start")
        elif c.too_new:
            yield Finding(WARN, c.message() + "; untested")
        else:
            yield Finding(OK, f"{c.package} {c.installed} (supported {c.range_text})")


def check_settings(env: Mapping[str, str]) -> Iterator[Finding]:
    bad = 0
    for name in config.BOOL_SETTINGS:
        try:
            config.env_bool(name, environ=env)
        except config.SettingError as exc:
            bad += 1
            yield Finding(FAIL, str(exc))
    for name, minimum in config.INT_SETTINGS.items():
        try:
            config.env_int(name, 0, minimum=minimum, environ=env)
        except config.SettingError as exc:
            bad += 1
            yield Finding(FAIL, str(exc))
    if not bad:
        yield Finding(OK, "boolean and numeric NETPOINT_* settings parse")
    try:
        enabled = config.env_bool("METRICS_ENABLED", environ=env)
    except config.SettingError:
        return  # reported above
    if enabled:
        yield Finding(OK, "METRICS_ENABLED is on")
    else:
        yield Finding(
            WARN,
            "METRICS_ENABLED is off in this environment: /metrics answers 404 and nothing is "
            "recorded (run doctor with the server's environment)",
        )


def check_access(env: Mapping[str, str]) -> Iterator[Finding]:
    try:
        policy = access.Policy.from_env(env)
    except access.AccessConfigError as exc:
        yield Finding(FAIL, str(exc))
        return
    level = WARN if policy.open else OK
    yield Finding(level, f"/metrics access: {policy.describe()}")
    if env.get(access.ENV_TOKEN, "").strip():
        yield Finding(
            WARN,
            f"{access.ENV_TOKEN} is visible in process environments; prefer "
            f"{access.ENV_TOKEN_FILE}",
        )
    token_file = env.get(access.ENV_TOKEN_FILE, "").strip()
    if token_file:
        st = os.stat(token_file)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            yield Finding(
                FAIL,
                f"{access.ENV_TOKEN_FILE} {token_file} is readable by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600",
            )


def no_directory(env: Mapping[str, str]) -> Iterator[Finding]:
    yield Finding(
        WARN,
        f"{identity.ENV_DIR} is not set: each server start makes a private directory this "
        "command cannot see; set it (e.g. systemd RuntimeDirectory=) to inspect it",
    )


def check_directory(raw: str, state: dict[str, str]) -> Iterator[Finding]:
    try:
        path = directory.ensure_directory(raw, create=False, check_contents=False)
    except directory.UnsafeDirectory as exc:
        yield Finding(FAIL, str(exc))
        return
    if not os.access(path, os.R_OK):
        yield Finding(FAIL, f"{path} cannot be listed by this user")
        return
    state["path"] = path
    yield Finding(OK, f"{path}: a directory this user owns, not a symlink, not world-writable")


def check_files(path: str) -> Iterator[Finding]:
    uid = os.getuid()
    foreign, unreadable, corrupt, others_owned, quarantined = [], [], [], [], []
    count = size = 0
    with os.scandir(path) as it:
        entries = list(it)
    for entry in entries:
        name = entry.name
        if name in names.TOLERATED_FOREIGN:
            continue
        if not names.is_ours(name):
            foreign.append(name)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile (a fold): fine
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            foreign.append(name)
            continue
        if st.st_uid != uid:
            others_owned.append(f"{name} (uid {st.st_uid})")
        if name.startswith(names.QUARANTINE_PREFIX):
            quarantined.append(name)
            continue
        if names.parse_db_name(name) is None:
            continue
        count += 1
        size += st.st_size
        try:
            dbfile.read_entries(entry.path)
        except dbfile.CorruptFile as exc:
            corrupt.append(f"{name} ({str(exc).rsplit(': ', 1)[-1]})")
        except PermissionError:
            unreadable.append(name)
        except FileNotFoundError:
            pass
    yield Finding(OK, f"{count} value file(s), {size / 1024:.0f} KiB")
    if foreign:
        yield Finding(
            FAIL,
            f"{len(foreign)} file(s) that are not netpoint-metrics files: {_few(foreign)}; "
            "give the server a directory of its own",
        )
    if others_owned:
        yield Finding(
            FAIL, f"{len(others_owned)} file(s) owned by another user: {_few(others_owned)}"
        )
    if unreadable:
        yield Finding(FAIL, f"{len(unreadable)} unreadable value file(s): {_few(unreadable)}")
    if corrupt:
        yield Finding(
            FAIL,
            f"{len(corrupt)} corrupt value file(s), skipped by scrapes and set aside by the "
            f"next fold: {_few(corrupt)}",
        )
    if quarantined:
        yield Finding(
            FAIL,
            f"{len(quarantined)} quarantined file(s) set aside by folds (their counts are no "
            f"longer served; keep them for a bug report, then delete them): {_few(quarantined)}",
        )


def check_processes(path: str) -> Iterator[Finding]:
    found = listing.scan(path)
    man = manifest.load(path)
    alive: list[str] = []
    dead: list[str] = []
    plain = sorted(i for i in found.idents() if names.is_process_ident(i) and "-" not in i)
    for ident in sorted(found.idents()):
        if ident in man.folded:
            continue
        (alive if lease.is_alive(path, ident) else dead).append(ident)
    owner = ownership.owner_pid(path)
    if owner is not None and owner > 0:
        yield Finding(OK, f"owned by a live server master, pid {owner}")
    elif owner is not None:
        yield Finding(OK, "owned by a live server master (its pid is not recorded)")
    else:
        record = ownership.read_record(path)
        last = f"; the last owner, pid {record.pid}, has exited" if record else ""
        yield Finding(OK, f"no live server owns it{last} (the next server start is a fresh start)")
    yield Finding(
        OK,
        f"{len(alive)} live process(es), archive generation {man.generation}, "
        f"{len(dead)} dead process(es) waiting for a fold",
    )
    if plain:
        yield Finding(
            WARN,
            f"{len(plain)} process(es) write with a bare pid ({_few(plain)}): they did not "
            "call netpoint_metrics.setup(), so a reused pid would continue their counters",
        )
    if len(dead) > MAX_DEAD_UNFOLDED:
        yield Finding(
            FAIL,
            f"{len(dead)} dead processes are not folded: are the server hooks installed "
            "(gunicorn -c gunicorn_conf.py, uwsgi module=netpoint_metrics.uwsgi)? "
            "`netpoint-metrics compact` folds them now",
        )


def check_space(path: str) -> Iterator[Finding]:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    text = f"{free >> 20} MiB free on the directory's filesystem"
    if free < MIN_FREE_BYTES:
        yield Finding(
            FAIL, f"{text} (< {MIN_FREE_BYTES >> 20} MiB): metric updates will be dropped"
        )
    else:
        yield Finding(OK, text)
    if st.f_files and st.f_favail < 1000:
        yield Finding(FAIL, f"only {st.f_favail} inodes free on the directory's filesystem")


#: Filesystems where flock does not reliably tell a dead writer from a live one.
REMOTE_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "9p", "fuse.sshfs", "ceph", "glusterfs"})


def check_filesystem(path: str) -> Iterator[Finding]:
    fstype = filesystem_type(path)
    if fstype is None:
        return
    if fstype in REMOTE_FS:
        yield Finding(
            FAIL,
            f"{path} is on {fstype}: leases need local flock; use a tmpfs or a local disk",
        )
    elif fstype == "tmpfs":
        yield Finding(OK, f"{path} is on tmpfs")
    else:
        yield Finding(OK, f"{path} is on {fstype} (a tmpfs is faster and is emptied on reboot)")


def filesystem_type(path: str) -> str | None:
    """The type of the filesystem ``path`` is on, from /proc/self/mountinfo (Linux)."""
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, best_type = mount, right.split()[0]
    except OSError:
        return None
    return best_type


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
