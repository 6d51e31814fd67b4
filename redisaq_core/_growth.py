"""A topic's groups: joined, and carried onto every stream a raise of its counts adds.

Retention that keeps what a group has not acknowledged (``trim="acked"``, and
``"delete-acked"``; natively on Redis 8.2) judges by the groups a stream
has. A stream a raise adds has none until a member of each group gains it, so
until then the server took every group as done with it: another group's
acknowledgements deleted its entries, and the ``ACKED MAXLEN`` of each XADD
trimmed them, before a lagging group ever read them. So before the count goes
up, every group of the topic is created on each stream to be added, at its
start: nothing written there is judged before every group can read it.
"""

from __future__ import annotations

import logging

from redis.exceptions import ResponseError

from ._failures import foreign_type, unless_foreign
from ._reads import create_groups
from ._scripts import CLEAR_FOREIGN, ENSURE_PARTITIONS
from .connection import AnyRedis
from .keys import TopicKeys, partition_count, priority_levels

__all__ = ["add_group", "add_member", "grow", "start_at_end"]

log = logging.getLogger(__name__)


async def add_group(client: AnyRedis, keys: TopicKeys, group: str) -> bool:
    """Add ``group`` to the topic's groups; whether it was not there.

    A groups key another client made of another type names none: it is replaced.
    """
    return await add_member(client, keys.groups, group)


async def start_at_end(client: AnyRedis, keys: TopicKeys, group: str) -> None:
    """Create ``group`` at the end (``$``) of every stream the topic has now.

    For a group new to the topic that starts at its latest entries: made on every
    stream at once, so that a partition gained later (its lease call failed as the
    member joined, or another member of the group took it first) starts there too,
    not at the stream's start. A group a stream has already is kept.
    """
    had, levels = await _stored_counts(client, keys)
    streams = [keys.stream(p, level) for p in range(had) for level in range(levels)]
    if streams:
        await create_groups(client, streams, [group], "$")


async def add_member(client: AnyRedis, key: str, *members: str) -> bool:
    """Add ``members`` to the set ``key``; whether any was not there.

    A key another client made of another type holds no member: it is replaced.
    """
    try:
        return bool(await client.sadd(key, *members))
    except ResponseError as exc:
        if not foreign_type(exc):
            raise
    log.warning("%s was no set; replaced", key)
    await CLEAR_FOREIGN(client, [key], ["set"])
    return bool(await client.sadd(key, *members))


async def grow(
    client: AnyRedis, keys: TopicKeys, partitions: int, *, exact: bool = False, priorities: int
) -> tuple[int, int]:
    """Raise the topic's counts to at least ``partitions`` and ``priorities``; return both.

    ``exact``: a stored partition count above ``partitions`` is an error (see
    ``ensure_partitions.lua``). Counts are never lowered.
    """
    had, levels = await _stored_counts(client, keys)
    added = [
        keys.stream(p, level)
        for p in range(max(partitions, had))
        for level in range(max(priorities, levels))
        if p >= had or level >= levels
    ]
    groups = await unless_foreign(client.smembers(keys.groups)) if added else None
    if groups:  # bytes as stored: a name of any bytes is a group
        await create_groups(client, added, sorted(groups), "0")
    count, raised = await ENSURE_PARTITIONS(
        client, [keys.meta], [partitions, 1 if exact else 0, priorities]
    )
    return int(count), int(raised)


async def _stored_counts(client: AnyRedis, keys: TopicKeys) -> tuple[int, int]:
    """The topic's partition count and priority levels as stored (none: 0 and 1)."""
    stored = await unless_foreign(client.hmget(keys.meta, "partitions", "priorities"))
    return (partition_count(stored[0]), priority_levels(stored[1])) if stored else (0, 1)
