"""The toolkit's request middleware: our ``/metrics`` first, and two live gauges.

One settings line adopts it, anywhere in the list:
``MIDDLEWARE += ["netpoint_metrics.middleware.NetpointMetricsMiddleware"]``. It does two things:

* For the metrics path only, it points the request at :mod:`netpoint_metrics.metrics_urls`,
  which routes that path to our aggregated view and then includes the project's own URLs.
  So our view wins even where the project already includes ``django_prometheus.urls``
  (NetBox does), with no URL wrapper in the project. The route keeps django-prometheus's
  name, so its middlewares count the scrape as before, and ``reverse()`` keeps working for
  other middlewares during the scrape.
* It builds that URLconf when the app loads, not on a worker's first scrape.
* It sets ``netpoint_http_requests_in_progress`` and ``netpoint_worker_up``, created on its
  first request (:func:`netpoint_metrics.metrics.live_gauges`): a project without this
  middleware exports neither.

With ``METRICS_ENABLED`` off it removes itself from the chain. It never lets a metrics
error break a request.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed

from netpoint_metrics import metrics
from netpoint_metrics.core.values import new_process_flag

log = logging.getLogger(__name__)

METRICS_URLCONF = "netpoint_metrics.metrics_urls"


def metrics_path() -> str:
    """``/metrics`` under the project's ``BASE_PATH`` (NetBox's setting), unless overridden."""
    explicit = getattr(settings, "NETPOINT_METRICS_PATH", None)
    if explicit:
        return "/" + str(explicit).strip("/")
    base = str(getattr(settings, "BASE_PATH", "") or "").strip("/")
    return f"/{base}/metrics" if base else "/metrics"


def _warm_metrics_route(path: str) -> None:
    """Import and resolve the metrics URLconf now, while the server loads the app.

    Django builds a URLconf's resolver on the first request that uses it; for ours that
    is a worker's first scrape, which then pays for importing the view and building the
    project's URL patterns on top of reading the directory (about a millisecond). The
    middleware is made after every app is ready, so importing the project's URLs here is
    what the first request would do anyway, only earlier. A failure is left for that
    request to raise where it always did.
    """
    try:
        from django.urls import get_resolver

        get_resolver(METRICS_URLCONF).resolve(path)
    except Exception:
        log.debug("netpoint-metrics: metrics route not warmed", exc_info=True)


#: Reads 0 in a process that has not set ``netpoint_worker_up`` yet (a forked child too).
_up_flag = None
_up_flag_lock = threading.Lock()


def _worker_up_flag():
    """The process-wide flag, made with the first middleware (never at import)."""
    global _up_flag
    with _up_flag_lock:
        if _up_flag is None:
            _up_flag = new_process_flag()
    return _up_flag


class NetpointMetricsMiddleware:
    def __init__(self, get_response):
        if not getattr(settings, "METRICS_ENABLED", False):
            raise MiddlewareNotUsed("METRICS_ENABLED is off")  # Django drops it: zero cost
        self.get_response = get_response
        self.metrics_path = metrics_path()
        # Set once per process, after a fork too (its own file starts at 0); a wipe-on-fork
        # byte tells a new process without os.getpid() on every request.
        self._up = _worker_up_flag()
        self._in_progress = None  # the gauge's value object, found on the first request
        _warm_metrics_route(self.metrics_path)

    def __call__(self, request):
        if request.path_info == self.metrics_path and not hasattr(request, "urlconf"):
            request.urlconf = METRICS_URLCONF
        in_progress = None
        try:
            # The value object itself: what Gauge.inc/dec end in, without the checks. It
            # stays the same object for the life of the process (a fork re-binds it).
            in_progress = self._in_progress
            if in_progress is None:
                in_progress = self._in_progress = metrics.live_gauges().in_progress._value
            if not self._up[0]:
                metrics.live_gauges().worker_up.set(1)
                self._up[0] = 1
            in_progress.inc(1)
        except Exception:
            log.exception("netpoint-metrics: gauge update failed")
            in_progress = None
        try:
            return self.get_response(request)
        finally:
            if in_progress is not None:
                try:
                    in_progress.inc(-1)
                except Exception:
                    log.exception("netpoint-metrics: gauge update failed")
