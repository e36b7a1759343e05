"""The stock recipe's settings: the sample site without this toolkit's Django app.

Our app (``netpoint_metrics`` in ``INSTALLED_APPS``) would install our value class when
Django starts; the stock recipe is django-prometheus with prometheus-client's own
pid-named multiprocess files, so the app is left out and the stock value class put back
before any metric exists. It also uses django-prometheus's own middlewares and database
wrappers, not this toolkit's faster ones.
"""

from prometheus_client import values

from netpoint_metrics.sample.settings import *  # noqa: F403
from netpoint_metrics.sample.settings import DATABASES as _DATABASES
from netpoint_metrics.sample.settings import INSTALLED_APPS as _APPS
from netpoint_metrics.sample.settings import MIDDLEWARE as _SAMPLE_MIDDLEWARE

ROOT_URLCONF = "bench.stock_urls"
INSTALLED_APPS = [app for app in _APPS if app != "netpoint_metrics"]
MIDDLEWARE = [
    m.replace("netpoint_metrics.instrumentation.", "django_prometheus.middleware.").replace(
        "netpoint_metrics.netbox_metrics.", "django_prometheus.middleware."
    )
    for m in _SAMPLE_MIDDLEWARE
    if m != "netpoint_metrics.middleware.NetpointMetricsMiddleware"  # it serves our /metrics
]
DATABASES = {
    alias: {**db, "ENGINE": db["ENGINE"].replace("netpoint_metrics.db.", "django_prometheus.db.")}
    for alias, db in _DATABASES.items()
}

values.ValueClass = values.MultiProcessValue()
