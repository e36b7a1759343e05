"""The /metrics view and the sample API in-process (no server): fast checks of the logic."""

from __future__ import annotations

import json
import os

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("django")
    os.environ["NETPOINT_DB_PATH"] = str(d / "db.sqlite3")
    os.environ["NETPOINT_CACHE_DIR"] = str(d / "cache")
    django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    return Client()


def test_metrics_404_when_disabled_and_200_when_enabled(client) -> None:
    from django.test import override_settings

    with override_settings(METRICS_ENABLED=False):
        assert client.get("/metrics").status_code == 404
    with override_settings(METRICS_ENABLED=True):
        resp = client.get("/metrics")
        assert resp.status_code == 200
        assert resp["Content-Type"].startswith("text/plain")
    assert client.get("/metrics/").status_code == 404  # one canonical path


def test_api_round_trip_and_validation(client) -> None:
    r = client.post("/api/devices/", json.dumps({"name": "r1"}), content_type="application/json")
    assert r.status_code == 201
    pk = r.json()["id"]
    assert client.get(f"/api/devices/{pk}/").json()["name"] == "r1"
    r = client.patch(
        f"/api/devices/{pk}/", json.dumps({"status": "planned"}), content_type="application/json"
    )
    assert r.json()["status"] == "planned"
    assert client.get(f"/api/devices/{pk}/").json()["status"] == "planned"  # cache invalidated
    assert (
        client.post("/api/devices/", "not json", content_type="application/json").status_code == 400
    )
    r = client.patch(
        f"/api/devices/{pk}/", json.dumps({"status": "melted"}), content_type="application/json"
    )
    assert r.status_code == 400
    assert client.delete(f"/api/devices/{pk}/").status_code == 204
    assert client.get(f"/api/devices/{pk}/").status_code == 404
    assert client.put("/api/devices/").status_code == 405
