"""Stock Gunicorn recipe (prometheus-client docs): wipe at start, mark_process_dead."""

import glob
import os

from prometheus_client import multiprocess

wsgi_app = "bench.stock_wsgi:application"
bind = os.environ.get("NETPOINT_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("NETPOINT_WORKERS", "4"))
max_requests = int(os.environ.get("NETPOINT_MAX_REQUESTS", "0"))
preload_app = os.environ.get("NETPOINT_PRELOAD", "") == "1"
control_socket_disable = True
errorlog = "-"


def on_starting(server):
    for f in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.unlink(f)


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
