"""Making Redis clients, and the connect/close life cycle every component shares.

A component is given either ``redis=`` (an existing ``redis.asyncio.Redis`` or
``RedisCluster`` client, which it never closes) or ``redis_url=`` (it makes a
client and closes it in ``close()``). Use before ``connect()`` connects on
first use; use after ``close()`` raises ``NotConnectedError``.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from .errors import ConfigurationError, ConnectionFailedError, NotConnectedError

__all__ = [
    "DEFAULT_URL",
    "AnyRedis",
    "RedisComponent",
    "create_client",
    "is_cluster",
    "redact_url",
]

log = logging.getLogger(__name__)

AnyRedis: TypeAlias = "Redis | RedisCluster"
DEFAULT_URL = "redis://localhost:6379/0"
_C = TypeVar("_C", bound="RedisComponent")
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def is_cluster(client: AnyRedis) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def create_client(url: str, **kwargs: Any) -> AnyRedis:
    """Make an async client for ``url`` with raw-bytes responses.

    ``redis://`` and ``rediss://`` (and ``unix://``) give a ``Redis`` client;
    ``redis+cluster://host:port`` gives a ``RedisCluster`` client that
    discovers the other nodes from that one.
    """
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

    @property
    def url(self) -> str:
        """The Redis URL this component connects to, with any password hidden."""
        return redact_url(self._url) if self._given is None else "<given client>"

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
        """Connect (idempotent). Raises ``ConnectionFailedError`` naming the URL if unreachable."""
        if self._closed:
            raise self._not_connected()
        if self._redis is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._redis is not None:
                return
            client = self._given if self._given is not None else create_client(self._url)
            try:
                await client.ping()
            except (RedisError, OSError) as exc:
                if self._given is None:
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
                    await client.aclose()
                raise

    async def _ensure(self) -> AnyRedis:
        """The client, connecting first if needed (raises after close)."""
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
            if client is not None and self._given is None:
                await client.aclose()

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
    password = urlsplit(url).password if "://" in url else None
    return text.replace(password, "***") if password else text
