from netpoint_metrics.sample.settings import *  # noqa: F403
from netpoint_metrics.sample.settings import MIDDLEWARE as _SAMPLE_MIDDLEWARE

ROOT_URLCONF = "bench.stock_urls"
# The stock recipe uses django-prometheus's own middlewares, not netpoint_metrics.instrumentation.
MIDDLEWARE = [
    m.replace("netpoint_metrics.instrumentation.", "django_prometheus.middleware.").replace(
        "netpoint_metrics.netbox_metrics.", "django_prometheus.middleware."
    )
    for m in _SAMPLE_MIDDLEWARE
]
# ... and django-prometheus's own database wrappers.
DATABASES = {
    alias: {**db, "ENGINE": db["ENGINE"].replace("netpoint_metrics.db.", "django_prometheus.db.")}
    for alias, db in DATABASES.items()  # noqa: F405
}
