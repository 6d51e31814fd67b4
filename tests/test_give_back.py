"""A delivery that never reached a handler does not count against ``max_deliveries``.

Entries held behind a failed message when their partition is given up, and the
rest of a batch cut off at the lease's local deadline, were delivered but never
run: whoever claims them next must see that claim as the delivery that never
ran (``_give_back.py``). And a batch that fails holds back what its partition
has after it, in later batches of the same read too.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from redisaq_core import Consumer, Message, Producer
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}


async def _produce(redis_url: str, topic: str, n: int, partitions: int) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(n)])


@pytest.mark.parametrize("max_deliveries", [1, 2])
async def test_what_waited_behind_a_failure_at_a_stop_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str, max_deliveries: int
) -> None:
    # Message 15 fails as the consumer is told to stop: 16-19 never ran. The next member
    # gets them as first deliveries (they were dead-lettered unrun with max_deliveries=1).
    await _produce(redis_url, topic, 40, partitions=1)
    calls: dict[int, list[int]] = {}
    options = {"batch_size": 10, "max_deliveries": max_deliveries, **FAST}
    consumer = Consumer(topic, redis_url=redis_url, retry_backoff=5.0, **options)
    stopping: list[asyncio.Task[None]] = []

    async def fails_at_15(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)
        if m.payload["n"] == 15:
            stopping.append(asyncio.create_task(consumer.stop()))
            raise RuntimeError("fails as the consumer stops")

    task = asyncio.create_task(consumer.process(fails_at_15))
    await eventually(lambda: bool(stopping))
    await stopping[0]
    await task
    await consumer.close()
    first_owner = set(calls)
    assert first_owner.isdisjoint(range(16, 20))

    async def handle(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)

    after = Consumer(topic, redis_url=redis_url, **options)
    async with Running(after, handle):
        # 16-39, and 15 again unless it was dead-lettered on its first (and last) delivery
        await eventually(lambda: after.stats.handled == 24 + (max_deliveries > 1))
    assert {n: d[0] for n, d in calls.items() if n not in first_owner} == {
        n: 1 for n in range(16, 40)
    }
    dead = await redis.xlen(TopicKeys(topic).dead_letters(0))
    assert dead == (1 if max_deliveries == 1 else 0)  # only 15, which ran and failed


async def test_what_waited_behind_a_failure_at_a_hand_over_comes_as_a_first_delivery(
    redis_url: str, topic: str
) -> None:
    # The first message of each partition fails on the first member; a second member
    # joins during the retry's backoff and takes one partition with what waited behind it.
    await _produce(redis_url, topic, 40, partitions=2)
    ran: dict[int, list[tuple[str, int]]] = {}
    failed: set[int] = set()

    def handler(who: str) -> object:
        async def handle(m: Message) -> None:
            ran.setdefault(m.payload["n"], []).append((who, m.deliveries))
            if who == "first" and m.partition not in failed:
                failed.add(m.partition)
                raise RuntimeError("the first message of each partition fails once")

        return handle

    first = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=3.0, **FAST)
    async with Running(first, handler("first")):
        await eventually(lambda: len(failed) == 2)
        second = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
        async with Running(second, handler("second")):
            await eventually(lambda: len(second.assigned_partitions) == 1)
            await eventually(lambda: len(ran) == 40, timeout=15)
    on_second = {n: calls[0] for n, calls in ran.items() if calls[0][0] == "second"}
    assert on_second
    assert {n: c for n, c in on_second.items() if c[1] != 1} == {}


@pytest.mark.parametrize("max_deliveries", [1, 3])
async def test_the_rest_of_a_batch_cut_at_the_lease_deadline_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str, max_deliveries: int
) -> None:
    # Handlers that block the loop for 0.15 s each pass the lease's local deadline (0.8 x
    # 1.5 s) within a batch of 10: the rest is left pending and claimed back by the same
    # member, whose lease never lapsed. Those claims count as first deliveries.
    await _produce(redis_url, topic, 30, partitions=1)
    calls: dict[int, list[int]] = {}

    async def blocking(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)
        time.sleep(0.15)  # CPU-bound work: the heartbeat waits too

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, max_deliveries=max_deliveries,
        heartbeat_interval=0.5, poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, blocking):
        await eventually(lambda: consumer.stats.handled == 30, timeout=30)
    assert consumer.stats.fenced == 0
    assert consumer.stats.reclaimed > 0  # the cut happened
    assert sorted(calls) == list(range(30))
    assert {n: d for n, d in calls.items() if d != [1]} == {}
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 0


async def test_a_failed_batch_holds_back_what_its_partition_has_in_the_next_batch(
    redis_url: str, topic: str
) -> None:
    # 15 messages over 2 partitions (8 and 7), read together with batch_size 10: the first
    # batch has partition 0's 8 and partition 1's first 2, the second partition 1's last 5.
    # The first batch fails: partition 1's last 5 wait for its first 2.
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        for i in range(15):
            await producer.enqueue({"n": i})
    order: dict[int, list[int]] = {0: [], 1: []}
    batches: list[list[int]] = []

    async def fails_first(batch: list[Message]) -> None:
        batches.append([m.payload["n"] for m in batch])
        if len(batches) == 1:
            raise RuntimeError("the first batch fails")
        for m in batch:
            order[m.partition].append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=0.05, **FAST)
    async with Running(consumer, fails_first, batch=True):
        await eventually(lambda: consumer.stats.handled == 15)
    assert len(batches[0]) == 10  # both partitions were read together
    assert order == {0: list(range(0, 15, 2)), 1: list(range(1, 15, 2))}
