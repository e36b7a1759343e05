"""Gunicorn configuration for NetPoint: ``gunicorn -c gunicorn_conf.py``.

The settings and hooks live in the package (``netpoint_metrics/gunicorn_conf.py``), so an
installed wheel has them too: ``gunicorn -c python:netpoint_metrics.gunicorn_conf``.
Gunicorn's own flags and ``GUNICORN_CMD_ARGS`` still override them.
"""

from netpoint_metrics.gunicorn_conf import *  # noqa: F403  (settings and hooks by name)
