"""The URLconf :class:`~netpoint_metrics.middleware.NetpointMetricsMiddleware` gives a scrape.

Our aggregated view at the metrics path first, then every URL of the project itself
(``ROOT_URLCONF``), so anything that reverses or resolves a URL during the scrape (a
middleware checking "is this an API request?") gets the answer it always gets. The error
handlers are the project's too.
"""

from __future__ import annotations

import logging
from importlib import import_module

from django.conf import settings
from django.urls import include, path

from netpoint_metrics.middleware import metrics_path
from netpoint_metrics.views import MetricsView

log = logging.getLogger(__name__)

_root = import_module(settings.ROOT_URLCONF)

urlpatterns = [
    path(metrics_path().lstrip("/"), MetricsView.as_view(), name="prometheus-django-metrics"),
    path("", include(settings.ROOT_URLCONF)),
]

for _name in ("handler400", "handler403", "handler404", "handler500"):
    if hasattr(_root, _name):
        globals()[_name] = getattr(_root, _name)
