"""``netpoint-sample`` / ``python -m netpoint_metrics.sample.manage``: Django's manage.py.

``netpoint-sample rqworker`` runs the background-job worker (django-rq; needs ``REDIS_URL``).
It is no child of Gunicorn or uWSGI: with metrics on it writes into the web server's
``PROMETHEUS_MULTIPROC_DIR`` as one more process with its own identity and lease, and so
does each work-horse RQ forks for a job.
"""

import logging
import os
import sys

log = logging.getLogger(__name__)


def _check_rqworker() -> None:
    from netpoint_metrics.bootstrap import metrics_enabled
    from netpoint_metrics.core import directory, identity

    if not os.environ.get("REDIS_URL"):
        raise SystemExit(
            "netpoint-sample rqworker: set REDIS_URL (e.g. redis://127.0.0.1:6379/0); "
            "background jobs need a Redis server"
        )
    if not metrics_enabled():
        return
    path = identity.multiproc_dir()
    if not path:
        raise SystemExit(
            "netpoint-sample rqworker: METRICS_ENABLED is on but PROMETHEUS_MULTIPROC_DIR is "
            "not set; set it to the web server's metrics directory, or job metrics would "
            "stay inside this process and never reach /metrics"
        )
    try:
        directory.ensure_directory(path)
    except directory.UnsafeDirectory as exc:
        raise SystemExit(f"netpoint-sample rqworker: {exc}") from None


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
    from django.core.management import execute_from_command_line

    command = sys.argv[1:2]
    if command == ["rqworker"]:
        _check_rqworker()
    if command == ["migrate"]:
        from netpoint_metrics.sample.settings import DATABASES

        db = DATABASES["default"]
        if db["ENGINE"].endswith("sqlite3") and str(db["NAME"]) != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(db["NAME"])), exist_ok=True)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
