"""URLs as NetBox lays them out: the API, GraphQL, and django-prometheus's /metrics."""

from django.conf import settings
from django.urls import include, path

from netpoint_metrics.sample.dcim import graphql, views

urlpatterns = [
    path("api/devices/", views.device_list, name="device-list"),
    path("api/sites/", views.site_list, name="site-list"),
    path("graphql/", graphql.graphql, name="graphql"),
]
if settings.METRICS_ENABLED:
    urlpatterns.append(path("", include("django_prometheus.urls")))
