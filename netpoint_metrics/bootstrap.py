"""Whether metrics are on, and how this process stores metric values: one decision.

``METRICS_ENABLED`` may come from the environment (what the server adapters see before any
Django code runs) or from Django settings (NetBox's way: ``configuration.py``). Both are
read, and they must agree: if the environment said on and settings said off, the view
would 404 while workers wrote files, and if settings said on while the server never set
up a directory, ``/metrics`` would serve one worker's numbers, which go up and down from
scrape to scrape as a different worker answers. So a contradiction is a start-up error,
and everything (the value class, the view, the app) asks :func:`metrics_enabled`.

Nothing here runs on import. :func:`setup` is the one call that installs a value class:
the server adapters make it in the master before the app loads, the Django app makes it
when the app registry is populated (before ``django_prometheus`` is imported, if
``netpoint_metrics`` is listed first), and any other entry point may make it explicitly.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from netpoint_metrics.core import identity

log = logging.getLogger(__name__)

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
ENV_ENABLED = "METRICS_ENABLED"


class ConfigurationError(RuntimeError):
    """Settings that cannot all be true at once, or a value that is not understood."""


_decided: bool | None = None


def parse_flag(name: str, raw: str) -> bool:
    """Read a boolean setting; an unrecognised word is an error, not a guess."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigurationError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable, ``default`` when unset."""
    raw = os.environ.get(name)
    return default if raw is None else parse_flag(name, raw)


def env_choice() -> bool | None:
    """``METRICS_ENABLED`` from the environment; None when it is not set."""
    raw = os.environ.get(ENV_ENABLED)
    return None if raw is None else parse_flag(ENV_ENABLED, raw)


def decide(settings_value: object = None) -> bool:
    """Combine the environment and a settings value; raise on a contradiction."""
    env = env_choice()
    setting = _as_bool(settings_value)
    if env is not None and setting is not None and env != setting:
        raise ConfigurationError(
            f"METRICS_ENABLED contradicts itself: the environment says "
            f"{os.environ[ENV_ENABLED]!r} ({'on' if env else 'off'}) but Django settings say "
            f"{settings_value!r} ({'on' if setting else 'off'}); set it in one place, or make "
            "both agree"
        )
    if env is not None:
        return env
    return bool(setting)


def _as_bool(value: object) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_flag("METRICS_ENABLED (settings)", value)
    if isinstance(value, int):
        return bool(value)
    raise ConfigurationError(f"METRICS_ENABLED in settings must be a boolean, not {value!r}")


def settings_choice(module_name: str | None = None) -> object:
    """``METRICS_ENABLED`` from the Django settings module, without starting Django.

    Server masters call this before any worker exists, so a project that sets it in
    settings only still gets a shared directory. A settings module that cannot be
    imported here gives None (unknown); the app checks again once Django is loaded.
    """
    name = module_name or os.environ.get("DJANGO_SETTINGS_MODULE")
    if not name:
        return None
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # a project's settings may need what only workers have
        log.warning(
            "netpoint-metrics: could not read METRICS_ENABLED from %s (%s); set "
            "METRICS_ENABLED in the server's environment instead",
            name,
            exc,
        )
        return None
    return getattr(module, "METRICS_ENABLED", None)


def setup(metrics_enabled: object = None) -> bool:
    """Decide whether metrics are on and install the value class that goes with it.

    Call it before anything creates a metric (django-prometheus does on import). Safe to
    call again with the same answer; a different answer later is an error, since values
    already created would keep the earlier class.
    """
    global _decided
    enabled = decide(metrics_enabled)
    if _decided is not None and _decided != enabled:
        raise ConfigurationError(
            f"METRICS_ENABLED was decided {'on' if _decided else 'off'} earlier in this "
            f"process and is now {'on' if enabled else 'off'}"
        )
    _decided = enabled
    if enabled and identity.multiproc_dir():
        identity.install_multiprocess()
    else:
        identity.install_single_process()
    return enabled


def metrics_enabled() -> bool:
    """The decision :func:`setup` made, or what it would make from the environment."""
    return _decided if _decided is not None else decide()


def under_multiprocess_server() -> bool:
    """True inside a Gunicorn or uWSGI worker, where per-process numbers would be wrong."""
    return "uwsgi" in sys.modules or "gunicorn.arbiter" in sys.modules
