"""Producer against a real Redis: ids, routing, batching, partitions, bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    ConnectionFailedError,
    Message,
    NotConnectedError,
    PartitionError,
    PartitionKeyError,
    Producer,
    SerializationError,
    partition_for_key,
)
from redisaq_core.keys import TopicKeys
from tests.helpers import eventually, foreign_topic_index


async def _lengths(redis: Redis, topic: str, n: int) -> list[int]:
    keys = TopicKeys(topic)
    return [int(await redis.xlen(keys.stream(p))) for p in range(n)]


async def test_enqueue_returns_entry_ids_and_spreads_evenly(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4) as producer:
        ids = [await producer.enqueue({"n": i}) for i in range(40)]
    assert all("-" in i for i in ids)
    assert await _lengths(redis, topic, 4) == [10, 10, 10, 10]


async def test_partition_key_keeps_a_key_on_one_partition_in_order(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=5) as producer:
        for i in range(30):
            await producer.enqueue({"user": f"u{i % 3}", "seq": i}, partition_key="user")
    keys = TopicKeys(topic)
    for user in ("u0", "u1", "u2"):
        p = partition_for_key(user, 5)
        entries: Any = await redis.xrange(keys.stream(p))
        payloads = [orjson.loads(f[b"p"]) for _, f in entries]
        seqs = [d["seq"] for d in payloads if d["user"] == user]
        assert seqs == sorted(seqs) and len(seqs) == 10


async def test_batch_enqueue_ids_in_input_order(redis_url: str, redis: Redis, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        ids = await producer.batch_enqueue([{"n": i} for i in range(100)])
    entries: Any = await redis.xrange(TopicKeys(topic).stream(0))
    assert [e[0].decode() for e in entries] == ids
    assert await producer_empty_batch(redis_url, topic) == []


async def test_a_large_mixed_batch_lands_whole_in_order_with_every_field(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 3,500 entries over 3 partitions (one gets over 1,000: more than one script call),
    # entries with different numbers of fields side by side, each read back as given.
    keys = TopicKeys(topic)
    items: list[Any] = []
    for i in range(3500):
        if i % 7 == 0:
            items.append(Message(topic, {"n": i, "k": i % 5}, created_at=1000.0 + i, timeout=9))
        else:
            items.append({"n": i, "k": i % 5})
    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        ids = await producer.batch_enqueue(items, partition_key="k")
    found: dict[int, tuple[str, dict[bytes, bytes]]] = {}  # n -> (entry id, fields)
    for p in range(3):
        entries: Any = await redis.xrange(keys.stream(p))
        ns = [orjson.loads(e[1][b"p"])["n"] for e in entries]
        assert ns == sorted(ns)  # each partition in input order
        found.update({n: (e[0].decode(), e[1]) for n, e in zip(ns, entries, strict=True)})
    assert sorted(found) == list(range(3500))  # ids are unique per partition only
    for i, entry_id in enumerate(ids):
        stored_id, fields = found[i]
        assert stored_id == entry_id
        assert orjson.loads(fields[b"p"]) == {"n": i, "k": i % 5}
        assert fields[b"k"] == b"k"
        if i % 7 == 0:
            assert float(fields[b"c"]) == 1000.0 + i and float(fields[b"o"]) == 9
        else:
            assert b"c" not in fields and b"o" not in fields


async def test_a_batch_of_large_payloads_is_split_by_size(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 12 payloads of 1.5 MiB: several script calls (about 4 MiB each), all in order.
    async with Producer(
        topic, redis_url=redis_url, init_partitions=1, max_payload_bytes=None
    ) as producer:
        ids = await producer.batch_enqueue([{"n": i, "body": "x" * (3 << 19)} for i in range(12)])
    entries: Any = await redis.xrange(TopicKeys(topic).stream(0))
    assert [e[0].decode() for e in entries] == ids
    assert [orjson.loads(e[1][b"p"])["n"] for e in entries] == list(range(12))


async def producer_empty_batch(redis_url: str, topic: str) -> list[str]:
    async with Producer(topic, redis_url=redis_url) as producer:
        return await producer.batch_enqueue([])


async def test_concurrent_enqueues_share_round_trips(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        before = await redis.info("stats")
        ids = await asyncio.gather(*(producer.enqueue({"n": i}) for i in range(1000)))
        after = await redis.info("stats")
    assert len(ids) == 1000
    assert sum(await _lengths(redis, topic, 3)) == 1000
    # 1,000 separate awaits on redis-py would open up to 1,000 connections;
    # coalesced into pipelines they need one or two.
    opened = after["total_connections_received"] - before["total_connections_received"]
    assert opened <= 3


async def test_concurrent_enqueue_errors_reach_their_own_caller(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        results = await asyncio.gather(
            *(producer.enqueue({"n": i} if i % 2 else {"bad": {1, 2}}) for i in range(10)),
            return_exceptions=True,
        )
    assert [isinstance(r, SerializationError) for r in results] == [i % 2 == 0 for i in range(10)]
    assert all(isinstance(r, str) for r in results[1::2])


async def test_message_objects_keep_their_options(redis_url: str, redis: Redis, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        msg = Message(topic=topic, payload={"user_id": "123"}, partition_key="user_id", timeout=2.5)
        await producer.enqueue(msg)
        with pytest.raises(ConfigurationError, match="differs from producer topic"):
            await producer.enqueue(Message(topic="other", payload={}))
    entries: Any = await redis.xrange(TopicKeys(topic).stream(partition_for_key("123", 3)))
    fields = entries[0][1]
    assert fields[b"k"] == b"user_id" and float(fields[b"o"]) == 2.5
    assert float(fields[b"c"]) == pytest.approx(msg.created_at)


async def test_maxlen_trims_each_partition(redis_url: str, redis: Redis, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, maxlen=10, approximate=False) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(50)])
    assert await _lengths(redis, topic, 1) == [10]


async def test_partition_increase_is_seen_by_other_producers(redis_url: str, topic: str) -> None:
    a = Producer(topic, redis_url=redis_url, init_partitions=2, refresh_interval=0.05)
    b = Producer(topic, redis_url=redis_url, init_partitions=1)
    async with a, b:
        assert a.partitions == 2 and b.partitions == 2
        assert await b.request_partition_increase(4) == 4
        with pytest.raises(PartitionError, match="cannot lower partitions from 4 to 3"):
            await b.request_partition_increase(3)
        await eventually(lambda: a.partitions == 4, timeout=5)


async def test_a_partition_count_another_client_spoilt_does_not_end_the_refresh(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Read as no count (0): the producer keeps its own, and sees a later increase. Before,
    # "abc" ended its refresh task for good: it never saw new partitions again.
    meta = TopicKeys(topic).meta
    async with Producer(topic, redis_url=redis_url, init_partitions=2, refresh_interval=0.05) as a:
        for raised, spoilt in enumerate(("abc", "1e12", "-3", "70000"), start=3):
            await redis.hset(meta, "partitions", spoilt)
            await redis.hset(meta, "partitions", raised)  # read before or after
            await eventually(lambda n=raised: a.partitions == n, timeout=5)
            assert await a.enqueue({"n": 1}, partition_key="n")
        async with Producer(topic, redis_url=redis_url) as b:  # which writes a count back
            assert b.partitions == 6
        await redis.hset(meta, "partitions", "abc")
        async with Producer(topic, redis_url=redis_url, init_partitions=3) as c:
            assert c.partitions == 3
        assert await redis.hget(meta, "partitions") == b"3"


async def test_a_topic_index_another_client_made_of_another_type_stops_no_producer(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Every connect() failed with WRONGTYPE while another client's key was at the index.
    async with foreign_topic_index(redis) as index:
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.enqueue({"n": 1})
        assert await redis.smembers(index) == {topic.encode()}
    assert await redis.xlen(TopicKeys(topic).stream(0)) == 1


async def test_a_close_ends_a_refresh_that_lost_its_cancellation(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read whose reply comes as its task is cancelled can swallow the cancellation (as
    # asyncio.wait_for does on Python 3.11): the close cancels again. Before, it waited
    # for the refresh task for ever.
    producer = Producer(topic, redis_url=redis_url, refresh_interval=0.01)
    async with producer:
        reading = asyncio.Event()
        read = producer.redis.hmget

        async def swallows_a_cancellation(*args: Any) -> Any:
            reading.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                monkeypatch.setattr(producer.redis, "hmget", read)
            return await read(*args)

        monkeypatch.setattr(producer.redis, "hmget", swallows_a_cancellation)
        await asyncio.wait_for(reading.wait(), 5)
        closing = asyncio.create_task(producer.close())
        await asyncio.wait_for(asyncio.shield(closing), 5)
    assert producer._refresher is None


async def test_unserializable_payload_sends_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        with pytest.raises(SerializationError, match="type set"):
            await producer.batch_enqueue([{"ok": 1}, {1, 2}, {"ok": 2}])
        with pytest.raises(SerializationError, match="type object"):
            await producer.enqueue(object())
    assert await redis.exists(TopicKeys(topic).stream(0)) == 0


async def test_a_single_payload_given_to_batch_enqueue_is_refused(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A str, bytes or dict is iterable: it was enqueued as one message per character,
    # byte or key.
    async with Producer(topic, redis_url=redis_url) as producer:
        for one in ("hello", b"hello", {"a": 1, "b": 2}, Message(topic, {"n": 1}), 5):
            with pytest.raises(ConfigurationError, match="payloads must be an iterable"):
                await producer.batch_enqueue(one)
            with pytest.raises(ConfigurationError, match="payloads must be an iterable"):
                await producer.batch_enqueue(one, delay=10)
            with pytest.raises(ConfigurationError, match="payloads must be an iterable"):
                await producer.batch_enqueue(one, idempotency_key="k")
        assert await producer.batch_enqueue(iter([{"n": 1}])) != []
    assert await redis.exists(TopicKeys(topic).delayed(0)) == 0
    assert await redis.xlen(TopicKeys(topic).stream(0)) == 1


async def test_partition_key_errors_name_the_field(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        with pytest.raises(PartitionKeyError, match="'user' is not a field"):
            await producer.enqueue({"id": 1}, partition_key="user")
        with pytest.raises(PartitionKeyError, match="needs a mapping payload"):
            await producer.enqueue([1, 2], partition_key="user")


async def test_a_key_value_utf8_cannot_encode_is_a_partition_key_error(
    redis_url: str, redis: Redis, topic: str
) -> None:
    lone = json.loads('{"user": "\\ud800"}')  # a lone surrogate: valid JSON, no UTF-8
    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        with pytest.raises(PartitionKeyError, match="value of partition_key 'user' must be text"):
            await producer.enqueue(lone, partition_key="user")
        with pytest.raises(PartitionKeyError, match="value of partition_key 'user' must be text"):
            await producer.batch_enqueue([{"user": "ok"}, lone], partition_key="user")
        with pytest.raises(PartitionKeyError, match="'user'"):
            await producer.enqueue(lone, partition_key="user", delay=60)
    assert await _lengths(redis, topic, 3) == [0, 0, 0]
    with pytest.raises(PartitionKeyError, match="UTF-8 can encode"):
        partition_for_key(lone["user"], 3)


async def test_custom_str_serializer_round_trip(redis_url: str, redis: Redis, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, serializer=lambda v: f"<{v}>") as producer:
        await producer.enqueue("x")
    entries: Any = await redis.xrange(TopicKeys(topic).stream(0))
    assert entries[0][1] == {b"s": b"<x>"}
    with pytest.raises(ConfigurationError, match="serializer must be callable"):
        Producer(topic, serializer=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"topic": ""}, "topic must be a non-empty string"),
        ({"topic": "a{b}"}, "topic must not contain braces"),
        ({"topic": "a b"}, "topic must not contain braces or whitespace"),
        ({"topic": "t", "init_partitions": 0}, "init_partitions must be an integer >= 1"),
        ({"topic": "t", "init_partitions": 65_537}, "init_partitions must be .* <= 65536, got"),
        ({"topic": "t", "maxlen": -1}, "maxlen must be an integer >= 1"),
        ({"topic": "t", "redis": object(), "redis_url": "redis://x"}, "either redis or redis_url"),
        ({"topic": "t", "redis_url": "http://x"}, "redis_url must start with"),
    ],
)
async def test_bad_configuration_names_the_argument(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        producer = Producer(**kwargs)
        await producer.connect()


async def test_use_after_close_is_a_clear_error(redis_url: str, topic: str) -> None:
    producer = Producer(topic, redis_url=redis_url)
    await producer.enqueue({"auto": "connects"})
    await producer.close()
    await producer.close()  # idempotent
    with pytest.raises(NotConnectedError, match="Producer is closed"):
        await producer.enqueue({"n": 1})
    fresh = Producer(topic, redis_url=redis_url)
    with pytest.raises(NotConnectedError, match="not connected"):
        _ = fresh.redis


async def test_unreachable_redis_names_url_without_password(topic: str) -> None:
    from redisaq_core.embedded import free_port

    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConnectionFailedError) as info:
        await Producer(topic, redis_url=url).connect()
    assert "s3cret" not in str(info.value)
    assert "redis://user:***@127.0.0.1" in str(info.value)


async def test_given_client_is_not_closed(redis: Redis, topic: str) -> None:
    async with Producer(topic, redis=redis) as producer:
        await producer.enqueue({"n": 1})
    assert await redis.ping()


async def test_a_priority_maps_onto_the_levels_of_the_topic(
    redis_url: str, redis: Redis, topic: str
) -> None:
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url) as producer:  # one level
        await producer.enqueue({"n": 1}, priority=5)
        handle = await producer.submit({"n": 2}, priority=15)
        assert (await handle.status()) is not None
        assert await redis.xlen(keys.stream(0)) == 2
        assert not await redis.exists(keys.stream(0, 5), keys.stream(0, 15))
        for bad in (-1, 16, "1", True, 2.0):
            with pytest.raises(ConfigurationError, match="priority must be"):
                await producer.enqueue({"n": 3}, priority=bad)
        assert await redis.xlen(keys.stream(0)) == 2
    other = f"{topic}-levels"
    async with Producer(other, redis_url=redis_url, priorities=3) as producer:
        await producer.enqueue({"n": 1}, priority=7)
        await producer.enqueue({"n": 2}, priority=1)
    levels = TopicKeys(other)
    assert [await redis.xlen(levels.stream(0, p)) for p in range(3)] == [0, 1, 1]
