"""WSGI entry of the sample site: ``netpoint_metrics.sample.wsgi:application``.

Before serving, the sample makes sure its database is usable: on a first start it creates
the SQLite file and applies migrations (once, under a lock, however many workers start at
the same moment); a database it must not touch stops the start with what to run.
"""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

from netpoint_metrics.sample.database import DatabaseNotReady, prepare_database  # noqa: E402

application = get_wsgi_application()
try:
    prepare_database()
except DatabaseNotReady as exc:
    # One line, and the exit status Gunicorn reads as "worker failed to boot" (it then
    # stops instead of respawning the worker for ever); uWSGI stops on any exit here.
    print(f"netpoint-sample: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
