"""First start of the sample site: a database that is there and migrated.

The mission's launch line (``gunicorn -c gunicorn_conf.py``) must work on a fresh copy,
where nothing has created ``var/`` or run ``migrate``. Every worker (Gunicorn) or the
master (uWSGI, preforked) calls :func:`prepare_database` once the app is loaded, so after
app initialisation (no database access while apps initialise). For the sample's own
SQLite file it creates the directory and migrates, under an ``flock`` so four workers
starting together migrate once. A database the sample does not own (a ``DATABASE_URL``
server) is never migrated behind the operator's back: unapplied migrations stop the start
with the command to run.
"""

from __future__ import annotations

import fcntl
import logging
import os

from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from netpoint_metrics.bootstrap import env_flag

log = logging.getLogger(__name__)


class DatabaseNotReady(RuntimeError):
    """The database needs an operator's step before the site can serve."""


def prepare_database(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Create and migrate the sample's SQLite database, or say what to run.

    Runs where the application is loaded: in uWSGI's master (without ``lazy-apps``) or
    Gunicorn's (with ``preload_app``), before the workers are forked. The connection it
    opens is closed before it returns: every forked worker would otherwise inherit the same
    database session, and two workers talking on one socket get each other's answers
    (seen: a worker's duplicate INSERT accepted, another request hung on a lock).
    """
    try:
        _prepare(alias)
    finally:
        connections[alias].close()


def _prepare(alias: str) -> None:
    conn = connections[alias]
    sqlite = conn.vendor == "sqlite"
    auto = env_flag("NETPOINT_AUTO_MIGRATE", sqlite)
    if sqlite:
        name = str(conn.settings_dict["NAME"])
        if name != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(name)) or ".", exist_ok=True)
    if not _pending(alias):
        return
    if not auto:
        raise DatabaseNotReady(
            f"database {alias!r} ({conn.vendor}) has unapplied migrations; run "
            "`netpoint-sample migrate` (with the same settings) before starting the server"
        )
    if sqlite:
        with _migrate_lock(str(conn.settings_dict["NAME"])):
            _migrate(alias)
    else:
        _migrate(alias)


def _pending(alias: str) -> bool:
    executor = MigrationExecutor(connections[alias])
    return bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def _migrate(alias: str) -> None:
    if not _pending(alias):  # another worker migrated while we waited for the lock
        return
    log.info("netpoint-sample: applying migrations to database %r", alias)
    call_command("migrate", database=alias, interactive=False, verbosity=0)


class _migrate_lock:
    """An exclusive ``flock`` beside the database file, for the time of one migrate."""

    def __init__(self, db_path: str) -> None:
        self.path = f"{os.path.abspath(db_path)}.migrate-lock"
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
