"""A consumer that is behind reads its next batch while handlers run (``_read_ahead.py``).

What the read brings must never pass a retry, outlive a stop, or be stranded by a
hand-over: each test here drives a consumer through one of those with a backlog, so
that a read is under way every time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redisaq_core import Consumer, Message, Producer
from redisaq_core import _give_back as give_back
from redisaq_core import _read_ahead as read_ahead
from redisaq_core import _settlement as settlement
from redisaq_core._read_ahead import ReadAhead
from redisaq_core._reads import send_ahead
from redisaq_core._scripts import GIVE_BACK, JOBS_COMPLETE
from redisaq_core._settlement import Settler
from redisaq_core.connection import create_client
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys
from redisaq_core.results import JobStatus, ResultStore
from tests.helpers import Running, eventually
from tests.proxy import FaultProxy

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}

pytestmark = pytest.mark.single_node  # a cluster client reads nothing ahead


async def _produce(redis_url: str, topic: str, n: int, partitions: int) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(n)])


async def _pending(redis: Redis, topic: str, partitions: int) -> int:
    keys = TopicKeys(topic)
    total = 0
    for p in range(partitions):
        info: Any = await redis.xpending(keys.stream(p), "default")
        total += int(info["pending"])
    return total


def _record_takes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of messages each take of a read ahead handed on (proof the tests use them)."""
    taken: list[int] = []
    take = ReadAhead.take

    async def counted(self: ReadAhead) -> list[Any]:
        messages = await take(self)
        taken.append(len(messages))
        return messages

    monkeypatch.setattr(ReadAhead, "take", counted)
    return taken


def _fail_first_give_back(monkeypatch: pytest.MonkeyPatch, fault: str) -> list[int]:
    """Make the first attempt to give entries back fail as a lost connection would.

    ``fault``: "raised" as a pipeline of calls raises it, or "replied" as a single
    call reports it (``run_pipelined`` puts the error in place of the reply).
    """
    attempts: list[int] = []
    run = give_back.run_pipelined

    async def failing_once(redis: Any, calls: Any) -> list[Any]:
        attempts.append(len(calls))
        if len(attempts) > 1:
            return await run(redis, calls)
        lost = RedisConnectionError("connection lost (injected)")
        if fault == "raised":
            raise lost
        return [lost for _ in calls]

    monkeypatch.setattr(give_back, "run_pipelined", failing_once)
    return attempts


@pytest.mark.parametrize("batch", [False, True])
async def test_what_was_read_ahead_waits_behind_a_retry(
    redis_url: str, redis: Redis, topic: str, batch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Message 15 fails once while the read of 20-29 is already under way: those must
    # come after 15's retry (and 16-19, held behind it), in stream order.
    taken = _record_takes(monkeypatch)
    await _produce(redis_url, topic, 200, partitions=1)
    succeeded: list[int] = []
    failed = False

    async def handle(m: Message) -> None:
        nonlocal failed
        if m.payload["n"] == 15 and not failed:
            failed = True
            raise RuntimeError("once")
        succeeded.append(m.payload["n"])

    async def handle_batch(ms: list[Message]) -> None:
        nonlocal failed
        if not failed and any(m.payload["n"] == 15 for m in ms):
            failed = True
            raise RuntimeError("once")
        succeeded.extend(m.payload["n"] for m in ms)

    async def drained() -> bool:
        return await _pending(redis, topic, 1) == 0

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=0.05, **FAST)
    async with Running(consumer, handle_batch if batch else handle, batch=batch):
        await eventually(lambda: len(set(succeeded)) == 200)
        await eventually(drained)
    firsts = list(dict.fromkeys(succeeded))  # the first success of each message, in order
    assert firsts == list(range(200))
    assert consumer.stats.retried >= 1
    assert sum(1 for n in taken if n) > 5  # reads ahead happened and were used


@pytest.mark.parametrize("max_deliveries", [1, 2])
async def test_what_was_read_ahead_behind_a_failure_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str, max_deliveries: int
) -> None:
    # Message 15 always fails while the read of 20-29 is under way. Those were never
    # handed to a handler: claimed back after 15 is settled, each must still count as
    # its first delivery, not be dead-lettered or lose an attempt as if it had run.
    await _produce(redis_url, topic, 200, partitions=1)
    first: dict[int, int] = {}  # message -> its delivery count at its first handler call

    async def handle(m: Message) -> None:
        first.setdefault(m.payload["n"], m.deliveries)
        if m.payload["n"] == 15:
            raise RuntimeError("poison")

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, retry_backoff=0.05,
        max_deliveries=max_deliveries, **FAST,
    )  # fmt: skip
    async with Running(consumer, handle):
        await eventually(lambda: len(first) == 200 or consumer.stats.dead_lettered > 1)
        await eventually(lambda: consumer.stats.dead_lettered >= 1)
    assert consumer.stats.reclaimed >= 10  # 20-29 were claimed back
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 1
    assert sorted(first) == list(range(200))
    assert {n: d for n, d in first.items() if d != 1} == {}


@pytest.mark.parametrize("fault", ["raised", "replied"])
async def test_a_give_back_that_failed_is_made_before_the_partition_claims(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # As above on two partitions, the first give-back failing: partition 1's messages
    # read ahead with partition 0's are handled, and partition 0's are given back on the
    # next attempt, before its claim: every message still comes as a first delivery.
    attempts = _fail_first_give_back(monkeypatch, fault)
    await _produce(redis_url, topic, 400, partitions=2)
    first: dict[int, int] = {}
    zero: list[int] = []

    async def handle(m: Message) -> None:
        first.setdefault(m.payload["n"], m.deliveries)
        if m.partition == 0:
            zero.append(m.payload["n"])
            if len(zero) == 16:  # dead-lettered at once (max_deliveries=1)
                raise RuntimeError("poison")

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=0.05,
                        max_deliveries=1, **FAST)  # fmt: skip
    async with Running(consumer, handle):
        await eventually(lambda: len(first) == 400 or consumer.stats.dead_lettered > 1)
        await eventually(lambda: consumer.stats.dead_lettered >= 1)
    assert len(attempts) >= 2  # the failed give-back was made again
    assert consumer.stats.dead_lettered == 1
    assert sorted(first) == list(range(400))
    assert {n: d for n, d in first.items() if d != 1} == {}


async def test_a_cancelled_consumer_gives_back_what_it_read_ahead(
    redis_url: str, topic: str
) -> None:
    # process() cancelled while a handler of 10-19 runs and the read of 20-29 is under
    # way: the consumer leaves, and what it never handed on reaches the next member as
    # first deliveries.
    await _produce(redis_url, topic, 100, partitions=1)
    at_gate = asyncio.Event()

    async def stuck(m: Message) -> None:
        if m.payload["n"] == 15:
            at_gate.set()
            await asyncio.Event().wait()

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    task = asyncio.create_task(consumer.process(stuck))
    try:
        await asyncio.wait_for(at_gate.wait(), 10)
        assert consumer._ahead.pending
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await consumer.stop()
        await consumer.close()
    first: dict[int, int] = {}

    async def handle(m: Message) -> None:
        first.setdefault(m.payload["n"], m.deliveries)

    after = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(after, handle):
        await eventually(lambda: len(first) == 85)
    # 10-14 ran to the end: acknowledged as the consumer left. 15 was running, 16-19 never
    # reached a handler: given back.
    assert sorted(first) == list(range(15, 100))
    assert {n: d for n, d in first.items() if d != 1} == {15: 2}


async def test_a_stop_reads_nothing_after_what_was_read_ahead(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Two full batches: the read ahead sent with the second finds nothing. Entries added
    # before the stop (during the second batch) must stay unread: a stop reads no more.
    await _produce(redis_url, topic, 20, partitions=1)
    seen: list[int] = []
    stopping: list[asyncio.Task[None]] = []
    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])
        if m.payload["n"] == 12:
            async with Producer(topic, redis_url=redis_url) as producer:
                await producer.batch_enqueue([{"n": 100 + i} for i in range(5)])
            stopping.append(asyncio.create_task(consumer.stop()))
            await asyncio.sleep(0)  # the stop begins (and is told) while this batch runs

    task = asyncio.create_task(consumer.process(handle))
    try:
        await eventually(lambda: bool(stopping))
        await asyncio.wait_for(stopping[0], 10)
    finally:
        await consumer.stop()
        await task
        await consumer.close()
    assert seen == list(range(20))
    groups: Any = await redis.xinfo_groups(TopicKeys(topic).stream(0))
    newest: Any = await redis.xrevrange(TopicKeys(topic).stream(0), count=6)
    assert groups[0]["last-delivered-id"] == newest[5][0]  # message 19: nothing after it
    assert await _pending(redis, topic, 1) == 0


async def test_a_stop_hands_what_was_read_ahead_to_the_handlers_first(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop lands while a read is under way: its messages are handled and acknowledged
    # before the consumer leaves, not left pending for a later owner.
    taken = _record_takes(monkeypatch)
    await _produce(redis_url, topic, 2000, partitions=2)
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])
        await asyncio.sleep(0.0005)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=25, **FAST)
    task = asyncio.create_task(consumer.process(handle))
    try:
        await eventually(lambda: len(seen) >= 300)
        await consumer.stop()
    finally:
        await consumer.stop()
        await task
        await consumer.close()
    assert 300 <= len(seen) < 2000
    assert len(set(seen)) == len(seen)
    assert sum(1 for n in taken if n) > 2
    assert await _pending(redis, topic, 2) == 0


@pytest.mark.parametrize("fault", ["", "raised", "replied"])
async def test_a_hand_over_strands_nothing_that_was_read_ahead(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # Members join and leave while the first one is behind: every message is handled and
    # nothing stays pending with anyone. With a ``fault``, the first give-back fails.
    taken = _record_takes(monkeypatch)
    attempts = _fail_first_give_back(monkeypatch, fault) if fault else []
    await _produce(redis_url, topic, 3000, partitions=4)
    seen: set[int] = set()
    again: list[int] = []  # messages whose first handler call came as a redelivery

    async def handle(m: Message) -> None:
        if m.payload["n"] not in seen and m.deliveries > 1:
            again.append(m.payload["n"])
        seen.add(m.payload["n"])
        await asyncio.sleep(0.0002)

    first = Consumer(topic, redis_url=redis_url, batch_size=20, **FAST)
    async with Running(first, handle):
        await eventually(lambda: len(seen) >= 300)
        second = Consumer(topic, redis_url=redis_url, batch_size=20, **FAST)
        async with Running(second, handle):
            await eventually(lambda: len(second.assigned_partitions) == 2)
            await eventually(lambda: len(seen) >= 1500)
        await eventually(lambda: len(seen) == 3000, timeout=20)

        async def drained() -> bool:
            return await _pending(redis, topic, 4) == 0

        await eventually(drained)
    assert sum(1 for n in taken if n) > 2
    assert again == []  # what was read ahead for a partition given up was given back
    assert len(attempts) >= 2 if fault else attempts == []


async def test_a_stop_with_redis_gone_does_not_wait_for_what_was_read_ahead(
    topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis goes away while a read ahead is pending and a step before the next take keeps
    # failing (here: recreating a group found gone, forced at the right moment, as a
    # NOGROUP reply to a settlement would): the stop returns once the consumer has left,
    # not when shutdown_timeout cuts it off.
    taken = _record_takes(monkeypatch)
    server = EmbeddedRedis()
    await asyncio.to_thread(server.start)
    try:
        await _produce(server.url, topic, 3000, partitions=2)
        at_gate, gate = asyncio.Event(), asyncio.Event()
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])
            if len(seen) == 400:
                at_gate.set()
                await gate.wait()

        consumer = Consumer(topic, redis_url=server.url, batch_size=50, **FAST)
        task = asyncio.create_task(consumer.process(handle))
        try:
            await asyncio.wait_for(at_gate.wait(), 10)
            assert sum(1 for n in taken if n) > 1 and consumer._ahead.pending
            consumer._groups_gone = ResponseError("NOGROUP No such consumer group")
            await asyncio.to_thread(server.stop)
            began = time.monotonic()
            stopping = asyncio.create_task(consumer.stop(timeout=8))
            gate.set()
            await asyncio.wait_for(stopping, 15)
            took = time.monotonic() - began
        finally:
            gate.set()
            await consumer.stop()
            await task
            await consumer.close()
        assert took < 4, took
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_give_back_leaves_entries_another_member_claimed_alone(
    redis: Redis, topic: str
) -> None:
    # Entries read ahead by a member whose lease lapsed may have been claimed (and run)
    # by another since: a give-back resets only what is still pending with the member,
    # never a count the other member's runs made. Without the lease, only an entry whose
    # counts are still those of this member's delivery: another instance of the same name
    # (a static restart) may have claimed one, which leaves it pending with that name.
    keys, group, token = TopicKeys(topic), "default", "tok"
    stream, lease, runs = keys.stream(0), keys.lease(0, group), keys.runs(0, group)
    await redis.xgroup_create(stream, group, "0", mkstream=True)
    ours, theirs, again = [(await redis.xadd(stream, {"p": b"1"})).decode() for _ in range(3)]
    await redis.xreadgroup(group, "me", {stream: ">"})
    await redis.xclaim(stream, group, "other", 0, [theirs])  # delivered twice now
    await redis.xclaim(stream, group, "me", 0, [again])  # by the other instance of "me"
    await redis.hset(runs, mapping={ours: 1, theirs: 2, again: 2})
    await redis.set(lease, "another member's token")
    counted = [ours, 0, 1, theirs, 0, 1, again, 0, 1]
    entries = [ours, 1, 0, theirs, 1, 0, again, 1, 0]
    reply = await GIVE_BACK(
        redis, [stream, lease, runs], [group, token, "me", 3, *counted, *entries]
    )
    assert reply == [1, 0]
    assert await _pending_counts(redis, stream, group) == {
        ours: (b"me", 0),
        theirs: (b"other", 2),
        again: (b"me", 2),
    }
    assert await redis.hgetall(runs) == {theirs.encode(): b"2", again.encode(): b"2"}
    # With the lease, whatever is pending with this member is given back.
    await redis.set(lease, token)
    reply = await GIVE_BACK(redis, [stream, lease, runs], [group, token, "me", 0, again, 1, 0])
    assert reply == [1, 0]
    assert (await _pending_counts(redis, stream, group))[again] == (b"me", 0)


async def _pending_counts(redis: Redis, stream: str, group: str) -> dict[str, tuple[Any, int]]:
    pending: Any = await redis.xpending_range(stream, group, "-", "+", 10)
    return {p["message_id"].decode(): (p["consumer"], p["times_delivered"]) for p in pending}


def _handled(calls: dict[int, list[int]], n: int) -> dict[str, Any]:
    """What a run did to messages 0..n-1: never handled, run twice, first run not a first."""
    return {
        "never": sorted(set(range(n)) - set(calls)),
        "twice": {m: d for m, d in calls.items() if len(d) > 1},
        "not first": {m: d for m, d in calls.items() if d[0] != 1},
    }


@pytest.mark.parametrize("max_deliveries", [1, 5])
async def test_a_read_ahead_that_could_not_be_sent_drops_nothing(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch,
    max_deliveries: int,
) -> None:  # fmt: skip
    # The third read ahead fails to go out: the batch in hand is handled all the same, and
    # the acknowledgements that were to go with it go with the next round trip.
    sends: list[int] = []
    send = read_ahead.send_ahead

    async def failing_third(r: Any, commands: Any) -> Any:
        sends.append(len(commands))
        if len(sends) == 3:
            raise RedisConnectionError("connection lost (injected)")
        return await send(r, commands)

    monkeypatch.setattr(read_ahead, "send_ahead", failing_third)
    await _produce(redis_url, topic, 100, partitions=1)
    calls: dict[int, list[int]] = {}

    async def handle(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, max_deliveries=max_deliveries, **FAST
    )
    async with Running(consumer, handle):
        await eventually(lambda: len(calls) == 100 and consumer.stats.handled == 100)
        assert await _pending(redis, topic, 1) == 0
    assert len(sends) > 3
    assert _handled(calls, 100) == {"never": [], "twice": {}, "not first": {}}
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 0


@pytest.mark.parametrize("max_deliveries", [1, 5])
async def test_an_outage_after_a_read_ahead_came_back_drops_nothing(
    redis_url: str, redis: Redis, topic: str, max_deliveries: int
) -> None:
    # Redis unreachable for 0.4 s while message 25 is handled, once the read of 30-39 is in:
    # nothing is dead-lettered, and what the consumer had in hand keeps its first delivery.
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    await _produce(redis_url, topic, 100, partitions=1)
    calls: dict[int, list[int]] = {}
    restoring: list[asyncio.Future[None]] = []
    async with FaultProxy(port) as proxy:
        client = create_client(proxy.url, retry=Retry(NoBackoff(), 0))  # fails at once
        consumer = Consumer(
            topic, redis=client, batch_size=10, max_deliveries=max_deliveries,
            heartbeat_interval=1.0, poll_interval=0.1,
        )  # fmt: skip

        async def restore() -> None:
            await asyncio.sleep(0.4)
            proxy.refuse = False

        async def handle(m: Message) -> None:
            calls.setdefault(m.payload["n"], []).append(m.deliveries)
            if m.payload["n"] == 25 and len(calls[25]) == 1:
                task = consumer._ahead._task
                assert task is not None
                await asyncio.wait([task])  # the read of 30-39 came back
                proxy.refuse = True
                await proxy.cut()
                restoring.append(asyncio.ensure_future(restore()))

        async with Running(consumer, handle):
            await eventually(lambda: len(calls) == 100 and consumer.stats.handled >= 100)

            async def drained() -> bool:
                return await _pending(redis, topic, 1) == 0

            await eventually(drained)
        await client.aclose()
    assert restoring and restoring[0].done()
    result = _handled(calls, 100)
    assert result["never"] == [] and result["not first"] == {}
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 0


async def test_a_consumer_cancelled_waiting_for_its_read_ahead_gives_it_back(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # process() cancelled while it waits for a read ahead still on a slow link: the read
    # is let finish, and what it brought reaches the next member as first deliveries.
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    await _produce(redis_url, topic, 100, partitions=1)
    running: list[asyncio.Task[None]] = []
    take = ReadAhead.take

    async def cancelled_in_take(self: ReadAhead) -> list[Any]:
        task = self._task
        if len(running) == 1 and task is not None and not task.done():
            asyncio.get_running_loop().call_soon(running.pop().cancel)
        return await take(self)

    monkeypatch.setattr(ReadAhead, "take", cancelled_in_take)
    seen: set[int] = set()
    async with FaultProxy(port) as proxy:
        consumer = Consumer(topic, redis_url=proxy.url, batch_size=10, **FAST)

        async def handle(m: Message) -> None:
            seen.add(m.payload["n"])
            if m.payload["n"] == 25:
                proxy.delay = 0.3  # a slow link from here on: the read ahead stays out

        running.append(asyncio.create_task(consumer.process(handle)))
        task = running[0]
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)
        await consumer.close()
    assert not running  # cancelled in take()
    monkeypatch.setattr(ReadAhead, "take", take)
    first: dict[int, int] = {}

    async def record(m: Message) -> None:
        first.setdefault(m.payload["n"], m.deliveries)

    after = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(after, record):
        await eventually(lambda: seen | set(first) == set(range(100)))
    assert {n: d for n, d in first.items() if n not in seen and d != 1} == {}


async def test_a_read_whose_acknowledgements_failed_is_given_back(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The acknowledgements sent with a read get an error reply (as under OOM) while the read
    # itself succeeds: what it read is not handled then, and comes again as a first delivery.
    refused: list[int] = []
    record = Settler.record

    async def refused_once(self: Settler, redis: Any, calls: Any, results: Any, *a: Any,
                           **kw: Any) -> None:  # fmt: skip
        if kw.get("holds") is not None and not refused:
            refused.append(len(calls))
            results = [ResponseError("OOM command not allowed (injected)") for _ in results]
        await record(self, redis, calls, results, *a, **kw)

    monkeypatch.setattr(Settler, "record", refused_once)
    await _produce(redis_url, topic, 60, partitions=1)
    calls: dict[int, list[int]] = {}

    async def handle(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, max_deliveries=1, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(calls) == 60 and consumer.stats.handled == 60)
        assert await _pending(redis, topic, 1) == 0
    assert refused
    assert _handled(calls, 60) == {"never": [], "twice": {}, "not first": {}}
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 0


async def test_a_read_ahead_whose_write_reached_redis_though_reported_failed_strands_nothing(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write timeout may be reported for a write that reached Redis: its read delivered
    # entries nobody handed on. They are claimed before anything newer is read.
    sends: list[int] = []
    send = read_ahead.send_ahead

    async def sent_then_timed_out(r: Any, commands: Any) -> Any:
        sends.append(len(commands))
        task = await send(r, commands)
        if len(sends) == 3:
            await task  # the commands were served; the writer reported a timeout
            raise RedisTimeoutError("Timeout writing to socket (injected after the write)")
        return task

    monkeypatch.setattr(read_ahead, "send_ahead", sent_then_timed_out)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(100)])
    order: list[int] = []

    async def handle(m: Message) -> None:
        order.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, heartbeat_interval=0.2,
                        poll_interval=0.1)  # fmt: skip
    async with Running(consumer, handle):
        await eventually(lambda: len(set(order)) == 100)
        assert await _pending(redis, topic, 1) == 0
    assert len(sends) > 3


async def test_a_job_completion_that_failed_as_its_consumer_left_is_not_kept(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The completion of a job fails to go out, also as the consumer leaves. Another member
    # runs the job again until it is dead-lettered; the first consumer, run again under
    # the same lease token, must not write its stale completion over that.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 0})
    broken = False
    sent: list[bool] = []
    run = settlement.run_pipelined

    async def lost_while_broken(r: Any, calls: Any) -> list[Any]:
        if any(c[0] is JOBS_COMPLETE for c in calls):
            sent.append(broken)
        if broken:  # what a single call returns when the connection drops (run_pipelined)
            return [RedisConnectionError("connection lost (injected)") for _ in calls]
        return await run(r, calls)

    monkeypatch.setattr(settlement, "run_pipelined", lost_while_broken)
    first = Consumer(topic, redis_url=redis_url, retry_backoff=0.01, **FAST)
    ran: list[str] = []

    async def succeeds(m: Message) -> Any:
        nonlocal broken
        ran.append("first")
        broken = True  # the completion, deferred to the next round trip, is lost
        return "first result"

    task = asyncio.create_task(first.process(succeeds))
    await eventually(lambda: len(sent) >= 1)
    await first.stop()  # the flush as it leaves fails too
    await task
    broken = False

    async def fails(m: Message) -> Any:
        ran.append(f"second (delivery {m.deliveries})")
        raise RuntimeError("fails on the second member")

    second = Consumer(topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01, **FAST)
    async with ResultStore(redis_url=redis_url) as store:
        async with Running(second, fails):
            await eventually(lambda: store.status(job.id), timeout=10)

            async def dead() -> bool:
                return await store.status(job.id) == JobStatus.DEAD

            await eventually(dead, timeout=10)
        dlq = await redis.xlen(TopicKeys(topic).dead_letters(0))

        async def idle(m: Message) -> Any:
            ran.append("first again")

        task = asyncio.create_task(first.process(idle))  # the same Consumer, run again
        # Once it holds the partition and has nothing kept back, a stale completion went out.
        await eventually(lambda: first.assigned_partitions == [0] and not first._settler._deferred)
        await first.stop()
        await task
        await first.close()
        record = await store.get(job.id)
    assert record is not None
    assert dlq == 1
    assert record.status == JobStatus.DEAD


async def test_a_completion_kept_back_is_dropped_once_its_partition_moved(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A's completion of a job is kept back (its round trips fail). The partition passes to
    # another member, which dead-letters the job, and comes back to A in the same run: A's
    # kept completion, under A's token again, must not write "completed" over "dead".
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 0})
    keys = TopicKeys(topic)
    broken: list[bool] = []
    run = settlement.run_pipelined

    async def lost_while_broken(r: Any, calls: Any) -> list[Any]:
        if broken and any(c[0] is JOBS_COMPLETE for c in calls):
            broken.append(True)
            return [RedisConnectionError("connection lost (injected)") for _ in calls]
        return await run(r, calls)

    monkeypatch.setattr(settlement, "run_pipelined", lost_while_broken)
    a = Consumer(topic, redis_url=redis_url, **FAST)

    async def succeeds(m: Message) -> Any:
        broken.append(True)  # from now on the completion's round trips fail
        return "A's result"

    async with Running(a, succeeds):
        await eventually(lambda: len(broken) > 1 and a._settler._deferred)  # kept back
        lease = keys.lease(0, "default")
        await redis.set(lease, "B's token", px=60_000)  # B took the partition
        await eventually(lambda: not a._owned)  # A's heartbeat finds the lease lost
        entry_id = (await redis.xrange(keys.stream(0)))[0][0]
        await redis.xack(keys.stream(0), "default", entry_id)  # B ran it: dead-lettered
        await redis.hset(keys.job(0, job.id), "status", "dead")
        await redis.delete(lease)  # B gave the partition back (a rebalance)
        await eventually(lambda: 0 in a._owned)  # A holds it again: same run, same token
        broken.clear()
        await eventually(lambda: not a._settler._deferred)
    assert await redis.hget(keys.job(0, job.id), "status") == b"dead"
    assert a.stats.fenced == 1


async def test_a_reply_task_cancelled_before_it_ran_gives_its_connection_back(
    redis_url: str,
) -> None:
    # The task that reads the replies never started: before, its connection stayed taken
    # for good, and a pool of one refused every later command.
    async with Redis.from_url(redis_url, max_connections=1) as client:
        replies = await send_ahead(client, [("PING",)])
        replies.cancel()
        await asyncio.wait([replies])

        async def pings() -> bool:
            try:
                return bool(await client.ping())
            except RedisConnectionError:
                return False

        await eventually(pings, timeout=5, message="the connection back in the pool")
