"""Issue 10.6: 200 concurrent clients for 60 s against 4 recycling Gunicorn workers, scraped
every second: no request fails, and the final totals are exact.

The client is an asyncio pool (not wrk) because exactness needs to know, per request,
that a complete answer came back and with which status: a request is counted only when its
whole body has arrived, and any error, timeout or 5xx fails the test. Gunicorn's sync
workers close the connection after each answer, so every request is one connection.

Totals are compared as deltas from a baseline scrape taken before the load: the
per-(method, status) answers the clients got must equal the change of
``django_http_responses_total_by_status_view_method_total`` over every view but the
metrics view, and ``django_http_requests_total_by_method_total`` must have grown by the
clients' requests plus the scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections import Counter

import pytest

from tests import servers

CLIENTS = 200
SECONDS = 60.0
WORKERS = 4
MAX_REQUESTS = 150
METRICS_VIEW = "prometheus-django-metrics"
BY_STATUS_VIEW = "django_http_responses_total_by_status_view_method_total"
BY_METHOD = "django_http_requests_total_by_method_total"


class Failure(Exception):
    pass


async def http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request on a new connection; the status and the complete body, or raise."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        raw = await reader.read(-1)  # the server closes after the answer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    header, sep, data = raw.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", header)
    if not sep or not m:
        raise Failure(f"{method} {path}: malformed answer {raw[:200]!r}")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", header)
    if length and int(length.group(1)) != len(data):
        raise Failure(f"{method} {path}: body {len(data)} of {int(length.group(1))} bytes")
    return int(m.group(1)), data


async def client(
    n: int, port: int, deadline: float, device_ids: list[int], got: Counter, errors: list
) -> None:
    rng = random.Random(n)
    i = 0
    while time.monotonic() < deadline and len(errors) < 20:
        i += 1
        r = rng.random()
        if r < 0.70:
            method, path, body, want = "GET", f"/api/devices/{rng.choice(device_ids)}/", b"", 200
        elif r < 0.85:
            method, path, body, want = "GET", "/api/sites/?limit=5", b"", 200
        elif r < 0.96:
            method, path, body, want = "GET", "/no/such/page", b"", 404
        else:
            slug = f"c{n}-{i}"
            body = json.dumps({"name": slug, "slug": slug}).encode()
            method, path, want = "POST", "/api/sites/", 201
        try:
            status, data = await asyncio.wait_for(http(port, method, path, body), 60)
        except (OSError, asyncio.TimeoutError, Failure) as exc:
            errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            continue
        got[(method, str(status))] += 1
        if status != want:
            errors.append(f"{method} {path}: {status} {data[:200]!r}")


async def scrape_once(port: int, scrapes: list, errors: list) -> None:
    t0 = time.monotonic()
    try:
        status, data = await asyncio.wait_for(http(port, "GET", "/metrics"), 60)
    except (OSError, asyncio.TimeoutError, Failure) as exc:
        errors.append(f"scrape: {type(exc).__name__}: {exc}")
        return
    if status != 200:
        errors.append(f"scrape: {status} {data[:200]!r}")
    else:
        scrapes.append(time.monotonic() - t0)


async def scraper(port: int, deadline: float, scrapes: list, errors: list) -> None:
    """One scrape per second, like Prometheus: a slow one does not delay the next."""
    pending = []
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        pending.append(asyncio.create_task(scrape_once(port, scrapes, errors)))
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*pending)


async def load(port: int, device_ids: list[int]) -> tuple[Counter, list[float], list[str]]:
    got: Counter = Counter()
    scrapes: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + SECONDS
    await asyncio.gather(
        scraper(port, deadline, scrapes, errors),
        *(client(n, port, deadline, device_ids, got, errors) for n in range(CLIENTS)),
    )
    return got, scrapes, errors


def by_method_status(samples: dict) -> Counter:
    out: Counter = Counter()
    for (name, labels), v in samples.items():
        if name != BY_STATUS_VIEW:
            continue
        ls = dict(labels)
        if ls.get("view") != METRICS_VIEW:
            out[(ls["method"], ls["status"])] += v
    return out


@pytest.mark.soak
def test_200_clients_60s_recycling_exact_totals(server_factory, tmp_path) -> None:
    env = servers.base_env(
        tmp_path,
        NETPOINT_MAX_REQUESTS=str(MAX_REQUESTS),
        NETPOINT_MAX_REQUESTS_JITTER="50",
    )
    srv = server_factory("gunicorn", env=env, workers=WORKERS)
    status, _, raw = srv.request("POST", "/api/sites/", {"name": "load", "slug": "load"})
    assert status == 201, raw
    site = json.loads(raw)["id"]
    device_ids = []
    for i in range(5):
        status, _, raw = srv.request("POST", "/api/devices/", {"name": f"d{i}", "site": site})
        assert status == 201, raw
        device_ids.append(json.loads(raw)["id"])
    base = srv.scrape()

    t0 = time.monotonic()
    got, scrapes, errors = asyncio.run(load(srv.port, device_ids))
    elapsed = time.monotonic() - t0
    assert not errors, f"{len(errors)} failed requests, first: {errors[:5]}\n{srv.log_tail()}"
    assert elapsed < SECONDS + 30
    final = srv.scrape()

    sent = sum(got.values())
    assert sent > 1000, got  # the load was real
    assert len(scrapes) >= SECONDS - 1, f"only {len(scrapes)} scrapes"
    recycled = srv.log_tail(100_000).count("Autorestarting worker")
    assert recycled >= WORKERS, f"only {recycled} recycles; raise the load or lower max_requests"

    delta = by_method_status(final)
    delta.subtract(by_method_status(base))
    assert +delta == +got, {"server": dict(+delta), "clients": dict(got)}

    # The request counter includes the scrapes: every one after the baseline, the final
    # one too (it counts itself before it collects).
    for method in ("GET", "POST"):
        grown = servers.value(final, BY_METHOD, method=method) - servers.value(
            base, BY_METHOD, method=method
        )
        clients = sum(v for (m, _), v in got.items() if m == method)
        assert grown == clients + (len(scrapes) + 1 if method == "GET" else 0), method
    print(
        f"\nload: {sent} requests in {elapsed:.1f}s ({sent / elapsed:.0f}/s), "
        f"{len(scrapes)} scrapes (max {max(scrapes) * 1000:.0f} ms), {recycled} recycles, "
        f"{dict(got)}"
    )
