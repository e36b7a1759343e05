"""``ENGINE = "netpoint_metrics.db.backends.postgresql"``: PostgreSQL with django_db_* metrics."""

from __future__ import annotations

import logging
from typing import Any

from django.db.backends.postgresql import base

from netpoint_metrics.db.common import DatabaseWrapperMixin, cursor_wrapper

log = logging.getLogger(__name__)


class DatabaseWrapper(DatabaseWrapperMixin, base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params["cursor_factory"] = cursor_wrapper(params["cursor_factory"], self.alias, self.vendor)
        return params

    def create_cursor(self, name: Any = None) -> Any:
        # As django-prometheus: psycopg already makes instrumented cursors (cursor_factory).
        return base.DatabaseWrapper.create_cursor(self, name=name)
