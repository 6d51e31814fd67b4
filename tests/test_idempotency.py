"""Idempotent enqueue: a repeated call (a retry after a lost reply) writes nothing new."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from redisaq_core import ConfigurationError, Producer
from redisaq_core.keys import TopicKeys
from tests.helpers import eventually
from tests.proxy import FaultProxy


async def _entries(redis: Redis, topic: str, partitions: int = 1) -> int:
    keys = TopicKeys(topic)
    return sum([await redis.xlen(keys.stream(p)) for p in range(partitions)])


async def test_a_repeated_enqueue_returns_the_first_id_and_writes_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4) as producer:
        first = await producer.enqueue({"order": 1}, idempotency_key="order-1")
        again = await producer.enqueue({"order": 1}, idempotency_key="order-1")
        await producer.enqueue({"order": 2}, idempotency_key="order-2")
        await producer.enqueue({"order": 3})
        assert again == first
        assert await _entries(redis, topic, 4) == 3
        with pytest.raises(ConfigurationError, match="idempotency_key must be a non-empty"):
            await producer.enqueue({"order": 4}, idempotency_key="")
        with pytest.raises(
            ConfigurationError, match=r"at most 256 bytes, got 'éééé.*\(258 bytes\)"
        ):
            await producer.enqueue({"order": 4}, idempotency_key="é" * 129)
        with pytest.raises(ConfigurationError, match="at most 256 bytes"):
            await producer.submit({"order": 4}, idempotency_key="k" * 257)
        await producer.enqueue({"order": 4}, idempotency_key="k" * 256)
        with pytest.raises(ConfigurationError, match="idempotency_key must be text UTF-8"):
            await producer.enqueue({"order": 5}, idempotency_key="order-\ud800")
        assert await _entries(redis, topic, 4) == 4


async def test_without_a_partition_key_the_idempotency_key_picks_the_partition(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=8) as producer:
        for _ in range(5):  # round robin would spread these over 5 partitions
            await producer.enqueue({"n": 1}, idempotency_key="same")
        assert await _entries(redis, topic, 8) == 1


async def test_a_repeated_submit_returns_the_first_job(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        first = await producer.submit({"n": 1}, idempotency_key="job-1")
        again = await producer.submit({"n": 1}, idempotency_key="job-1")
        assert again.id == first.id
        assert await _entries(redis, topic) == 1
        assert (await first.status()).value == "queued"
        assert await redis.zcard(TopicKeys(topic).jobs(0)) == 1


async def test_a_batch_retried_after_a_partial_write_writes_only_what_is_missing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        payloads = [{"n": i} for i in range(6)]
        # The first attempt got as far as the first three entries.
        head = await producer.batch_enqueue(payloads[:3], idempotency_key="batch-7")
        ids = await producer.batch_enqueue(payloads, idempotency_key="batch-7")
        assert ids[:3] == head
        assert await _entries(redis, topic, 3) == 6


async def test_a_key_is_remembered_for_the_window_only(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, idempotency_window=1) as producer:
        first = await producer.enqueue({"n": 1}, idempotency_key="k")
        marker = TopicKeys(topic).once(0, "k")
        assert 0 < await redis.ttl(marker) <= 1
        await eventually(lambda: _gone(redis, marker), timeout=5)
        second = await producer.enqueue({"n": 1}, idempotency_key="k")
        assert second != first
        assert await _entries(redis, topic) == 2
    with pytest.raises(ConfigurationError, match="idempotency_window"):
        Producer(topic, redis_url=redis_url, idempotency_window=0)


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def _resent_after_a_lost_reply(
    redis_url: str, redis: Redis, topic: str, idempotency_key: str | None
) -> tuple[str, int]:
    """Enqueue through a proxy that loses the reply and then cuts the connection.

    The XADD reached Redis; the client never heard back and got a connection error, so it
    sends the same call again, as a producer that retries on errors does. Returns the id
    the retried call returned and the entries in the stream.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultProxy(port) as proxy, Producer(topic, redis_url=proxy.url) as producer:
        await producer.enqueue({"warm": 1}, idempotency_key="warm-up")
        proxy.drop_replies = True
        call = asyncio.create_task(producer.enqueue({"n": 1}, idempotency_key=idempotency_key))
        await eventually(lambda: _entries_at_least(redis, topic, 2), message="the XADD ran")
        assert not call.done()
        proxy.drop_replies = False
        await proxy.cut()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(call, 10)
        entry_id = await producer.enqueue({"n": 1}, idempotency_key=idempotency_key)
    return entry_id, await _entries(redis, topic) - 1


async def _entries_at_least(redis: Redis, topic: str, n: int) -> bool:
    return await _entries(redis, topic) >= n


@pytest.mark.single_node
async def test_a_call_resent_after_a_lost_reply_writes_one_entry(
    redis_url: str, redis: Redis, topic: str
) -> None:
    entry_id, entries = await _resent_after_a_lost_reply(redis_url, redis, topic, "pay-42")
    assert entries == 1
    stored = await redis.xrange(TopicKeys(topic).stream(0))
    assert stored[-1][0].decode() == entry_id


@pytest.mark.single_node
async def test_without_a_key_the_resent_call_writes_twice(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """Why the key exists: a call retried after its reply was lost writes again."""
    _, entries = await _resent_after_a_lost_reply(redis_url, redis, topic, None)
    assert entries == 2


async def test_a_key_shared_by_enqueue_and_submit_says_what_its_first_call_was(
    redis_url: str, topic: str
) -> None:
    # A submit repeating a plain enqueue's key has no job to return: it says so. Before, the
    # script failed on the marker (no job id in it), and a job schedule whose tick marker was
    # another client's retried until the tick was past its grace. An enqueue repeating a
    # submit's key returns the entry id alone (it returned "<entry id> <job id>").
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0}, idempotency_key="k1")
        for delay in (None, 60.0):
            with pytest.raises(ConfigurationError, match="'k1' was first used by a plain enqueue"):
                await producer.submit({"n": 1}, idempotency_key="k1", delay=delay)
        job = await producer.submit({"n": 2}, idempotency_key="k2")
        again = await producer.enqueue({"n": 3}, idempotency_key="k2")
        record = await job.record()
    assert record is not None and again == record.msg_id


@pytest.mark.parametrize("call", ["enqueue", "submit", "enqueue, delayed", "submit, delayed"])
async def test_a_marker_key_another_client_made_of_another_type_is_replaced(
    redis_url: str, redis: Redis, topic: str, call: str
) -> None:
    # Before, every call with that key failed with WRONGTYPE (the gateway answered 503,
    # and a schedule whose tick had that key stopped ticking).
    delay = 60.0 if "delayed" in call else None
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await redis.lpush(TopicKeys(topic).once(0, "k"), "another client's")
        send = producer.submit if call.startswith("submit") else producer.enqueue
        first = await send({"n": 1}, idempotency_key="k", delay=delay)
        again = await send({"n": 1}, idempotency_key="k", delay=delay)
    assert again == first or again.id == first.id
    keys = TopicKeys(topic)
    written = await redis.xlen(keys.stream(0)) + await redis.zcard(keys.delayed(0))
    assert written == 1
