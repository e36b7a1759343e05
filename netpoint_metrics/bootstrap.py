"""Choose how this process stores metric values, before any metric exists.

``METRICS_ENABLED`` (environment) decides: off, values stay in memory and no file is ever
written, even if ``PROMETHEUS_MULTIPROC_DIR`` is set; on with a directory, values go to
files named by :func:`netpoint_metrics.core.identity.current`.
"""

from __future__ import annotations

import os

from netpoint_metrics.core import identity

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable; an unrecognised word is an error, not a guess."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{name}={raw!r}: expected one of 1/0, true/false, yes/no, on/off")


def metrics_enabled() -> bool:
    return env_flag("METRICS_ENABLED", False)


def bootstrap() -> None:
    """Install the value class this process needs (idempotent)."""
    if metrics_enabled() and identity.multiproc_dir():
        identity.install_multiprocess()
    else:
        identity.install_single_process()
