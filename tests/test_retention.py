"""Retention: trim="acked" keeps what a group has not acknowledged, on every server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import ConfigurationError, Consumer, FanOut, Message, Producer, _delivery
from redisaq_core._retention import server_features
from redisaq_core._scripts import FANOUT
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import topic_metrics
from redisaq_core.metrics.prometheus import render_prometheus
from redisaq_core.monitor import Monitor
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}


async def _group_that_read_nothing(redis_url: str, topic: str, group: str = "default") -> None:
    """Join once and leave: the group exists on every partition, at the stream's start."""

    async def handle(m: Message) -> None:
        raise AssertionError("nothing was produced yet")

    consumer = Consumer(topic, redis_url=redis_url, group_name=group, start="earliest", **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions, message="groups created")
    await consumer.close()


async def _consume_all(redis_url: str, topic: str, want: int) -> list[int]:
    seen: list[int] = []

    async def handle(batch: list[Message]) -> None:
        seen.extend(m.payload["n"] for m in batch)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=200, **FAST)
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: len(seen) >= want, timeout=20, message=f"{want} messages")
    await consumer.close()
    return seen


async def _produce(producer: Producer, n: int) -> None:
    half = n // 2
    for i in range(half):
        await producer.enqueue({"n": i})
    for start in range(half, n, 100):
        await producer.batch_enqueue([{"n": i} for i in range(start, min(n, start + 100))])


@pytest.mark.parametrize("approximate", [True, False])
async def test_acked_trim_keeps_what_a_lagging_group_has_not_read(
    redis_url: str, redis: Redis, topic: str, approximate: bool
) -> None:
    stream = TopicKeys(topic).stream(0)
    async with Producer(
        topic, redis_url=redis_url, maxlen=100, approximate=approximate, trim="acked",
        refresh_interval=0.2,
    ) as producer:  # fmt: skip
        await _group_that_read_nothing(redis_url, topic)
        await _produce(producer, 1000)
        assert await redis.xlen(stream) == 1000
        view = await topic_metrics(redis, topic)
        assert (view["maxlen"], view["trim"], view["over_maxlen"]) == (100, "acked", 900)
        assert Monitor.topic_summary(view)["over_maxlen"] == 900
        assert f'redisaq_stream_over_maxlen{{topic="{topic}",partition="0"}} 900' in (
            render_prometheus(view)
        )

        seen = await _consume_all(redis_url, topic, 1000)
        assert sorted(seen) == list(range(1000))
        # Once acknowledged, the stream is trimmed back towards maxlen.
        bound = 100
        await eventually(lambda: _at_most(redis, stream, bound), timeout=10, message="trimmed")
    view = await topic_metrics(redis, topic)
    assert view["over_maxlen"] == 0


async def _needs_acked_trim(redis: Redis) -> None:
    if not (await server_features(redis)).acked_trim:
        pytest.skip("delete-acked needs Redis 8.2 or newer (XACKDEL, XDELEX)")


async def _at_most(redis: Redis, stream: str, n: int) -> bool:
    return int(await redis.xlen(stream)) <= n


async def test_plain_maxlen_loses_what_a_lagging_group_has_not_read_and_says_so(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, maxlen=100, approximate=False) as producer:
        await _group_that_read_nothing(redis_url, topic)
        await _produce(producer, 1000)
    # While the group lags, the view says how many entries went before it read them.
    view = await topic_metrics(redis, topic)
    unread = view["groups"][0]["totals"]["trimmed_unread"]
    assert unread == 900  # on 6.2 from the producers' count: the group read nothing
    assert view["groups"][0]["partitions"][0]["trimmed_unread"] == 900
    seen = await _consume_all(redis_url, topic, 100)
    assert sorted(seen) == list(range(900, 1000))


async def test_acked_trim_keeps_everything_for_a_group_not_yet_on_the_stream(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """A group of the topic that has not created its stream group yet loses nothing either."""
    keys = TopicKeys(topic)
    await redis.sadd(keys.groups, "late")
    async with Producer(
        topic, redis_url=redis_url, maxlen=10, approximate=False, trim="acked", refresh_interval=0.2
    ) as producer:
        await _produce(producer, 200)
        features = await server_features(redis)
        if not features.acked_trim:  # natively, no group at all means plain trimming
            assert await redis.xlen(keys.stream(0)) == 200


async def test_acked_trim_keeps_a_pending_entry_whose_id_is_past_lua_numbers(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Another client's entry with an explicit sequence number past 2**53 makes every later
    # id's such. The emulated trim compared and stepped ids as Lua numbers, which round
    # there: the bound below the pending entry rounded up past it, and it was trimmed.
    keys = TopicKeys(topic)
    stream = keys.stream(0)
    await redis.xadd(stream, {"x": "another client's"}, id="99999999999999-9007199254740990")
    await redis.xgroup_create(stream, "g", id="0")
    await redis.sadd(keys.groups, "g")
    async with Producer(topic, redis_url=redis_url, maxlen=1, trim="acked") as producer:
        for i in range(5):
            await producer.enqueue({"n": i})
        [[_, entries]] = await redis.xreadgroup("g", "c", {stream: ">"}, count=6)
        ids = [entry_id for entry_id, _ in entries]
        assert ids[5] == b"99999999999999-9007199254740995"
        await redis.xack(stream, "g", *ids[:5])
        await producer.enqueue({"n": 5})  # trims (closing waits for the trim)
    assert (await redis.xrange(stream))[0][0] == ids[5]


async def test_a_lagging_group_is_warned_about(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="redisaq_core"):
        async with Producer(
            topic, redis_url=redis_url, maxlen=10, approximate=False, trim="acked",
            refresh_interval=0.1, init_partitions=2,
        ) as producer:  # fmt: skip
            await _group_that_read_nothing(redis_url, topic)
            await producer.batch_enqueue([{"n": i} for i in range(50)])  # 25 per partition
            keys = TopicKeys(topic)
            held = {keys.stream(0): 15, keys.stream(1): 15}
            await eventually(lambda: producer._retention.over_maxlen == held, timeout=5)
    warnings = [r.getMessage() for r in caplog.records if "past maxlen" in r.getMessage()]
    assert len(warnings) == 1  # at most once a minute
    assert any(keys.stream(p) in warnings[0] for p in (0, 1)), warnings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"maxlen": 10, "trim": "oldest"},
            "trim must be one of maxlen, acked, delete-acked, got 'oldest'",
        ),
        ({"trim": "acked"}, "trim='acked' needs a maxlen"),
    ],
)
def test_bad_trim_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Producer("t", redis_url="redis://127.0.0.1:1/0", **kwargs)


async def test_delete_acked_deletes_once_every_group_acknowledged(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """Redis 8.2: XACKDEL; elsewhere the mode is refused at connect, naming the server."""
    producer = Producer(topic, redis_url=redis_url, trim="delete-acked")
    if not (await server_features(redis)).acked_trim:
        with pytest.raises(ConfigurationError, match=r"needs XACKDEL.*this server is"):
            await producer.connect()
        await producer.close()
        return
    stream = TopicKeys(topic).stream(0)
    async with producer:
        for group in ("a", "b"):  # both groups exist before anything is written
            consumer = Consumer(topic, redis_url=redis_url, group_name=group, **FAST)
            async with Running(consumer, _never):
                await eventually(lambda c=consumer: c.assigned_partitions)
            await consumer.close()
        await producer.batch_enqueue([{"n": i} for i in range(200)])
        await _consume_group(redis_url, topic, "a", 200)
        assert await redis.xlen(stream) == 200  # group b has not acknowledged them
        await _consume_group(redis_url, topic, "b", 200)
        await eventually(lambda: _at_most(redis, stream, 0), message="deleted")


async def test_delete_acked_covers_jobs_and_dead_letters(
    redis_url: str, redis: Redis, topic: str
) -> None:
    await _needs_acked_trim(redis)
    stream = TopicKeys(topic).stream(0)
    async with Producer(topic, redis_url=redis_url, trim="delete-acked") as producer:
        handles = [await producer.submit({"n": i}) for i in range(10)]
        await producer.enqueue({"n": -1})  # fails: dead-lettered at once

        async def handle(m: Message) -> int:
            if m.payload["n"] < 0:
                raise ValueError("poison")
            return int(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handle):
            assert [await h.result(timeout=10) for h in handles] == list(range(10))
            await eventually(lambda: _at_most(redis, stream, 0), message="all deleted")
        await consumer.close()
        assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 1


async def _never(m: Message) -> None:
    raise AssertionError("nothing was produced yet")


async def _consume_group(redis_url: str, topic: str, group: str, want: int) -> None:
    seen: list[int] = []

    async def handle(batch: list[Message]) -> None:
        seen.extend(m.payload["n"] for m in batch)

    consumer = Consumer(topic, redis_url=redis_url, group_name=group, batch_size=100, **FAST)
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: len(seen) >= want, timeout=20, message=f"{group}: {want}")
    await consumer.close()
    assert sorted(seen) == list(range(want))


async def test_submit_keeps_unacknowledged_jobs_with_delete_acked_and_maxlen(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """submit() trims like enqueue(): with delete-acked and a maxlen, only what groups acked."""
    await _needs_acked_trim(redis)
    async with Producer(
        topic, redis_url=redis_url, maxlen=10, approximate=False, trim="delete-acked"
    ) as producer:
        await _group_that_read_nothing(redis_url, topic)
        for i in range(50):
            await producer.submit({"n": i})
    assert await redis.xlen(TopicKeys(topic).stream(0)) == 50


async def test_delete_acked_keeps_an_entry_dead_lettered_without_its_fields(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # An entry of more fields than a dead letter can carry is dead-lettered by their count:
    # it stays in its stream, where they still are. Before, delete-acked deleted it too.
    await _needs_acked_trim(redis)
    stream = TopicKeys(topic).stream(0)
    async with Producer(topic, redis_url=redis_url, trim="delete-acked") as producer:
        await producer.enqueue({"n": 0})
        big = await redis.xadd(stream, {f"x{i}".encode(): b"1" for i in range(4000)})
        await producer.enqueue({"n": 1})
        ok: list[int] = []

        async def handle(m: Message) -> None:
            ok.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handle):
            await eventually(lambda: ok == [0, 1] and consumer.stats.dead_lettered == 1)
            await eventually(lambda: _at_most(redis, stream, 1), message="the others deleted")
        await consumer.close()
    assert [entry_id for entry_id, _ in await redis.xrange(stream)] == [big]
    records: Any = await redis.xrange(TopicKeys(topic).dead_letters(0))
    assert records[0][1][b"omitted_fields"] == b"4000"


async def test_a_delete_acked_mode_another_client_set_on_a_server_without_it_stops_nothing(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The consumer deletes acknowledged entries only where the server can: elsewhere a
    # job dead-lettered under that mode ended the consumer, its record left "active".
    if (await server_features(redis)).acked_trim:
        pytest.skip("the server has XDELEX: the mode works there")
    async with Producer(topic, redis_url=redis_url) as producer:
        await redis.hset(TopicKeys(topic).meta, "trim", "delete-acked")
        job = await producer.submit({"n": 0})
        await producer.enqueue({"n": 1})
        handled: list[int] = []

        async def handle(m: Message) -> None:
            if m.payload["n"] == 0:
                raise ValueError("dead-lettered")
            handled.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handle):
            await eventually(lambda: handled == [1] and consumer.stats.dead_lettered == 1)
            assert consumer.running
        record = await job.status()
    assert record == "dead"
    assert f"topic {topic} is set to delete-acked, which this server can't do" in caplog.text


@pytest.mark.parametrize("raise_", ["partitions", "priority levels"])
async def test_a_lagging_group_keeps_what_a_raise_adds_with_acked_trim(
    redis_url: str, redis: Redis, topic: str, raise_: str
) -> None:
    # A stream a raise adds had no group until a member of each gained it, and Redis 8.2's
    # ACKED judged by the groups a stream has: XADD's ACKED MAXLEN trimmed what the lagging
    # group never read (60 of 100 reached it). Now the raise carries every group there first.
    async with Producer(topic, redis_url=redis_url):
        pass
    await _group_that_read_nothing(redis_url, topic)
    levels = 2 if raise_ == "priority levels" else 1
    async with Producer(
        topic, redis_url=redis_url, maxlen=10, approximate=False, trim="acked", priorities=levels
    ) as producer:
        if raise_ == "partitions":
            await producer.request_partition_increase(2)
        messages = [{"n": i} for i in range(100)]
        await producer.batch_enqueue(messages, priority=levels - 1)
    assert sorted(await _consume_all(redis_url, topic, 100)) == list(range(100))


async def test_another_groups_deletions_wait_for_a_lagging_group_on_added_partitions(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # trim="delete-acked": group "fast" deleted every entry of a partition added while "slow"
    # was away; "slow" got 50 of 100.
    await _needs_acked_trim(redis)
    async with Producer(topic, redis_url=redis_url, trim="delete-acked") as producer:
        await _group_that_read_nothing(redis_url, topic, "fast")
        await _group_that_read_nothing(redis_url, topic, "slow")
        await producer.request_partition_increase(2)
        await producer.batch_enqueue([{"n": i} for i in range(100)])
    await _consume_group(redis_url, topic, "fast", 100)
    await _consume_group(redis_url, topic, "slow", 100)


async def test_a_groups_key_another_client_spoilt_stops_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A groups set of another type stopped every consumer at its start (WRONGTYPE), and a
    # member no UTF-8 stopped an emulating producer's connect; the first is replaced, the
    # second counts as a group's name. While the set is of another type, nothing is trimmed.
    keys = TopicKeys(topic)
    await redis.set(keys.groups, "another client's")
    async with Producer(
        topic, redis_url=redis_url, maxlen=10, approximate=False, trim="acked",
        refresh_interval=0.1,
    ) as producer:  # fmt: skip
        await _group_that_read_nothing(redis_url, topic)
        await producer.batch_enqueue([{"n": i} for i in range(30)])
        assert sorted(await _consume_all(redis_url, topic, 30)) == list(range(30))
        assert await redis.type(keys.groups) == b"set"
        await redis.sadd(keys.groups, b"\xff\xfe")
        await producer.batch_enqueue([{"n": i} for i in range(30, 60)])
        await producer.refresh_partitions()
    assert sorted(await _consume_all(redis_url, topic, 30)) == list(range(30, 60))


async def test_a_topic_set_to_delete_acked_later_deletes_what_running_consumers_ack(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A consumer read the topic's retention only when it gained partitions: one running when
    # a producer first set "delete-acked" acknowledged without deleting, for good. It reads
    # it again about once a minute (here every 10 heartbeats), and deletes then what every
    # group had acknowledged meanwhile.
    await _needs_acked_trim(redis)
    monkeypatch.setattr(_delivery, "SWEEP_SECONDS", 0)
    stream = TopicKeys(topic).stream(0)
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    async with Producer(topic, redis_url=redis_url):
        pass
    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions, message="assigned")
        async with Producer(topic, redis_url=redis_url, trim="delete-acked") as producer:
            await producer.batch_enqueue([{"n": i} for i in range(50)])
            await eventually(lambda: len(seen) == 50, message="handled")
            await eventually(lambda: _at_most(redis, stream, 0), message="all deleted")
            await producer.batch_enqueue([{"n": i} for i in range(50, 60)])
            await eventually(lambda: len(seen) == 60, message="handled")
            await eventually(lambda: _at_most(redis, stream, 0), message="deleted as acked")


async def test_a_fanout_bridge_deletes_what_it_fanned_out_of_a_delete_acked_source(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The bridge acknowledged its source entries with a plain XACK: of a source set to
    # delete-acked whose only group it was, every entry stayed.
    await _needs_acked_trim(redis)
    source, target = TopicKeys(topic).stream(0), TopicKeys(f"{topic}-out").stream(0)
    async with (
        Producer(topic, redis_url=redis_url, trim="delete-acked") as producer,
        FanOut(topic, [f"{topic}-out"], redis_url=redis_url, **FAST) as bridge,
    ):
        task = asyncio.create_task(bridge.run())
        await eventually(lambda: bridge.consumer.assigned_partitions, message="assigned")
        await producer.batch_enqueue([{"n": i} for i in range(20)])
        await eventually(lambda: _at_least(redis, target, 20), message="fanned out")
        await eventually(lambda: _at_most(redis, source, 0), message="deleted")
        await bridge.stop(timeout=10)
        await asyncio.wait_for(task, 15)


async def _at_least(redis: Redis, stream: str, n: int) -> bool:
    return int(await redis.xlen(stream)) >= n


@pytest.mark.single_node
async def test_the_fanout_script_deleting_writes_a_batch_handled_again_once(
    redis: Redis, topic: str
) -> None:
    # With deletion, the bridge acknowledges with XACK (its reply says whether the entry was
    # still pending, so a batch handled again writes nothing twice), then XDELEX ACKED on
    # each entry: one every group has acknowledged meanwhile goes, also when the last to
    # acknowledge was another group. Before (XACKDEL), such entries stayed.
    await _needs_acked_trim(redis)
    source, target = TopicKeys(topic), TopicKeys(f"{topic}-a")
    await redis.hset(target.meta, "partitions", 1)
    for i in range(3):
        await redis.xadd(source.stream(0), {"p": f'{{"n":{i}}}'})
    await redis.xgroup_create(source.stream(0), "g", id="0")
    await redis.xgroup_create(source.stream(0), "behind", id="0")
    read: Any = await redis.xreadgroup("g", "me", {source.stream(0): ">"})
    ids = [entry_id for entry_id, _ in read[0][1]]
    await redis.set(source.lease(0, "g"), "me")
    keys = [source.stream(0), source.lease(0, "g"), target.meta, target.stream(0)]
    args: list[Any] = ["g", "me", 1, 1, "0", "~", "1"]
    for i, entry_id in enumerate(ids):
        args += [entry_id, 1, 1, 4, 2, "p", f'{{"n":{i}}}']
    assert await FANOUT(redis, keys, args) == [3]
    assert await FANOUT(redis, keys, args) == [0, 1, 2, 3]  # all done before: nothing written
    assert await redis.xlen(target.stream(0)) == 3
    assert await redis.xlen(source.stream(0)) == 3  # group "behind" has read none of them
    read = await redis.xreadgroup("behind", "me", {source.stream(0): ">"})
    await redis.xack(source.stream(0), "behind", *ids)
    assert await FANOUT(redis, keys, args) == [0, 1, 2, 3]
    assert await redis.xlen(source.stream(0)) == 0  # every group acknowledged: deleted
