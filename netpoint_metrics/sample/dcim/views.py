"""A tiny JSON API in NetBox's shape, with plain Django views."""

from __future__ import annotations

import json

from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from netpoint_metrics.sample.dcim import jobs
from netpoint_metrics.sample.dcim.models import Device, Site
from netpoint_metrics.sample.dcim.signals import cache_key

CACHE_SECONDS = 300


def _body(request: HttpRequest) -> dict | None:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


@csrf_exempt
def device_list(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        devices = [d.as_dict() for d in Device.objects.order_by("pk")[:1000]]
        return JsonResponse({"count": len(devices), "results": devices})
    if request.method == "POST":
        data = _body(request)
        if not data or not isinstance(data.get("name"), str) or not data["name"]:
            return _error(400, "name is required")
        site = None
        if data.get("site") is not None:
            site = Site.objects.filter(pk=data["site"]).first()
            if site is None:
                return _error(400, "no such site")
        status = data.get("status", "active")
        if status not in dict(Device.STATUSES):
            return _error(400, "bad status")
        device = Device.objects.create(name=data["name"][:100], site=site, status=status)
        return JsonResponse(device.as_dict(), status=201)
    return _error(405, "method not allowed")


@csrf_exempt
def device_detail(request: HttpRequest, pk: int) -> JsonResponse:
    key = cache_key("device", pk)
    if request.method == "GET":
        cached = cache.get(key)
        if cached is None:
            device = Device.objects.filter(pk=pk).first()
            if device is None:
                return _error(404, "not found")
            cached = device.as_dict()
            cache.set(key, cached, CACHE_SECONDS)
        return JsonResponse(cached)
    device = Device.objects.filter(pk=pk).first()
    if device is None:
        return _error(404, "not found")
    if request.method == "PATCH":
        data = _body(request)
        if data is None:
            return _error(400, "body must be a JSON object")
        if "name" in data:
            device.name = str(data["name"])[:100]
        if "status" in data:
            if data["status"] not in dict(Device.STATUSES):
                return _error(400, "bad status")
            device.status = data["status"]
        device.save()
        return JsonResponse(device.as_dict())
    if request.method == "DELETE":
        device.delete()
        return JsonResponse({}, status=204)
    return _error(405, "method not allowed")


@csrf_exempt
def site_list(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return JsonResponse({"results": [s.as_dict() for s in Site.objects.order_by("pk")]})
    if request.method == "POST":
        data = _body(request)
        if not data or not data.get("name") or not data.get("slug"):
            return _error(400, "name and slug are required")
        site = Site.objects.create(name=str(data["name"])[:100], slug=str(data["slug"])[:100])
        return JsonResponse(site.as_dict(), status=201)
    return _error(405, "method not allowed")


@csrf_exempt
def device_audit(request: HttpRequest) -> JsonResponse:
    """Enqueue a device audit (``dcim.jobs.audit_device``) on the ``default`` RQ queue."""
    if request.method != "POST":
        return _error(405, "method not allowed")
    from django.conf import settings

    if not getattr(settings, "RQ_QUEUES", None):
        return _error(503, "background jobs need REDIS_URL (a Redis server for the job queue)")
    data = _body(request)
    if not data or not isinstance(data.get("device"), int):
        return _error(400, "device (an id) is required")
    hold = data.get("hold", 0)
    if not isinstance(hold, (int, float)) or not 0 <= hold <= jobs.MAX_HOLD_SECONDS:
        return _error(400, f"hold must be between 0 and {jobs.MAX_HOLD_SECONDS:g} seconds")
    import django_rq

    job = django_rq.get_queue("default").enqueue(jobs.audit_device, data["device"], hold)
    return JsonResponse({"id": job.id, "queue": job.origin, "job": job.func_name}, status=202)
