"""Include at the site root: ``path("", include("netpoint_metrics.urls"))`` gives /metrics."""

from django.urls import path

from netpoint_metrics.views import MetricsView

urlpatterns = [
    path("metrics", MetricsView.as_view(), name="prometheus-django-metrics"),
]
