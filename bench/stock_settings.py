from netpoint_metrics.sample.settings import *  # noqa: F403

ROOT_URLCONF = "bench.stock_urls"

# Whatever the sample settings set up, the stock recipe writes prometheus-client's own
# pid-named files: put its value class back before any metric is created.
from prometheus_client import values  # noqa: E402

values.ValueClass = values.MultiProcessValue()
