"""The sample site with an ``X-Bench-Pid`` response header: which worker answered.

The benchmark uses it to tell a worker's first scrape (cold) from its later ones (warm)
when 48 workers share one listening socket and the kernel picks who accepts.
"""

import os

from netpoint_metrics.sample.wsgi import application as _app


def application(environ, start_response):
    def start(status, headers, exc_info=None):
        return start_response(status, [*headers, ("X-Bench-Pid", str(os.getpid()))], exc_info)

    return _app(environ, start)
