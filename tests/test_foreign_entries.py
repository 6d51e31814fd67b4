"""Entries another client wrote into a partition stream never stop a consumer.

Each entry the consumer can't read goes to the dead letters with its raw
fields; the entries around it are handled, in order.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from redisaq_core import ConfigurationError, Consumer, FanOut, Message, Producer
from redisaq_core._scripts import DEAD_LETTER
from redisaq_core.dlq import DeadLetters
from redisaq_core.keys import TopicKeys
from redisaq_core.monitor import Monitor
from redisaq_core.results import ResultStore
from tests.helpers import Running, eventually, foreign_topic_index

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}
_MAX_ID = "18446744073709551615-18446744073709551615"

BAD_METADATA = [
    {b"p": b'{"n": 1}', b"c": b"yesterday"},
    {b"p": b'{"n": 1}', b"c": b"nan"},
    {b"p": b'{"n": 1}', b"o": b"soon"},
    {b"p": b'{"n": 1}', b"o": b"-3"},
    {b"p": b'{"n": 1}', b"k": b"\xff\xfe"},
    {b"p": b'{"n": 1}', b"j": b"\xc3\x28"},
    {b"p": b"not json at all"},
    {b"s": b"\xff"},
    {b"x": b"no payload field"},
]


async def _run_between(redis_url: str, topic: str, foreign: list[dict[bytes, bytes]]) -> None:
    """Good entries 0..n around each foreign entry: all good handled in order, the rest DLQ'd."""
    stream = TopicKeys(topic).stream(0)
    async with Producer(topic, redis_url=redis_url) as producer:
        client = Redis.from_url(redis_url)
        try:
            for i, fields in enumerate(foreign):
                await producer.enqueue({"good": i})
                await client.xadd(stream, fields)  # type: ignore[arg-type]
            await producer.enqueue({"good": len(foreign)})
        finally:
            await client.aclose()
    seen: list[Any] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload)

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
    dlq = DeadLetters(topic, redis_url=redis_url)
    async with Running(consumer, handle):
        good = [{"good": i} for i in range(len(foreign) + 1)]
        await eventually(
            lambda: [p for p in seen if isinstance(p, dict) and "good" in p] == good,
            message="the good entries, in order",
        )
        # Every foreign entry was either readable (handled) or dead-lettered: none is left.
        await eventually(lambda: _settled(dlq, len(seen), len(foreign) * 2 + 1))
    letters = await dlq.list()
    await dlq.close()
    await consumer.close()
    assert len(seen) + len(letters) == len(foreign) * 2 + 1
    for letter in letters:
        assert letter.error  # says why


async def _settled(dlq: DeadLetters, handled: int, total: int) -> bool:
    return handled + await dlq.count() == total


async def test_entries_with_unreadable_metadata_go_to_the_dead_letters(
    redis_url: str, topic: str
) -> None:
    await _run_between(redis_url, topic, BAD_METADATA)
    dlq = DeadLetters(topic, redis_url=redis_url)
    letters = await dlq.list()
    await dlq.close()
    assert len(letters) == len(BAD_METADATA)
    assert any("c=b'yesterday'" in letter.error for letter in letters)


_field_names = st.one_of(
    st.sampled_from([b"p", b"s", b"c", b"o", b"k", b"j", b"f:x", b""]),
    st.binary(max_size=12),
)
_field_values = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"nan", b"inf", b"-1", b"1e999", b"{}", b"[", b"\xff" * 3]),
    st.integers(60_000, 1_000_000).map(lambda n: b"\xff" * n),
)
_field_maps = st.dictionaries(_field_names, _field_values, min_size=1, max_size=5)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(foreign=st.lists(_field_maps, min_size=1, max_size=4))
def test_any_field_map_never_stops_a_consumer(
    redis_url: str, foreign: list[dict[bytes, bytes]]
) -> None:
    asyncio.run(_run_between(redis_url, f"t-{uuid.uuid4().hex[:12]}", foreign))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"created_at": "x"}, "Message.created_at must be a finite number, got 'x'"),
        ({"created_at": float("nan")}, "Message.created_at must be a finite number"),
        ({"timeout": "5"}, "Message.timeout must be a finite number, got '5'"),
        ({"timeout": -1.0}, r"Message.timeout must be > 0, got -1.0"),
        ({"priority": "high"}, "priority must be an integer, got 'high'"),
    ],
)
async def test_message_fields_are_checked_before_anything_is_written(
    redis_url: str, redis: Redis, topic: str, message: dict[str, Any], error: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        with pytest.raises(ConfigurationError, match=error):
            await producer.enqueue(Message(topic=topic, payload={"n": 1}, **message))
        with pytest.raises(ConfigurationError, match=error):
            await producer.batch_enqueue([{"n": 0}, Message(topic=topic, payload=1, **message)])
    assert await redis.xlen(TopicKeys(topic).stream(0)) == 0


async def test_submit_timeout_is_checked(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        with pytest.raises(ConfigurationError, match=r"Message\.timeout must be > 0"):
            await producer.submit({"n": 1}, timeout=0)


async def test_dead_letters_written_by_another_client_are_listed_and_refused_by_replay(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
    dlq_key = TopicKeys(topic).dead_letters(0)
    good = await redis.xadd(dlq_key, {"partition": "0", "priority": "0", "f:p": b'{"n": 7}'})
    odd_name = await redis.xadd(dlq_key, {b"\xff\xfe": b"x", b"f:p": b'{"n": 8}'})
    bad_priority = await redis.xadd(dlq_key, {"priority": "high", "f:p": b'{"n": 9}'})
    no_fields = await redis.xadd(dlq_key, {"error": "written by hand"})
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        letters = await dl.list()
        assert len(letters) == 4  # listed, whatever they hold
        with pytest.raises(ConfigurationError, match="priority b'high' is not an integer"):
            await dl.replay([good.decode(), bad_priority.decode()])
        assert await dl.replay() == 1  # the odd field name is harmless; the rest stay
        left = {letter.id for letter in await dl.list()}
    assert left == {bad_priority.decode(), no_fields.decode()}
    assert odd_name.decode() not in left


async def test_a_dead_letter_is_of_the_partition_whose_stream_holds_it(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Another client's records may name another partition, or none: a letter is listed as
    # the one of the stream that holds it, the partition its PARTITION:ID names on replay.
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.enqueue({"n": 1})
    keys = TopicKeys(topic)
    says_0 = await redis.xadd(keys.dead_letters(1), {"partition": "0", "f:p": b'{"n": 7}'})
    says_none = await redis.xadd(keys.dead_letters(1), {"f:p": b'{"n": 8}'})
    before = [await redis.xlen(keys.stream(p)) for p in range(2)]
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        assert [(d.id, d.partition) for d in await dl.list()] == [
            (says_0.decode(), 1), (says_none.decode(), 1)
        ]  # fmt: skip
        assert await dl.replay([f"1:{says_0.decode()}"]) == 1
    assert [await redis.xlen(keys.stream(p)) for p in range(2)] == [before[0], before[1] + 1]


@pytest.mark.parametrize("ttl", ["soon", "1.5", "inf", "1e20"])
async def test_job_records_another_client_overwrote_never_stop_the_consumer(
    redis_url: str, redis: Redis, topic: str, ttl: str
) -> None:
    # Job records replaced by keys of other types, or holding a result_ttl EXPIRE can't
    # take: each job is still handled, retried and dead-lettered, and the loop goes on.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        jobs = [await producer.submit({"n": n}) for n in range(5)]
    keys = TopicKeys(topic)
    await redis.set(keys.job(0, jobs[0].id), "not a hash")  # completed
    await redis.set(keys.job(0, jobs[1].id), "not a hash")  # fails once, then completed
    await redis.delete(keys.job(0, jobs[2].id))
    await redis.rpush(keys.job(0, jobs[2].id), "a list")  # dead-lettered
    await redis.hset(keys.job(0, jobs[3].id), "result_ttl", ttl)  # dead-lettered
    await redis.hset(keys.job(0, jobs[4].id), "result_ttl", ttl)  # completed
    runs: dict[int, int] = {}

    async def handle(m: Message) -> str:
        n = m.payload["n"]
        runs[n] = runs.get(n, 0) + 1
        if n in (2, 3) or (n == 1 and runs[n] == 1):
            raise RuntimeError("fails")
        return "done"

    consumer = Consumer(
        topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01,
        heartbeat_interval=0.2, poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, handle):
        await eventually(
            lambda: (
                (consumer.stats.handled == 3 and consumer.stats.dead_lettered == 2)
                or not consumer.running
            )
        )
        assert consumer.running
    assert runs == {0: 1, 1: 2, 2: 2, 3: 2, 4: 1}
    assert await redis.get(keys.job(0, jobs[0].id)) == b"not a hash"
    assert await redis.hget(keys.job(0, jobs[3].id), "status") == b"dead"
    assert await redis.hget(keys.job(0, jobs[4].id), "status") == b"completed"


async def test_a_dead_letter_stream_another_client_replaced_loses_no_entry(
    redis: Redis, topic: str
) -> None:
    # The dead-letter key holds a string another client wrote: it holds no dead letter of
    # ours, so it is replaced by the stream the letter goes to. The script used to fail with
    # WRONGTYPE, and that stopped the consumer at every start.
    keys, group, token = TopicKeys(topic), "default", "tok"
    stream = keys.stream(0)
    await redis.xgroup_create(stream, group, "0", mkstream=True)
    msg_id = (await redis.xadd(stream, {"p": b'{"n": 1}'})).decode()
    await redis.xreadgroup(group, "me", {stream: ">"})
    await redis.set(keys.lease(0, group), token)
    await redis.set(keys.dead_letters(0), "not a stream")
    call = [stream, keys.lease(0, group), keys.dead_letters(0)]
    args = [group, token, msg_id, 0, "", keys.job_channel, "me", "boom", "RuntimeError", "", 2]
    assert await DEAD_LETTER(redis, call, [*args, "error", "boom"])
    assert await DEAD_LETTER(redis, call, [*args, "error", "boom"]) == 0  # sent again: not twice
    records: Any = await redis.xrange(keys.dead_letters(0))
    assert len(records) == 1 and records[0][1][b"f:p"] == b'{"n": 1}'


@pytest.mark.parametrize("spoilt", ["string", "exhausted"])
async def test_a_dead_letter_stream_another_client_spoilt_stops_no_consumer(
    redis_url: str, redis: Redis, topic: str, spoilt: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A string in the dead-letter stream's place is replaced; a stream that can take no
    # more entries (one of the largest id) leaves the message pending, not lost, with an
    # error logged. Either used to stop the consumer with a ConsumerError.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.submit({"n": 0})
        if spoilt == "string":
            await redis.set(keys.dead_letters(0), "another client's")
        else:
            await redis.xadd(keys.dead_letters(0), {"x": "1"}, id=_MAX_ID)
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])
            if m.payload["n"] == 0:
                raise RuntimeError("fails")

        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handle):
            await eventually(lambda: seen == [0])
            await producer.enqueue({"n": 1})
            await eventually(lambda: seen == [0, 1])
            assert consumer.running
        await consumer.close()
    letters: Any = await redis.xrange(keys.dead_letters(0))
    pending: Any = await redis.xpending(keys.stream(0), "default")
    if spoilt == "string":
        assert [r[1][b"error_type"] for r in letters] == [b"RuntimeError"]
        assert pending["pending"] == 0
    else:
        assert len(letters) == 1
        assert pending["pending"] == 1
        assert "takes no more entries" in caplog.text


async def test_a_message_whose_dead_letter_was_refused_runs_no_more_when_claimed_again(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Its dead letter refused (the stream takes no more entries), the message stays
    # pending. Its count of runs was forgotten as if it were settled, so each later claim
    # ran it again, past max_deliveries.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    await redis.xadd(keys.dead_letters(0), {"x": "1"}, id=_MAX_ID)
    ran: list[int] = []

    async def fails(m: Message) -> None:
        ran.append(m.deliveries)
        raise RuntimeError("fails")

    for refusals in (1, 2):  # a second member claims it after the first stopped
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01,
                            **FAST)  # fmt: skip
        async with Running(consumer, fails):
            await eventually(lambda n=refusals: caplog.text.count("takes no more entries") == n)
        await consumer.close()
    assert ran == [1, 2]
    pending: Any = await redis.xpending(keys.stream(0), "default")
    assert pending["pending"] == 1


async def test_an_entry_of_thousands_of_fields_is_dead_lettered_without_them(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # More fields than one command's arguments can carry in a script: the dead letter notes
    # their count, the entry stays in its stream, and the consumer goes on. It used to stop
    # every consumer that took the partition.
    await _produce_one(redis_url, topic, 0)
    stream = TopicKeys(topic).stream(0)
    await redis.xadd(stream, {f"x{i}".encode(): b"1" for i in range(4000)})
    await _produce_one(redis_url, topic, 1)
    ok: list[Any] = []

    async def handle(m: Message) -> None:
        ok.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: ok == [0, 1] and consumer.stats.dead_lettered == 1)
    records: Any = await redis.xrange(TopicKeys(topic).dead_letters(0))
    assert records[0][1][b"omitted_fields"] == b"4000"
    assert not any(k.startswith(b"f:") for k in records[0][1])


async def _produce_one(redis_url: str, topic: str, n: int) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": n})


async def test_a_topic_index_of_another_type_stops_no_listing_and_no_fan_out(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The index of topics read as empty by the listings, and replaced by a fan-out bridge
    # that adds its targets to it; before, each failed on WRONGTYPE.
    async with foreign_topic_index(redis) as index:
        async with Monitor(redis_url=redis_url) as monitor:
            assert await monitor.topic_names() == []
        async with ResultStore(redis_url=redis_url) as store:
            assert await store.list_jobs() == []
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.enqueue({"n": 1})
        await redis.set(index, "another client's")
        async with FanOut(topic, [f"{topic}-copy"], redis_url=redis_url) as bridge:
            task = asyncio.create_task(bridge.run())
            await eventually(lambda: bridge.stats.fanned_out == 1 or task.done(), timeout=10)
            await bridge.stop(timeout=10)
            await task
        assert await redis.smembers(index) == {f"{topic}-copy".encode()}


async def test_what_other_clients_wrote_stops_no_monitor_view(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Each of these failed the whole view: a registration's partitions that are no whole
    # numbers (ValueError: workers, summary), a jobs index of another type (WRONGTYPE:
    # summary), and a member heartbeat scored inf (a worker alive for good, and JSON that
    # no parser reads).
    from redisaq_core.registry import ServiceRegistry, consumer_service_info

    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.submit({"n": 1})
    await redis.delete(keys.jobs(1))
    await redis.set(keys.jobs(1), "another client's")
    await redis.sadd(keys.groups, "g")
    await redis.zadd(keys.members("g"), {"ghost": float("inf"), "live": 1.0})
    prefix = f"mon-{uuid.uuid4().hex[:6]}:"
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as registry:
        info = consumer_service_info(topic=topic, group="g", consumer_name="odd")
        info.metadata["partitions"] = ["a", None, 1]
        await registry.register_service(info)
        try:
            async with Monitor(redis_url=redis_url, key_prefix=prefix) as monitor:
                assert (await monitor.summary())["jobs"]["tracked"] >= 1
                tracked = await monitor.jobs_tracked([topic])
                workers = await monitor.workers(include_stale=True)
        finally:
            await registry.clear_all()
    assert tracked == 1
    assert [w["partitions"] for w in workers if w["name"] == "odd"] == [[1]]
    assert "ghost" not in [w["name"] for w in workers]
