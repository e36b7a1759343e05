"""One structured log line per lifecycle event, in ``key=value`` form.

Operators grep and ship these lines (``event=fold``, ``event=worker_exit``...), so every
event goes through :func:`emit` and looks the same whatever server runs us::

    netpoint-metrics event=fold dir=/run/netpoint folded=3 generation=12 ms=2.1

Levels keep a healthy server quiet at INFO: one line per start, wipe, recovery and
refusal; folds and routine worker exits are DEBUG; abnormal exits are WARNING.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: Logger every module of the package logs under (``logging.getLogger(__name__)``).
PACKAGE_LOGGER = "netpoint_metrics"

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:+,@")


def _value(v: object) -> str:
    if isinstance(v, float):
        text = f"{v:.1f}"
    elif isinstance(v, bool):
        text = "true" if v else "false"
    else:
        text = str(v)
    # Quote anything a key=value parser would split on, so a path with a space stays one
    # field.
    if text and all(c in _SAFE for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_event(event: str, **fields: object) -> str:
    """``netpoint-metrics event=<event> k=v ...`` with fields in the order given."""
    parts = ["netpoint-metrics", f"event={event}"]
    parts.extend(f"{k}={_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


def emit(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log one event line; formatting is skipped when the level is off."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_event(event, **fields))


class _Forward(logging.Handler):
    """Hand records to another logger's handlers, whatever they are at the time.

    Gunicorn replaces its handlers on HUP; forwarding (rather than copying them once) keeps
    our lines going wherever Gunicorn's go, with its format.
    """

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def attach_handlers(
    forward_to: logging.Logger | None = None, level: int | str | None = None
) -> None:
    """Give the package logger somewhere to write, if nobody configured one.

    A server master runs before Django (and its ``LOGGING``) loads, and Python drops INFO
    records that reach no handler. The Gunicorn adapter forwards to Gunicorn's error log so
    our lines land beside Gunicorn's; uWSGI gets a stderr handler (stderr is its log).
    Never overrides a configuration someone made: only acts when the package logger and
    the root logger have no handlers. ``level`` defaults to ``NETPOINT_LOG_LEVEL`` or INFO.
    """
    pkg = logging.getLogger(PACKAGE_LOGGER)
    if pkg.handlers or logging.getLogger().handlers:
        return
    if forward_to is not None:
        handler: logging.Handler = _Forward(forward_to)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
        )
    pkg.addHandler(handler)
    if not isinstance(level, int):
        name = (level or os.environ.get("NETPOINT_LOG_LEVEL") or "info").upper()
        number = logging.getLevelName(name)  # an int for a known level name
        level = number if isinstance(number, int) else logging.INFO
    pkg.setLevel(level)
    pkg.propagate = False
