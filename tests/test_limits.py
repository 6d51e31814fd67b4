"""Limits that keep a queue from losing data: payload size, and a server that evicts."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    Consumer,
    Message,
    Producer,
    SerializationError,
    ServerOutOfMemoryError,
)
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys
from tests.helpers import eventually


async def test_a_payload_over_the_limit_is_refused_before_anything_is_written(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, max_payload_bytes=1000) as producer:
        with pytest.raises(SerializationError, match=r"payload of 1,0\d\d bytes is over "):
            await producer.enqueue({"blob": "x" * 1000})
        with pytest.raises(SerializationError, match="max_payload_bytes=1,000"):
            await producer.batch_enqueue([{"n": 1}, {"blob": "x" * 2000}])
        with pytest.raises(SerializationError, match="max_payload_bytes=1,000"):
            await producer.submit({"blob": "x" * 2000})
        assert await redis.xlen(TopicKeys(topic).stream(0)) == 0
        await producer.enqueue({"blob": "x" * 900})  # under the limit: fine
    async with Producer(topic, redis_url=redis_url) as default:
        assert default.max_payload_bytes == 1_048_576
        with pytest.raises(SerializationError, match="max_payload_bytes=1,048,576"):
            await default.enqueue("x" * 1_048_577)


def test_a_bad_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_payload_bytes"):
        Producer("t", redis_url="redis://127.0.0.1:1/0", max_payload_bytes=0)


async def test_an_evicting_server_is_warned_about(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedRedis(extra_args=["--maxmemory-policy", "allkeys-lru"])
    with caplog.at_level(logging.WARNING, logger="redisaq_core"):
        async with server, Producer(topic, redis_url=server.url) as producer:
            await producer.enqueue({"n": 1})
    assert any("maxmemory-policy is allkeys-lru" in r.getMessage() for r in caplog.records)


async def test_a_consumer_started_while_redis_is_out_of_memory_joins_once_it_is_not(
    topic: str,
) -> None:
    async with EmbeddedRedis() as server:
        client = Redis.from_url(server.url)
        async with Producer(topic, redis_url=server.url) as producer:
            await producer.batch_enqueue([{"n": i} for i in range(5)])
        await client.config_set("maxmemory", "1")  # below what is used: writes get OOM
        with pytest.raises(Exception, match=r"used memory > .maxmemory."):
            await client.set("probe", 1)
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=server.url, heartbeat_interval=0.2, poll_interval=0.1)
        task = asyncio.create_task(consumer.process(handle))
        await asyncio.sleep(0)
        # The consumer's join was refused (OOM) at least once, and it is still there.
        await eventually(lambda: _oom_errors(client, 2), message="the join refused")
        assert not task.done() and seen == []
        await client.config_set("maxmemory", "0")
        await eventually(lambda: sorted(seen) == list(range(5)), timeout=15)
        await consumer.stop()
        await task
        await consumer.close()
        await client.aclose()


async def _oom_errors(client: Redis, at_least: int) -> bool:
    stats = await client.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0)) >= at_least


async def test_a_user_without_info_or_config_can_still_produce_and_consume(topic: str) -> None:
    """Managed services refuse INFO or CONFIG to applications: features fall back, no failure."""
    async with EmbeddedRedis() as server:
        admin = Redis.from_url(server.url)
        await admin.execute_command(
            "ACL", "SETUSER", "app", "on", ">secret", "~*", "&*", "+@all", "-info", "-config"
        )
        await admin.aclose()
        url = server.url.replace("redis://", "redis://app:secret@")
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])

        async with Producer(topic, redis_url=url, maxlen=10, trim="acked") as producer:
            await producer.batch_enqueue([{"n": i} for i in range(3)])
        consumer = Consumer(topic, redis_url=url, heartbeat_interval=0.2, poll_interval=0.1)
        task = asyncio.create_task(consumer.process(handle))
        await eventually(lambda: sorted(seen) == [0, 1, 2])
        await consumer.stop()
        await task
        await consumer.close()


async def test_a_write_refused_for_memory_raises_the_librarys_error_and_keeps_what_is_stored(
    topic: str,
) -> None:
    async with EmbeddedRedis() as server, Producer(topic, redis_url=server.url) as producer:
        client = Redis.from_url(server.url)
        kept = await producer.enqueue({"n": 0})
        await client.config_set("maxmemory", "1")
        with pytest.raises(ServerOutOfMemoryError, match="the message was not enqueued"):
            await producer.enqueue({"n": 1})
        with pytest.raises(ServerOutOfMemoryError, match="the message was not enqueued"):
            await producer.enqueue({"n": 1}, idempotency_key="k")
        with pytest.raises(ServerOutOfMemoryError, match="idempotency_key"):
            await producer.batch_enqueue([{"n": 2}, {"n": 3}])
        with pytest.raises(ServerOutOfMemoryError, match="job was not submitted") as caught:
            await producer.submit({"n": 4})
        assert topic in str(caught.value)
        await client.config_set("maxmemory", "0")
        stored = await client.xrange(TopicKeys(topic).stream(0))
        assert [entry_id.decode() for entry_id, _ in stored] == [kept]
        assert await producer.enqueue({"n": 1}, idempotency_key="k") != kept
        await client.aclose()
