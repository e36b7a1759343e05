"""Our gunicorn_conf.py with child_exit timed: how long does the master stall per death?"""

import os
import time

import gunicorn_conf
from gunicorn_conf import *  # noqa: F403

_LOG = os.environ.get("NETPOINT_BENCH_STALL_LOG", "/dev/null")


def child_exit(server, worker):  # noqa: F811
    t0 = time.perf_counter()
    gunicorn_conf.child_exit(server, worker)
    dt = time.perf_counter() - t0
    with open(_LOG, "a") as f:
        f.write(f"{dt:.6f} {int(getattr(server, '_netpoint_fold_pending', False))}\n")
