"""MetricsRecorder, topic_metrics and the Prometheus exposition against a real Redis."""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from redisaq_core import ConfigurationError
from redisaq_core.embedded import free_port
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import COUNTERS, DEFAULT_BUCKETS, MetricsRecorder, topic_metrics
from redisaq_core.metrics import _reader as metrics_module
from redisaq_core.metrics.prometheus import render_prometheus
from tests import job_records as jr
from tests.helpers import eventually
from tests.proxy import FaultProxy


def _row(view: dict[str, Any], group: str, partition: int) -> dict[str, Any]:
    g = next(g for g in view["groups"] if g["group"] == group)
    return next(r for r in g["partitions"] if r["partition"] == partition)


def _group(view: dict[str, Any], group: str) -> dict[str, Any]:
    return next(g for g in view["groups"] if g["group"] == group)


async def _redis_major(redis: Redis) -> int:
    info: Any = await redis.info("server")
    return int(str(info["redis_version"]).split(".")[0])


class Kept:
    """The counts the test keeps itself, to compare with what Redis holds."""

    def __init__(self) -> None:
        self.counters: dict[tuple[int, str], int] = {}
        self.observed: dict[tuple[int, str], list[float]] = {}
        self.produced: dict[int, int] = {}

    def count(self, p: int, name: str, n: int = 1) -> None:
        self.counters[(p, name)] = self.counters.get((p, name), 0) + n

    def observe(self, p: int, name: str, value: float) -> None:
        self.observed.setdefault((p, name), []).append(value)


def _expected_buckets(values: list[float]) -> list[list[Any]]:
    out = []
    for bound in (*DEFAULT_BUCKETS, math.inf):
        label = "+Inf" if math.isinf(bound) else f"{bound:g}"
        out.append([label, sum(1 for v in values if v <= bound)])
    return out


async def test_counts_equal_what_the_test_kept(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 4)
    rng = random.Random(7)
    kept = Kept()
    consumers = [
        MetricsRecorder(redis, topic, "g1", consumer=f"c{i}", flush_interval=60) for i in range(2)
    ]
    producer = MetricsRecorder(redis, topic, flush_interval=60)
    for _ in range(3000):
        p = rng.randrange(4)
        rec = rng.choice(consumers)
        event = rng.choice(["produced", "handled", "handled", *COUNTERS])
        if event == "produced":
            n = rng.randint(1, 3)
            producer.produced(p, n)
            kept.produced[p] = kept.produced.get(p, 0) + n
        elif event == "handled":
            handler = rng.choice([0.0004, 0.003, 0.02, 0.3, 2.0, 12.0, rng.random()])
            e2e = None if rng.random() < 0.2 else handler + rng.random()
            rec.handled(p, handler, e2e)
            kept.count(p, "handled")
            kept.observe(p, "handler_seconds", handler)
            if e2e is not None:
                kept.observe(p, "end_to_end_seconds", e2e)
        elif event == "trimmed":
            n = rng.randint(1, 4)
            rec.trimmed(p, n)
            kept.count(p, "trimmed", n)
        else:
            getattr(rec, event)(p)
            kept.count(p, event)
        if rng.random() < 0.01:  # some flushes in between: stored counts add up
            await rec.flush()
    for rec in (*consumers, producer):
        await rec.stop()

    view = await topic_metrics(redis, topic)
    assert [s["produced"] for s in view["partition_stats"]] == [kept.produced.get(p, 0)
                                                               for p in range(4)]  # fmt: skip
    assert view["produced"] == sum(kept.produced.values())
    for p in range(4):
        row = _row(view, "g1", p)
        for name in COUNTERS:
            assert row[name] == kept.counters.get((p, name), 0), (p, name)
        for name in ("handler_seconds", "end_to_end_seconds"):
            values = kept.observed.get((p, name), [])
            h = row[name]
            assert h["count"] == len(values)
            assert h["sum"] == pytest.approx(sum(values))
            assert h["max"] == pytest.approx(max(values, default=0.0))
            assert h["buckets"] == _expected_buckets(values)
    totals = _group(view, "g1")["totals"]
    assert totals["handled"] == sum(v for (_, n), v in kept.counters.items() if n == "handled")
    every = [v for (_, n), vs in kept.observed.items() if n == "handler_seconds" for v in vs]
    assert totals["handler_seconds"]["count"] == len(every)
    assert totals["handler_seconds"]["buckets"] == _expected_buckets(every)


async def test_periodic_flush_and_final_flush(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    async with MetricsRecorder(redis, topic, "g", flush_interval=0.05) as rec:
        for _ in range(5):
            rec.handled(0, 0.01, 0.02)

        async def handled() -> int:
            view = await topic_metrics(redis, topic)
            return int(_row(view, "g", 0)["handled"]) if view["groups"] else 0

        await eventually(lambda: _equals(handled(), 5), timeout=5)
        rec.failed(0)
        await rec.start()  # idempotent
    assert _row(await topic_metrics(redis, topic), "g", 0)["failed"] == 1
    await rec.stop()  # idempotent


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_flush_failure_keeps_the_counts(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    dead = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    rec = MetricsRecorder(dead, topic, "g", flush_interval=60)
    rec.handled(0, 0.5)
    rec.retried(0)
    with pytest.raises(Exception, match="onnect"):
        await rec.flush()
    rec.handled(0, 0.25)
    rec.redis = redis
    await rec.flush()
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert (row["handled"], row["retried"]) == (2, 1)
    assert row["handler_seconds"]["max"] == 0.5 and row["handler_seconds"]["count"] == 2
    await dead.aclose()


@pytest.mark.single_node
async def test_a_flush_sent_again_after_its_reply_was_lost_counts_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The script ran, the reply never came: the recorder's next flush sends it again.
    # Before, its counts were added twice.
    await jr.make_topic(redis, topic, 1)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultProxy(port) as proxy:
        client = Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
        rec = MetricsRecorder(client, topic, "g", flush_interval=60)
        rec.handled(0, 0.5)
        await rec.flush()  # the script loaded
        rec.handled(0, 0.5)
        rec.handled(0, 0.5)
        proxy.drop_replies = True
        flush = asyncio.create_task(rec.flush())

        async def applied() -> bool:
            return await redis.hget(TopicKeys(topic).metrics, "0 g handled") == b"3"

        await eventually(applied, message="the flush script ran")
        proxy.drop_replies = False
        await proxy.cut()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(flush, 10)
        rec.handled(0, 0.25)
        await rec.flush()
        await client.aclose()
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert row["handled"] == 4 and row["handler_seconds"]["count"] == 4
    assert row["handler_seconds"]["sum"] == pytest.approx(1.75)


async def test_in_flight_gauges_of_live_consumers_only(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 2)
    a = MetricsRecorder(redis, topic, "g", consumer="a", flush_interval=60)
    b = MetricsRecorder(redis, topic, "g", consumer="b", flush_interval=60)
    await jr.add_member(redis, topic, "g", "a", [0])
    await jr.add_member(redis, topic, "g", "b", [1])
    a.in_flight(0, 3)
    a.in_flight(0, -1)
    b.in_flight(0, 1)
    b.in_flight(1, 4)
    await a.flush()
    await b.flush()
    view = await topic_metrics(redis, topic)
    assert (_row(view, "g", 0)["in_flight"], _row(view, "g", 1)["in_flight"]) == (3, 4)
    members = {m["name"]: m for m in _group(view, "g")["members"]}
    assert (members["a"]["in_flight"], members["b"]["in_flight"]) == (2, 5)
    assert _group(view, "g")["totals"]["in_flight"] == 7

    # A consumer that died without stopping: its gauge goes stale and stops counting.
    keys = TopicKeys(topic)
    now = await jr.server_ms(redis)
    await redis.hset(keys.metrics, "1 g in_flight ghost", f"9 {now - 60_000} 1000")
    await redis.hset(keys.metrics, "1 g in_flight older", f"9 {now - 4_000_000} 1000")
    view = await topic_metrics(redis, topic)
    assert _row(view, "g", 1)["in_flight"] == 4
    fields = {f.decode() for f in await redis.hkeys(keys.metrics)}
    assert "1 g in_flight ghost" in fields and "1 g in_flight older" not in fields

    # Stopping removes the recorder's own gauges.
    await b.stop()
    view = await topic_metrics(redis, topic)
    assert (_row(view, "g", 0)["in_flight"], _row(view, "g", 1)["in_flight"]) == (2, 0)
    a.in_flight(0, -2)
    await a.flush()
    assert _row(await topic_metrics(redis, topic), "g", 0)["in_flight"] == 0
    await a.stop()


async def test_live_figures(redis: Redis, topic: str) -> None:
    keys = TopicKeys(topic)
    await jr.make_topic(redis, topic, 3, priorities=2)
    await jr.create_group(redis, topic, "fast", 3, priorities=2)
    await jr.create_group(redis, topic, "slow", 3, priorities=2)
    for p in range(3):
        for _ in range(5 + p):
            await redis.xadd(keys.stream(p), {"p": b"1"})
    for _ in range(4):
        await redis.xadd(keys.stream(1, 1), {"p": b"2"})
    await redis.xadd(keys.dead_letters(2), {"topic": topic})
    await redis.xadd(keys.dead_letters(2), {"topic": topic})
    await jr.add_member(redis, topic, "fast", "f1", [0, 1])
    await jr.add_member(redis, topic, "fast", "f2", [2], age_ms=5000)
    assert await jr.read(redis, topic, "fast", "f1", 0, 5) == 5
    assert await jr.read(redis, topic, "fast", "f1", 1, 2) == 2
    assert await jr.ack_all(redis, topic, "fast", 0) == 5
    assert await jr.read(redis, topic, "slow", "s1", 2, 3) == 3

    view = await topic_metrics(redis, topic)
    assert (view["exists"], view["partitions"], view["priorities"]) == (True, 3, 2)
    assert [s["length"] for s in view["partition_stats"]] == [5, 10, 7]
    assert [s["dead_letters"] for s in view["partition_stats"]] == [0, 0, 2]
    assert (view["length"], view["dead_letters"], view["groups_count"]) == (22, 2, 2)
    fast = {r["partition"]: r for r in _group(view, "fast")["partitions"]}
    assert [fast[p]["owner"] for p in range(3)] == ["f1", "f1", "f2"]
    assert [fast[p]["pending"] for p in range(3)] == [0, 2, 0]
    assert [fast[p]["lag"] for p in range(3)] == [0, 8, 7]
    assert all(fast[p]["lag_exact"] for p in range(3))
    slow = {r["partition"]: r for r in _group(view, "slow")["partitions"]}
    assert [slow[p]["owner"] for p in range(3)] == [None, None, None]
    assert [slow[p]["pending"] for p in range(3)] == [0, 0, 3]
    assert [slow[p]["lag"] for p in range(3)] == [5, 10, 4]
    members = {m["name"]: m for m in _group(view, "fast")["members"]}
    assert members["f1"]["partitions"] == [0, 1] and members["f1"]["pending"] == 2
    assert members["f2"]["age"] >= 5.0 and members["f2"]["partitions"] == [2]
    assert _group(view, "slow")["members"] == []
    assert _group(view, "fast")["totals"]["lag"] == 15


async def test_lag_beyond_the_scan_limit_on_old_servers(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if await _redis_major(redis) >= 7:
        pytest.skip("Redis 7+ reports the lag itself")
    monkeypatch.setattr(metrics_module, "LAG_SCAN_LIMIT", 5)
    keys = TopicKeys(topic)
    await jr.make_topic(redis, topic, 1)
    await jr.create_group(redis, topic, "some", 1)
    await jr.create_group(redis, topic, "none", 1)
    for _ in range(20):
        await redis.xadd(keys.stream(0), {"p": b"1"})
    await jr.read(redis, topic, "some", "c", 0, 3)
    view = await topic_metrics(redis, topic)
    assert (_row(view, "some", 0)["lag"], _row(view, "some", 0)["lag_exact"]) == (5, False)
    assert (_row(view, "none", 0)["lag"], _row(view, "none", 0)["lag_exact"]) == (20, True)
    # Everything the group had been given was trimmed away: the rest is all lag.
    await redis.xtrim(keys.stream(0), maxlen=12, approximate=False)
    view = await topic_metrics(redis, topic)
    assert (_row(view, "some", 0)["lag"], _row(view, "some", 0)["lag_exact"]) == (12, True)


async def test_unknown_topic_view(redis: Redis, topic: str) -> None:
    view = await topic_metrics(redis, topic)
    assert (view["exists"], view["partitions"], view["groups"]) == (False, 0, [])
    assert f'redisaq_topic_partitions{{topic="{topic}"}} 0\n' in render_prometheus(view)


async def test_recorder_arguments(redis: Redis, topic: str) -> None:
    producer = MetricsRecorder(redis, topic)
    producer.produced(0)
    for call in (
        lambda: producer.handled(0, 0.1),
        lambda: producer.failed(0),
        lambda: producer.in_flight(0, 1),
    ):
        with pytest.raises(ConfigurationError, match="group"):
            call()
    for bad in (
        {"flush_interval": 0},
        {"flush_interval": "1"},
        {"buckets": []},
        {"buckets": [0.1, 0.1]},
        {"buckets": [-1.0]},
    ):
        with pytest.raises(ConfigurationError):
            MetricsRecorder(redis, topic, "g", **bad)
    with pytest.raises(ConfigurationError):
        MetricsRecorder(redis, topic, "bad group")
    with pytest.raises(ConfigurationError):
        MetricsRecorder(redis, "bad{topic}")
    await producer.stop()


async def test_custom_buckets(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    rec = MetricsRecorder(redis, topic, "g", buckets=[0.5, 3.0])
    for value in (0.1, 0.5, 0.7, 4.0, -1.0):
        rec.handled(0, value)
    await rec.stop()
    h = _row(await topic_metrics(redis, topic), "g", 0)["handler_seconds"]
    cumulative = dict(h["buckets"])
    assert (cumulative["0.5"], cumulative["3"], cumulative["+Inf"], h["count"]) == (3, 4, 5, 5)
    assert h["max"] == 4.0 and h["sum"] == pytest.approx(5.3)


def test_hot_path_is_cheap() -> None:
    rec = MetricsRecorder(None, "t", "g")  # type: ignore[arg-type]  # never flushed
    started = time.perf_counter()
    for i in range(100_000):
        rec.handled(i & 7, 0.003, 0.01)
        rec.in_flight(i & 7, 1)
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, elapsed  # a few microseconds per message, with a wide margin


async def test_prometheus_exposition_parses_and_matches(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 2)
    await jr.create_group(redis, topic, 'we"ird\\group', 2)
    await jr.add_member(redis, topic, 'we"ird\\group', "m1", [0, 1])
    keys = TopicKeys(topic)
    for _ in range(3):
        await redis.xadd(keys.stream(1), {"p": b"1"})
    rec = MetricsRecorder(redis, topic, 'we"ird\\group', consumer="m1")
    producer = MetricsRecorder(redis, topic)
    producer.produced(1, 3)
    for value in (0.002, 0.04, 0.04, 7.0):
        rec.handled(1, value, value * 2)
    rec.failed(0)
    await rec.stop()
    await producer.stop()
    view = await topic_metrics(redis, topic)
    text = render_prometheus([view])
    assert render_prometheus(view) == text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    group = 'we"ird\\group'
    labels = (("group", group), ("partition", "1"), ("topic", topic))
    assert samples[("redisaq_messages_handled_total", labels)] == 4
    assert samples[("redisaq_messages_lag", labels)] == 3
    assert samples[("redisaq_handler_duration_seconds_count", labels)] == 4
    assert samples[("redisaq_handler_duration_seconds_sum", labels)] == pytest.approx(7.082)
    assert samples[("redisaq_handler_duration_max_seconds", labels)] == 7.0
    bucket = (("group", group), ("le", "0.05"), ("partition", "1"), ("topic", topic))
    assert samples[("redisaq_handler_duration_seconds_bucket", bucket)] == 3
    assert samples[("redisaq_end_to_end_duration_seconds_count", labels)] == 4
    owner = (("group", group), ("owner", "m1"), ("partition", "0"), ("topic", topic))
    assert samples[("redisaq_partition_owner_info", owner)] == 1
    zero = (("group", group), ("partition", "0"), ("topic", topic))
    assert samples[("redisaq_messages_failed_total", zero)] == 1
    produced = (("partition", "1"), ("topic", topic))
    assert samples[("redisaq_messages_produced_total", produced)] == 3
    assert samples[("redisaq_stream_length", produced)] == 3
    assert families["redisaq_handler_duration_seconds"].type == "histogram"
    assert families["redisaq_messages_handled"].type == "counter"
    assert families["redisaq_messages_pending"].type == "gauge"
    assert render_prometheus([]) == ""


async def test_junk_in_the_metrics_hash_is_ignored(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    rec = MetricsRecorder(redis, topic, "g", consumer="c")
    rec.handled(0, 0.1)
    await rec.stop()
    junk = {"nonsense": "1", "x g handled": "2", "0 g in_flight c2": "junk", "0 g handled x": "3",
            "0 g handler_seconds le=abc": "4", "0 g weird": "5"}  # fmt: skip
    await redis.hset(TopicKeys(topic).metrics, mapping=junk)
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert (row["handled"], row["in_flight"], row["handler_seconds"]["count"]) == (1, 0, 1)


async def test_counts_another_client_spoilt_are_written_over_and_flushes_go_on(
    redis: Redis, topic: str
) -> None:
    # A counter that is no number, and a series key of another type. Before, every flush
    # failed on them, and the counts it had written before the error were added again at
    # each next try.
    await jr.make_topic(redis, topic, 1)
    keys = TopicKeys(topic)
    await redis.hset(keys.metrics, "0 g failed", "abc")
    await redis.set(keys.series, "another client's")
    rec = MetricsRecorder(redis, topic, "g", flush_interval=60)
    for flush in range(3):
        rec.handled(0, 0.1)
        rec.failed(0)
        await rec.flush()
        if flush == 0:  # the handler-time sums (HINCRBYFLOAT) spoilt too
            sums = [f for f in await redis.hkeys(keys.metrics) if b"sum" in f]
            assert sums
            await redis.hset(keys.metrics, mapping=dict.fromkeys(sums, "abc"))
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert (row["handled"], row["failed"]) == (3, 3)
    assert row["handler_seconds"]["sum"] == pytest.approx(0.2)
    assert await redis.type(keys.series) == b"hash"


@pytest.mark.parametrize(
    ("field", "stored"),
    [
        ("0 g handler_seconds sum", "inf"),
        ("0 g handler_seconds sum", "-inf"),
        ("0 g handler_seconds sum", "1e308x"),
        ("0 g handler_seconds sum", " 1"),
        ("0 g handled", "9223372036854775807"),
        ("0 g handled", "1.5"),
        ("0 g handled", "01"),
    ],
)
async def test_a_counter_that_takes_no_increment_is_written_over_once(
    redis: Redis, topic: str, field: str, stored: str
) -> None:
    # HINCRBYFLOAT refuses a sum past the largest float ("increment would produce NaN or
    # Infinity"). Before, the flush failed with the counters before that field already
    # added, and each next flush added them again.
    await jr.make_topic(redis, topic, 1)
    keys = TopicKeys(topic)
    await redis.hset(keys.metrics, field, stored)
    rec = MetricsRecorder(redis, topic, "g", flush_interval=60)
    rec.handled(0, 0.1)
    await rec.flush()
    await rec.flush()
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert (row["handled"], row["handler_seconds"]["count"]) == (1, 1)
    assert row["handler_seconds"]["sum"] == pytest.approx(0.1)


async def test_a_metrics_key_of_another_type_is_replaced(redis: Redis, topic: str) -> None:
    # Before, every flush failed on it (WRONGTYPE) and kept its counts for the next.
    await jr.make_topic(redis, topic, 1)
    keys = TopicKeys(topic)
    await redis.set(keys.metrics, "another client's")
    rec = MetricsRecorder(redis, topic, "g", flush_interval=60)
    rec.handled(0, 0.1)
    rec.failed(0)
    await rec.flush()
    assert await redis.type(keys.metrics) == b"hash"
    row = _row(await topic_metrics(redis, topic), "g", 0)
    assert (row["handled"], row["failed"], row["handler_seconds"]["count"]) == (1, 1, 1)
