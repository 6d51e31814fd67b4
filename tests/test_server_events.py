"""What the server does under a blocked read: deletes, flushes, demotions; on every server.

Redis 6.2 ends a read blocked on a deleted stream quietly, Redis 7.0 answers
``UNBLOCKED the stream key no longer exists``, Redis 8.2 and Valkey answer
NOGROUP; a primary demoted to a replica answers ``UNBLOCKED force unblock``
on all of them, then READONLY to writes. A consumer carries on through each.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import Consumer, ConsumerError, Message, Producer
from redisaq_core._failures import Recovery, recovery_for
from redisaq_core.embedded import EmbeddedRedis, free_port
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.5}


async def _blocked_reads(client: Redis) -> int:
    """How many clients are blocked in XREADGROUP on the server right now."""
    clients: list[dict[str, Any]] = await client.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


async def _run_through(
    url: str, topic: str, event: Any, *, partitions: int = 2, timeout: float = 15
) -> None:
    """Consume ``topic``, apply ``event(client)`` while the read is blocked, check it goes on."""
    client = Redis.from_url(url)
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=url, **FAST)
    producer = Producer(topic, redis_url=url, init_partitions=partitions)
    running = Running(consumer, handle)
    try:
        async with producer, running:
            await producer.batch_enqueue([{"n": i} for i in range(4)])
            await eventually(lambda: sorted(seen) == [0, 1, 2, 3])
            await eventually(lambda: _blocked_reads(client), message="a blocked read")
            await event(client)
            await producer.batch_enqueue([{"n": i} for i in range(10, 16)])
            await eventually(
                lambda: set(range(10, 16)) <= set(seen), timeout=timeout, message="after event"
            )
            assert running.task is not None and not running.task.done()
    finally:
        await client.aclose()


async def test_stream_deleted_under_a_blocked_read(redis_url: str, topic: str) -> None:
    keys = TopicKeys(topic)

    async def delete(client: Redis) -> None:
        await client.delete(keys.stream(0), keys.stream(1))

    await _run_through(redis_url, topic, delete)


async def test_group_destroyed_under_a_blocked_read(redis_url: str, topic: str) -> None:
    keys = TopicKeys(topic)

    async def destroy(client: Redis) -> None:
        for p in range(2):
            await client.xgroup_destroy(keys.stream(p), "default")

    await _run_through(redis_url, topic, destroy)


async def test_flushall_under_a_blocked_read(topic: str) -> None:
    async with EmbeddedRedis() as server:

        async def flush(client: Redis) -> None:
            await client.flushall()

        await _run_through(server.url, topic, flush)


@pytest.mark.single_node
async def test_primary_demoted_and_promoted_under_a_running_consumer(topic: str) -> None:
    """REPLICAOF (as in a failover): the read is force-unblocked, writes answer READONLY."""
    async with EmbeddedRedis() as server:

        async def demote_then_promote(client: Redis) -> None:
            await client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
            info = await client.info("replication")
            assert info["role"] == "slave"
            # Writes are refused while demoted: the producer's would be too.
            with pytest.raises(Exception, match="read only replica"):
                await client.set("x", 1)
            await eventually(lambda: _no_blocked_master_reads(client), timeout=5)
            await client.execute_command("REPLICAOF", "NO", "ONE")

        await _run_through(server.url, topic, demote_then_promote, timeout=20)


async def _no_blocked_master_reads(client: Redis) -> bool:
    return await _blocked_reads(client) == 0


async def test_an_error_no_retry_can_fix_stops_the_consumer_with_the_reply(
    redis_url: str, topic: str
) -> None:
    """A partition stream replaced by a string: WRONGTYPE, a clear error, no spinning."""
    keys = TopicKeys(topic)
    client = Redis.from_url(redis_url)
    consumer = Consumer(topic, redis_url=redis_url, **FAST)

    async def handle(m: Message) -> None:
        return None

    try:
        async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
            await producer.enqueue({"n": 1})
        task = asyncio.create_task(consumer.process(handle))
        await eventually(lambda: _blocked_reads(client))
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.stream(0))
            pipe.set(keys.stream(0), "not a stream")
            await pipe.execute()
        await eventually(task.done, timeout=10, message="consumer stopped")
        with pytest.raises(ConsumerError, match="WRONGTYPE"):
            task.result()
        assert not consumer.running
    finally:
        await consumer.close()
        await client.delete(keys.stream(0))
        await client.aclose()


@pytest.mark.parametrize(
    ("reply", "recovery"),
    [
        ("NOGROUP No such key 's' or consumer group 'g'", Recovery.RECREATE),
        ("UNBLOCKED the stream key no longer exists", Recovery.RECREATE),
        ("UNBLOCKED force unblock from blocking operation, instance state changed", Recovery.RETRY),
        ("LOADING Redis is loading the dataset in memory", Recovery.RETRY),
        ("BUSY Redis is busy running a script", Recovery.RETRY),
        ("MISCONF Redis is configured to save RDB snapshots", Recovery.RETRY),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", Recovery.STOP),
        ("NOPERM this user has no permissions", Recovery.STOP),
        ("ERR unknown command 'XFOO'", Recovery.STOP),
        (
            "Command # 1 (XAUTOCLAIM s g c 0 0-0 COUNT 10) of pipeline caused error: NOGROUP "
            "No such key 's' or consumer group 'g'",
            Recovery.RECREATE,
        ),
        (
            "ERR Error running script (call to f_1): @user_script:8: @user_script: 8: "
            "-NOGROUP No such key 's' or consumer group 'g'",
            Recovery.RECREATE,
        ),
        (  # a slot migrating away under a script (seen resharding a cluster): retried
            "Error running script (call to f_1c4b): @user_script:34: @user_script: 34: Lua "
            "script attempted to access a non local key in a cluster node",
            Recovery.RETRY,
        ),
    ],
)
def test_recovery_policy(reply: str, recovery: Recovery) -> None:
    from redis._parsers.base import BaseParser

    assert recovery_for(BaseParser.parse_error(reply)) is recovery
