"""Making Redis clients, and the connect/close life cycle every component shares.

A component is given either ``redis=`` (an existing ``redis.asyncio.Redis`` or
``RedisCluster`` client, which it never closes) or ``redis_url=`` (it makes a
client and closes it in ``close()``). Use before ``connect()`` connects on
first use; use after ``close()`` raises ``NotConnectedError``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Any, TypeAlias, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster

from ._failures import REDIS_FAILURES
from .errors import ConfigurationError, ConnectionFailedError, NotConnectedError

__all__ = [
    "DEFAULT_URL",
    "AnyRedis",
    "RedisComponent",
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


def _split_userinfo(netloc: str) -> tuple[str | None, str]:
    """``(userinfo or None, host[:port])`` of a URL's network location (ports not checked)."""
    userinfo, at, hostport = netloc.rpartition("@")
    return (userinfo, hostport) if at else (None, netloc)


def url_secrets(url: str) -> list[str]:
    """The secrets written in ``url``: its password, raw and percent-decoded, in every form.

    That is the userinfo's password (``redis://user:pass@``, or a lone
    ``redis://pass@``), and the ``password`` and ``ssl_password`` query
    parameters. Used to scrub them from error texts that might repeat them.
    """
    if not isinstance(url, str) or "://" not in url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    userinfo, _ = _split_userinfo(parts.netloc)
    if userinfo:
        _, colon, password = userinfo.partition(":")
        found.append(password if colon else userinfo)
    for pair in parts.query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and unquote_plus(name).lower() in _SECRET_QUERY:
            found.append(value)
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
    their password that way). Never raises: a malformed port or IPv6 address
    is kept as written, and what cannot be split at all is shown as
    ``<unparseable URL>``.
    """
    if not isinstance(url, str):
        return "<not a URL>"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, hostport = _split_userinfo(parts.netloc)
    netloc = parts.netloc
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:***" if colon else ("***" if userinfo else "")
        netloc = f"{shown}@{hostport}"
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            secret = equals and unquote_plus(name).lower() in _SECRET_QUERY
            pairs.append(f"{name}=***" if secret else pair)
        query = "&".join(pairs)
    if netloc == parts.netloc and query == parts.query:
        return url
    if "://" not in url:
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    text = f"{parts.scheme}://{netloc}{parts.path}"  # keeps unix:///path's empty host
    text += f"?{query}" if query else ""
    return text + (f"#{parts.fragment}" if parts.fragment else "")


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
    query (``?socket_timeout=5``) take precedence.
    """
    kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT + longest_block)
    kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    if not url.lower().startswith("unix:"):
        kwargs.setdefault("socket_keepalive", True)
        kwargs.setdefault("socket_keepalive_options", _keepalive_options())
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in CLUSTER_SCHEMES:
        plain = CLUSTER_SCHEMES[scheme] + url[len(scheme) :]
        return RedisCluster.from_url(plain, decode_responses=False, **kwargs)
    if scheme not in {"redis", "rediss", "unix"}:
        raise ConfigurationError(
            "redis_url must start with redis://, rediss://, unix:// or redis+cluster://, "
            f"got {redact_url(url)!r}"
        )
    return Redis.from_url(url, decode_responses=False, **kwargs)


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
