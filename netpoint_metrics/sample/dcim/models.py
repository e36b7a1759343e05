"""A sliver of NetBox's DCIM: sites and devices, counted by django-prometheus's mixin."""

from django.db import models
from django_prometheus.models import ExportModelOperationsMixin


class Site(ExportModelOperationsMixin("site"), models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)

    def as_dict(self) -> dict:
        return {"id": self.pk, "name": self.name, "slug": self.slug}


class Device(ExportModelOperationsMixin("device"), models.Model):
    STATUSES = [("active", "Active"), ("planned", "Planned"), ("offline", "Offline")]

    name = models.CharField(max_length=100)
    site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=20, choices=STATUSES, default="active")

    def as_dict(self) -> dict:
        return {"id": self.pk, "name": self.name, "site": self.site_id, "status": self.status}
