"""A topic's 15-minute series against a real Redis: written by the metrics flush, read back."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import Consumer, Message, Monitor, Producer
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import MetricsRecorder, record_lag, topic_series
from redisaq_core.metrics._series import MAX_RECORD_BYTES, SLOTS, STEP, WINDOW, quantile
from tests.helpers import Running, eventually


def _group(series: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in series["groups"] if g["group"] == name)


async def _now(redis: Redis) -> int:
    sec, _ = await redis.time()
    return int(sec)


async def _slot_of_now(redis: Redis) -> str:
    return str((await _now(redis)) // STEP % SLOTS)


def test_quantile_interpolates_within_a_bucket_as_prometheus() -> None:
    assert quantile([], 0.5) is None
    assert quantile([(0.1, 0), (math.inf, 0)], 0.5) is None
    # 10 observations in (0, 0.1], 10 in (0.1, 0.2]
    assert quantile([(0.1, 10), (0.2, 10), (math.inf, 0)], 0.5) == pytest.approx(0.1)
    assert quantile([(0.2, 10), (0.1, 10)], 0.75) == pytest.approx(0.15)
    assert quantile([(0.1, 10), (0.2, 10)], 0.99) == pytest.approx(0.198)
    # in the +Inf bucket: the largest finite bound
    assert quantile([(0.1, 1), (math.inf, 99)], 0.99) == pytest.approx(0.1)


async def test_producer_and_consumer_fill_the_series(
    redis: Redis, redis_url: str, topic: str
) -> None:
    async def slow(m: Message) -> None:
        await asyncio.sleep(0.02)

    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        async with Running(consumer, slow):
            await producer.batch_enqueue([{"n": i} for i in range(40)])
            await eventually(lambda: consumer.stats.handled == 40)
    async with Monitor(redis=redis) as monitor:
        series: Any = await monitor.topic_series(topic)
        assert await monitor.topic_series("no-such-topic") is None
    assert series["step"] == STEP and series["window"] == WINDOW == 900
    assert len(series["times"]) == len(series["produced"]) == SLOTS
    assert series["times"] == sorted(series["times"]) and series["skipped"] == 0
    assert series["times"][-1] <= series["time"] < series["times"][-1] + STEP
    # the counts are in the last bucket or two, as rates per second
    produced = sum(r * STEP for r in series["produced"][:-1]) + series["produced"][-1] * max(
        1.0, min(STEP, series["time"] - series["times"][-1])
    )
    assert produced == pytest.approx(40)
    (group,) = series["groups"]
    assert group["group"] == consumer.group
    assert sum(1 for r in group["handled"] if r) >= 1
    p50 = [v for v in group["p50"] if v is not None]
    p99 = [v for v in group["p99"] if v is not None]
    assert p50 and all(0.01 <= v <= 0.5 for v in p50)
    assert p99 and all(p >= q for p, q in zip(p99, p50, strict=True))
    # the monitor sampled the lag (0: everything was handled) into the current bucket (or
    # the one before, when a bucket ended between the write and the read)
    assert 0 in group["lag"][-2:] and group["lag"][0] is None
    ttl = await redis.pttl(TopicKeys(topic).series)
    assert 0 < ttl <= (SLOTS + 1) * STEP * 1000


async def test_lag_keeps_the_largest_seen_in_its_bucket(redis: Redis, topic: str) -> None:
    for _ in range(3):
        before = await _now(redis)
        await record_lag(redis, topic, {"g1": 7, "g2": 3})
        await record_lag(redis, topic, {"g1": 5})
        series = await topic_series(redis, topic)
        if series["times"][-1] == before // STEP * STEP:  # no bucket ended meanwhile
            break
    assert _group(series, "g1")["lag"][-1] == 7
    assert _group(series, "g2")["lag"][-1] == 3
    assert [g["group"] for g in series["groups"]] == ["g1", "g2"]


async def test_malformed_records_are_skipped_and_replaced(redis: Redis, topic: str) -> None:
    key = TopicKeys(topic).series
    now = await _now(redis)
    good_start = (now // STEP - 3) * STEP
    good_slot = str(good_start // STEP % SLOTS)
    good = {"t": good_start, "p": 50, "g": {"g": {"h": 25, "b": {"0.01": 5, "+Inf": 0}}}}
    other = (now // STEP - 5) * STEP
    bad = {
        "x": "not a slot",
        str(other // STEP % SLOTS): "not json",
        str((other - STEP) // STEP % SLOTS): json.dumps({"t": "soon"}),
        str((other - 2 * STEP) // STEP % SLOTS): json.dumps({"t": other, "p": 1}),  # wrong slot
        str((other - 3 * STEP) // STEP % SLOTS): json.dumps(
            {"t": other - 3 * STEP, "p": -4, "g": {}}
        ),
        str((other - 4 * STEP) // STEP % SLOTS): json.dumps(
            {"t": other - 4 * STEP, "p": 1, "g": {"g": {"h": 1, "b": [1, 2]}}}
        ),
        str((other - 5 * STEP) // STEP % SLOTS): json.dumps(
            {"t": other - 5 * STEP, "p": 1, "g": {"g": {"h": 1, "b": {"-1": 3}}}}
        ),
        str((other - 6 * STEP) // STEP % SLOTS): "[" * (MAX_RECORD_BYTES + 1),
        good_slot: json.dumps(good),
    }
    await redis.hset(key, mapping=bad)
    series = await topic_series(redis, topic)
    assert series["skipped"] == len(bad) - 1
    i = series["times"].index(good_start)
    assert series["produced"][i] == 50 / STEP
    assert sum(series["produced"]) == 50 / STEP
    g = _group(series, "g")
    assert g["handled"][i] == 25 / STEP and g["p99"][i] == pytest.approx(0.0099)

    # a flush meeting garbage in the current bucket's slot starts the record afresh
    async def flush_into_garbage() -> dict[str, Any]:
        slot = await _slot_of_now(redis)
        await redis.hset(key, slot, '{"t": "garbage", "g": [')
        recorder = MetricsRecorder(redis, topic, "g", flush_interval=60)
        recorder.produced(0, 3)
        recorder.handled(1, 0.004)
        await recorder.stop()
        return json.loads(await redis.hget(key, slot))

    record = await flush_into_garbage()
    if record["t"] != await _now(redis) // STEP * STEP:  # a bucket ended meanwhile
        record = await flush_into_garbage()
    assert record["p"] == 3 and record["g"]["g"]["h"] == 1
    assert record["g"]["g"]["b"] == {"0.005": 1}

    # values of the wrong type inside a decodable record of this bucket count as 0
    slot = await _slot_of_now(redis)
    start = await _now(redis) // STEP * STEP
    odd = {"t": start, "p": "x", "g": {"g": {"h": None, "b": {"0.005": "y"}, "l": "z"}, "h": 4}}
    await redis.hset(key, slot, json.dumps(odd))
    await record_lag(redis, topic, {"g": 2})
    record = json.loads(await redis.hget(key, slot))
    if record["t"] == start:
        assert record == {"t": start, "p": 0, "g": {"g": {"h": 0, "b": {"0.005": 0}, "l": 2}}}
    assert (await topic_series(redis, topic))["skipped"] == len(bad) - 1


@pytest.mark.single_node
async def test_a_read_only_user_gets_the_series_without_its_lag_sample(
    redis: Redis, redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
    await redis.xgroup_create(TopicKeys(topic).stream(0), "readers", id="0", mkstream=True)
    user, password = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rule = [
        "on",
        ">" + password,
        "resetkeys",
        "~redisaq:*",
        "-@all",
        "+@read",
        "+@connection",
        "+time",
    ]
    await redis.execute_command("ACL", "SETUSER", user, *rule)
    try:
        url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
        async with Monitor(redis_url=url) as monitor:
            series: Any = await monitor.topic_series(topic)
    finally:
        await redis.execute_command("ACL", "DELUSER", user)
    assert sum(series["produced"]) > 0
    assert series["groups"] == []  # the lag sample was refused; nothing else names the group
    assert await redis.exists(TopicKeys(topic).series)


async def test_a_record_nested_past_the_decoders_depth_is_skipped(redis: Redis, topic: str) -> None:
    # 5 kB, under MAX_RECORD_BYTES. Before, its RecursionError failed the whole read (and
    # ended `redisaq monitor topic T --watch`, tests/test_cli_monitor.py).
    await redis.hset(TopicKeys(topic).series, "7", "[" * 5000)
    assert (await topic_series(redis, topic))["skipped"] == 1
