"""The waiting machinery of :class:`~redisaq_core.results.ResultStore`.

:class:`JobEvents` is a store's one pub/sub connection and the waiters it
wakes; record reads share round trips through :class:`~redisaq_core._batching.CommandBatcher`.
See :mod:`redisaq_core.results` for the protocol (subscribe, read, wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from ._codec import optional_text
from ._failures import REDIS_FAILURES
from ._tasks import cancel_and_wait
from .connection import AnyRedis
from .errors import NotConnectedError

__all__ = ["FINAL_STATUSES", "GONE", "JobEvents"]

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"completed", "dead", "cancelled"})
"""Statuses after which a job's record no longer changes."""
GONE = "gone"
"""Announced for a job settled without a record (deleted while it was pending)."""
_PING_INTERVAL = 15.0
_READ_TIMEOUT = 1.0

_PUBSUB_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, RuntimeError)
"""A failed call, or redis-py's RuntimeError for a pub/sub connection that is gone."""


class JobEvents:
    """The one pub/sub connection of a store, and the waiters it wakes.

    ``watch(job_id)`` gives a future that is resolved with the job's status
    when its final status is announced, or with ``""`` when the caller must
    read the record again (the connection was lost and restored meanwhile).
    """

    def __init__(self, client: AnyRedis) -> None:
        self._client = client
        self._pubsub: Any = None
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._ping_sent: float | None = None
        self._last_traffic = 0.0
        self.reconnects = 0

    @property
    def waiting(self) -> int:
        """How many waiters are registered."""
        return sum(len(s) for s in self._waiters.values())

    def watch(self, job_id: str) -> asyncio.Future[str]:
        """Register a waiter for ``job_id``; its future resolves as the class says."""
        if self._closed:
            raise NotConnectedError("ResultStore is closed; make a new one")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        return future

    def unwatch(self, job_id: str, future: asyncio.Future[str]) -> None:
        """Drop a waiter (whether or not its future resolved)."""
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]

    async def subscribed(self, channel: str) -> None:
        """Return once ``channel`` is subscribed and the server has confirmed it."""
        ready = self._ready.get(channel)
        if ready is None:
            ready = asyncio.get_running_loop().create_future()
            self._ready[channel] = ready
            try:
                async with self._lock:
                    if self._closed:
                        raise NotConnectedError("ResultStore is closed; make a new one")
                    if self._pubsub is None:
                        self._pubsub = self._client.pubsub()
                    await self._pubsub.subscribe(channel)
                    if self._reader is None:
                        loop = asyncio.get_running_loop()
                        self._last_traffic = loop.time()
                        self._reader = asyncio.create_task(self._read(), name="redisaq-job-events")
            except BaseException as exc:
                if self._ready.get(channel) is ready:
                    del self._ready[channel]
                if not ready.done():
                    ready.set_exception(exc if isinstance(exc, Exception) else NotConnectedError())
                    ready.exception()  # retrieved here; other waiters re-raise it
                raise
        await asyncio.shield(ready)

    def _wake(self, job_id: str, status: str) -> None:
        for future in self._waiters.pop(job_id, ()):
            if not future.done():
                future.set_result(status)

    def _wake_all(self) -> None:
        for job_id in list(self._waiters):
            self._wake(job_id, "")

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            text = optional_text(message.get("data")) or ""
            job_id, _, status = text.rpartition(" ")
            if (status in FINAL_STATUSES or status == GONE) and job_id in self._waiters:
                self._wake(job_id, status)
        elif kind == "subscribe":
            channel = optional_text(message.get("channel")) or ""
            ready = self._ready.get(channel)
            if ready is None:
                return
            if ready.done():
                # Subscribed again on a new connection (the client reconnected by
                # itself): announcements may have been missed meanwhile.
                log.info("job events: %s subscribed again; re-reading waited records", channel)
                self._wake_all()
            else:
                ready.set_result(None)
        elif kind == "pong":
            self._ping_sent = None

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            pubsub = self._pubsub
            try:
                if pubsub is None:
                    raise RedisConnectionError("no pub/sub connection")
                message = await pubsub.get_message(timeout=_READ_TIMEOUT)
                now = loop.time()
                if message is not None:
                    self._last_traffic = now
                    self._dispatch(message)
                elif self._ping_sent is not None and now - self._ping_sent > _PING_INTERVAL:
                    raise RedisConnectionError("no answer to PING")
                elif self._ping_sent is None and now - self._last_traffic > _PING_INTERVAL:
                    self._ping_sent = now
                    self._last_traffic = now
                    await pubsub.ping()
            except asyncio.CancelledError:
                raise
            except _PUBSUB_FAILURES as exc:
                if self._closed:
                    return
                log.warning(
                    "job events: pub/sub connection lost (%s: %s); reconnecting",
                    type(exc).__name__, exc,
                )  # fmt: skip
                await self._reconnect()

    async def _reconnect(self) -> None:
        delay = 0.05
        loop = asyncio.get_running_loop()
        while not self._closed:
            async with self._lock:
                old, self._pubsub = self._pubsub, None
                if old is not None:
                    with contextlib.suppress(Exception):
                        await old.aclose()
                for channel, ready in list(self._ready.items()):
                    if ready.done():
                        self._ready[channel] = loop.create_future()
                self._wake_all()
                pubsub = self._client.pubsub()
                try:
                    if self._ready:
                        await pubsub.subscribe(*self._ready)
                except REDIS_FAILURES as exc:
                    log.warning("job events: cannot subscribe again yet: %s", exc)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
                else:
                    self._pubsub = pubsub
                    self._ping_sent = None
                    self._last_traffic = loop.time()
                    self.reconnects += 1
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        """Stop reading, close the connection and fail every waiter with NotConnectedError."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            await cancel_and_wait(self._reader)
        async with self._lock:
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                self._pubsub = None
        closed = NotConnectedError("ResultStore is closed; make a new one")
        futures: list[asyncio.Future[Any]] = list(self._ready.values())
        for waiters in self._waiters.values():
            futures += waiters
        for future in futures:
            if not future.done():
                future.set_exception(closed)
                future.exception()
        self._waiters.clear()
        self._ready.clear()
