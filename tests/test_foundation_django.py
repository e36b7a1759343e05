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


def test_metrics_404_when_disabled_and_decided_once(client) -> None:
    from django.test import override_settings

    from netpoint_metrics import bootstrap

    assert bootstrap.metrics_enabled() is False
    assert client.get("/metrics").status_code == 404
    # The decision was made when the app loaded (value class included); flipping the
    # setting afterwards must not give a view that disagrees with how values are stored.
    with override_settings(METRICS_ENABLED=True):
        assert client.get("/metrics").status_code == 404
    assert client.get("/metrics/").status_code == 404  # one canonical path
    page = client.get("/")
    assert page.status_code == 200 and b"METRICS_ENABLED=1" in page.content


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
