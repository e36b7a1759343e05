"""Database backends exporting django-prometheus's ``django_db_*`` metrics, cheaper per query.

Use ``netpoint_metrics.db.backends.sqlite3`` / ``.postgresql`` as ``ENGINE`` where you would
use ``django_prometheus.db.backends.*``: same metric objects, same families, labels and
values (see :mod:`netpoint_metrics.db.common` for what is cheaper and why).
"""
