"""netpoint-metrics: exact, bounded django-prometheus metrics under multi-process servers.

Importing the package does nothing: no value class is installed, no file is created, no
process identity is taken. :func:`setup` is the explicit step (the server adapters and
the Django app make it for you).
"""

from __future__ import annotations

__version__ = "0.2.0"


def setup(metrics_enabled: object = None) -> bool:
    """Decide ``METRICS_ENABLED`` and install the matching value class (see ``bootstrap``).

    For entry points that neither start under ``gunicorn_conf.py``/``uwsgi.ini`` nor list
    ``netpoint_metrics`` first in ``INSTALLED_APPS``: call it in settings, after
    ``METRICS_ENABLED`` is known and before anything imports ``django_prometheus``.
    """
    from netpoint_metrics.bootstrap import setup as _setup

    return _setup(metrics_enabled)
