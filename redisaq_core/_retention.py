"""How partition streams are kept short: plain ``maxlen``, or trimming only what every group acked.

``Producer(maxlen=N)`` trims each partition stream to about N entries on every
XADD, whether or not the topic's groups have read them: a group that lags by
more than N loses messages (they are counted when found, see ``trimmed``).
``Producer(maxlen=N, trim="acked")`` never removes an entry some group of the
topic has not acknowledged; while a group lags, the stream grows past N.

- On a server with the ``ACKED`` option of XADD (Redis 8.2 and newer) every
  XADD carries it and the server does the work.
- On older servers (Redis 6.2, 7.x, Valkey 8) the producer emulates it: after
  about N/16 entries written to a partition, and every ``refresh_interval``,
  one script call per partition trims up to the oldest entry a group still
  needs (its oldest pending entry, or the entry after its last delivered one),
  read from XINFO GROUPS and the XPENDING summary: no scan of the stream.

``Producer(trim="delete-acked")`` (Redis 8.2 and newer) marks the topic so
that its consumers delete each entry once every group has acknowledged it
(XACKDEL with ``ACKED``): memory stays bounded by what some group still needs,
with no maxlen. A server without XACKDEL refuses it at connect with a
``ConfigurationError``; it is never emulated.

:func:`server_features` finds what the server can do once per client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from weakref import WeakKeyDictionary

from redis.exceptions import ResponseError

from ._codec import shown_text
from ._failures import REDIS_FAILURES, unless_foreign
from ._scripts import TRIM_ACKED
from .connection import AnyRedis
from .errors import ConfigurationError
from .keys import TopicKeys

__all__ = [
    "TRIM_MODES",
    "Retention",
    "ServerFeatures",
    "TrimMode",
    "deletes_acked",
    "server_features",
]

log = logging.getLogger(__name__)

_LAST_ID = "18446744073709551615-18446744073709551615"
_told: set[str] = set()  # topics warned about (delete-acked on a server without it)

TrimMode = Literal["maxlen", "acked", "delete-acked"]
TRIM_MODES: tuple[str, ...] = ("maxlen", "acked", "delete-acked")

_TRIM_CALL_LIMIT = 10_000
"""The most entries one emulated trim removes (the next call goes on)."""

_ACKED_OP = "="
"""The trim operator with ACKED: Redis 8.2.3 removes nothing with ``~`` and ACKED (measured)."""

_WARN_EVERY = 60.0
"""Seconds between two warnings that a lagging group holds a stream past maxlen."""


@dataclass(frozen=True)
class ServerFeatures:
    """What the connected server can do that not every supported server can."""

    acked_trim: bool
    """XADD/XTRIM take ``ACKED``, and XACKDEL exists (Redis 8.2 and newer)."""
    server: str = "redis"
    """``redis`` or ``valkey`` and the version, e.g. ``valkey 8.1.8``, for messages."""
    eviction: str | None = None
    """``maxmemory-policy`` (None where CONFIG GET is not allowed)."""


_features: WeakKeyDictionary[Any, ServerFeatures] = WeakKeyDictionary()


async def deletes_acked(client: AnyRedis, trim: object, topic: str) -> bool:
    """Whether a topic whose stored retention mode is ``trim`` deletes acknowledged entries.

    ``delete-acked`` needs Redis 8.2 (``XDELEX``); set by another client on an older
    server, acknowledged entries are kept, with a warning.
    """
    if trim is None or shown_text(trim) != "delete-acked":
        return False
    if (await server_features(client)).acked_trim:
        return True
    if topic not in _told:  # read again about once a minute: said once
        _told.add(topic)
        log.warning(
            "topic %s is set to delete-acked, which this server can't do: acknowledged "
            "entries are kept", topic,
        )  # fmt: skip
    return False


async def read_mode(
    client: AnyRedis, keys: TopicKeys, streams: Sequence[str], deleting: bool
) -> bool:
    """Whether the topic deletes acknowledged entries now (see :func:`deletes_acked`).

    ``deleting``: whether the caller did so far. A topic just set to "delete-acked"
    has ``streams`` rid of what every group acknowledged before (acknowledged then
    without deleting, it would stay for good).
    """
    now = await deletes_acked(client, await client.hget(keys.meta, "trim"), keys.topic)
    if now and not deleting and streams:
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.execute_command("XTRIM", stream, "MINID", "=", _LAST_ID, "ACKED")
        await pipe.execute(raise_on_error=False)
    return now


async def server_features(client: AnyRedis) -> ServerFeatures:
    """Ask the server once per client (INFO server) and remember the answer."""
    known = _features.get(client)
    if known is None:
        try:
            info: dict[str, Any] = await client.info("server")
        except ResponseError as exc:  # INFO refused (an ACL): assume the oldest server
            log.debug("server features unknown (%s): assuming Redis 6.2", exc)
            info = {}
        if info and all(isinstance(v, dict) for v in info.values()):
            info = next(iter(info.values()))  # a cluster client: one reply per node
        product = str(info.get("server_name", "redis")).lower()
        shown = str(info.get(f"{product}_version") or info.get("redis_version", "0.0.0"))
        found = re.match(r"(\d+)\.(\d+)", str(info.get("redis_version", "")))
        version = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        try:
            policy = await client.config_get("maxmemory-policy")
            values = [v for k, v in policy.items() if shown_text(k) == "maxmemory-policy"]
            eviction = shown_text(values[0]) if values else None
        except REDIS_FAILURES:  # managed services often refuse CONFIG
            eviction = None
        known = ServerFeatures(
            acked_trim=product == "redis" and version >= (8, 2),
            server=f"{product} {shown}",
            eviction=eviction,
        )
        log.debug("server features: %s", known)
        if eviction not in (None, "noeviction"):
            log.warning(
                "Redis maxmemory-policy is %s: under memory pressure the server may evict "
                "whole streams, losing messages; use noeviction for queues", eviction,
            )  # fmt: skip
        _features[client] = known
    return known


def check_trim(trim: Any, maxlen: int | None) -> TrimMode:
    """Validate ``Producer(trim=...)``; ``acked`` needs a ``maxlen``."""
    if trim not in TRIM_MODES:
        raise ConfigurationError(f"trim must be one of {', '.join(TRIM_MODES)}, got {trim!r}")
    if trim == "acked" and maxlen is None:
        raise ConfigurationError("trim='acked' needs a maxlen (the length to trim towards)")
    mode: TrimMode = trim
    return mode


class Retention:
    """A producer's trimming of its partition streams (see the module's text)."""

    def __init__(self, keys: TopicKeys, maxlen: int | None, approximate: bool, mode: TrimMode):
        self.keys = keys
        self.maxlen = maxlen
        self.approximate = approximate
        self.mode = mode
        self.emulated = False
        self.over_maxlen: dict[str, int] = {}
        """Entries held past maxlen by lagging groups, per stream key (last seen)."""
        self._groups: list[bytes] | None = []  # None: unknown (another client's key)
        self._written: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._warned = 0.0
        self._step = max(1, (maxlen or 0) // 16)

    async def start(self, client: AnyRedis) -> None:
        """Find out how to trim on this server, and the topic's groups."""
        if self.mode == "maxlen":
            return
        features = await server_features(client)
        if self.mode == "delete-acked" and not features.acked_trim:
            raise ConfigurationError(
                f"topic {self.keys.topic!r}: trim='delete-acked' needs XACKDEL (Redis 8.2 or "
                f"newer), and this server is {features.server}; use trim='acked' with a maxlen"
            )
        self.emulated = not features.acked_trim
        if self.emulated:
            await self.refresh_groups(client)
        log.debug(
            "topic %s: trim=acked %s", self.keys.topic, "emulated" if self.emulated else "native"
        )

    def xadd_options(self) -> list[Any]:
        """What every XADD of the producer carries after the key."""
        if self.maxlen is None or self.emulated:
            return []
        if self.mode != "maxlen":
            return ["ACKED", "MAXLEN", _ACKED_OP, self.maxlen]
        return ["MAXLEN", "~" if self.approximate else "=", self.maxlen]

    def wrote(self, client: AnyRedis, streams: Sequence[str]) -> None:
        """Count entries written; start an emulated trim of a stream every ``maxlen/16``."""
        if not self.emulated:
            return
        for stream in streams:
            n = self._written.get(stream, 0) + 1
            if n >= self._step and stream not in self._running:
                n = 0
                self._running[stream] = asyncio.create_task(self._trim(client, stream))
            self._written[stream] = n

    async def refresh_groups(self, client: AnyRedis) -> None:
        """Re-read the topic's group names (a new group keeps everything until it exists)."""
        names = await unless_foreign(client.smembers(self.keys.groups))
        if names is None:
            if self._groups is not None:
                log.warning(
                    "topic %s: %s is no set; trimming nothing", self.keys.topic, self.keys.groups
                )
            self._groups = None
            return
        # Bytes as stored: a name another client wrote that is no UTF-8 is still a group's.
        self._groups = sorted(n if isinstance(n, bytes) else str(n).encode() for n in names)

    async def sweep(self, client: AnyRedis, streams: Sequence[str]) -> None:
        """Trim every stream once (emulated), and warn about streams held past maxlen."""
        if self.mode == "maxlen" or self.maxlen is None:
            return
        if self.emulated:
            await self.refresh_groups(client)
            for stream in streams:
                if stream not in self._running:
                    await self._trim(client, stream)
        else:
            # The server trims on XADD; this catches up streams whose groups acknowledged
            # entries since the last XADD.
            assert self.maxlen is not None
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                pipe.execute_command("XTRIM", stream, "MAXLEN", _ACKED_OP, self.maxlen, "ACKED")
                pipe.xlen(stream)
            lengths = (await pipe.execute())[1::2]
            for stream, length in zip(streams, lengths, strict=True):
                self._held(stream, int(length))

    async def close(self) -> None:
        """Wait for trims under way."""
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _trim(self, client: AnyRedis, stream: str) -> None:
        assert self.maxlen is not None
        try:
            if self._groups is None:  # the groups are unknown: what one has not read stays
                return
            removed, length = await TRIM_ACKED(
                client, [stream], [self.maxlen, _TRIM_CALL_LIMIT, *self._groups]
            )
            self._held(stream, int(length))
            if int(removed):
                log.debug("topic %s: trimmed %s entries of %s", self.keys.topic, removed, stream)
        except REDIS_FAILURES as exc:
            log.warning("topic %s: cannot trim %s yet: %s", self.keys.topic, stream, exc)
        finally:
            if self._running.get(stream) is asyncio.current_task():
                del self._running[stream]

    def _held(self, stream: str, length: int) -> None:
        assert self.maxlen is not None
        # Approximate trimming leaves up to a node (100 entries by default) over maxlen.
        slack = 100 if self.approximate and self.emulated else 0
        over = length - self.maxlen if length > self.maxlen + slack else 0
        self.over_maxlen[stream] = over
        now = time.monotonic()
        if over and now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "topic %s: %s holds %d entries past maxlen=%d: a group has not "
                "acknowledged them (trim='acked' keeps them until it does)",
                self.keys.topic, stream, over, self.maxlen,
            )  # fmt: skip
