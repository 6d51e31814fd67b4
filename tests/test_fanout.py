"""FanOut (stream mode) in-process against a real Redis: routing, order, transforms, bad input."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from redisaq_core import (
    ConfigurationError,
    DeadLetters,
    FanOut,
    Message,
    Producer,
    ServiceRegistry,
)
from redisaq_core._scripts import FANOUT, FANOUT_WRITE
from redisaq_core.connection import is_cluster
from redisaq_core.fanout import FANOUT_SERVICE_TYPE
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import topic_metrics
from tests.fanout_support import (
    assert_exactly_once,
    assert_key_order,
    assert_routed,
    create_topic,
    partitions_of,
    pending,
    produce,
    rows,
)
from tests.helpers import eventually

FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "poll_interval": 0.1, "retry_backoff": 0.05}
MAX_ID = "18446744073709551615-18446744073709551615"


@asynccontextmanager
async def running(bridge: FanOut) -> AsyncIterator[FanOut]:
    """Run ``bridge`` in a task; stop it and surface its errors on exit."""
    async with bridge:
        task = asyncio.create_task(bridge.run())
        await eventually(lambda: bridge.running or task.done(), timeout=5)
        try:
            yield bridge
        finally:
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)


def _payloads(n: int, keys: int = 17, start: int = 0) -> list[dict[str, Any]]:
    return [{"n": i, "k": f"key-{i % keys}"} for i in range(start, start + n)]


def _bridge(url: str, source: str, targets: Sequence[str] | Mapping[str, Any], **kw: Any) -> FanOut:
    return FanOut(source, targets, redis_url=url, batch_size=kw.pop("batch_size", 50), **FAST, **kw)


async def test_every_message_reaches_every_target_once_on_its_key_partition(
    redis_url: str, redis: Redis, topic: str
) -> None:
    targets = [f"{topic}-a", f"{topic}-b", f"{topic}-c"]
    await create_topic(redis_url, targets[0], 3)
    await create_topic(redis_url, targets[1], 5)
    await produce(redis_url, topic, _payloads(3000), partitions=4, key="k")
    async with running(_bridge(redis_url, topic, targets)) as bridge:
        await eventually(lambda: bridge.stats.fanned_out == 3000, timeout=30)
        assert bridge.assigned_partitions == [0, 1, 2, 3]
    assert await partitions_of(redis, targets[2]) == 4  # created with the source's count
    for target, count in zip(targets, (3, 5, 4), strict=True):
        found = await rows(redis, target)
        assert_exactly_once(found, set(range(3000)), target)
        assert_key_order(found)
        assert_routed(found, count)
    assert await pending(redis, topic, "fanout") == 0
    assert bridge.stats.written == dict.fromkeys(targets, 3000)
    assert bridge.stats.already_done == bridge.stats.failed == bridge.stats.fenced == 0


@pytest.mark.parametrize("when", ["before the start", "while it runs"])
async def test_a_target_meta_key_another_client_made_of_another_type_is_replaced(
    redis_url: str, redis: Redis, topic: str, when: str
) -> None:
    # Before, the bridge failed at its start; while it ran, every message was dead-lettered.
    target = f"{topic}-a"
    await create_topic(redis_url, target, 2)
    meta = TopicKeys(target).meta
    if when == "before the start":
        await redis.delete(meta)
        await redis.set(meta, "another client's")
    await produce(redis_url, topic, _payloads(50), partitions=2, key="k")
    async with running(_bridge(redis_url, topic, [target])) as bridge:
        await eventually(lambda: bridge.stats.fanned_out == 50, timeout=10)
        if when == "while it runs":
            await redis.delete(meta)
            await redis.set(meta, "another client's")
            await produce(redis_url, topic, _payloads(50, start=50), partitions=2, key="k")
            await eventually(lambda: bridge.stats.fanned_out == 100, timeout=10)
            if is_cluster(redis):  # there the bridge reads the counts at a refresh_interval
                await create_topic(redis_url, target, 2)  # for rows() below
    found = await rows(redis, target)
    assert_exactly_once(found, set(range(50 if when == "before the start" else 100)), target)
    assert bridge.stats.failed == 0
    assert await redis.type(meta) == b"hash"


async def test_a_fanout_record_of_another_type_is_no_record(redis: Redis, topic: str) -> None:
    # Redis Cluster's path: a key of another type where an entry's record goes is written
    # over, and the entry written. Before, SET NX took it for the record: the entry was lost.
    keys = TopicKeys(topic)
    record = keys.fanout_record(0, "src", "fanout", 0, 0) + "1-1"
    await redis.lpush(record, "another client's")
    args = ["0", "~", 60_000, 2, "p", '{"n": 1}']
    assert await FANOUT_WRITE(redis, [keys.stream(0), record], args) == 1
    assert await FANOUT_WRITE(redis, [keys.stream(0), record], args) == 0  # now a record
    assert await redis.xlen(keys.stream(0)) == 1


async def test_entries_keep_their_fields_and_keyless_ones_spread(
    redis_url: str, redis: Redis, topic: str
) -> None:
    target = f"{topic}-a"
    await create_topic(redis_url, target, 4)
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(400)])
        made = Message(topic=topic, payload={"n": 400, "k": "x"}, partition_key="k", timeout=7.5)
        await producer.enqueue(made)
    async with running(_bridge(redis_url, topic, [target])) as bridge:
        await eventually(lambda: bridge.stats.fanned_out == 401, timeout=20)
    found = await rows(redis, target)
    assert_exactly_once(found, set(range(401)))
    spread = {p for p, _, payload in found if "k" not in payload}
    assert spread == {0, 1, 2, 3}
    read: list[Message] = []
    from redisaq_core import Consumer

    consumer = Consumer(target, redis_url=redis_url, **FAST)
    task = asyncio.create_task(consumer.process(lambda m: _append(read, m)))
    await eventually(lambda: len(read) == 401, timeout=20)
    await consumer.stop()
    await task
    await consumer.close()
    copied = next(m for m in read if m.payload["n"] == 400)
    assert copied.partition_key == "k" and copied.timeout == 7.5
    assert copied.created_at == pytest.approx(made.created_at)
    assert copied.job_id is None


async def _append(into: list[Message], m: Message) -> None:
    into.append(m)


async def test_two_bridges_split_the_partitions(redis_url: str, redis: Redis, topic: str) -> None:
    targets = [f"{topic}-a", f"{topic}-b"]
    await produce(redis_url, topic, [], partitions=6, key="k")
    first = _bridge(redis_url, topic, targets, consumer_name="one")
    second = _bridge(redis_url, topic, targets, consumer_name="two")
    async with running(first), running(second):
        await eventually(
            lambda: len(first.assigned_partitions) == len(second.assigned_partitions) == 3,
            timeout=10,
        )
        assert set(first.assigned_partitions).isdisjoint(second.assigned_partitions)
        await produce(redis_url, topic, _payloads(4000), partitions=6, key="k")
        await eventually(
            lambda: first.stats.fanned_out + second.stats.fanned_out == 4000, timeout=30
        )
    assert first.stats.fanned_out > 0 and second.stats.fanned_out > 0
    for target in targets:
        found = await rows(redis, target)
        assert_exactly_once(found, set(range(4000)), target)
        assert_key_order(found)


async def test_per_key_order_holds_while_producing_and_rebalancing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    target = f"{topic}-a"
    await create_topic(redis_url, target, 3)
    await produce(redis_url, topic, [], partitions=5, key="k")
    first = _bridge(redis_url, topic, [target], consumer_name="one", batch_size=20)
    async with running(first):
        async with Producer(topic, redis_url=redis_url) as producer:
            for i in range(0, 3000, 100):
                await producer.batch_enqueue(_payloads(100, keys=11, start=i), partition_key="k")
                if i == 1000:
                    second = _bridge(redis_url, topic, [target], consumer_name="two")
                    await second.connect()
                    second_task = asyncio.create_task(second.run())
                await asyncio.sleep(0.01)
        await eventually(lambda: first.stats.fanned_out + second.stats.fanned_out == 3000, 30)
        await second.stop()
        await second_task
        await second.close()
    found = await rows(redis, target)
    assert_exactly_once(found, set(range(3000)))
    assert_key_order(found)
    assert_routed(found, 3)


async def test_transforms_and_skips(redis_url: str, redis: Redis, topic: str) -> None:
    plain, doubled, odd = f"{topic}-plain", f"{topic}-doubled", f"{topic}-odd"

    async def double(m: Message) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"n": m.payload["n"], "k": m.payload["k"], "twice": 2 * m.payload["n"]}

    def only_odd(m: Message) -> Any:
        return m.payload if m.payload["n"] % 2 else None

    await produce(redis_url, topic, _payloads(600), partitions=3, key="k")
    bridge = _bridge(redis_url, topic, {plain: None, doubled: double, odd: only_odd})
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 600, timeout=20)
    assert_exactly_once(await rows(redis, plain), set(range(600)))
    twice = await rows(redis, doubled)
    assert_exactly_once(twice, set(range(600)))
    assert all(row[2]["twice"] == 2 * row[2]["n"] for row in twice)
    assert_key_order(twice)
    assert_exactly_once(await rows(redis, odd), set(range(1, 600, 2)))
    assert bridge.stats.skipped == {plain: 0, doubled: 0, odd: 300}
    assert bridge.stats.written == {plain: 600, doubled: 600, odd: 300}


async def test_a_transform_that_changes_its_payload_changes_no_other_targets(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The transforms shared one payload object: one that popped a field took it from the
    # targets after it too.
    audit, billing = f"{topic}-audit", f"{topic}-billing"

    def without_k(m: Message) -> Any:
        m.payload.pop("k")
        return m.payload

    await produce(redis_url, topic, _payloads(10), partitions=1, key="k")
    bridge = _bridge(redis_url, topic, {audit: without_k, billing: lambda m: m.payload})
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 10, timeout=20)
    assert all("k" not in row[2] for row in await rows(redis, audit))
    assert all("k" in row[2] for row in await rows(redis, billing))


async def test_a_bridge_runs_again_after_a_stop(redis_url: str, redis: Redis, topic: str) -> None:
    # A second run() of a stopped bridge returned at once, moving nothing.
    target = f"{topic}-copy"

    async def copied(n: int) -> bool:
        return len(await rows(redis, target)) == n

    await produce(redis_url, topic, _payloads(5), partitions=1, key="k")
    async with _bridge(redis_url, topic, [target]) as bridge:
        for total in (5, 10):
            task = asyncio.create_task(bridge.run())
            await eventually(lambda n=total: copied(n), timeout=10)
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)
            if total == 5:
                await produce(redis_url, topic, _payloads(5, start=5), partitions=1, key="k")
    assert_exactly_once(await rows(redis, target), set(range(10)))


async def test_a_failing_transform_is_retried_and_the_rest_is_not_held_back(
    redis_url: str, redis: Redis, topic: str
) -> None:
    target = f"{topic}-a"
    calls: dict[int, int] = {}

    def flaky(m: Message) -> Any:
        n = m.payload["n"]
        calls[n] = calls.get(n, 0) + 1
        if n == 5 and calls[n] <= 2:
            raise RuntimeError("not yet")
        return m.payload

    # Partition 1 gets n = 0..9 (key "a"), partition 0 gets 100..109 (key "d").
    await create_topic(redis_url, topic, 2)
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": i, "k": "a"} for i in range(10)], partition_key="k")
        await producer.batch_enqueue(
            [{"n": i, "k": "d"} for i in range(100, 110)], partition_key="k"
        )
    bridge = FanOut(
        topic, {target: flaky}, redis_url=redis_url, batch_size=100, heartbeat_interval=0.2,
        poll_interval=0.1, retry_backoff=2.0, retry_backoff_max=2.0,
    )  # fmt: skip
    async with running(bridge):
        # Everything but the failing entry's partition from it on goes through at once,
        # well before the failed entry's retry is due.
        await eventually(lambda: bridge.stats.fanned_out == 15, timeout=1.5)
        found = await rows(redis, target)
        assert sorted(r[2]["n"] for r in found) == [0, 1, 2, 3, 4, *range(100, 110)]
        await eventually(lambda: bridge.stats.fanned_out == 20, timeout=15)
    found = await rows(redis, target)
    assert_exactly_once(found, {*range(10), *range(100, 110)})
    assert_key_order(found)
    assert calls[5] == 3 and all(calls[n] == 1 for n in range(6, 10))
    assert bridge.stats.failed == 2
    assert bridge.consumer.stats.failed == 2 and bridge.consumer.stats.dead_lettered == 0


async def test_an_always_failing_transform_ends_in_dead_letters(
    redis_url: str, redis: Redis, topic: str
) -> None:
    target = f"{topic}-a"

    def picky(m: Message) -> Any:
        if m.payload["n"] == 3:
            raise ValueError("cannot copy 3")
        return m.payload

    await produce(redis_url, topic, [{"n": i, "k": "one"} for i in range(8)], partitions=1, key="k")
    bridge = _bridge(redis_url, topic, {target: picky}, max_deliveries=3)
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 7, timeout=20)
    found = await rows(redis, target)
    assert [r[2]["n"] for r in found] == [0, 1, 2, 4, 5, 6, 7]
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        letters = await dl.list()
    assert len(letters) == 1
    assert letters[0].payload == {"n": 3, "k": "one"} and "cannot copy 3" in letters[0].error
    assert bridge.consumer.stats.dead_lettered == 1
    assert await pending(redis, topic, "fanout") == 0


async def test_metrics_count_handled_and_produced(redis_url: str, redis: Redis, topic: str) -> None:
    target = f"{topic}-a"
    await produce(redis_url, topic, _payloads(200), partitions=2, key="k")
    bridge = _bridge(redis_url, topic, [target])
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 200, timeout=20)
    source_view = await topic_metrics(redis, topic)
    (group,) = [g for g in source_view["groups"] if g["group"] == "fanout"]
    assert group["totals"]["handled"] == 200
    assert group["totals"]["handler_seconds"]["count"] == 200
    assert group["totals"]["end_to_end_seconds"]["count"] == 200
    target_view = await topic_metrics(redis, target)
    assert target_view["produced"] == 200


async def test_a_bridge_registers_and_a_deregistration_stops_it(redis_url: str, topic: str) -> None:
    prefix = f"{topic}:"
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as registry:
        bridge = _bridge(redis_url, topic, [f"{topic}-a"], registry=registry)
        async with bridge:
            task = asyncio.create_task(bridge.run())
            services = await eventually(
                lambda: registry.list_services(service_type=FANOUT_SERVICE_TYPE), timeout=5
            )
            (info,) = services
            assert info.service_id == bridge.service_id
            assert info.metadata["source"] == topic and info.metadata["mode"] == "stream"
            await registry.deregister_service(info.service_id)
            await asyncio.wait_for(task, 5)
            assert not bridge.running


async def test_stop_before_run_and_twice(redis_url: str, topic: str) -> None:
    bridge = _bridge(redis_url, topic, [f"{topic}-a"])
    await bridge.stop()
    async with bridge:
        await asyncio.wait_for(bridge.run(), 5)  # stopped already: returns at once
        await bridge.stop()
    await bridge.close()


@pytest.mark.single_node
async def test_the_script_writes_nothing_without_the_lease_and_nothing_twice(
    redis: Redis, topic: str
) -> None:
    source, target = TopicKeys(topic), TopicKeys(f"{topic}-a")
    await redis.hset(target.meta, "partitions", 1)
    for i in range(3):
        await redis.xadd(source.stream(0), {"p": f'{{"n":{i}}}'})
    await redis.xgroup_create(source.stream(0), "g", id="0")
    read: Any = await redis.xreadgroup("g", "me", {source.stream(0): ">"})
    ids = [entry_id for entry_id, _ in read[0][1]]
    lease = source.lease(0, "g")
    keys = [source.stream(0), lease, target.meta, target.stream(0)]

    def args(token: str) -> list[Any]:
        out: list[Any] = ["g", token, 1, 1, "0", "~", "0"]
        for i, entry_id in enumerate(ids):
            out += [entry_id, 1, 1, 4, 2, "p", f'{{"n":{i}}}']
        return out

    await redis.set(lease, "someone-else")
    assert await FANOUT(redis, keys, args("me")) == [-1]
    assert await redis.xlen(target.stream(0)) == 0
    assert int((await redis.xpending(source.stream(0), "g"))["pending"]) == 3
    await redis.set(lease, "me")
    assert await FANOUT(redis, keys, ["g", "me", 1, 2, "0", "~", "0", *args("me")[7:]]) == [-2]
    assert await redis.xlen(target.stream(0)) == 0
    assert await FANOUT(redis, keys, args("me")) == [3]
    assert await redis.xlen(target.stream(0)) == 3
    assert await FANOUT(redis, keys, args("me")) == [0, 1, 2, 3]  # all three done before
    assert await redis.xlen(target.stream(0)) == 3
    assert int((await redis.xpending(source.stream(0), "g"))["pending"]) == 0
    # A target key of another type: an error, and nothing written or acknowledged.
    await redis.xadd(source.stream(0), {"p": '{"n":3}'})
    read = await redis.xreadgroup("g", "me", {source.stream(0): ">"})
    ids = [read[0][1][0][0]]
    other = f"{target.stream(0)}:1"
    await redis.set(other, "not a stream")
    call = ["g", "me", 1, 1, "0", "~", "0", ids[0], 1, 2, 4, 5, 2, "p", '{"n":3}']
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await FANOUT(redis, [*keys, other], call)
    assert await redis.xlen(target.stream(0)) == 3
    assert int((await redis.xpending(source.stream(0), "g"))["pending"]) == 1
    # A target stream that can take no more entries (another client added one of the largest
    # id): the same. Before, the entry was acknowledged, written to the targets before that
    # one, and lost for it and those after.
    await redis.delete(other)
    await redis.xadd(other, {"x": "y"}, id=MAX_ID)
    with pytest.raises(ResponseError, match="can take no more entries"):
        await FANOUT(redis, [*keys, other], call)
    assert await redis.xlen(target.stream(0)) == 3
    assert int((await redis.xpending(source.stream(0), "g"))["pending"]) == 1


async def test_a_target_that_can_take_no_more_entries_loses_no_message(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Its entry is retried and dead-lettered, written to no target (on a cluster, where each
    # target is written on its own, to those written before at most once).
    a, b = f"{topic}-a", f"{topic}-b"
    await create_topic(redis_url, a, 1)
    await create_topic(redis_url, b, 1)
    await redis.xadd(TopicKeys(b).stream(0), {"x": "y"}, id=MAX_ID)
    await produce(redis_url, topic, [{"n": 0}], partitions=1, key=None)
    bridge = _bridge(redis_url, topic, [a, b], max_deliveries=2)
    async with running(bridge):
        await eventually(lambda: _dead_letters(redis_url, topic), message="a dead letter")
    assert len(await rows(redis, a)) <= (1 if is_cluster(redis) else 0)
    assert await redis.xlen(TopicKeys(b).stream(0)) == 1


async def _dead_letters(redis_url: str, topic: str) -> int:
    async with DeadLetters(topic, redis_url=redis_url) as letters:
        return len(await letters.list())


async def test_the_cluster_write_refuses_a_target_that_can_take_no_more_entries(
    redis: Any, topic: str
) -> None:
    keys = TopicKeys(topic)
    record = keys.fanout_record(0, "src", "fanout", 0, 0) + "1-1"
    await redis.xadd(keys.stream(0), {"x": "y"}, id=MAX_ID)
    with pytest.raises(ResponseError, match="can take no more entries"):
        await FANOUT_WRITE(redis, [keys.stream(0), record], ["0", "~", 60_000, 2, "p", "{}"])
    assert await redis.exists(record) == 0  # no record: the entry is written once it can be


async def test_a_target_partition_increase_is_picked_up(
    redis_url: str, redis: Redis, topic: str
) -> None:
    target = f"{topic}-a"
    await create_topic(redis_url, target, 2)
    await produce(redis_url, topic, _payloads(100), partitions=2, key="k")
    bridge = _bridge(redis_url, topic, [target], refresh_interval=0.1)
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 100, timeout=20)
        async with Producer(target, redis_url=redis_url) as producer:
            await producer.request_partition_increase(5)
        if is_cluster(redis):  # there the bridge reads the count every refresh_interval
            await asyncio.sleep(0.3)
        await produce(redis_url, topic, _payloads(100, start=100), partitions=2, key="k")
        await eventually(lambda: bridge.stats.fanned_out == 200, timeout=20)
    found = await rows(redis, target)
    assert_exactly_once(found, set(range(200)))
    assert_routed([r for r in found if r[2]["n"] >= 100], 5)
    if not is_cluster(redis):
        assert_routed([r for r in found if r[2]["n"] < 100], 2)


@pytest.mark.parametrize(
    ("targets", "kwargs", "argument"),
    [
        ([], {}, "targets"),
        ({}, {}, "targets"),
        ("other", {}, "targets"),
        (["SOURCE"], {}, "source"),
        (["a b"], {}, "targets"),
        (["a{b}"], {}, "targets"),
        (["a", "a"], {}, "twice"),
        ({"a": 42}, {}, "transform"),
        (["a"], {"batch_size": 0}, "batch_size"),
        (["a"], {"batch_size": 1.5}, "batch_size"),
        (["a"], {"maxlen": 0}, "maxlen"),
        (["a"], {"target_partitions": 0}, "target_partitions"),
        (["a"], {"target_partitions": 70_000}, "target_partitions must be .* <= 65536"),
        (["a"], {"dedupe_ttl": 0}, "dedupe_ttl"),
        # Below a millisecond (PX 0) or past what PX takes: every cluster write failed.
        (["a"], {"dedupe_ttl": 0.0004, "dedupe_grace": 0.0001}, "dedupe_ttl must be >= 0.001"),
        (["a"], {"dedupe_ttl": 1e17}, "dedupe_ttl must be .* <= 1e"),
        (["a"], {"dedupe_grace": 0.0004}, "dedupe_grace must be >= 0.001"),
        (["a"], {"dedupe_ttl": 10, "dedupe_grace": 20}, "dedupe_grace"),
        (["a"], {"group_name": "g h"}, "group_name"),
        (["a"], {"registry": object()}, "registry"),
        (["a"], {"serializer": 1}, "serializer"),
    ],
)
def test_bad_input_raises_configuration_error_naming_it(
    targets: Any, kwargs: dict[str, Any], argument: str, topic: str
) -> None:
    if targets == ["SOURCE"]:
        targets = [topic]
    with pytest.raises(ConfigurationError, match=argument):
        FanOut(topic, targets, redis_url="redis://127.0.0.1:1/0", **kwargs)


def test_a_bad_source_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="source"):
        FanOut("a b", ["c"], redis_url="redis://127.0.0.1:1/0")


async def test_a_key_value_utf8_cannot_encode_is_dead_lettered_naming_it(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A deserializer can hand back text with a lone surrogate; its entry fails with a
    # PartitionKeyError that names the key (before, a bare UnicodeEncodeError).
    def surrogates(data: bytes) -> Any:
        payload = json.loads(data)
        if payload["n"] == 1:
            payload["k"] = "\ud800"
        return payload

    await produce(redis_url, topic, [{"n": i, "k": "one"} for i in range(3)], partitions=1, key="k")
    bridge = _bridge(redis_url, topic, [f"{topic}-a"], max_deliveries=1, deserializer=surrogates)
    async with running(bridge):
        await eventually(lambda: bridge.stats.fanned_out == 2, timeout=20)
        await eventually(lambda: bridge.consumer.stats.dead_lettered == 1, timeout=20)
    assert [r[2]["n"] for r in await rows(redis, f"{topic}-a")] == [0, 2]
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        (letter,) = await dl.list()
    assert "the value of partition_key 'k'" in letter.error
