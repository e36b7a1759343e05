from django.urls import include, path

from netpoint_metrics.sample import home
from netpoint_metrics.sample.dcim import graphql, views

urlpatterns = [
    path("", home.index, name="home"),
    path("", include("netpoint_metrics.urls")),
    path("api/devices/", views.device_list, name="device-list"),
    path("api/devices/<int:pk>/", views.device_detail, name="device-detail"),
    path("api/sites/", views.site_list, name="site-list"),
    path("api/jobs/device-audit/", views.device_audit, name="device-audit"),
    path("graphql/", graphql.graphql, name="graphql"),
]
