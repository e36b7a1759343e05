"""``netpoint-metrics serve``: the directory's aggregate on a port of its own.

For operators who do not want a scrape to take one of the web server's workers (a sync
Gunicorn worker serving ``/metrics`` serves nothing else meanwhile). It is a small threaded
``http.server``: one :class:`DirectoryCollector` for the life of the process, so the
per-file cache stays warm and a scrape costs what it costs in the web server, and the same
access policy as the Django view (:mod:`netpoint_metrics.core.access`), parsed once at
start. It only reads: it never folds, never takes an identity, never writes a value file;
the web server's hooks keep the directory compact.

Paths: ``/metrics`` (text or OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``,
``name[]`` filters, as prometheus-client's own exporter), ``/-/healthy`` (200, reveals
nothing, for liveness probes).
"""

from __future__ import annotations

import gzip
import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder

from netpoint_metrics.core import access
from netpoint_metrics.core.collect import DirectoryCollector
from netpoint_metrics.core.lock import LockTimeout
from netpoint_metrics.core.scrape import ScrapeCollector
from netpoint_metrics.registry import new_registry

log = logging.getLogger(__name__)


class Exporter(ThreadingHTTPServer):
    """The HTTP server; holds the registry and the access policy for its handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], path: str, policy: access.Policy) -> None:
        self.path = path
        self.policy = policy
        self.collector = DirectoryCollector(path)  # the warm cache: one per process
        self.registry = new_registry()
        # Directory and per-process gauges too; it writes nothing (no value class here).
        self.registry.register(ScrapeCollector(self.collector))
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    server: Exporter
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client must not hold a thread for ever
    server_version = "netpoint-metrics"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        if url.path == "/-/healthy":
            self._send(200, b"ok\n")
            return
        if url.path != "/metrics":
            self._send(404, b"not found; metrics are at /metrics\n")
            return
        decision = self.server.policy.check(
            self.headers.get("Authorization"), self.client_address[0]
        )
        if not decision.allowed:
            log.debug("refused %s: %s", self.client_address[0], decision.reason)
            self._send(decision.status, f"{decision.reason}\n".encode(), decision.headers)
            return
        registry: Any = self.server.registry
        names = parse_qs(url.query).get("name[]")
        if names:
            registry = registry.restricted_registry(names)
        encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
        try:
            body = encoder(registry)
        except LockTimeout as exc:
            log.warning("%s", exc)
            self._send(503, b"metrics directory busy\n")
            return
        except OSError as exc:
            log.error("cannot read the metrics directory: %s", exc)
            self._send(503, f"metrics directory unreadable: {exc.strerror or exc}\n".encode())
            return
        except Exception:
            log.exception("collecting %s failed", self.server.path)
            self._send(500, b"collecting metrics failed\n")
            return
        headers: tuple[tuple[str, str], ...] = (("Content-Type", content_type),)
        if "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            headers += (("Content-Encoding", "gzip"),)
        self._send(200, body, headers)

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        names = {k.lower() for k, _ in headers}
        if "content-type" not in names:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.client_address[0], format % args)


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; raises ValueError with the expected form."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:9808")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(path: str, bind: str, policy: access.Policy, ready: threading.Event | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    address = parse_bind(bind)
    exporter = Exporter(address, path, policy)
    host, port = str(exporter.server_address[0]), int(exporter.server_address[1])
    log.info("serving %s on http://%s:%d/metrics (%s)", path, host, port, policy.describe())
    print(f"netpoint-metrics: serving {path} on http://{host}:{port}/metrics", flush=True)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return: call it from another thread.
        threading.Thread(target=exporter.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if ready is not None:
        ready.set()
    try:
        exporter.serve_forever(poll_interval=0.5)
    finally:
        exporter.server_close()
    log.info("stopped serving %s", path)
    return 0
