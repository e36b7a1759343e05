"""Who may read ``/metrics``: an optional bearer token and an optional client allow-list.

``/metrics`` shows request paths' view names, database and cache activity, versions and
process ids: enough to map an application, so an operator must be able to restrict it.
The policy is framework-free so that the Django view and the standalone ``serve`` exporter
apply exactly the same rules:

* ``NETPOINT_METRICS_ALLOW``: comma-separated networks (``10.0.0.0/8, ::1``); a client whose
  address is outside all of them gets 403, token or not.
* ``NETPOINT_METRICS_TOKEN``, or ``NETPOINT_METRICS_TOKEN_FILE`` (preferred: the token
  then stays out of process listings and ``/proc/<pid>/environ``): a request without
  ``Authorization: Bearer ...`` gets 401 with ``WWW-Authenticate: Bearer``, a wrong token
  403. A token file may hold several tokens, one per line, so a new one can be rolled out
  before the old one is retired.

Settings are parsed once (:func:`policy`); a bad one is an :class:`AccessConfigError` that
names the setting, raised at start-up by the callers, never a silently open endpoint.
Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every
configured token, so the answer's timing tells neither how much of a guess was right nor
how long the token is.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

ENV_TOKEN = "NETPOINT_METRICS_TOKEN"
ENV_TOKEN_FILE = "NETPOINT_METRICS_TOKEN_FILE"
ENV_ALLOW = "NETPOINT_METRICS_ALLOW"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessConfigError(ValueError):
    """An access setting cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Decision:
    """The answer for one request: ``status`` 200 means serve it."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


ALLOW = Decision(200)


@dataclass(frozen=True)
class Policy:
    """Parsed access settings. Empty ``tokens`` and ``networks``: everyone may read.

    ``tokens`` holds SHA-256 digests, never the tokens themselves.
    """

    tokens: tuple[bytes, ...] = ()
    networks: tuple[Network, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Policy:
        env = os.environ if environ is None else environ
        tokens = tuple(_digest(t) for t in _tokens(env))
        networks = _networks(env.get(ENV_ALLOW, ""))
        sources = tuple(n for n in (ENV_TOKEN, ENV_TOKEN_FILE, ENV_ALLOW) if env.get(n, "").strip())
        return cls(tokens, networks, sources)

    @property
    def open(self) -> bool:
        return not self.tokens and not self.networks

    def describe(self) -> str:
        """One line for logs and ``doctor``; never shows a token."""
        if self.open:
            return "open to every client (no token, no allow-list)"
        parts = []
        if self.tokens:
            parts.append(f"bearer token required ({len(self.tokens)} accepted)")
        if self.networks:
            parts.append("clients from " + ", ".join(str(n) for n in self.networks))
        return "; ".join(parts)

    def check(self, authorization: str | None, remote_addr: str | None) -> Decision:
        """Decide one request from its ``Authorization`` header and peer address."""
        if self.networks and not self._address_allowed(remote_addr):
            return Decision(403, reason=f"client {remote_addr or '?'} is not in {ENV_ALLOW}")
        if not self.tokens:
            return ALLOW
        given = _bearer(authorization)
        if given is None:
            return Decision(
                401,
                (("WWW-Authenticate", 'Bearer realm="metrics"'),),
                "no bearer token",
            )
        # Compare with every token, always: no early exit that timing could reveal.
        digest = _digest(given)
        match = False
        for token in self.tokens:
            match |= hmac.compare_digest(digest, token)
        if not match:
            return Decision(403, reason="wrong bearer token")
        return ALLOW

    def _address_allowed(self, remote_addr: str | None) -> bool:
        if not remote_addr:
            return False  # a Unix socket or a missing peer: no address to vouch for
        try:
            addr = ipaddress.ip_address(remote_addr.split("%", 1)[0].strip("[]"))
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(addr in net for net in self.networks)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _bearer(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip().encode("utf-8", "surrogateescape")


def _tokens(env: Mapping[str, str]) -> tuple[bytes, ...]:
    inline = env.get(ENV_TOKEN, "").strip()
    path = env.get(ENV_TOKEN_FILE, "").strip()
    if inline and path:
        raise AccessConfigError(f"set {ENV_TOKEN} or {ENV_TOKEN_FILE}, not both")
    if inline:
        if any(c.isspace() for c in inline):
            raise AccessConfigError(f"{ENV_TOKEN} contains whitespace")
        return (inline.encode("utf-8", "surrogateescape"),)
    if not path:
        return ()
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except OSError as exc:
        raise AccessConfigError(
            f"{ENV_TOKEN_FILE}={path!r} cannot be read: {exc.strerror or exc}"
        ) from None
    tokens = tuple(
        line.strip() for line in raw.splitlines() if line.strip() and not line.startswith(b"#")
    )
    if not tokens:
        raise AccessConfigError(f"{ENV_TOKEN_FILE}={path!r} holds no token")
    if any(any(c in b" \t" for c in t) for t in tokens):
        raise AccessConfigError(f"{ENV_TOKEN_FILE}={path!r}: a token contains whitespace")
    return tokens


def _networks(raw: str) -> tuple[Network, ...]:
    out = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            hint = ""
            with contextlib.suppress(ValueError):
                hint = f"; did you mean {ipaddress.ip_network(item, strict=False)}?"
            raise AccessConfigError(
                f"{ENV_ALLOW}: {item!r} is not a network ({exc}){hint}"
            ) from None
    if raw.strip() and not out:
        raise AccessConfigError(f"{ENV_ALLOW}={raw!r} lists no network")
    return tuple(out)


_lock = threading.Lock()
_policy: Policy | None = None


def policy() -> Policy:
    """This process's policy, parsed from the environment on first use and then kept."""
    global _policy
    with _lock:
        if _policy is None:
            _policy = Policy.from_env()
            log.debug("metrics access: %s", _policy.describe())
        return _policy


def reset() -> None:
    """Forget the parsed policy (tests; a process that changed its environment)."""
    global _policy
    with _lock:
        _policy = None
