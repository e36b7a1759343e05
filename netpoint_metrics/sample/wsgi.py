"""WSGI entry of the sample site: ``netpoint_metrics.sample.wsgi:application``."""

import os

import netpoint_metrics  # noqa: F401  (before Django loads django_prometheus)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
