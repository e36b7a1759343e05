"""The stock recipe, for comparison only: pid-named files, stock MultiProcessCollector.

Importing ``netpoint_metrics`` (the sample settings do) installs our value class; this
module puts prometheus-client's default pid-named one back before any metric exists.
"""

import os

from prometheus_client import values

import netpoint_metrics  # noqa: F401

values.ValueClass = values.MultiProcessValue()  # stock: files named by os.getpid()

os.environ["DJANGO_SETTINGS_MODULE"] = "bench.stock_settings"

try:  # uWSGI has no master hook: the stock recipe wipes when the master loads the app.
    import uwsgi

    if uwsgi.worker_id() == 0 and os.getpid() == uwsgi.masterpid():
        d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        for name in os.listdir(d):
            if name.endswith(".db"):
                os.unlink(os.path.join(d, name))
except ImportError:
    pass

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
