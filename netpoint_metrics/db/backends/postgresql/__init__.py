"""PostgreSQL with django-prometheus metrics (see :mod:`netpoint_metrics.db.common`)."""
