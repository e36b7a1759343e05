"""A project laid out like NetBox, to prove the toolkit is adopted with settings alone.

Like NetBox: ``METRICS_ENABLED`` lives in a configuration module that the settings import,
``django_prometheus.urls`` is included at the root when metrics are on, and the
django-prometheus middlewares are subclasses carrying NetBox's API counters. The toolkit is
added the way a NetBox plugin adds things (appended to ``INSTALLED_APPS`` and ``MIDDLEWARE``),
with no change to the URLs.
"""
