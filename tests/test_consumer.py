"""Consumer against a real Redis: delivery, groups, rebalancing, retries, bad input."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    Consumer,
    DeadLetters,
    DuplicateConsumerError,
    Message,
    Producer,
)
from redisaq_core._codec import default_deserializer
from redisaq_core._delivery import ConsumerStats, OwnedPartition, Reader
from redisaq_core._reads import XREADGROUP, xreadgroup_args
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}


async def _produce(redis_url: str, topic: str, n: int, partitions: int = 4, **kw: Any) -> list[str]:
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        return await producer.batch_enqueue([{"n": i, "k": i % 13} for i in range(n)], **kw)


async def _pending(redis: Redis, topic: str, group: str, partitions: int) -> int:
    keys = TopicKeys(topic)
    total = 0
    for p in range(partitions):
        info: Any = await redis.xpending(keys.stream(p), group)
        total += int(info["pending"])
    return total


async def test_process_handles_every_message_and_acks(
    redis_url: str, redis: Redis, topic: str
) -> None:
    await _produce(redis_url, topic, 500, partition_key="k")
    seen: list[Message] = []

    async def handle(m: Message) -> None:
        seen.append(m)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=50, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(seen) == 500)
        assert consumer.assigned_partitions == [0, 1, 2, 3]
    assert sorted(m.payload["n"] for m in seen) == list(range(500))
    assert await _pending(redis, topic, "default", 4) == 0
    first = seen[0]
    assert first.topic == topic and first.group == "default" and first.deliveries == 1
    assert first.partition_key == "k" and first.enqueued_at and first.created_at
    # per key, handled in the order produced
    for key in range(13):
        ns = [m.payload["n"] for m in seen if m.payload["k"] == key]
        assert ns == sorted(ns)


async def test_process_batch_gets_lists_of_at_most_batch_size(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 300, partitions=3)
    sizes: list[int] = []

    async def handle(batch: list[Message]) -> None:
        sizes.append(len(batch))

    consumer = Consumer(topic, redis_url=redis_url, batch_size=25, **FAST)
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: sum(sizes) == 300)
    assert max(sizes) <= 25


async def test_each_group_gets_every_message(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 100)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def collector(name: str) -> Any:
        async def handle(m: Message) -> None:
            got[name].append(m.payload["n"])

        return handle

    ca = Consumer(topic, group_name="a", redis_url=redis_url, **FAST)
    cb = Consumer(topic, group_name="b", redis_url=redis_url, **FAST)
    async with Running(ca, collector("a")), Running(cb, collector("b")):
        await eventually(lambda: len(got["a"]) == 100 and len(got["b"]) == 100)
    assert sorted(got["a"]) == sorted(got["b"]) == list(range(100))


async def test_start_latest_skips_earlier_messages(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 20, partitions=1)
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, start="latest", **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions == [0])
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.enqueue({"n": 999})
        await eventually(lambda: seen == [999])


async def test_members_split_partitions_and_rebalance_when_one_leaves(
    redis_url: str, topic: str
) -> None:
    await _produce(redis_url, topic, 0, partitions=6)
    handled: Counter[str] = Counter()

    def handler(name: str) -> Any:
        async def handle(m: Message) -> None:
            handled[name] += 1

        return handle

    consumers = [
        Consumer(topic, consumer_name=f"c{i}", redis_url=redis_url, **FAST) for i in range(3)
    ]
    runs = [Running(c, handler(c.name)) for c in consumers]
    for r in runs:
        await r.__aenter__()
    try:
        await eventually(lambda: [len(c.assigned_partitions) for c in consumers] == [2, 2, 2])
        owned = [p for c in consumers for p in c.assigned_partitions]
        assert sorted(owned) == list(range(6))
        before = {c.name: set(c.assigned_partitions) for c in consumers}
        await runs[2].__aexit__(None, None, None)
        await eventually(lambda: [len(c.assigned_partitions) for c in consumers[:2]] == [3, 3])
        for c in consumers[:2]:
            assert before[c.name] <= set(c.assigned_partitions)  # sticky: kept what it had
        await _produce(redis_url, topic, 60, partitions=6)
        await eventually(lambda: handled["c0"] + handled["c1"] == 60)
    finally:
        for r in runs[:2]:
            await r.__aexit__(None, None, None)


async def test_more_members_than_partitions_idle_but_stay(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 0, partitions=2)

    async def handle(m: Message) -> None:
        return None

    consumers = [Consumer(topic, redis_url=redis_url, **FAST) for _ in range(3)]
    runs = [Running(c, handle) for c in consumers]
    for r in runs:
        await r.__aenter__()
    try:
        # Both at once: [0, 1, 1] also holds while the third has not joined yet.
        await eventually(
            lambda: (
                sorted(len(c.assigned_partitions) for c in consumers) == [0, 1, 1]
                and all(len(c.members) == 3 for c in consumers)
            )
        )
    finally:
        for r in runs:
            await r.__aexit__(None, None, None)


async def test_partition_increase_reaches_running_consumers(redis_url: str, topic: str) -> None:
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.partition or 0)

    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    producer = Producer(topic, redis_url=redis_url, init_partitions=2)
    async with producer, Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions == [0, 1])
        await producer.request_partition_increase(5)
        await eventually(lambda: consumer.assigned_partitions == [0, 1, 2, 3, 4])
        await producer.batch_enqueue([{"n": i} for i in range(10)])
        await eventually(lambda: set(seen) == {0, 1, 2, 3, 4})


async def test_duplicate_live_name_is_refused(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 0, partitions=1)

    async def handle(m: Message) -> None:
        return None

    first = Consumer(topic, consumer_name="worker-1", redis_url=redis_url, **FAST)
    async with Running(first, handle):
        second = Consumer(topic, consumer_name="worker-1", redis_url=redis_url, **FAST)
        with pytest.raises(DuplicateConsumerError, match="'worker-1' is already used"):
            await second.process(handle)
        await second.close()
        assert first.assigned_partitions == [0]


async def test_failed_message_is_retried_in_order_then_succeeds(
    redis_url: str, redis: Redis, topic: str
) -> None:
    await _produce(redis_url, topic, 5, partitions=1)
    calls: list[tuple[int, int]] = []

    async def handle(m: Message) -> None:
        calls.append((m.payload["n"], m.deliveries))
        if m.payload["n"] == 2 and m.deliveries < 3:
            raise RuntimeError("not yet")

    consumer = Consumer(topic, redis_url=redis_url, retry_backoff=0.01, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(calls) == 7)
    assert calls == [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (3, 1), (4, 1)]
    assert consumer.stats.retried == 2 and consumer.stats.failed == 2
    assert await _pending(redis, topic, "default", 1) == 0


async def test_poison_message_goes_to_dead_letters(
    redis_url: str, redis: Redis, topic: str
) -> None:
    ids = await _produce(redis_url, topic, 4, partitions=1)
    ok: list[int] = []

    async def handle(m: Message) -> None:
        if m.payload["n"] == 1:
            raise ValueError("bad order")
        ok.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, retry_backoff=0.01, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: ok == [0, 2, 3])
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        records = await dl.list()
        assert await dl.count() == 1
        (record,) = records
        assert record.msg_id == ids[1] and record.deliveries == 3
        assert record.error == "bad order" and record.error_type == "ValueError"
        assert record.payload == {"n": 1, "k": 1} and record.group == "default"
        assert record.consumer == consumer.name and record.partition == 0
        assert await _pending(redis, topic, "default", 1) == 0
        assert await dl.replay([record.id]) == 1
        assert await dl.count() == 0
    entries: Any = await redis.xrange(TopicKeys(topic).stream(0))
    assert len(entries) == 5  # the replayed copy is a new entry
    # A partition count another client spoilt reads as none here too (it raised ValueError).
    await redis.hset(TopicKeys(topic).meta, "partitions", "1.0")
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        assert await dl.count() == 0 and await dl.list() == []


async def test_undecodable_entry_goes_to_dead_letters_at_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    await _produce(redis_url, topic, 0, partitions=1)
    stream = TopicKeys(topic).stream(0)
    await redis.xadd(stream, {b"p": b"{not json"})
    await redis.xadd(stream, {b"junk": b"\xff"})
    await _produce(redis_url, topic, 1, partitions=1)
    ok: list[Any] = []

    async def handle(m: Message) -> None:
        ok.append(m.payload)

    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: ok == [{"n": 0, "k": 0}])
        await eventually(lambda: consumer.stats.dead_lettered == 2)
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        records = await dl.list()
    assert [r.deliveries for r in records] == [1, 1]
    assert all(r.error_type == "SerializationError" for r in records)
    assert records[1].fields == {b"junk": b"\xff"}


async def test_handler_timeout_counts_as_failure(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue(Message(topic=topic, payload={"slow": True}, timeout=0.05))
    attempts: list[int] = []

    async def handle(m: Message) -> None:
        attempts.append(m.deliveries)
        await asyncio.sleep(10)

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.stats.dead_lettered == 1)
    assert attempts == [1, 2]


async def test_stop_is_idempotent_and_leaves_the_group(
    redis_url: str, redis: Redis, topic: str
) -> None:
    await _produce(redis_url, topic, 0, partitions=2)

    async def handle(m: Message) -> None:
        return None

    consumer = Consumer(topic, consumer_name="solo", redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions == [0, 1])
    await consumer.stop()
    keys = TopicKeys(topic)
    assert await redis.zscore(keys.members("default"), "solo") is None
    assert await redis.exists(keys.lease(0, "default"), keys.lease(1, "default")) == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"heartbeat_interval": 2, "heartbeat_ttl": 1}, "heartbeat_ttl must be greater"),
        ({"group_name": "a b"}, "group_name must not contain"),
        ({"start": "middle"}, "start must be 'earliest' or 'latest'"),
        ({"max_deliveries": 0}, "max_deliveries must be an integer >= 1"),
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
    ],
)
def test_bad_consumer_configuration(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        Consumer("t", **kwargs)


async def test_failed_batch_dead_letters_only_the_culprit(redis_url: str, topic: str) -> None:
    await _produce(redis_url, topic, 6, partitions=1)
    handled: list[int] = []
    calls: list[list[int]] = []

    async def handle(batch: list[Message]) -> None:
        calls.append([m.payload["n"] for m in batch])
        if any(m.payload["n"] == 3 for m in batch):
            raise RuntimeError("3 is poison")
        handled.extend(m.payload["n"] for m in batch)

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=6, max_deliveries=2, retry_backoff=0.01, **FAST
    )
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: consumer.stats.dead_lettered == 1)
        await eventually(lambda: sorted(handled) == [0, 1, 2, 4, 5])
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        (record,) = await dl.list()
    assert record.payload["n"] == 3
    assert handled == [0, 1, 2, 4, 5]  # order kept
    assert calls[0] == [0, 1, 2, 3, 4, 5]


async def test_a_failed_batch_of_two_partitions_dead_letters_only_the_culprit(
    redis_url: str, topic: str
) -> None:
    # 0 (partition 0) is poison, 1 (partition 1) is not; their batch fails. Each partition's
    # first message is retried alone, and both retries are due at once: they ran together,
    # failed together, and 1 was dead-lettered with 0.
    await _produce(redis_url, topic, 2, partitions=2)
    calls: list[list[tuple[int, int]]] = []
    handled: list[int] = []

    async def handle(batch: list[Message]) -> None:
        calls.append([(m.payload["n"], m.partition) for m in batch])
        if any(m.payload["n"] == 0 for m in batch):
            raise RuntimeError("0 is poison")
        handled.extend(m.payload["n"] for m in batch)

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, max_deliveries=3, retry_backoff=0, **FAST
    )
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: consumer.stats.dead_lettered + len(handled) >= 2)
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        dead = [record.payload["n"] for record in await dl.list()]
    assert {p for _, p in calls[0]} == {0, 1}
    assert dead == [0] and handled == [1], calls


async def test_a_hung_handler_is_cut_off_after_max_processing_time(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """The loop keeps heartbeating, but a handler that never returns can't hold the partition."""
    await _produce(redis_url, topic, 3, partitions=1)
    calls: list[tuple[int, int]] = []

    async def handle(m: Message) -> None:
        calls.append((m.payload["n"], m.deliveries))
        if m.payload["n"] == 1:
            await asyncio.Event().wait()  # hangs for good

    consumer = Consumer(
        topic, redis_url=redis_url, max_processing_time=0.3, max_deliveries=2,
        retry_backoff=0.01, **FAST,
    )  # fmt: skip
    async with Running(consumer, handle):
        await eventually(lambda: (2, 1) in calls, timeout=10)
    assert calls == [(0, 1), (1, 1), (1, 2), (2, 1)]
    assert consumer.stats.timed_out == 2
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        (record,) = await dl.list()
    assert record.payload["n"] == 1 and "within 0.3s" in record.error


async def test_a_stop_while_acknowledgements_go_out_does_not_wait_for_a_blocking_read(
    redis_url: str, topic: str
) -> None:
    """stop() lands while the consumer sends the last batch's acknowledgements: the read
    that follows returns at once rather than blocking for its whole poll interval."""
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(10)])
    seen = asyncio.Event()
    handled: list[int] = []

    async def handle(m: Message) -> None:
        handled.append(m.payload["n"])
        if len(handled) == 10:
            seen.set()

    consumer = Consumer(topic, redis_url=redis_url, poll_interval=30, heartbeat_ttl=30)
    task = asyncio.create_task(consumer.process(handle))
    try:
        await asyncio.wait_for(seen.wait(), 10)
        await asyncio.wait_for(consumer.stop(), 3)  # the read would block for 24 s
    finally:
        await consumer.stop()
        await task
        await consumer.close()


async def test_entries_of_every_kind_keep_stream_order_and_their_times(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Plain entries are read by one fast loop that parses an id's time once per millisecond;
    # any other entry sends its stream through the general decoder. Ids of other lengths
    # (written by another client) must not share a cached time with their neighbours.
    await _produce(redis_url, topic, 0, partitions=1)
    stream = TopicKeys(topic).stream(0)
    ids = ["5-0", "5-1", "1000000000000-0", "1000000000000-7", "1000000000001-0",
           "10000000000000-0", "10000000000001-0", "10000000000002-0", "10000000000002-1",
           "10000000000003-0", "10000000000003-1"]  # fmt: skip
    for n, entry_id in enumerate(ids):
        fields = {b"p": b'{"n": %d}' % n}
        if n == 7:
            fields[b"k"] = b"key"  # another field: this stream goes entry by entry
        if n == 9:
            fields = {b"p": b"{not json"}  # undecodable: dead-lettered, the rest go on
        await redis.xadd(stream, fields, id=entry_id)
    seen: list[Message] = []

    async def handle(m: Message) -> None:
        seen.append(m)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=50, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(seen) == len(ids) - 1)
        await eventually(lambda: consumer.stats.dead_lettered == 1)
    wanted = [i for n, i in enumerate(ids) if n != 9]
    assert [m.msg_id for m in seen] == wanted
    assert [m.payload["n"] for m in seen] == [n for n in range(len(ids)) if n != 9]
    assert [m.enqueued_at for m in seen] == [int(i.split("-")[0]) / 1000 for i in wanted]
    assert [m.partition_key for m in seen] == [None] * 7 + ["key"] + [None] * 2
    assert await _pending(redis, topic, "default", 1) == 0


async def test_a_batch_of_the_largest_size_is_acknowledged_whole(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 5,000 ids in one acknowledgement: the script acknowledges them in chunks.
    await _produce(redis_url, topic, 5000, partitions=1)
    seen: list[int] = []

    async def handle(batch: list[Message]) -> None:
        seen.extend(m.payload["n"] for m in batch)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=5000, **FAST)
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: len(seen) == 5000)
        await eventually(lambda: consumer.stats.handled == 5000)
    assert seen == list(range(5000))
    assert await _pending(redis, topic, "default", 1) == 0


@pytest.mark.single_node
@pytest.mark.parametrize("deserializer", ["default", "pass-through"])
async def test_a_reply_redis_py_converted_reads_as_the_servers_own(
    redis: Redis, topic: str, deserializer: str
) -> None:
    # On a cluster the reads come back with each entry's fields a dict, where a dict of
    # two fields must not be taken for a payload and its value (a pass-through
    # deserializer accepts anything, so nothing would fail to show it).
    keys = TopicKeys(topic)
    stream = keys.stream(0)
    await redis.xadd(stream, {b"p": b'{"n": 1}', b"k": b"n"})
    await redis.xadd(stream, {b"p": b'{"n": 2}', b"k": b"n"})
    await redis.xgroup_create(stream, "g", id="0")
    await redis.xgroup_create(stream, "h", id="0")
    chosen = default_deserializer if deserializer == "default" else (lambda raw: raw)
    replies = [
        await redis.xreadgroup("g", "c", {stream: ">"}, count=10),  # converted by redis-py
        await redis.execute_command(
            XREADGROUP, *xreadgroup_args("h", "c", {stream: ">"}, 10, None)
        ),
    ]
    read = []
    for reply in replies:
        reader = Reader(
            keys, "g", "c", "tok", batch_size=10, deserializer=chosen, stats=ConsumerStats()
        )
        part = OwnedPartition(0, keys.lease(0, "g"), [stream], valid_until=0.0)
        read.append(
            [(m.payload, m.partition_key) for m in reader._received(reply, {stream: (part, 0)})]
        )
    assert read[0] == read[1]
    if deserializer == "default":
        assert read[0] == [({"n": 1}, "n"), ({"n": 2}, "n")]
    else:
        assert read[0] == [(b'{"n": 1}', "n"), (b'{"n": 2}', "n")]


async def test_a_handler_that_stops_its_consumer_does_not_wait_for_itself(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # With messages of two partitions in one read, ``process`` runs each partition's handler
    # in a task of its own, which stop() did not take for a handler: it waited for the
    # consumer, the consumer for the handler, until shutdown_timeout cancelled the handler.
    # Its message, handled, was then left pending and handled again by the next member.
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(20)])
    handled: list[int] = []

    async def handle(m: Message) -> None:
        handled.append(m.payload["n"])
        if len(handled) == 1:
            await asyncio.wait_for(consumer.stop(), 2)  # returns at once, from a handler

    consumer = Consumer(topic, redis_url=redis_url, batch_size=50, shutdown_timeout=10, **FAST)
    await asyncio.wait_for(consumer.process(handle), 15)
    await consumer.close()
    assert consumer.stats.handled == len(handled)
    assert int((await redis.xpending(TopicKeys(topic).stream(0), "default"))["pending"]) == 0
    assert int((await redis.xpending(TopicKeys(topic).stream(1), "default"))["pending"]) == 0


@pytest.mark.skipif(not hasattr(asyncio.Task, "cancelling"), reason="Python 3.11+ tells apart")
@pytest.mark.parametrize(("partitions", "batch"), [(1, False), (2, False), (2, True)])
async def test_a_handler_raising_cancelled_error_of_its_own_is_retried(
    redis_url: str, topic: str, partitions: int, batch: bool
) -> None:
    # A handler that awaited a future something else cancelled raises CancelledError while
    # its consumer is not being stopped: a failure, retried. Before, the consumer took it for
    # a stop and process() ended, leaving the group.
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(10)])
    handled: list[int] = []
    raised: list[int] = []

    async def handle(m: Message) -> None:
        if m.payload["n"] == 3 and not raised:
            raised.append(3)
            elsewhere = asyncio.get_running_loop().create_future()
            elsewhere.cancel()
            await elsewhere
        handled.append(m.payload["n"])

    async def handle_batch(ms: list[Message]) -> None:
        for m in ms:
            await handle(m)

    consumer = Consumer(topic, redis_url=redis_url, retry_backoff=0.01, **FAST)
    async with Running(consumer, handle_batch if batch else handle, batch=batch):
        await eventually(lambda: set(handled) == set(range(10)), message="all handled")
        assert consumer.running and consumer.stats.failed >= 1


async def test_a_stop_a_handler_asks_for_keeps_its_timeout(redis_url: str, topic: str) -> None:
    # From a handler, or a task it started, stop() returns at once (it can't wait for the
    # handler to return); the stop goes on, and its timeout cuts a hung handler off. Before,
    # nothing did: the consumer ran on until shutdown_timeout (here a minute).
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
    tasks: list[asyncio.Task[None]] = []

    async def handle(m: Message) -> None:
        tasks.append(asyncio.create_task(consumer.stop(timeout=0.5)))
        await asyncio.Event().wait()  # hangs

    consumer = Consumer(topic, redis_url=redis_url, shutdown_timeout=60, **FAST)
    await asyncio.wait_for(consumer.process(handle), 10)
    await asyncio.wait_for(tasks[0], 5)
    await consumer.close()
    assert consumer.stats.handled == 0 and not consumer.running
