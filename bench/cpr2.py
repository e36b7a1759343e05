"""CPU time per request, in-process: ``python bench/cpu_per_request.py on|off|stock N PATH``.

Calls the WSGI application directly (no server, no sockets, no load generator), so the
figure is what the Django app and the metrics code cost per request and nothing else.
Run as a subprocess by ``bench.py`` with the environment of one set-up: ``on`` is the
sample site with metrics on, ``off`` with metrics off, ``stock`` the stock recipe
(django-prometheus with prometheus-client's own multiprocess values). Prints JSON.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    setup, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if setup == "stock":
        from bench.stock_wsgi import application
    else:
        import netpoint_metrics

        # What a server adapter does before loading the app (where the package has such a
        # step; importing it alone must not install anything). Harmless if settings do too.
        setup_fn = getattr(netpoint_metrics, "setup", None)
        if setup == "on" and callable(setup_fn):
            setup_fn()
        from netpoint_metrics.sample.wsgi import application

    def call(method: str, url: str, body: bytes = b"") -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": url,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status: list[str] = []
        result = application(environ, lambda s, h, e=None: status.append(s))
        try:
            out = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close:
                close()
        return status[0], out

    status, body = call("POST", "/api/devices/", json.dumps({"name": "cpu"}).encode())
    pk = json.loads(body)["id"]
    url = path.replace("<id>", str(pk))
    for _ in range(max(50, n // 10)):  # warm caches, connections, metric children
        status, _ = call("GET", url)
    assert status.startswith("200"), status
    import resource; r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.process_time()
    for _ in range(n):
        call("GET", url)
    cpu = (time.process_time() - t0) / n; r1 = resource.getrusage(resource.RUSAGE_SELF); print("user", (r1.ru_utime-r0.ru_utime)/n*1e6, "sys", (r1.ru_stime-r0.ru_stime)/n*1e6, "minflt", (r1.ru_minflt-r0.ru_minflt)/n, "majflt", r1.ru_majflt-r0.ru_majflt, "nvcsw", r1.ru_nvcsw-r0.ru_nvcsw, "nivcsw", r1.ru_nivcsw-r0.ru_nivcsw, file=sys.stderr)
    mp = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    files = len([f for f in os.listdir(mp) if f.endswith(".db")]) if mp else 0
    print(json.dumps({"setup": setup, "cpu_us": cpu * 1e6, "requests": n, "db_files": files}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
