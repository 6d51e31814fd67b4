"""Making Redis clients, and the connect/close life cycle every component shares.

A component is given either ``redis=`` (an existing ``redis.asyncio.Redis`` or
``RedisCluster`` client, which it never closes) or ``redis_url=`` (it makes a
client and closes it in ``close()``). Use before ``connect()`` connects on
first use; use after ``close()`` raises ``NotConnectedError``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from types import TracebackType
from typing import Any, TypeAlias, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, parse_url

from ._failures import REDIS_FAILURES
from .errors import ConfigurationError, ConnectionFailedError, NotConnectedError

__all__ = [
    "DEFAULT_URL",
    "AnyRedis",
    "RedisComponent",
    "check_url",
    "create_client",
    "is_cluster",
    "redact_text",
    "redact_url",
    "url_secrets",
]

log = logging.getLogger(__name__)

AnyRedis: TypeAlias = "Redis | RedisCluster"
DEFAULT_URL = "redis://localhost:6379/0"
_C = TypeVar("_C", bound="RedisComponent")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


_SECRET_QUERY = frozenset({"password", "ssl_password"})
"""URL query parameters that hold secrets (redis-py reads both from a URL)."""


_EARLY_END = "/?#"
"""Characters that end a URL's host part: unencoded in a password, a URL parser cuts it there."""

_PIECES = re.compile(r"[/?#&=;:@]")


def _authority(url: str) -> int | None:
    """Where the part after ``scheme://`` (or a leading ``//``) starts, if there is one."""
    found = url.find("://")
    if found >= 0:
        return found + 3
    return 2 if url.startswith("//") else None


def _userinfo(url: str) -> tuple[int, int] | None:
    """Start and end of the userinfo: from ``://`` to the URL's *last* ``@``.

    The last one, not the host part a URL parser finds: a password holding an
    unencoded ``/``, ``?``, ``#`` or ``@`` counts whole as a secret.
    """
    start, end = _authority(url), url.rfind("@")
    return None if start is None or end < start else (start, end)


def _query_values(url: str, origin: int) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of each ``name=value`` in the query after the host at ``origin``."""
    host_end = min((i for i in map(url.find, _EARLY_END, [origin] * 3) if i >= 0), default=-1)
    question = url.find("?", host_end) if host_end >= 0 else -1
    if question < 0 or 0 <= url.find("#", host_end) < question:
        return []
    fragment = url.find("#", question)
    pos, values = question + 1, []
    for pair in url[question + 1 : fragment if fragment >= 0 else len(url)].split("&"):
        name, equals, _ = pair.partition("=")
        if equals:
            values.append((unquote_plus(name).lower(), pos + len(name) + 1, pos + len(pair)))
        pos += len(pair) + 1
    return values


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where ``url`` holds secrets: its password and secret query values, in both readings.

    A URL whose userinfo holds ``/``, ``?`` or ``#`` reads two ways: as a URL
    parser does (the host part ends there) and with everything up to the last
    ``@`` as userinfo. The query values of both count.
    """
    spans: list[tuple[int, int]] = []
    origins = [] if (start := _authority(url)) is None else [start]
    bounds = _userinfo(url)
    if bounds is not None and bounds[0] < bounds[1]:
        colon = url.find(":", *bounds)
        spans.append((colon + 1, bounds[1]) if colon >= 0 else bounds)
        origins.append(bounds[1] + 1)
    for origin in origins or [0]:
        spans += [(a, b) for name, a, b in _query_values(url, origin) if name in _SECRET_QUERY]
    return spans


def _ambiguous(url: str) -> bool:
    """Whether a URL parser ends ``url``'s host part inside what :func:`_userinfo` finds."""
    bounds = _userinfo(url)
    return bounds is not None and any(c in url[slice(*bounds)] for c in _EARLY_END)


def url_secrets(url: str) -> list[str]:
    """The secrets written in ``url``: its password, raw and percent-decoded, in every form.

    That is the userinfo's password (``redis://user:pass@``, or a lone
    ``redis://pass@``), everything up to the URL's last ``@`` counting as
    userinfo, and the ``password`` and ``ssl_password`` query parameters.
    Where a password holds an unencoded ``/``, ``?`` or ``#``, each piece
    of it counts too (a parser would read them as host, port, path or query).
    Used to scrub them from error texts that might repeat them.
    """
    if not isinstance(url, str) or "://" not in url:
        return []
    found = [url[a:b] for a, b in _secret_spans(url)]
    if _ambiguous(url) and found:
        found += _PIECES.split(found[0])
    out: list[str] = []
    for secret in found:
        for form in (secret, unquote(secret), unquote_plus(secret)):
            if form and form not in out:
                out.append(form)
    return sorted(out, key=len, reverse=True)


def redact_text(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` (see :func:`url_secrets`) replaced by ``***``."""
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``.

    Covers ``redis://user:pass@host`` (the user stays), ``redis://:pass@host``,
    a lone ``redis://pass@host`` (all of it could be a password), and the
    ``password`` and ``ssl_password`` query parameters (``unix://`` URLs carry
    their password that way). Everything up to the URL's last ``@`` is taken
    as userinfo, so a password holding an unencoded ``/``, ``?``, ``#`` or
    ``@`` is hidden whole. Never raises: a malformed port or IPv6 address is
    kept as written, and what cannot be split at all is shown as
    ``<unparseable URL>``.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    try:
        urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    shown: list[str] = []
    pos = 0
    for a, b in sorted(_secret_spans(url)):
        if a < pos:  # overlapping spans (two readings of one URL) are hidden as one
            pos = max(pos, b)
            continue
        shown += [url[pos:a], "***"]
        pos = b
    return "".join(shown) + url[pos:]


def is_cluster(client: AnyRedis) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


SOCKET_TIMEOUT = 30.0
"""Seconds a reply may take beyond the longest blocking read of the component."""

CONNECT_TIMEOUT = 10.0
"""Seconds a new connection may take to open."""


def _keepalive_options() -> dict[int, int]:
    """TCP keepalive: first probe after 10 s idle, then every 5 s, dead after 3 unanswered."""
    options: dict[int, int] = {}
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        number = getattr(socket, name, None)
        if number is not None:
            options[number] = value
    return options


def create_client(url: str, *, longest_block: float = 0.0, **kwargs: Any) -> AnyRedis:
    """Make an async client for ``url`` with raw-bytes responses.

    ``redis://`` and ``rediss://`` (and ``unix://``) give a ``Redis`` client;
    ``redis+cluster://host:port`` gives a ``RedisCluster`` client that
    discovers the other nodes from that one.

    A connection cut off without a word (a peer gone, a firewall dropping
    packets) is noticed rather than waited on for ever: replies time out after
    ``SOCKET_TIMEOUT`` seconds plus ``longest_block`` (the longest blocking
    command the caller sends), new connections after ``CONNECT_TIMEOUT``, and
    TCP keepalive probes idle connections. ``kwargs`` and options in the URL's
    query (``?socket_timeout=5``) take precedence. A URL no client can be made of
    raises ``ConfigurationError`` (see :func:`check_url`).
    """
    kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT + longest_block)
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    if not url.lower().startswith("unix:"):
        kwargs.setdefault("socket_keepalive", True)
        kwargs.setdefault("socket_keepalive_options", _keepalive_options())
    cluster, plain = _checked(url)
    try:
        if cluster:
            return RedisCluster.from_url(plain, decode_responses=False, **kwargs)
        return Redis.from_url(plain, decode_responses=False, **kwargs)
    except (TypeError, ValueError) as exc:
        raise _bad_url(url, exc) from None


def check_url(url: str) -> None:
    """Raise ``ConfigurationError`` if :func:`create_client` could make no client of ``url``.

    No I/O. The error shows the URL redacted and no piece of its password.
    A user name or password holding an unencoded ``/``, ``?`` or ``#`` (where
    a URL parser ends the host part) is refused rather than read as a host,
    port or path.
    """
    _checked(url)


def _checked(url: str) -> tuple[bool, str]:
    """``(is a cluster URL, the URL for redis-py)`` of a usable ``url``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in CLUSTER_SCHEMES and scheme not in {"redis", "rediss", "unix"}:
        raise ConfigurationError(
            "redis_url must start with redis://, rediss://, unix:// or redis+cluster://, "
            f"got {redact_url(url)!r}"
        )
    at = url.rfind("@")
    if _ambiguous(url) and not any(a <= at < b for _, a, b in _query_values(url, len(scheme) + 3)):
        raise ConfigurationError(
            f"bad redis_url {redact_url(url)!r}: its user name or password holds '/', '?' "
            "or '#' not percent-encoded (write them as %2F, %3F and %23)"
        )
    cluster = scheme in CLUSTER_SCHEMES
    plain = CLUSTER_SCHEMES[scheme] + url[len(scheme) :] if cluster else url
    try:
        options: dict[str, Any] = dict(parse_url(plain))
        if not cluster:  # what redis-py only notices on connecting: an unknown query option
            for pool_option in ("max_connections", "timeout"):  # the pool's, not a connection's
                options.pop(pool_option, None)
            options.pop("connection_class", Connection)(**options)
    except (TypeError, ValueError) as exc:
        raise _bad_url(url, exc) from None
    return cluster, plain


def _bad_url(url: str, exc: Exception) -> ConfigurationError:
    return ConfigurationError(f"bad redis_url {redact_url(url)!r}: {redact_text(str(exc), url)}")


class RedisComponent:
    """Base of every component that holds a Redis client (producer, consumer, ...)."""

    def __init__(self, *, redis: AnyRedis | None, redis_url: str | None) -> None:
        if redis is not None and redis_url is not None:
            raise ConfigurationError("pass either redis or redis_url, not both")
        if redis_url is not None and not isinstance(redis_url, str):
            raise ConfigurationError(f"redis_url must be a string, got {redis_url!r}")
        self._given = redis
        self._url = redis_url if redis_url is not None else DEFAULT_URL
        self._redis: AnyRedis | None = None
        self._closed = False
        self._connect_lock: asyncio.Lock | None = None
        self._longest_block = 0.0  # seconds of its longest blocking command: create_client()
        self._made: AnyRedis | None = None  # the client made from the URL (closed with us)

    @property
    def url(self) -> str:
        """The Redis URL this component connects to, with any password hidden."""
        return redact_url(self._url) if self._given is None else "<given client>"

    @property
    def redis_url(self) -> str:
        """Same as :attr:`url` (redisaq 0.1.5's name)."""
        return self.url

    @property
    def connected(self) -> bool:
        """Whether ``connect()`` has completed and ``close()`` has not been called."""
        return self._redis is not None

    @property
    def redis(self) -> AnyRedis:
        """The client in use; raises ``NotConnectedError`` before ``connect()`` or after close."""
        if self._redis is None:
            raise self._not_connected()
        return self._redis

    def _not_connected(self) -> NotConnectedError:
        name = type(self).__name__
        if self._closed:
            return NotConnectedError(f"{name} is closed; make a new one")
        return NotConnectedError(f"{name} is not connected: call `await connect()` first")

    async def connect(self) -> None:
        """Connect (idempotent). Raises ``ConnectionFailedError`` naming the URL if unreachable.

        After :meth:`close`, ``connect()`` opens the component again (an application whose
        startup and shutdown run more than once); any other use after close raises
        ``NotConnectedError``.
        """
        self._closed = False
        if self._redis is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._redis is not None:
                return
            client = self._client()
            try:
                await client.ping()
            except REDIS_FAILURES as exc:
                if self._given is None:
                    self._made = None
                    await client.aclose()
                raise ConnectionFailedError(
                    f"cannot connect to Redis at {self.url}: {type(exc).__name__}: "
                    f"{_scrub(str(exc), self._url)}"
                ) from None
            self._redis = client
            try:
                await self._on_connect(client)
            except BaseException:
                self._redis = None
                if self._given is None:
                    self._made = None
                    await client.aclose()
                raise

    def _client(self) -> AnyRedis:
        """The client to use: the one given, or one made from the URL (no I/O until used).

        A component whose parts share its client (a bridge's consumer) takes it here,
        before connecting.
        """
        if self._given is not None:
            return self._given
        if self._made is None:
            self._made = create_client(self._url, longest_block=self._longest_block)
        return self._made

    async def _ensure(self) -> AnyRedis:
        """The client, connecting first if needed (raises after close)."""
        if self._closed:
            raise self._not_connected()
        if self._redis is None:
            await self.connect()
        assert self._redis is not None
        return self._redis

    async def _on_connect(self, client: AnyRedis) -> None:
        """Hook run once the client answers; subclasses prepare their state here."""

    async def _on_close(self) -> None:
        """Hook run by ``close()`` before the client is released."""

    async def close(self) -> None:
        """Stop background work and release the client if this component made it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        client, self._redis = self._redis, None
        try:
            if client is not None:
                self._redis = client
                try:
                    await self._on_close()
                finally:
                    self._redis = None
        finally:
            made, self._made = self._made, None
            if made is not None:
                await made.aclose()

    async def aclose(self) -> None:
        """Alias of :meth:`close`."""
        await self.close()

    async def __aenter__(self: _C) -> _C:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _scrub(text: str, url: str) -> str:
    return redact_text(text, url)
