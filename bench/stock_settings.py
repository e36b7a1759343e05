from netpoint_metrics.sample.settings import *  # noqa: F403

ROOT_URLCONF = "bench.stock_urls"
