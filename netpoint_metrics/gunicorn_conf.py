"""Gunicorn configuration for NetPoint: ``gunicorn -c gunicorn_conf.py``.

Settings come from the environment (see the README's table); Gunicorn's own command-line
flags and ``GUNICORN_CMD_ARGS`` still override them. The hooks are the toolkit's and keep
the metrics directory exact and bounded; if you add your own hook of the same name, call
ours from it.
"""

import os

from netpoint_metrics import config as netpoint_config  # not "config": a Gunicorn setting
from netpoint_metrics.gunicorn import (  # noqa: F401  (hooks Gunicorn looks up by name)
    child_exit,
    configure_environment,
    nworkers_changed,
    on_exit,
    on_starting,
    post_fork,
    pre_exec,
    pre_fork,
    worker_exit,
)

SAMPLE_APP = "netpoint_metrics.sample.wsgi:application"
wsgi_app = os.environ.get("NETPOINT_WSGI_APP", SAMPLE_APP)
if wsgi_app == SAMPLE_APP:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
# Every NETPOINT_* setting, the access settings and dependency versions, checked before
# anything starts: a wrong one exits here with one line naming it.
netpoint_config.check_startup(who="gunicorn_conf.py")
configure_environment()


def _int(name: str, default: int) -> int:
    return netpoint_config.env_int(name, default, minimum=netpoint_config.INT_SETTINGS.get(name, 0))


bind = [
    b.strip() for b in os.environ.get("NETPOINT_BIND", "127.0.0.1:8000").split(",") if b.strip()
]
workers = _int("NETPOINT_WORKERS", 4)
# Threads per worker (NetBox's contrib config uses 3); more than 1 selects the gthread worker.
threads = _int("NETPOINT_THREADS", 1)
max_requests = _int("NETPOINT_MAX_REQUESTS", 0)
max_requests_jitter = _int("NETPOINT_MAX_REQUESTS_JITTER", 0)
timeout = _int("NETPOINT_TIMEOUT", 30)
graceful_timeout = _int("NETPOINT_GRACEFUL_TIMEOUT", 30)
preload_app = netpoint_config.env_bool("NETPOINT_PRELOAD")
accesslog = os.environ.get("NETPOINT_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("NETPOINT_LOG_LEVEL", "info")
# Gunicorn >= 25 opens a control socket under $HOME by default; opt in explicitly.
if os.environ.get("NETPOINT_CONTROL_SOCKET"):
    control_socket = os.environ["NETPOINT_CONTROL_SOCKET"]
else:
    control_socket_disable = True
