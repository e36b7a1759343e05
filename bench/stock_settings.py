"""The stock recipe's settings: the sample site without this toolkit's Django app.

Our app (``netpoint_metrics`` in ``INSTALLED_APPS``) would install our value class when
Django starts; the stock recipe is django-prometheus with prometheus-client's own
pid-named multiprocess files, so the app is left out and the stock value class put back
before any metric exists.
"""

from prometheus_client import values

from netpoint_metrics.sample.settings import *  # noqa: F403
from netpoint_metrics.sample.settings import INSTALLED_APPS as _APPS

ROOT_URLCONF = "bench.stock_urls"
INSTALLED_APPS = [app for app in _APPS if app != "netpoint_metrics"]

values.ValueClass = values.MultiProcessValue()
