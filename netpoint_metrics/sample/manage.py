"""``netpoint-sample`` / ``python -m netpoint_metrics.sample.manage``: Django's manage.py."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "netpoint_metrics.sample.settings")
    from django.core.management import execute_from_command_line

    if "migrate" in sys.argv[1:2]:
        from netpoint_metrics.sample.settings import DATABASES

        name = str(DATABASES["default"]["NAME"])
        if DATABASES["default"]["ENGINE"].endswith("sqlite3") and name != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
