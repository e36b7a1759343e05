"""A GraphQL-shaped endpoint, just enough for NetBox's ``graphql_api_requests_total``.

It answers ``{ devices { id name status site } }`` and ``{ sites { id name slug } }``
(any subset of the fields, one or both roots) with ``{"data": ...}``, and anything else with
``{"errors": [...]}``, as a GraphQL server would. It is no GraphQL implementation: no
arguments, fragments or variables.
"""

from __future__ import annotations

import json
import logging
import re

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from netpoint_metrics.sample.dcim.models import Device, Site

log = logging.getLogger(__name__)

_ROOTS = {
    "devices": (Device, {"id", "name", "status", "site"}),
    "sites": (Site, {"id", "name", "slug"}),
}
_SELECTION = re.compile(r"(\w+)\s*\{([\w\s,]*)\}")


def _error(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"errors": [{"message": message}]}, status=status)


def _execute(query: str) -> dict:
    body = query.strip()
    if body.startswith("query"):
        body = body[len("query") :].lstrip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError("expected a selection set: { devices { id name } }")
    inner = body[1:-1].strip()
    data = {}
    pos = 0
    for match in _SELECTION.finditer(inner):
        if inner[pos : match.start()].strip(" ,\n\t"):
            raise ValueError(f"cannot parse near {inner[pos:match.start()].strip()[:40]!r}")
        pos = match.end()
        root, fields = match.group(1), match.group(2).replace(",", " ").split()
        if root not in _ROOTS:
            raise ValueError(f"unknown field {root!r}; known: {', '.join(sorted(_ROOTS))}")
        model, allowed = _ROOTS[root]
        unknown = set(fields) - allowed
        if unknown or not fields:
            raise ValueError(f"{root}: fields must be among {', '.join(sorted(allowed))}")
        rows = (obj.as_dict() for obj in model.objects.order_by("pk"))
        data[root] = [{f: row[f] for f in fields} for row in rows]
    if inner[pos:].strip(" ,\n\t") or not data:
        raise ValueError("expected a selection set: { devices { id name } }")
    return data


@csrf_exempt
def graphql(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return _error("send a POST with a JSON body {\"query\": ...}", status=405)
    try:
        payload = json.loads(request.body or b"{}")
        query = payload["query"]
        if not isinstance(query, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _error('body must be JSON: {"query": "{ devices { id name } }"}')
    try:
        return JsonResponse({"data": _execute(query)})
    except ValueError as exc:
        return _error(str(exc))
