"""Nothing stays pending for good in a consumer that keeps its partition.

A stall of the event loop past 0.8 x heartbeat_ttl (but under the TTL), or a
Redis call that fails half-way through a batch, leaves entries in this
consumer's own pending list while the partition stays its own. They are
claimed back before anything newer is read, so they are handled, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from redisaq_core import Consumer, Message, Producer, _delivery, _settlement
from redisaq_core._codec import default_deserializer
from redisaq_core._delivery import ConsumerStats, Reader
from redisaq_core._scripts import ACK, DEAD_LETTER
from redisaq_core.keys import TopicKeys
from redisaq_core.message import received
from tests.helpers import Running, died_with, eventually
from tests.proxy import FaultProxy


async def _no_pending(redis: Redis, stream: str) -> bool:
    info: Any = await redis.xpending(stream, "default")
    return info["pending"] == 0


async def test_a_stall_between_the_local_deadline_and_the_ttl_strands_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    seen: list[int] = []
    stalled = False

    async def handle(m: Message) -> None:
        nonlocal stalled
        n = m.payload["n"]
        seen.append(n)
        if n == 3 and not stalled:
            stalled = True
            time.sleep(1.75)  # blocks the loop: past 0.8 x TTL (1.6 s), under the TTL (2 s)

    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(10)])
        consumer = Consumer(
            topic, redis_url=redis_url, heartbeat_interval=0.5, heartbeat_ttl=2.0,
            poll_interval=0.1, batch_size=10,
        )  # fmt: skip
        async with Running(consumer, handle):
            await eventually(lambda: stalled and 4 in seen, timeout=10)
            await producer.batch_enqueue([{"n": i} for i in range(10, 13)])
            await eventually(lambda: set(seen) == set(range(13)), timeout=10, message=f"{seen}")
            await eventually(lambda: _no_pending(redis, TopicKeys(topic).stream(0)), timeout=5)
        await consumer.close()
    # Per-partition order: the first time each message is seen, they come in order.
    first = list(dict.fromkeys(seen))
    assert first == list(range(13)), seen
    assert consumer.stats.fenced == 0


async def _blocked_reads(redis: Redis) -> int:
    clients: list[dict[str, Any]] = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


@pytest.mark.single_node
async def test_a_read_whose_reply_was_lost_strands_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """XREADGROUP hands entries over (they are pending), the reply never arrives, the link drops."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    async with FaultProxy(port) as proxy, Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=proxy.url, heartbeat_interval=0.3, poll_interval=0.5)
        async with Running(consumer, handle):
            await producer.batch_enqueue([{"n": i} for i in range(3)])
            await eventually(lambda: seen == [0, 1, 2])
            await eventually(lambda: _blocked_reads(redis), message="a blocked read")
            proxy.drop_replies = True
            await producer.batch_enqueue([{"n": i} for i in range(3, 6)])
            stream = TopicKeys(topic).stream(0)
            # The blocked read is woken by the first entry: at least that one is handed over.
            await eventually(lambda: _pending(redis, stream), message="handed over")
            proxy.drop_replies = False
            await proxy.cut()
            await eventually(lambda: seen[:6] == list(range(6)), timeout=10, message=f"{seen}")
            await eventually(lambda: _no_pending(redis, stream), timeout=5)
        await consumer.close()


async def _pending(redis: Redis, stream: str) -> bool:
    info: Any = await redis.xpending(stream, "default")
    return int(info["pending"]) > 0


@pytest.mark.single_node
async def test_a_consumer_cut_off_past_the_ttl_is_fenced_and_loses_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """A network partition longer than heartbeat_ttl, through the fault proxy.

    The other member takes the partition over; what the cut-off member finishes
    meanwhile is not taken as done (its acknowledgement arrives after the lease
    moved and is refused) and is handled again by the new owner. Nothing is lost.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    handled: dict[str, list[int]] = {"cut": [], "other": []}
    cut_in_handler = asyncio.Event()

    def handler(name: str) -> Any:
        async def handle(m: Message) -> None:
            if name == "cut" and not cut_in_handler.is_set():
                cut_in_handler.set()
                await asyncio.sleep(0.5)  # the link goes down while this runs
            handled[name].append(m.payload["n"])

        return handle

    fast = {"heartbeat_interval": 0.3, "heartbeat_ttl": 1.2, "poll_interval": 0.2}
    async with FaultProxy(port) as proxy, Producer(topic, redis_url=redis_url) as producer:
        cut = Consumer(topic, redis_url=proxy.url, consumer_name="cut", **fast)
        async with Running(cut, handler("cut")):
            await eventually(lambda: cut.assigned_partitions == [0])
            await producer.batch_enqueue([{"n": i} for i in range(5)])
            await eventually(cut_in_handler.is_set)
            proxy.blackhole = True
            other = Consumer(topic, redis_url=redis_url, consumer_name="other", **fast)
            async with Running(other, handler("other")):
                await eventually(lambda: other.assigned_partitions == [0], timeout=10)
                await eventually(lambda: set(handled["other"]) == set(range(5)), timeout=10)
                proxy.blackhole = False
                # Back on the network, the cut-off member finds its lease gone and stops.
                await eventually(lambda: cut.assigned_partitions == [], timeout=10)
                await eventually(lambda: _no_pending(redis, TopicKeys(topic).stream(0)))
            await other.close()
        await cut.close()
    # What it finished while cut off was not taken as done (its acknowledgement came too
    # late and was refused, or never came): the new owner handled it again.
    assert handled["cut"] and set(handled["cut"]) <= set(handled["other"])


@pytest.mark.single_node
async def test_cancelling_mid_command_leaves_no_crossed_replies(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """process() cancelled while its commands are on the wire (slow link), then run again.

    A cancelled command's connection must not be reused with its reply still coming:
    the next run reads its own replies, handles everything once more at most, and
    leaves nothing pending.
    """
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    async with FaultProxy(port) as proxy, Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=proxy.url, heartbeat_interval=0.3, poll_interval=0.2)
        await producer.batch_enqueue([{"n": i} for i in range(20)])
        for round_ in range(3):
            proxy.delay = 0.05  # every command takes a while: a cancel lands mid-command
            task = asyncio.create_task(consumer.process(handle))
            await eventually(lambda: consumer.running)
            await asyncio.sleep(0.12 + 0.05 * round_)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await producer.batch_enqueue(
                [{"n": i} for i in range(20 * (round_ + 1), 20 * (round_ + 2))]
            )
        proxy.delay = 0.0
        async with Running(consumer, handle):
            await eventually(lambda: set(seen) == set(range(80)), timeout=15, message=f"{seen}")
            await eventually(lambda: _no_pending(redis, TopicKeys(topic).stream(0)))
        await consumer.close()
    assert all(isinstance(n, int) for n in seen)  # no payload came from another reply


async def test_a_zombie_acknowledgement_is_refused_and_counted_exactly(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """The lease passes to another holder while a handler runs (scenario 9): its ack is fenced."""
    lease = TopicKeys(topic).lease(0, "default")
    calls: list[int] = []
    stolen = asyncio.Event()

    async def handle(m: Message) -> None:
        calls.append(m.payload["n"])
        if len(calls) == 1:
            # Another holder takes the partition for 1.5 s while this handler runs.
            await redis.set(lease, "someone-else", px=1500)
            stolen.set()

    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        async with Running(consumer, handle):
            await eventually(lambda: consumer.assigned_partitions == [0])
            await producer.enqueue({"n": 7})
            await eventually(stolen.is_set)
            await eventually(lambda: consumer.stats.fenced == 1, message="fenced")
            # Once the other holder's lease lapses, the consumer takes the partition back and
            # handles the message again: it was never acknowledged.
            await eventually(lambda: calls == [7, 7], timeout=10, message=f"{calls}")
            await eventually(lambda: _no_pending(redis, TopicKeys(topic).stream(0)))
        await consumer.close()
    assert consumer.stats.fenced == 1


@pytest.mark.parametrize("lost", ["request", "reply"])
async def test_a_dead_letter_whose_round_trip_failed_is_sent_again_once(
    redis_url: str, redis: Redis, topic: str, lost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round trip that dead-letters a message (after its 2nd failed run, max_deliveries=2)
    # fails: before it reached Redis, or after (its reply lost). It goes again first in the
    # next round trip, and writes one dead letter either way. Before, it was dropped: the
    # message was claimed back and ran a 3rd time.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    pipelined = _settlement.run_pipelined
    cut: list[str] = []

    async def fails_once(r: Any, calls: Any) -> Any:
        if not cut and any(c[0] is DEAD_LETTER for c in calls):
            cut.append(lost)
            if lost == "reply":
                await pipelined(r, calls)
            raise RedisConnectionError(f"connection lost (injected, {lost})")
        return await pipelined(r, calls)

    monkeypatch.setattr(_settlement, "run_pipelined", fails_once)
    runs: list[int] = []

    async def fails(m: Message) -> None:
        runs.append(m.deliveries)
        raise RuntimeError("always fails")

    consumer = Consumer(
        topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01,
        heartbeat_interval=0.2, poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, fails):
        await eventually(lambda: consumer.stats.dead_lettered == 1)
        await eventually(lambda: _no_pending(redis, TopicKeys(topic).stream(0)))
    assert cut == [lost]
    assert runs == [1, 2]
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 1


async def test_an_acknowledgement_whose_round_trip_failed_is_sent_again(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A message claimed from a member that died is handled on its own and acknowledged in a
    # round trip of its own, which fails before reaching Redis. The acknowledgement goes
    # again first in the next round trip. Before, it was dropped: the message ran again.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    keys = TopicKeys(topic)
    await died_with(redis, topic)
    pipelined = _settlement.run_pipelined
    cut: list[int] = []

    async def fails_once(r: Any, calls: Any) -> Any:
        if not cut and any(c[0] is ACK for c in calls):
            cut.append(len(calls))
            raise RedisConnectionError("connection lost (injected)")
        return await pipelined(r, calls)

    monkeypatch.setattr(_settlement, "run_pipelined", fails_once)
    runs: list[int] = []

    async def handle(m: Message) -> None:
        runs.append(m.deliveries)

    consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.stats.handled == 1)
        await eventually(lambda: _no_pending(redis, keys.stream(0)))
    assert cut == [1]
    assert runs == [2]


async def test_a_retry_whose_claim_failed_keeps_what_its_partitions_hold(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Partition 0 waits to retry its failed head; partition 1 holds 3 messages behind one
    # that was dead-lettered. The claim of the retry fails: both still hold their messages,
    # and the next attempt hands all of them out (partition 1's were lost).
    keys, group = TopicKeys(topic), "default"
    reader = Reader(keys, group, "me", "tok", batch_size=10, deserializer=default_deserializer,
                    stats=ConsumerStats())  # fmt: skip
    parts = []
    for p in (0, 1):
        stream = keys.stream(p)
        await redis.xgroup_create(stream, group, "0", mkstream=True)
        ids = [(await redis.xadd(stream, {"p": b'{"n": %d}' % i})).decode() for i in range(3)]
        await redis.xreadgroup(group, "me", {stream: ">"})
        await redis.set(keys.lease(p, group), "tok")
        part = reader.partition(p, 1, valid_until=1e12)
        part.held = [received(topic, {"n": i}, ids[i], p, group, 0.0, 1, 0) for i in range(3)]
        parts.append(part)
    parts[0].head_failed = True

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("connection lost (injected)")

    monkeypatch.setattr(_delivery, "run_pipelined", failing)
    with pytest.raises(RedisConnectionError):
        await reader.retries(redis, parts)
    monkeypatch.undo()
    out, gone = await reader.retries(redis, parts)
    assert [(m.partition, m.payload["n"], m.deliveries) for m in out] == [
        (1, 0, 1), (1, 1, 1), (1, 2, 1), (0, 0, 2), (0, 1, 1), (0, 2, 1),
    ]  # fmt: skip
    assert gone == {}


async def test_messages_held_behind_a_trimmed_retry_are_handled_once(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0 fails, and its entry is deleted before its retry: there is nothing to retry, it is
    # acknowledged, and 1-4 held behind it are handed on. That acknowledgement's round trip
    # fails once. Before, 1-4 were dropped with it, and claimed (and run) at delivery 2.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(5)])
    stream = TopicKeys(topic).stream(0)
    pipelined = _settlement.run_pipelined
    trimmed: list[bytes] = []
    cut: list[int] = []

    async def fails_once(r: Any, calls: Any) -> Any:
        if not cut and any(c[0] is ACK and c[2][3] in trimmed for c in calls):
            cut.append(1)
            raise RedisConnectionError("connection lost (injected)")
        return await pipelined(r, calls)

    monkeypatch.setattr(_settlement, "run_pipelined", fails_once)
    came: dict[int, list[int]] = {}

    async def record(m: Message) -> None:
        came.setdefault(m.payload["n"], []).append(m.deliveries)
        if m.payload["n"] == 0:
            await redis.xdel(stream, m.msg_id)
            trimmed.append(m.msg_id.encode())
            raise RuntimeError("0 fails, and its entry is deleted")

    consumer = Consumer(
        topic, redis_url=redis_url, retry_backoff=0.05, heartbeat_interval=0.2,
        poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, record):
        await eventually(lambda: len(came) == 5, message="every message handled")
        await eventually(lambda: _no_pending(redis, stream))
    assert cut == [1]
    assert came == {n: [1] for n in range(5)}
