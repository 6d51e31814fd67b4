"""Limits that keep a queue from losing data: payload size, and a server that evicts."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from redisaq_core import ConfigurationError, Producer, SerializationError
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys


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
    with caplog.at_level(logging.WARNING, logger="redisaq_core.retention"):
        async with server, Producer(topic, redis_url=server.url) as producer:
            await producer.enqueue({"n": 1})
    assert any("maxmemory-policy is allkeys-lru" in r.getMessage() for r in caplog.records)
