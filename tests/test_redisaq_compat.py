"""Code written for ``redisaq`` 0.1.5 runs against ``redisaq_core`` (import line changed only).

Every test here calls the library the way a redisaq 0.1.5 user does, following
the calls its README and its ``examples/basic`` and ``examples/fastapi`` make
(constructor keywords, ``connect``/``consume``/``consume_batch``/``stop``/``close``,
``enqueue``/``batch_enqueue`` keywords, ``get_num_partitions``, ``Message``
attributes), against the session's real Redis. A test fails where redisaq_core
lacks what 0.1.5 code relies on; the names say which item.

Accepting a 0.1.5 spelling with a ``DeprecationWarning`` is a valid answer:
this module ignores ``DeprecationWarning`` (the suite turns warnings into errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from redisaq_core import (
    AlreadyRunningError,
    BatchCallback,
    Consumer,
    Message,
    PartitionError,
    PartitionKeyError,
    Producer,
)
from redisaq_core.keys import TopicKeys
from tests.helpers import eventually

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# redisaq 0.1.5 keywords only (its own tests use heartbeat_interval=0.1, heartbeat_ttl=1.0).
QUICK: dict[str, Any] = {"heartbeat_interval": 0.2, "heartbeat_ttl": 2.0}
WAIT = 5.0


@contextlib.asynccontextmanager
async def consuming(consumer: Any, call: Coroutine[Any, Any, Any]) -> AsyncIterator[Any]:
    """Run ``consumer.consume(...)``/``consume_batch(...)`` in a task, as the examples do.

    On exit: ``stop()`` then ``close()``, and the task's own error (if the body
    did not fail first) is raised.
    """
    task = asyncio.create_task(call)
    failed = False
    try:
        yield task
    except BaseException:
        failed = True
        raise
    finally:
        for _ in range(50):  # stop() is a no-op until the run has started
            if task.done():
                break
            await consumer.stop()
            await asyncio.wait({task}, timeout=0.1)
        if not task.done():
            task.cancel()
        try:
            await asyncio.gather(task)
        except BaseException:
            if not failed:
                raise
        finally:
            await consumer.close()


async def until(task: asyncio.Task[Any], condition: Any, message: str = "") -> None:
    """Wait for ``condition()``; if the consumer's task ended first, raise what ended it."""
    await eventually(lambda: task.done() or condition(), timeout=WAIT, message=message)
    if task.done():
        task.result()
        raise AssertionError(f"consume returned before: {message}")


def emails(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"to": f"user{i}@example.com", "subject": f"Email {i}", "body": f"text {i}", "id": i}
        for i in range(start, start + n)
    ]


# ---- package exports -------------------------------------------------------------------


def test_single_callback_is_exported() -> None:
    import redisaq_core

    assert "SingleCallback" in redisaq_core.__all__
    from redisaq_core import SingleCallback

    assert SingleCallback is not None and BatchCallback is not None


def test_version_is_exported() -> None:
    from redisaq_core import __version__

    assert isinstance(__version__, str) and __version__


# ---- constructors ----------------------------------------------------------------------


@pytest.fixture
def package_level() -> Iterator[logging.Logger]:
    """The package logger, its level put back after the test (``debug=True`` changes it)."""
    logger = logging.getLogger("redisaq_core")
    level = logger.level
    yield logger
    logger.setLevel(level)


def test_producer_accepts_debug_and_logger(
    redis_url: str, topic: str, package_level: logging.Logger
) -> None:
    log = logging.getLogger(f"compat.producer.{topic}")
    with pytest.warns(DeprecationWarning, match="debug"):
        producer = Producer(topic=topic, redis_url=redis_url, debug=True, logger=log)
    assert producer.topic == topic and producer.logger is log
    assert package_level.level == logging.DEBUG


def test_consumer_accepts_debug(redis_url: str, topic: str, package_level: logging.Logger) -> None:
    with pytest.warns(DeprecationWarning, match="debug"):
        consumer = Consumer(
            topic=topic, group_name="email_group", consumer_name="consumer_1",
            redis_url=redis_url, debug=True,
        )  # fmt: skip
    assert consumer.topic == topic
    assert package_level.level == logging.DEBUG


def test_consumer_accepts_logger(redis_url: str, topic: str) -> None:
    log = logging.getLogger(f"compat.consumer.{topic}")
    consumer = Consumer(topic=topic, redis_url=redis_url, logger=log)
    assert consumer.topic == topic


@pytest.mark.parametrize(
    "name", ["topic", "redis_url", "maxlen", "approximate", "serializer"]
)  # fmt: skip
def test_producer_attribute(redis_url: str, topic: str, name: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=1000, approximate=False)
    expected = {
        "topic": topic, "redis_url": redis_url, "maxlen": 1000, "approximate": False,
    }  # fmt: skip
    value = getattr(producer, name)
    if name == "serializer":
        assert callable(value)
    else:
        assert value == expected[name]


@pytest.mark.parametrize(
    "name",
    ["topic", "redis_url", "group_name", "consumer_name", "batch_size",
     "heartbeat_interval", "heartbeat_ttl", "deserializer", "serializer"],
)  # fmt: skip
def test_consumer_attribute(redis_url: str, topic: str, name: str) -> None:
    consumer = Consumer(
        topic=topic, redis_url=redis_url, group_name="email_group",
        consumer_name="consumer_2", batch_size=5, heartbeat_interval=0.5, heartbeat_ttl=4.0,
    )  # fmt: skip
    expected = {
        "topic": topic, "redis_url": redis_url, "group_name": "email_group",
        "consumer_name": "consumer_2", "batch_size": 5, "heartbeat_interval": 0.5,
        "heartbeat_ttl": 4.0,
    }  # fmt: skip
    value = getattr(consumer, name)
    if name in ("deserializer", "serializer"):
        assert callable(value)
    else:
        assert value == expected[name]


# ---- producer --------------------------------------------------------------------------


async def test_connect_enqueue_batch_enqueue_close(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=10000)
    await producer.connect()
    try:
        first = await producer.enqueue(emails(1)[0])
        rest = await producer.batch_enqueue(emails(3, start=1))
    finally:
        await producer.close()
    assert isinstance(first, str)
    assert isinstance(rest, list) and len(rest) == 3 and all(isinstance(i, str) for i in rest)
    assert len({first, *rest}) == 4


async def test_enqueue_payload_keyword(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    try:
        msg_id = await producer.enqueue(payload={"data": "x", "id": 1}, partition_key="id")
    finally:
        await producer.close()
    assert isinstance(msg_id, str)


async def test_batch_enqueue_payloads_keyword(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    try:
        ids = await producer.batch_enqueue(payloads=emails(3), partition_key="id")
    finally:
        await producer.close()
    assert len(ids) == 3


async def test_empty_partition_key_means_none(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    try:
        one = await producer.enqueue({"data": "x"}, partition_key="")
        many = await producer.batch_enqueue([{"data": "y"}, {"data": "z"}], partition_key="")
    finally:
        await producer.close()
    assert isinstance(one, str) and len(many) == 2


async def test_missing_partition_key_raises_partition_key_error(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    try:
        with pytest.raises(PartitionKeyError):
            await producer.enqueue({"data": "x"}, partition_key="key")
    finally:
        await producer.close()


async def test_enqueue_timeout_keyword(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        single = await producer.enqueue({"data": "x"}, timeout=10)
        none = await producer.enqueue({"data": "y"}, timeout=0)
    finally:
        await producer.close()
    assert isinstance(single, str) and isinstance(none, str)


async def test_batch_enqueue_timeout_keyword(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        ids = await producer.batch_enqueue(emails(2), timeout=10)
        more = await producer.batch_enqueue(emails(2), timeout=0)
    finally:
        await producer.close()
    assert len(ids) == 2 and len(more) == 2


async def test_enqueue_maxlen_and_approximate_per_call(
    redis_url: str, redis: Redis, topic: str
) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        for i in range(8):
            await producer.enqueue({"n": i}, maxlen=5, approximate=False)
        await producer.batch_enqueue(emails(4), maxlen=3, approximate=False)
    finally:
        await producer.close()
    assert await redis.xlen(TopicKeys(topic).stream(0)) == 3


async def test_producer_get_num_partitions(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=3)
    await producer.connect()
    try:
        assert await producer.get_num_partitions() == 3
    finally:
        await producer.close()


async def test_request_partition_increase(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        await producer.request_partition_increase(4)
        await producer.request_partition_increase(4)  # same count: nothing to do
        await producer.request_partition_increase(num_partitions=6)
        assert await producer.get_num_partitions() == 6
    finally:
        await producer.close()


async def test_request_partition_increase_lower_is_refused(redis_url: str, topic: str) -> None:
    # 0.1.5 ignored a lower count; here it is an error that says so (README: coming from
    # redisaq), and the count stays.
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=4)
    await producer.connect()
    try:
        with pytest.raises(PartitionError, match="cannot lower partitions from 4 to 2"):
            await producer.request_partition_increase(2)
        assert await producer.get_num_partitions() == 4
    finally:
        await producer.close()


async def test_producer_connects_again_after_close(redis_url: str, topic: str) -> None:
    # A module-level producer connected on every app startup and closed on every shutdown.
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    await producer.enqueue({"round": 1})
    await producer.close()
    await producer.connect()
    try:
        assert isinstance(await producer.enqueue({"round": 2}), str)
    finally:
        await producer.close()


async def test_producer_redis_client_answers_ping(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        assert await producer.redis.ping()
    finally:
        await producer.close()


# ---- consumer --------------------------------------------------------------------------


async def test_consume_with_callback_keyword_and_message_fields(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    sent = {}
    try:
        for payload in ({"data": "a", "id": 1}, {"data": "b", "id": 2}):
            sent[await producer.enqueue(payload, partition_key="id")] = payload
    finally:
        await producer.close()

    got: list[Message] = []

    async def process_job(message: Message) -> None:
        got.append(message)

    consumer = Consumer(
        topic=topic, redis_url=redis_url, group_name="email_group",
        consumer_name="consumer_1", batch_size=10, **QUICK,
    )  # fmt: skip
    async with consuming(consumer, consumer.consume(callback=process_job)) as task:
        await until(task, lambda: len(got) == 2, "both messages handled")
    assert {m.msg_id for m in got} == set(sent)
    for m in got:
        assert m.topic == topic
        assert m.payload == sent[m.msg_id]
        assert m.partition_key == "id"
        assert m.partition in (0, 1)
        assert m.enqueued_at is not None
        assert isinstance(m.created_at, (int, float))


async def test_process_as_in_the_basic_readme(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    await producer.batch_enqueue(emails(2))
    await producer.close()
    sent_to: list[str] = []

    async def process_message(message: Any) -> None:
        sent_to.append(message.payload["to"])

    consumer = Consumer(topic=topic, redis_url=redis_url, group_name="g", **QUICK)
    async with consuming(consumer, consumer.process(process_message)) as task:
        await until(task, lambda: len(sent_to) == 2, "both handled")
    assert sorted(sent_to) == ["user0@example.com", "user1@example.com"]


async def test_consume_batch_with_callback_keyword(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=10000)
    await producer.connect()
    ids = await producer.batch_enqueue(emails(7))
    await producer.close()
    batches: list[list[Message]] = []

    async def process_job(messages: list[Message]) -> None:
        batches.append(messages)

    consumer = Consumer(
        topic=topic, redis_url=redis_url, group_name="email_group",
        consumer_name="consumer_2", batch_size=5, **QUICK,
    )  # fmt: skip
    async with consuming(consumer, consumer.consume_batch(callback=process_job)) as task:
        await until(task, lambda: sum(map(len, batches)) == 7, "all 7 handled")
    assert max(map(len, batches)) <= 5
    assert sorted(m.msg_id for b in batches for m in b) == sorted(ids)


async def test_consume_batch_batch_size_argument(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    await producer.batch_enqueue(emails(7))
    await producer.close()
    sizes: list[int] = []

    async def process_batch(messages: list[Message]) -> None:
        sizes.append(len(messages))

    consumer = Consumer(topic=topic, redis_url=redis_url, batch_size=10, **QUICK)
    call = consumer.consume_batch(process_batch, batch_size=3)
    async with consuming(consumer, call) as task:
        await until(task, lambda: sum(sizes) == 7, "all 7 handled")
    assert max(sizes) == 3
    assert consumer.batch_size == 3


async def test_connect_then_consume_batch_then_close(redis_url: str, topic: str) -> None:
    # The FastAPI example's worker: connect(), consume_batch(handler), close() in `finally`.
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    ids = await producer.batch_enqueue(emails(4))
    await producer.close()
    seen: list[str] = []

    async def process_batch(messages: list[Message]) -> None:
        seen.extend(str(m.msg_id) for m in messages)

    consumer = Consumer(
        topic=topic, group_name="email_processors", consumer_name="email_worker_1",
        redis_url=redis_url, batch_size=5, heartbeat_interval=0.2,
    )  # fmt: skip
    await consumer.connect()
    task = asyncio.create_task(consumer.consume_batch(process_batch))
    try:
        await until(task, lambda: len(seen) == 4, "all 4 handled")
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, WAIT)
        await consumer.close()
        await consumer.close()
    assert sorted(seen) == sorted(ids)


async def test_stop_ends_consume(redis_url: str, topic: str) -> None:
    handled: list[Message] = []

    async def process_job(message: Message) -> None:
        handled.append(message)

    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    await producer.enqueue({"n": 1})
    await producer.close()
    consumer = Consumer(topic=topic, redis_url=redis_url, consumer_name="consumer_3", **QUICK)
    task = asyncio.create_task(consumer.consume(callback=process_job))
    try:
        await until(task, lambda: handled, "message handled")
    finally:
        await consumer.stop()
        await asyncio.wait_for(task, WAIT)  # consume() returns once stop() has run
        await consumer.close()
    assert task.result() is None


async def test_consuming_twice_raises(redis_url: str, topic: str) -> None:
    """0.1.5 raised ValueError; here it is AlreadyRunningError, a RuntimeError (README)."""

    async def process_job(message: Message) -> None:
        pass

    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    await producer.enqueue({"n": 1})
    await producer.close()
    handled: list[Message] = []

    async def first(message: Message) -> None:
        handled.append(message)

    consumer = Consumer(topic=topic, redis_url=redis_url, **QUICK)
    async with consuming(consumer, consumer.consume(first)) as task:
        await until(task, lambda: handled, "first consume running")
        with pytest.raises(AlreadyRunningError):
            await consumer.consume(process_job)


async def test_consumer_partitions_attribute(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=1000, init_partitions=8)
    await producer.connect()
    await producer.close()

    async def process_batch(messages: list[Message]) -> None:
        pass

    consumer = Consumer(
        topic=topic, group_name="test_group_1", consumer_name="consumer1",
        redis_url=redis_url, batch_size=5, **QUICK,
    )  # fmt: skip
    await consumer.connect()
    async with consuming(consumer, consumer.consume_batch(process_batch)) as task:
        await until(
            task, lambda: consumer.partitions == list(range(8)),
            "all 8 partitions assigned",
        )  # fmt: skip


async def test_consumer_get_num_partitions(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=3)
    await producer.connect()
    await producer.close()
    consumer = Consumer(topic=topic, redis_url=redis_url)
    await consumer.connect()
    try:
        assert await consumer.get_num_partitions() == 3
    finally:
        await consumer.close()


async def test_group_members_share_and_a_new_group_reconsumes(redis_url: str, topic: str) -> None:
    # examples/basic: consumers of email_group split the topic; email_group_v2 reads it all again.
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=1000, init_partitions=4)
    await producer.connect()
    ids = await producer.batch_enqueue(emails(12))
    await producer.close()
    by_group: dict[str, list[str]] = {"email_group": [], "email_group_v2": []}

    def handler(group: str) -> Any:
        async def process_job(message: Message) -> None:
            by_group[group].append(str(message.msg_id))

        return process_job

    one = Consumer(topic=topic, group_name="email_group", consumer_name="consumer_1",
                   redis_url=redis_url, **QUICK)  # fmt: skip
    two = Consumer(topic=topic, group_name="email_group", consumer_name="consumer_2",
                   redis_url=redis_url, **QUICK)  # fmt: skip
    async with (
        consuming(one, one.consume(callback=handler("email_group"))) as t1,
        consuming(two, two.consume(callback=handler("email_group"))) as t2,
    ):
        await until(t1, lambda: len(by_group["email_group"]) >= 12, "group 1 done")
        assert not t2.done()
    assert sorted(by_group["email_group"]) == sorted(ids)  # each message once in the group

    v2 = Consumer(topic=topic, group_name="email_group_v2", consumer_name="consumer_1",
                  redis_url=redis_url, **QUICK)  # fmt: skip
    async with consuming(v2, v2.consume(callback=handler("email_group_v2"))) as task:
        await until(task, lambda: len(by_group["email_group_v2"]) == 12, "group 2 done")
    assert sorted(by_group["email_group_v2"]) == sorted(ids)


async def test_partition_increase_reaches_a_running_consumer(redis_url: str, topic: str) -> None:
    # examples/basic/producer.py raises the partition count while consumers run.
    producer = Producer(topic=topic, redis_url=redis_url, maxlen=10000)
    await producer.connect()
    seen: list[str] = []

    async def process_job(message: Message) -> None:
        seen.append(str(message.msg_id))

    consumer = Consumer(topic=topic, group_name="email_group", redis_url=redis_url, **QUICK)
    try:
        async with consuming(consumer, consumer.consume(callback=process_job)) as task:
            ids = [await producer.enqueue(emails(1)[0])]
            await until(task, lambda: len(seen) == 1, "first message")
            await producer.request_partition_increase(4)
            ids += await producer.batch_enqueue(emails(8, start=1))
            await until(task, lambda: len(seen) == 9, "messages on new partitions")
    finally:
        await producer.close()
    assert sorted(seen) == sorted(ids)


async def test_failing_handler_does_not_stop_the_consumer(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    await producer.enqueue({"fail": True})  # round robin: partition 0
    ok = await producer.enqueue({"fail": False})  # partition 1
    await producer.close()
    done: list[str] = []

    async def process_message(message: Message) -> None:
        if message.payload["fail"]:
            raise RuntimeError("smtp down")
        done.append(str(message.msg_id))

    consumer = Consumer(topic=topic, redis_url=redis_url, **QUICK)
    async with consuming(consumer, consumer.consume(process_message)) as task:
        await until(task, lambda: done == [ok], "the good message handled")


async def test_readme_custom_text_serializer_and_deserializer(redis_url: str, topic: str) -> None:
    # README "Custom Serialization": the serializer returns str, the deserializer gets str.
    def serializer(data: Any) -> str:
        return orjson.dumps(data).decode("utf-8")[::-1]

    given: list[type] = []

    def deserializer(data: Any) -> Any:
        given.append(type(data))
        return orjson.loads(data[::-1].encode("utf-8"))

    producer = Producer(topic=topic, redis_url=redis_url, serializer=serializer)
    await producer.connect()
    await producer.enqueue({"kind": "text"})
    await producer.close()
    got: list[Any] = []

    async def handle(message: Message) -> None:
        got.append(message.payload)

    consumer = Consumer(topic=topic, redis_url=redis_url, deserializer=deserializer, **QUICK)
    async with consuming(consumer, consumer.consume(handle)) as task:
        await until(task, lambda: got, "payload decoded")
    assert got == [{"kind": "text"}] and given == [str]


async def test_enqueued_timeout_reaches_the_message(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        await producer.enqueue({"n": 1}, timeout=10)
    finally:
        await producer.close()
    got: list[Message] = []

    async def handle(message: Message) -> None:
        got.append(message)

    consumer = Consumer(topic=topic, redis_url=redis_url, **QUICK)
    async with consuming(consumer, consumer.consume(handle)) as task:
        await until(task, lambda: got, "message handled")
    assert got[0].timeout == 10


async def test_received_message_stream_and_get_partition(redis_url: str, topic: str) -> None:
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    await producer.enqueue({"id": 7}, partition_key="id")
    await producer.close()
    got: list[Message] = []

    async def handle(message: Message) -> None:
        got.append(message)

    consumer = Consumer(topic=topic, redis_url=redis_url, **QUICK)
    async with consuming(consumer, consumer.consume(handle)) as task:
        await until(task, lambda: got, "message handled")
    message: Any = got[0]
    assert message.get_partition() == message.partition
    assert isinstance(message.stream, str) and message.stream


# ---- Message ---------------------------------------------------------------------------


def test_message_positional_construction() -> None:
    message = Message("send_email", {"to": "a@example.com"})  # type: ignore[misc]
    assert message.topic == "send_email" and message.payload == {"to": "a@example.com"}


def test_message_to_dict_and_from_dict() -> None:
    message: Any = Message(topic="send_email", payload={"id": 3}, partition_key="id", partition=1)
    data = message.to_dict()
    assert set(data) >= {
        "msg_id", "topic", "payload", "partition_key", "partition",
        "created_at", "enqueued_at", "timeout",
    }  # fmt: skip
    again: Any = Message.from_dict(data)
    assert (again.topic, again.payload, again.partition_key, again.partition) == (
        "send_email", {"id": 3}, "id", 1,
    )  # fmt: skip


async def test_message_with_zero_timeout_is_enqueued(redis_url: str, topic: str) -> None:
    # 0.1.5's Message default is timeout=0, meaning no limit.
    producer = Producer(topic=topic, redis_url=redis_url)
    await producer.connect()
    try:
        msg_id = await producer.enqueue(Message(topic=topic, payload={"n": 1}, timeout=0))
    finally:
        await producer.close()
    assert isinstance(msg_id, str)


# ---- storage ---------------------------------------------------------------------------


async def test_no_redisaq_015_keys_are_written(redis_url: str, redis: Redis, topic: str) -> None:
    # 0.1.5 layout: redisaq:metadata:t, redisaq:p:<topic>, redisaq:cg:<topic>,
    # redisaq:<topic>:<partition>:m, redisaq:<topic>:<group>:c:<consumer>.
    producer = Producer(topic=topic, redis_url=redis_url, init_partitions=2)
    await producer.connect()
    await producer.batch_enqueue(emails(2))
    await producer.close()
    got: list[Message] = []

    async def handle(message: Message) -> None:
        got.append(message)

    consumer = Consumer(topic=topic, group_name="g", consumer_name="c", redis_url=redis_url,
                        **QUICK)  # fmt: skip
    async with consuming(consumer, consumer.consume(handle)) as task:
        await until(task, lambda: len(got) == 2, "both handled")
        assert not await redis.exists(
            f"redisaq:p:{topic}", f"redisaq:cg:{topic}", f"redisaq:{topic}:0:m",
            f"redisaq:{topic}:1:m", f"redisaq:{topic}:g:c:c",
        )  # fmt: skip
    assert not await redis.sismember("redisaq:metadata:t", topic)


# ---- examples/fastapi ------------------------------------------------------------------

# At module level: with postponed annotations FastAPI resolves a body model by its name here.
try:
    from pydantic import BaseModel
except ImportError:  # the web extra is not installed: the FastAPI tests skip
    JobBatchRequest: Any = None
else:

    class EmailJob(BaseModel):
        to: str
        subject: str
        body: str
        priority: int = 1

    class JobBatchRequest(BaseModel):  # type: ignore[no-redef]
        jobs: list[EmailJob]


def _email_app(redis_url: str, topic: str) -> Any:
    """An app shaped like examples/fastapi/main.py: POST /jobs and GET /status."""
    fastapi = pytest.importorskip("fastapi")
    assert JobBatchRequest is not None

    producer = Producer(topic=topic, redis_url=redis_url, maxlen=10000, init_partitions=2)
    app = fastapi.FastAPI(title="email queue")

    @app.on_event("startup")
    async def startup() -> None:
        await producer.connect()

    @app.on_event("shutdown")
    async def shutdown() -> None:
        await producer.close()

    @app.post("/jobs", response_model=dict[str, list[str]])
    async def enqueue_jobs(request: JobBatchRequest) -> dict[str, list[str]]:
        try:
            payloads = [{**job.model_dump(), "enqueued_at": None} for job in request.jobs]
            job_ids = await producer.batch_enqueue(payloads, partition_key="priority")
        except Exception as exc:
            raise fastapi.HTTPException(status_code=500, detail=f"enqueue failed: {exc}") from exc
        return {"job_ids": job_ids}

    @app.get("/status")
    async def status() -> dict[str, Any]:
        try:
            await producer.redis.ping()
            partitions = await producer.get_num_partitions()
        except Exception as exc:
            return {"status": "unhealthy", "redis_connected": False, "error": str(exc)}
        return {
            "status": "healthy", "redis_connected": True,
            "num_partitions": partitions, "topic": producer.topic,
        }  # fmt: skip

    return app


@contextlib.asynccontextmanager
async def _http(app: Any) -> AsyncIterator[Any]:
    httpx = pytest.importorskip("httpx")
    lifespan = pytest.importorskip("asgi_lifespan")
    async with lifespan.LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


async def test_fastapi_example_jobs_reach_the_worker(redis_url: str, topic: str) -> None:
    app = _email_app(redis_url, topic)
    handled: dict[str, dict[str, Any]] = {}

    async def process_batch(messages: list[Message]) -> None:
        async def one(message: Message) -> None:
            handled[str(message.msg_id)] = message.payload

        results = await asyncio.gather(*(one(m) for m in messages), return_exceptions=True)
        assert not [r for r in results if isinstance(r, Exception)]

    worker = Consumer(
        topic=topic, group_name="email_processors", consumer_name="email_worker_1",
        redis_url=redis_url, batch_size=5, heartbeat_interval=0.2,
    )  # fmt: skip
    await worker.connect()
    async with _http(app) as client, consuming(worker, worker.consume_batch(process_batch)) as task:
        jobs = [
            {"to": "user1@example.com", "subject": "Welcome", "body": "Hello!", "priority": 2},
            {"to": "user2@example.com", "subject": "Update", "body": "News!"},
        ]
        response = await client.post("/jobs", json={"jobs": jobs})
        assert response.status_code == 200, response.text
        job_ids = response.json()["job_ids"]
        assert len(job_ids) == 2
        await until(task, lambda: len(handled) == 2, "both jobs handled")
        bad = await client.post("/jobs", json={"jobs": [{"to": "x"}]})
        assert bad.status_code == 422
    assert set(handled) == set(job_ids)
    assert sorted(p["priority"] for p in handled.values()) == [1, 2]
    assert all(p["enqueued_at"] is None for p in handled.values())


async def test_fastapi_example_status_endpoint(redis_url: str, topic: str) -> None:
    app = _email_app(redis_url, topic)
    async with _http(app) as client:
        response = await client.get("/status")
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy", "redis_connected": True, "num_partitions": 2, "topic": topic,
    }  # fmt: skip


async def test_fastapi_app_restarts_with_the_same_producer(redis_url: str, topic: str) -> None:
    # Two lifespans of one app (one module-level producer), as two test clients would run.
    app = _email_app(redis_url, topic)
    job = {"to": "u@example.com", "subject": "s", "body": "b"}
    for _ in range(2):
        async with _http(app) as client:
            response = await client.post("/jobs", json={"jobs": [job]})
            assert response.status_code == 200, response.text
