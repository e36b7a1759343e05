"""Sample API plus django-prometheus's own /metrics view (stock MultiProcessCollector)."""

from django.urls import path
from django_prometheus.exports import ExportToDjangoView

from netpoint_metrics.sample.dcim import views

urlpatterns = [
    path("metrics", ExportToDjangoView, name="prometheus-django-metrics"),
    path("api/devices/", views.device_list, name="device-list"),
    path("api/devices/<int:pk>/", views.device_detail, name="device-detail"),
    path("api/sites/", views.site_list, name="site-list"),
]
