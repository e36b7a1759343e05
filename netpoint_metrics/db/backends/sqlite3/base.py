"""``ENGINE = "netpoint_metrics.db.backends.sqlite3"``: SQLite with django_db_* metrics."""

from __future__ import annotations

import logging

from django.db.backends.sqlite3 import base

from netpoint_metrics.db.common import DatabaseWrapperMixin

log = logging.getLogger(__name__)


class DatabaseFeatures(base.DatabaseFeatures):
    """Exactly the features of Django's SQLite backend."""


class DatabaseWrapper(DatabaseWrapperMixin, base.DatabaseWrapper):
    CURSOR_CLASS = base.SQLiteCursorWrapper
