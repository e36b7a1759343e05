"""``netpoint-sample`` / ``python -m netpoint_metrics.sample.manage``: Django's manage.py."""

import os
import sys


def main() -> None:
    import netpoint_metrics  # noqa: F401  (before Django loads django_prometheus)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
    from django.core.management import execute_from_command_line

    if "migrate" in sys.argv[1:2]:
        from netpoint_metrics.sample.settings import DATABASES

        os.makedirs(os.path.dirname(os.path.abspath(DATABASES["default"]["NAME"])), exist_ok=True)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
