"""Read the toolkit's settings from the environment, and refuse wrong ones with one clear line.

Every setting is read by one function per kind (:func:`env_bool`, :func:`env_int`), shared
by ``gunicorn_conf.py``, the uWSGI adapter, ``serve`` and ``doctor``, so a word means the
same everywhere. The point is to turn silent misbehaviour into a start-up error: before
this, ``NETPOINT_PRELOAD=bogus`` quietly meant "off" under Gunicorn, and uWSGI read any
word but false/off/no/0 in ``NETPOINT_LAZY_APPS`` as "on".

:func:`problems` lists every bad setting it can see (``doctor`` prints them all);
:func:`check_startup` is what a server calls before it loads anything: it raises
:class:`StartupError`, whose message is one line naming each bad setting.

This module imports neither Django nor a server, and reads nothing at import time.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from netpoint_metrics.bootstrap import FALSE_WORDS, TRUE_WORDS  # one list of words

log = logging.getLogger(__name__)

#: Boolean settings. All of them, so a typo in any is caught, whichever server reads it.
BOOL_SETTINGS: tuple[str, ...] = (
    "METRICS_ENABLED",
    "NETPOINT_PRELOAD",
    "NETPOINT_LAZY_APPS",
    "NETPOINT_DEBUG",
)

#: Whole-number settings and the smallest value that makes sense for each.
INT_SETTINGS: dict[str, int] = {
    "NETPOINT_WORKERS": 1,
    "NETPOINT_THREADS": 1,
    "NETPOINT_MAX_REQUESTS": 0,
    "NETPOINT_MAX_REQUESTS_JITTER": 0,
    "NETPOINT_TIMEOUT": 0,
    "NETPOINT_GRACEFUL_TIMEOUT": 0,
    "NETPOINT_MIN_WORKER_LIFETIME": 0,
    "NETPOINT_METRICS_WARM_EVERY": 0,
}

#: Supported versions, ``[floor, ceiling)``: the same ranges as ``pyproject.toml``'s
#: dependencies (a test keeps them equal). Below the floor the toolkit is known not to
#: work (``prometheus_client.django`` first shipped in 0.24, and 0.24.0 cannot import it),
#: so a server refuses to start; at or above the ceiling it is untested, so a server
#: starts and logs a warning.
SUPPORTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "prometheus-client": ((0, 24, 1), (0, 27)),
    "django-prometheus": ((2, 4), (2, 6)),
    "Django": ((4, 2), (6, 1)),
}


class SettingError(ValueError):
    """One setting has a value we cannot use; the message names the setting."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class StartupError(SystemExit):
    """Wrong settings at start: a one-line message, and a non-zero exit.

    A ``SystemExit`` so that Gunicorn, which reports any ``Exception`` from its config file
    with a traceback, prints just the line and exits 1.
    """


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def env_bool(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Read a boolean: 1/0, true/false, yes/no, on/off (any case); unset or empty: default."""
    raw = _env(environ).get(name)
    if raw is None or not raw.strip():
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingError(
        name, f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off"
    )


def env_int(
    name: str, default: int, *, minimum: int = 0, environ: Mapping[str, str] | None = None
) -> int:
    """Read a whole number no smaller than ``minimum``; unset or empty: default."""
    raw = _env(environ).get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise SettingError(name, f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingError(name, f"{name}={raw!r} is below {minimum}")
    return value


def setting_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per bad boolean, number or access setting, in a stable order."""
    env = _env(environ)
    out: list[str] = []
    for name in BOOL_SETTINGS:
        try:
            env_bool(name, environ=env)
        except SettingError as exc:
            out.append(str(exc))
    for name, minimum in INT_SETTINGS.items():
        try:
            env_int(name, 0, minimum=minimum, environ=env)
        except SettingError as exc:
            out.append(str(exc))
    from netpoint_metrics.core import access  # here: keep this module's import light

    try:
        access.Policy.from_env(env)
    except access.AccessConfigError as exc:
        out.append(str(exc))
    return out


@dataclass(frozen=True)
class VersionCheck:
    package: str
    installed: str | None
    floor: tuple[int, ...]
    ceiling: tuple[int, ...]

    @property
    def range_text(self) -> str:
        return f">={_dotted(self.floor)},<{_dotted(self.ceiling)}"

    @property
    def too_old(self) -> bool:
        return self.installed is None or release(self.installed) < self.floor

    @property
    def too_new(self) -> bool:
        return self.installed is not None and release(self.installed) >= self.ceiling

    def message(self) -> str:
        if self.installed is None:
            return f"{self.package} is not installed (supported: {self.range_text})"
        where = "below" if self.too_old else "above"
        return f"{self.package} {self.installed} is {where} the supported range {self.range_text}"


def _dotted(parts: tuple[int, ...]) -> str:
    return ".".join(map(str, parts))


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string: ``"5.2.19rc1"`` -> ``(5, 2, 19)``."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def version_checks() -> list[VersionCheck]:
    """The installed version of every supported dependency against its range."""
    out = []
    for package, (floor, ceiling) in SUPPORTED.items():
        try:
            installed: str | None = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = None
        out.append(VersionCheck(package, installed, floor, ceiling))
    return out


def check_startup(
    environ: Mapping[str, str] | None = None, *, who: str = "netpoint-metrics"
) -> None:
    """Refuse to start on wrong settings or too-old dependencies; warn on too-new ones.

    Raises :class:`StartupError` with every problem on one line, each naming its setting or
    package, so the operator fixes them all in one go.
    """
    found = setting_problems(environ)
    for check in version_checks():
        if check.too_old:
            found.append(check.message())
        elif check.too_new:
            log.warning("%s: %s; it may work but is untested", who, check.message())
    if found:
        raise StartupError(f"{who}: refusing to start: {'; '.join(found)}")
