"""The request middlewares' cheap paths keep their behaviour (metrics on, in a subprocess).

* Our Before/After middlewares call their hooks directly in a sync chain; in an async chain
  (the next handler is a coroutine function) they must still return an awaitable and count
  the request.
* ``NetpointMetricsMiddleware`` marks a process up once, knowing a new process by a
  wipe-on-fork byte instead of ``os.getpid()`` per request: a child forked through Python
  or from C (uWSGI) must still set ``netpoint_worker_up`` in its own file.
* The charset label is remembered per Content-Type: it must always equal
  ``str(response.charset)``, and follow a change of ``DEFAULT_CHARSET``.

Output equality with django-prometheus (sync and async chains, view exceptions included)
is ``tests/test_instrumentation_parity.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import servers

DRIVER = r"""
import asyncio, ctypes, glob, json, os, sys
import django
django.setup()
from django.test import Client, RequestFactory
from prometheus_client.mmap_dict import MmapedDict
from netpoint_metrics import instrumentation, metrics

check = sys.argv[1]
directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def own_value(prefix, name):
    '''This process's stored value of the sample ``name`` (its own file only).'''
    from netpoint_metrics.core import identity
    for path in glob.glob(os.path.join(directory, f"{prefix}_{identity.current()}.db")):
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(path):
            if json.loads(key)[1] == name:
                return value
    return None


if check == "async":
    from django.http import HttpResponse
    from django_prometheus.middleware import Metrics
    m = Metrics.get_instance()
    async def inner(request):
        return HttpResponse("ok")
    before = instrumentation.PrometheusBeforeMiddleware(inner)
    after = instrumentation.PrometheusAfterMiddleware(inner)
    assert not before._sync_chain and not after._sync_chain
    req = RequestFactory().get("/anywhere/")
    counts = (m.requests_total._value.get(), m.responses_total._value.get())
    pending = before(req)
    assert asyncio.iscoroutine(pending), type(pending)
    response = asyncio.run(pending)
    assert response.status_code == 200 and response.content == b"ok"
    assert (m.requests_total._value.get(), m.responses_total._value.get()) == (
        counts[0] + 1, counts[1] + 1
    )
    pending = after(RequestFactory().post("/x/", "abc", content_type="text/plain"))
    assert asyncio.iscoroutine(pending), type(pending)
    assert asyncio.run(pending).status_code == 200
    post = m.requests_by_method.labels("POST")._value.get()
    assert post == 1.0, post
    by_status = m.responses_by_status.labels("200")._value.get()
    assert by_status == 1.0, by_status
    # A sync chain takes the direct path and counts the same.
    sync_before = instrumentation.PrometheusBeforeMiddleware(lambda r: HttpResponse("s"))
    assert sync_before._sync_chain
    assert sync_before(RequestFactory().get("/y/")).content == b"s"
    assert m.responses_total._value.get() == counts[1] + 2
    print("ok")

elif check == "fork":
    c = Client()
    assert c.get("/api/devices/").status_code == 200
    assert own_value("gauge_livesum", "netpoint_worker_up") == 1.0
    results = []
    for fork in (os.fork, ctypes.CDLL(None, use_errno=True).fork):
        r, w = os.pipe()
        pid = fork()
        assert pid >= 0
        if pid == 0:  # child: serve one request, report its own file's values, exit
            code = 1
            try:
                os.close(r)
                status = Client().get("/api/devices/").status_code
                up = own_value("gauge_livesum", "netpoint_worker_up")
                busy = own_value("gauge_livesum", "netpoint_http_requests_in_progress")
                os.write(w, json.dumps([status, up, busy]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        got = os.read(r, 200)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        results.append(json.loads(got))
    print(json.dumps(results))

elif check == "charset":
    from django.http import (
        FileResponse, HttpResponse, HttpResponseNotFound, JsonResponse, StreamingHttpResponse,
    )
    from django.test import override_settings
    import io

    class Odd(HttpResponse):  # a charset property of its own: never from the memo
        @property
        def charset(self):
            return "utf-32"

    class NoCharset:
        status_code = 200

    def responses():
        switched = HttpResponse("x")
        switched["Content-Type"] = "text/csv; charset=koi8-r"
        return [
            HttpResponse("x"),
            JsonResponse({"a": 1}),
            HttpResponse("x", content_type="text/plain; charset=latin-1"),
            HttpResponse("x", content_type='text/plain; charset="utf-16"'),
            HttpResponse("x", content_type="application/octet-stream"),
            HttpResponse("x", charset="ascii"),
            HttpResponseNotFound("x"),
            switched,
            StreamingHttpResponse(iter([b"a"])),
            FileResponse(io.BytesIO(b"abc")),
            Odd("x"),
            Odd("x", content_type="text/plain"),
        ]

    def expected(r):
        return str(r.charset) if hasattr(r, "charset") else None

    seen = []
    for rnd in range(2):  # the second round answers from what the first remembered
        for r in responses():
            got, want = instrumentation._charset_label(r), expected(r)
            assert got == want, (rnd, type(r).__name__, r.get("Content-Type"), got, want)
            seen.append(got)
    assert instrumentation._charset_label(NoCharset()) is None
    with override_settings(DEFAULT_CHARSET="latin-1"):
        r = JsonResponse({"a": 1})
        assert instrumentation._charset_label(r) == "latin-1" == r.charset
    r = JsonResponse({"a": 1})
    assert instrumentation._charset_label(r) == "utf-8" == r.charset
    print(json.dumps(sorted(set(map(str, seen)))))
"""


def _run(tmp_path: Path, check: str) -> str:
    env = servers.base_env(tmp_path)  # metrics on, directory tmp_path/metrics
    servers.migrate(env)
    env["NETPOINT_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, check],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{check} driver failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1]


def test_async_chain_returns_an_awaitable_and_counts_the_request(tmp_path: Path) -> None:
    assert _run(tmp_path, "async") == "ok"


def test_children_forked_in_python_or_c_mark_themselves_up_in_their_own_files(
    tmp_path: Path,
) -> None:
    import json

    results = json.loads(_run(tmp_path, "fork"))
    # [status, netpoint_worker_up, requests in progress at the time of reading]
    assert results == [[200, 1.0, 0.0], [200, 1.0, 0.0]], results


def test_charset_label_is_always_the_responses_charset(tmp_path: Path) -> None:
    labels = _run(tmp_path, "charset")
    for charset in ("utf-8", "latin-1", "utf-16", "ascii", "koi8-r", "utf-32"):
        assert f'"{charset}"' in labels, labels
