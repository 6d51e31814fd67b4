"""A delivery that never reached a handler does not count against ``max_deliveries``.

Entries held behind a failed message when their partition is given up, and the
rest of a batch cut off at the lease's local deadline, were delivered but never
run: whoever claims them next must see that claim as the delivery that never
ran (``_give_back.py``). And a batch that fails holds back what its partition
has after it, in later batches of the same read too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from redisaq_core import Consumer, Message, Producer, _give_back, _read_ahead, _settlement
from redisaq_core._delivery import ConsumerStats
from redisaq_core._give_back import GiveBack
from redisaq_core._handling import Dispatcher
from redisaq_core._read_ahead import ReadAhead
from redisaq_core._scripts import ACK, DEAD_LETTER
from redisaq_core._settlement import Settler
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys
from redisaq_core.message import received
from tests.helpers import Running, after_first_retry, died_with, eventually, stopped_when

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}


async def _produce(redis_url: str, topic: str, n: int, partitions: int) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(n)])


async def _next_member(
    redis_url: str, topic: str, options: dict[str, Any], until: Callable[[Consumer], Any]
) -> tuple[dict[int, int], Consumer]:
    """Run another member until ``until(it)``; return the delivery count of what it ran."""
    came: dict[int, int] = {}

    async def record(m: Message) -> None:
        came[m.payload["n"]] = m.deliveries

    member = Consumer(topic, redis_url=redis_url, **options)
    async with Running(member, record):
        await eventually(lambda: until(member))
    return came, member


async def _left_hanging(consumer: Consumer) -> None:
    """Run ``consumer`` until its handler hangs on its first message, then stop it with a
    timeout: the handler is cancelled, without a result, as if it ended its process."""
    hung = asyncio.Event()

    async def hangs(m: Message) -> None:
        hung.set()
        await asyncio.Event().wait()

    await stopped_when(consumer, hangs, hung)


@pytest.mark.parametrize("max_deliveries", [1, 2])
async def test_what_waited_behind_a_failure_at_a_stop_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str, max_deliveries: int
) -> None:
    # Message 15 fails as the consumer is told to stop: 16-19 never ran. The next member
    # gets them as first deliveries (they were dead-lettered unrun with max_deliveries=1).
    await _produce(redis_url, topic, 40, partitions=1)
    calls: dict[int, list[int]] = {}
    options = {"batch_size": 10, "max_deliveries": max_deliveries, **FAST}
    consumer = Consumer(topic, redis_url=redis_url, retry_backoff=5.0, **options)
    stopping: list[asyncio.Task[None]] = []

    async def fails_at_15(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)
        if m.payload["n"] == 15:
            stopping.append(asyncio.create_task(consumer.stop()))
            raise RuntimeError("fails as the consumer stops")

    task = asyncio.create_task(consumer.process(fails_at_15))
    await eventually(lambda: bool(stopping))
    await stopping[0]
    await task
    await consumer.close()
    first_owner = set(calls)
    assert first_owner.isdisjoint(range(16, 20))

    async def handle(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)

    after = Consumer(topic, redis_url=redis_url, **options)
    async with Running(after, handle):
        # 16-39, and 15 again unless it was dead-lettered on its first (and last) delivery
        await eventually(lambda: after.stats.handled == 24 + (max_deliveries > 1))
    assert {n: d[0] for n, d in calls.items() if n not in first_owner} == {
        n: 1 for n in range(16, 40)
    }
    dead = await redis.xlen(TopicKeys(topic).dead_letters(0))
    assert dead == (1 if max_deliveries == 1 else 0)  # only 15, which ran and failed


async def test_what_waited_behind_a_failure_at_a_hand_over_comes_as_a_first_delivery(
    redis_url: str, topic: str
) -> None:
    # The first message of each partition fails on the first member; a second member
    # joins during the retry's backoff and takes one partition with what waited behind it.
    await _produce(redis_url, topic, 40, partitions=2)
    ran: dict[int, list[tuple[str, int]]] = {}
    failed: set[int] = set()

    def handler(who: str) -> object:
        async def handle(m: Message) -> None:
            ran.setdefault(m.payload["n"], []).append((who, m.deliveries))
            if who == "first" and m.partition not in failed:
                failed.add(m.partition)
                raise RuntimeError("the first message of each partition fails once")

        return handle

    first = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=3.0, **FAST)
    async with Running(first, handler("first")):
        await eventually(lambda: len(failed) == 2)
        second = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
        async with Running(second, handler("second")):
            await eventually(lambda: len(second.assigned_partitions) == 1)
            await eventually(lambda: len(ran) == 40, timeout=15)
    on_second = {n: calls[0] for n, calls in ran.items() if calls[0][0] == "second"}
    assert on_second
    assert {n: c for n, c in on_second.items() if c[1] != 1} == {}


async def test_the_rest_of_a_batch_cut_at_the_lease_deadline_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Handlers that block the loop for 0.05 s each pass the lease's local deadline (0.8 x
    # 1.5 s) within a batch of 40: the rest is left pending and claimed back by the same
    # member, whose lease never lapsed (the last handler ends 0.05 s past the deadline, the
    # lease lasts 0.3 s more). Those claims count as first deliveries: with max_deliveries=1
    # they were dead-lettered unrun.
    await _produce(redis_url, topic, 60, partitions=1)
    calls: dict[int, list[int]] = {}

    async def blocking(m: Message) -> None:
        calls.setdefault(m.payload["n"], []).append(m.deliveries)
        time.sleep(0.05)  # CPU-bound work: the heartbeat waits too

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=40, max_deliveries=1,
        heartbeat_interval=0.5, poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, blocking):
        await eventually(lambda: consumer.stats.handled == 60, timeout=30)
    assert consumer.stats.fenced == 0
    assert consumer.stats.reclaimed > 0  # the cut happened
    assert sorted(calls) == list(range(60))
    assert {n: d for n, d in calls.items() if d != [1]} == {}
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 0


async def test_a_failed_batch_holds_back_what_its_partition_has_in_the_next_batch(
    redis_url: str, topic: str
) -> None:
    # 15 messages over 2 partitions (8 and 7), read together with batch_size 10: the first
    # batch has partition 0's 8 and partition 1's first 2, the second partition 1's last 5.
    # The first batch fails: partition 1's last 5 wait for its first 2.
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        for i in range(15):
            await producer.enqueue({"n": i})
    order: dict[int, list[int]] = {0: [], 1: []}
    batches: list[list[int]] = []

    async def fails_first(batch: list[Message]) -> None:
        batches.append([m.payload["n"] for m in batch])
        if len(batches) == 1:
            raise RuntimeError("the first batch fails")
        for m in batch:
            order[m.partition].append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=0.05, **FAST)
    async with Running(consumer, fails_first, batch=True):
        await eventually(lambda: consumer.stats.handled == 15)
    assert len(batches[0]) == 10  # both partitions were read together
    assert order == {0: list(range(0, 15, 2)), 1: list(range(1, 15, 2))}


def _hang_once(monkeypatch: pytest.MonkeyPatch, matches: Callable[[Any], bool]) -> asyncio.Event:
    """Make the first round trip of settling calls that ``matches`` hang for good (until a
    stop cancels it); the event returned is set when it does."""
    pipelined = _settlement.run_pipelined
    hung = asyncio.Event()

    async def hangs_once(r: Any, calls: Any) -> Any:
        if not hung.is_set() and matches(calls):
            hung.set()
            await asyncio.Event().wait()
        return await pipelined(r, calls)

    monkeypatch.setattr(_settlement, "run_pipelined", hangs_once)
    return hung


async def _none_pending(redis: Redis, topic: str, partitions: int) -> bool:
    for p in range(partitions):
        info: Any = await redis.xpending(TopicKeys(topic).stream(p), "default")
        if info["pending"]:
            return False
    return True


async def _count(redis: Redis, topic: str, msg_id: str) -> int:
    pending: Any = await redis.xpending_range(
        TopicKeys(topic).stream(0), "default", msg_id, msg_id, 1
    )
    return int(pending[0]["times_delivered"]) if pending else -1


@pytest.mark.parametrize("assigned_back", [False, True])
async def test_what_was_given_back_of_a_partition_assigned_back_keeps_its_count(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch,
    assigned_back: bool,
) -> None:  # fmt: skip
    # 0 fails as its partition is being given up, and 1 waits behind it. Assigned back while
    # 1 is given back, the partition claims 1 again (not from memory, at the count given
    # back): 1 runs once, is cut off by a stop, and reaches max_deliveries=1 there.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(20)])

    if assigned_back:
        give_back = ReadAhead.give_back

        async def and_assigned_back(self: ReadAhead, r: Any, parts: Any = ()) -> None:
            parts = list(parts)
            await give_back(self, r, parts)
            for part in parts:  # what _sync_locked does when the assignment returns p
                part.revoking = False

        monkeypatch.setattr(ReadAhead, "give_back", and_assigned_back)

    options = {"batch_size": 10, "max_deliveries": 1, "heartbeat_interval": 1.0,
               "poll_interval": 0.1}  # fmt: skip
    first = Consumer(topic, redis_url=redis_url, **options)
    runs: dict[int, list[tuple[str, int, int]]] = {}
    hung = asyncio.Event()

    async def on_first(m: Message) -> None:
        n = m.payload["n"]
        runs.setdefault(n, []).append(("first", m.deliveries, await _count(redis, topic, m.msg_id)))
        if n == 0:
            first._owned[0].revoking = True  # the partition is being given up
            raise RuntimeError("0 fails (dead-lettered: max_deliveries=1)")
        if n == 1:
            hung.set()
            await asyncio.Event().wait()  # ends its process, as far as the queue can tell

    task = asyncio.create_task(first.process(on_first))
    await asyncio.wait_for(hung.wait(), 10)
    await first.stop(timeout=0.5)  # the handler of 1 is cut off: it ran, without a result
    await task
    await first.close()

    async def on_second(m: Message) -> None:
        runs.setdefault(m.payload["n"], []).append(("second", m.deliveries, -1))

    second = Consumer(topic, redis_url=redis_url, **options)
    async with Running(second, on_second):

        async def drained() -> bool:
            info: Any = await redis.xpending(TopicKeys(topic).stream(0), "default")
            return int(info["pending"]) == 0

        await eventually(drained, timeout=15)
    # 1 ran once and ended without a result: with max_deliveries=1 it is dead-lettered unrun.
    assert [who for who, _, _ in runs[1]] == ["first"]


async def test_a_failed_message_is_not_given_back_through_a_same_id_of_another_level(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Entry ids are numbered per stream: two levels written in the same millisecond share
    # ids. 0 (level 1) fails; 2-4 (level 0) wait behind it, one of them with 0's id. 0
    # ran, so only 1-4 are given back when the member stops: 0 runs twice in all.
    base = topic
    for attempt in range(50):  # until both levels are written within one millisecond
        topic = f"{base}-{attempt}"
        async with Producer(topic, redis_url=redis_url, init_partitions=1, priorities=2) as p:
            ids = await p.batch_enqueue(
                [Message(topic, {"n": n}, priority=1 if n < 2 else 0) for n in range(5)]
            )
        if ids[0] in ids[2:]:
            break
    assert ids[0] in ids[2:]  # the same id in both levels
    options = {"batch_size": 10, "max_deliveries": 2, "retry_backoff": 5.0,
               "heartbeat_interval": 0.2, "poll_interval": 0.1}  # fmt: skip
    runs: dict[int, list[tuple[str, int]]] = {}
    first = Consumer(topic, redis_url=redis_url, **options)

    async def on_first(m: Message) -> None:
        runs.setdefault(m.payload["n"], []).append(("first", m.deliveries))
        if m.payload["n"] == 0:
            raise RuntimeError("0 fails")

    async with Running(first, on_first):
        await eventually(lambda: 0 in runs and first._owned and first._owned[0].head_failed)
    # first stopped: what waited behind 0 (1..4) is given back, 0 itself ran and failed once

    async def on_second(m: Message) -> None:
        runs.setdefault(m.payload["n"], []).append(("second", m.deliveries))
        if m.payload["n"] == 0:
            raise RuntimeError("0 fails")

    second = Consumer(topic, redis_url=redis_url, **{**options, "retry_backoff": 0.05})
    async with Running(second, on_second):
        await eventually(lambda: second.stats.dead_lettered == 1 and second.stats.handled == 4)
    assert len(runs[0]) <= 2  # max_deliveries=2


async def test_a_failure_in_the_reclaimed_path_holds_back_the_rest(
    redis_url: str, topic: str
) -> None:
    # 0-4 are claimed from a member that stopped mid-handler (redeliveries: handled one at a
    # time). 0 fails once there: 1-4 wait for its retry.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(5)])
    options = {"batch_size": 10, "heartbeat_interval": 0.2, "poll_interval": 0.1}
    await _left_hanging(Consumer(topic, redis_url=redis_url, **options))
    order: list[tuple[int, int]] = []

    async def fails_once(m: Message) -> None:
        order.append((m.payload["n"], m.deliveries))
        if m.payload["n"] == 0 and len([o for o in order if o[0] == 0]) == 1:
            raise RuntimeError("0 fails once")

    second = Consumer(topic, redis_url=redis_url, retry_backoff=0.2, **options)
    async with Running(second, fails_once):
        await eventually(lambda: second.stats.handled == 5)
    assert [n for n, _ in order] == [0, 0, 1, 2, 3, 4]


async def test_what_a_forced_stop_never_ran_comes_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A stop that runs out of time cancels the handler of 0: 1-9, read with it, never ran.
    await _produce(redis_url, topic, 10, partitions=1)
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    await _left_hanging(Consumer(topic, redis_url=redis_url, **options))
    ran, _ = await _next_member(
        redis_url, topic, options, lambda c: c.stats.handled == 9 and c.stats.dead_lettered == 1
    )
    # 0 ran once, without a result: dead-lettered. 1-9 run, as first deliveries.
    assert ran == {n: 1 for n in range(1, 10)}


async def test_a_cut_before_a_redelivery_ran_keeps_its_count_of_runs(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # X ran twice already, each run ending its process (max_deliveries=3 allows one more).
    # The member that claims it is cut at the lease deadline before running it: the run it
    # counted did not happen. X runs a third time, ends its process, and is dead-lettered.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    keys = TopicKeys(topic)
    stream, group = keys.stream(0), "default"
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    await redis.sadd(keys.groups, group)
    got: Any = await redis.xreadgroup(group, "ghost", {stream: ">"})  # run 1 (it died)
    x = got[0][1][0][0]
    await redis.xclaim(stream, group, "ghost", 0, [x])  # delivery 2
    await redis.hset(keys.runs(0, group), x, 1)  # run 2, counted (it died)
    options = {"batch_size": 10, "max_deliveries": 3, **FAST}
    cut: list[int] = []
    run_partition = Dispatcher._run_partition

    async def cut_once(
        self: Dispatcher, handler: Any, msgs: Any, done: Any, spans: Any = None
    ) -> Any:
        if not cut:
            cut.append(msgs[0].deliveries)
            self.owned[0].valid_until = 0.0  # the lease's local deadline has passed
        return await run_partition(self, handler, msgs, done, spans)

    monkeypatch.setattr(Dispatcher, "_run_partition", cut_once)
    first = Consumer(topic, redis_url=redis_url, **options)
    runs_seen: list[int] = []
    hung = asyncio.Event()

    async def hangs(m: Message) -> None:
        runs_seen.append(int(await redis.hget(keys.runs(0, group), m.msg_id) or 0))
        hung.set()
        await asyncio.Event().wait()  # run 3: ends its process

    await stopped_when(first, hangs, hung)
    monkeypatch.setattr(Dispatcher, "_run_partition", run_partition)
    ran, _ = await _next_member(redis_url, topic, options, lambda c: c.stats.dead_lettered == 1)
    assert cut == [3] and runs_seen == [2]
    assert ran == {}  # three runs already: dead-lettered, not run a fourth time


async def test_what_waited_behind_a_failure_when_its_partition_is_taken_afresh_is_given_back(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The lease lapses (here: its key is gone) while the partition holds 1-9 behind failed
    # 0: the next heartbeat takes it afresh, and it claims its pending entries; 1-9 never ran.
    await _produce(redis_url, topic, 10, partitions=1)
    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, max_deliveries=2, retry_backoff=30.0,
        **FAST,
    )  # fmt: skip
    first: dict[int, int] = {}
    runs: dict[int, int] = {}

    async def handle(m: Message) -> None:
        n = m.payload["n"]
        first.setdefault(n, m.deliveries)
        runs[n] = runs.get(n, 0) + 1
        if n == 0 and runs[n] == 1:
            raise RuntimeError("0 fails once")

    async with Running(consumer, handle):
        await eventually(lambda: consumer._owned and consumer._owned[0].head_failed)
        await redis.delete(TopicKeys(topic).lease(0, "default"))
        await eventually(lambda: len(first) == 10)
    assert first == {n: 1 for n in range(10)}


async def test_a_forced_stop_gives_back_what_waited_behind_a_failed_batch(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 3 partitions read together in batches of 10: the first batch fails, so the next batch
    # holds its partitions' messages back and runs the rest, whose handler hangs until a
    # stop runs out of time. Whatever never reached a handler comes as a first delivery.
    await _produce(redis_url, topic, 24, partitions=3)
    first = Consumer(topic, redis_url=redis_url, batch_size=10, retry_backoff=30.0, **FAST)
    ran: set[int] = set()
    hung = asyncio.Event()

    async def fails_then_hangs(batch: list[Message]) -> None:
        ran.update(m.payload["n"] for m in batch)
        if len(ran) == len(batch):
            raise RuntimeError("the first batch fails")
        hung.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(first.process_batch(fails_then_hangs))
    await asyncio.wait_for(hung.wait(), 10)
    await first.stop(timeout=0.3)
    await task
    await first.close()
    assert len(ran) < 20  # some waited behind the failed batch
    came: dict[int, int] = {}

    async def record(batch: list[Message]) -> None:
        came.update((m.payload["n"], m.deliveries) for m in batch)

    second = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(second, record, batch=True):
        await eventually(lambda: len(came) == 24)
    assert {n: d for n, d in came.items() if n not in ran and d != 1} == {}


async def test_a_redis_error_among_redeliveries_gives_back_the_rest(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0-4 are claimed from a member that died (delivery 2, handled one at a time). Redis
    # fails as 1 is settled: 2-4 never ran, and come again at delivery 2, not 3.
    await _produce(redis_url, topic, 5, partitions=1)
    await died_with(redis, topic)
    dispatch_one = Dispatcher._dispatch_one
    failed: list[int] = []

    async def fails_at_1(self: Dispatcher, r: Any, handler: Any, m: Any, batch: bool) -> None:
        await dispatch_one(self, r, handler, m, batch)
        if m.payload["n"] == 1 and not failed:
            failed.append(1)
            raise RedisConnectionError("connection lost (injected)")

    monkeypatch.setattr(Dispatcher, "_dispatch_one", fails_at_1)
    came: dict[int, list[int]] = {}

    async def record(m: Message) -> None:
        came.setdefault(m.payload["n"], []).append(m.deliveries)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(consumer, record):
        await eventually(lambda: consumer.stats.handled == 5)
    assert failed
    assert {n: came[n] for n in (2, 3, 4)} == {n: [2] for n in (2, 3, 4)}


@pytest.mark.parametrize("fault", ["redis-error", "forced-stop"])
async def test_jobs_cut_off_while_being_marked_active_come_as_a_first_delivery(
    redis_url: str, redis: Redis, topic: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round trip that marks 5 jobs active fails, or a stop that runs out of time lands
    # in it: none of them ran. With max_deliveries=1 they were dead-lettered unrun.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        for i in range(5):
            await producer.submit({"n": i})
    started = Settler.started
    cut: list[int] = []

    async def cut_once(self: Settler, r: Any, messages: Any) -> Any:
        if not cut:
            cut.append(len(messages))
            if fault == "redis-error":
                raise RedisConnectionError("connection lost (injected)")
            await asyncio.Event().wait()
        return await started(self, r, messages)

    monkeypatch.setattr(Settler, "started", cut_once)
    options = {"max_deliveries": 1, **FAST}
    ran: dict[int, int] = {}

    async def record(m: Message) -> None:
        ran[m.payload["n"]] = m.deliveries

    if fault == "forced-stop":
        first = Consumer(topic, redis_url=redis_url, **options)
        task = asyncio.create_task(first.process(record))
        await eventually(lambda: bool(cut))
        await first.stop(timeout=0.3)
        await task
        await first.close()
    consumer = Consumer(topic, redis_url=redis_url, **options)
    async with Running(consumer, record):
        await eventually(lambda: consumer.stats.handled + consumer.stats.dead_lettered == 5)
    assert cut == [5]
    assert ran == {n: 1 for n in range(5)}


async def test_partitions_a_forced_stop_reaches_before_their_turn_come_as_a_first_delivery(
    redis_url: str, topic: str
) -> None:
    # 2 partitions read together run side by side. The stop is forced from the first
    # handler call, before the other partition's task took its first step: none of that
    # partition's messages ran. With max_deliveries=1 they were dead-lettered unrun.
    await _produce(redis_url, topic, 10, partitions=2)
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    first = Consumer(topic, redis_url=redis_url, **options)
    ran: dict[int, int] = {}

    async def forces_a_stop(m: Message) -> None:
        ran[m.payload["n"]] = m.deliveries
        first._forced = True  # as stop() does once its timeout has passed
        first._stopping.set()
        assert first._runner is not None
        first._runner.cancel()
        await asyncio.Event().wait()

    await asyncio.create_task(first.process(forces_a_stop))
    await first.close()
    assert len(ran) == 1
    came, second = await _next_member(
        redis_url, topic, options, lambda c: c.stats.handled + c.stats.dead_lettered == 10
    )
    assert second.stats.dead_lettered == 1  # the one that ran, without a result
    assert came == {n: 1 for n in range(10) if n not in ran}


@pytest.mark.parametrize("other", ["fails", "succeeds"])
async def test_a_forced_stop_settles_what_ran_and_gives_back_what_waited(
    redis_url: str, redis: Redis, topic: str, other: str
) -> None:
    # 2 partitions read together run side by side. Partition 1's first handler call hangs
    # until a stop runs out of time; partition 0 was done by then: its first message failed
    # (the rest waited behind it), or all five succeeded. What waited comes as a first
    # delivery, and what succeeded is acknowledged as the consumer leaves. Before, both
    # were left pending, and with max_deliveries=1 dead-lettered unrun or after a success.
    await _produce(redis_url, topic, 10, partitions=2)
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    first = Consumer(topic, redis_url=redis_url, **options)
    ran: dict[int, int] = {}
    hung = asyncio.Event()

    async def handle(m: Message) -> None:
        ran[m.payload["n"]] = m.partition
        if m.partition == 1:
            hung.set()
            await asyncio.Event().wait()
        if other == "fails":
            raise RuntimeError("partition 0's first message fails")

    task = asyncio.create_task(first.process(handle))
    await asyncio.wait_for(hung.wait(), 10)
    await eventually(
        lambda: [p for p in ran.values() if p == 0] == [0] * (1 + 4 * (other == "succeeds"))
    )
    await first.stop(timeout=0.3)
    await task
    await first.close()
    expected = {n: 1 for n in range(10) if n not in ran}
    heads = 2 if other == "fails" else 1  # ran without a result: dead-lettered
    came, second = await _next_member(
        redis_url, topic, options, lambda c: _none_pending(redis, topic, 2)
    )
    assert came == expected
    assert second.stats.dead_lettered == heads


async def test_what_is_owed_while_a_give_back_is_under_way_stays_owed(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat owes entries of a partition taken afresh while the consumer's give-back
    # round trip is out: they are owed still once it is back (they were forgotten).
    keys, group = TopicKeys(topic), "default"
    give_back = GiveBack(keys, group, "me", "tok", ConsumerStats())
    first = received(topic, {"n": 0}, "1-0", 0, group, 0.0, 1, 0)
    meanwhile = received(topic, {"n": 1}, "2-0", 1, group, 0.0, 1, 0)
    give_back.owe(0, [first])
    pipelined = _give_back.run_pipelined

    async def heartbeat_meanwhile(r: Any, calls: Any) -> Any:
        give_back.owe(1, [meanwhile])
        return await pipelined(r, calls)

    monkeypatch.setattr(_give_back, "run_pipelined", heartbeat_meanwhile)
    await give_back.make(redis)
    assert give_back.owes(meanwhile) and not give_back.owes(first)


@pytest.mark.single_node  # a cluster client reads nothing ahead
async def test_messages_in_hand_when_a_forced_stop_cuts_the_read_ahead_come_as_first_deliveries(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10-19 are in hand, the read ahead of the next batch is being written, and a stop runs
    # out of time there: 10-19 never reached a handler. With max_deliveries=1 they were
    # dead-lettered unrun.
    await _produce(redis_url, topic, 30, partitions=1)
    writing = asyncio.Event()

    async def hangs(r: Any, commands: Any) -> Any:
        writing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(_read_ahead, "send_ahead", hangs)
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    first = Consumer(topic, redis_url=redis_url, **options)
    ran: set[int] = set()

    async def handle(m: Message) -> None:
        ran.add(m.payload["n"])

    await stopped_when(first, handle, writing)
    monkeypatch.undo()
    assert ran == set(range(10))
    came, _ = await _next_member(
        redis_url, topic, options, lambda c: c.stats.handled + c.stats.dead_lettered == 20
    )
    assert came == {n: 1 for n in range(10, 30)}


async def test_a_forced_stop_during_a_settlement_keeps_it_for_the_leave(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0 succeeds, 1 fails (max_deliveries=1: dead-lettered), 2-3 wait behind it. The round
    # trip that acknowledges 0 and dead-letters 1 hangs until a stop runs out of time: it
    # goes as the consumer leaves. Before, 0 ran again (dead-lettered unrun at max 1).
    await _produce(redis_url, topic, 4, partitions=1)
    hung = _hang_once(monkeypatch, lambda calls: any(c[0] is DEAD_LETTER for c in calls))
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    first = Consumer(topic, redis_url=redis_url, **options)

    async def fails_at_1(m: Message) -> None:
        if m.payload["n"] == 1:
            raise RuntimeError("1 fails")

    await stopped_when(first, fails_at_1, hung)
    came, second = await _next_member(
        redis_url, topic, options, lambda c: _none_pending(redis, topic, 1)
    )
    assert came == {2: 1, 3: 1}
    assert second.stats.dead_lettered == 0
    assert await redis.xlen(TopicKeys(topic).dead_letters(0)) == 1


async def _delivered_to_me(redis: Redis, topic: str) -> tuple[str, str, str]:
    """Partition 0's stream, runs hash and an entry delivered to member "me" (lease "tok")."""
    keys = TopicKeys(topic)
    stream, runs = keys.stream(0), keys.runs(0, "default")
    await redis.xgroup_create(stream, "default", "0", mkstream=True)
    h = (await redis.xadd(stream, {"p": b"1"})).decode()
    await redis.xreadgroup("default", "me", {stream: ">"})
    await redis.set(keys.lease(0, "default"), "tok")
    return stream, runs, h


async def test_a_give_back_leaves_the_runs_of_an_entry_another_member_claimed(
    redis: Redis, topic: str
) -> None:
    # H, owed a give-back with its counted run, was claimed by another member meanwhile,
    # whose runs were counted too: the give-back leaves H's count of runs as it is.
    stream, runs, h = await _delivered_to_me(redis, topic)
    await redis.xclaim(stream, "default", "other", 0, [h])
    await redis.hset(runs, h, 2)
    give_back = GiveBack(TopicKeys(topic), "default", "me", "tok", ConsumerStats())
    give_back.owe_run(received(topic, {"n": 1}, h, 0, "default", 0.0, 2, 0), 0)
    await give_back.make(redis)
    assert await redis.hget(runs, h) == b"2"


@pytest.mark.parametrize("counted_for", [1, 2], ids=["this-delivery", "an-earlier-one"])
async def test_a_count_whose_reply_was_lost_is_taken_back_only_if_made_for_this_delivery(
    redis: Redis, topic: str, counted_for: int
) -> None:
    # H's run was counted for delivery 1 (the count's reply lost), or its last count was
    # made for an earlier delivery that ran (this delivery's count never reached Redis).
    stream, runs, h = await _delivered_to_me(redis, topic)
    await redis.hset(runs, mapping={h: 3, f"@{h}": counted_for})
    give_back = GiveBack(TopicKeys(topic), "default", "me", "tok", ConsumerStats())
    give_back.owe_run(received(topic, {"n": 1}, h, 0, "default", 0.0, 1, 0), None)
    await give_back.make(redis)
    assert await redis.hget(runs, h) == (b"2" if counted_for == 1 else b"3")
    pending: Any = await redis.xpending_range(stream, "default", "-", "+", 1)
    assert pending[0]["times_delivered"] == 0


async def test_a_give_back_goes_on_over_a_runs_key_another_client_spoilt(
    redis: Redis, topic: str
) -> None:
    # Another client wrote a key of another type where H's runs are counted: H is given back
    # all the same. The script's HSET used to fail it, and H stayed owed for good.
    stream, runs, h = await _delivered_to_me(redis, topic)
    await redis.set(runs, "another client's")
    give_back = GiveBack(TopicKeys(topic), "default", "me", "tok", ConsumerStats())
    m = received(topic, {"n": 1}, h, 0, "default", 0.0, 1, 0)
    give_back.owe_run(m, 1)
    await give_back.make(redis)
    assert not give_back.owes(m)
    pending: Any = await redis.xpending_range(stream, "default", "-", "+", 1)
    assert pending[0]["times_delivered"] == 0  # set back: the next claim counts as delivery 1


async def test_a_count_of_runs_for_an_earlier_delivery_is_not_given_back(
    redis_url: str, topic: str
) -> None:
    # H's last count of runs was made for an earlier delivery of it, under an earlier hold
    # of its partition (that run happened). H, claimed again, is cut off before its run is
    # counted: it is given back without taking back that earlier run.
    consumer = Consumer(topic, redis_url=redis_url)
    h = received(topic, {"n": 1}, "5-0", 0, "default", 0.0, 3, 0)
    before = received(topic, {"n": 1}, "5-0", 0, "default", 0.0, 2, 0)
    earlier = consumer._reader.partition(0, 1, valid_until=1e12)
    consumer._settler.runs[(0, 0, "5-0")] = (earlier, 3, before)
    consumer._dispatcher._never_ran([h])
    give_back = consumer._settler.give_back
    assert give_back.owes(h)
    assert give_back._runs == {}
    consumer._settler.runs[(0, 0, "5-0")] = (earlier, 3, h)  # counted for this delivery
    consumer._dispatcher._never_ran([h])
    assert give_back._runs == {0: {(0, "5-0"): (b"1", b"2")}}


async def test_a_forced_stop_during_a_flush_keeps_it_for_the_leave(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caught-up consumer handled 0; its acknowledgement, kept back, goes out on its own and
    # hangs there until a stop runs out of time. It is sent as the consumer leaves. Before, it
    # was dropped: 0 was claimed by the next member and, with max_deliveries=1,
    # dead-lettered after it had succeeded.
    await _produce(redis_url, topic, 1, partitions=1)
    hung = _hang_once(monkeypatch, lambda calls: all(c[0] is ACK for c in calls))
    options = {"batch_size": 10, "max_deliveries": 1, **FAST}
    first = Consumer(topic, redis_url=redis_url, **options)
    ran: list[int] = []

    async def handle(m: Message) -> None:
        ran.append(m.payload["n"])

    await stopped_when(first, handle, hung)
    assert ran == [0]
    assert await _none_pending(redis, topic, 1)


async def test_a_give_back_refused_for_memory_stays_owed_with_its_run(topic: str) -> None:
    # H ran once counted (runs 1), then a second counted run never started. Redis is out of
    # memory when H is given back: the script's HSET of the runs back to 1 was refused inside
    # a pcall, yet the give-back answered done; H kept a run it never had (dead-lettered a
    # run early). Now the give-back fails, H stays owed, and the next one sets its runs back.
    async with EmbeddedRedis() as server:
        redis = Redis.from_url(server.url)
        try:
            stream, runs, h = await _delivered_to_me(redis, topic)
            await redis.hset(runs, h, 2)
            give_back = GiveBack(TopicKeys(topic), "default", "me", "tok", ConsumerStats())
            m = received(topic, {"n": 1}, h, 0, "default", 0.0, 3, 0)
            give_back.owe_run(m, 1)
            await redis.config_set("maxmemory", "1")  # below what is used: writes get OOM
            try:
                with pytest.raises(ResponseError, match="maxmemory"):
                    await give_back.make(redis)
            finally:
                await redis.config_set("maxmemory", "0")
            assert give_back.owes(m)
            assert await redis.hget(runs, h) == b"2"
            await give_back.make(redis)
            assert not give_back.owes(m)
            assert await redis.hget(runs, h) == b"1"
            pending: Any = await redis.xpending_range(stream, "default", "-", "+", 1)
            assert pending[0]["times_delivered"] == 2
        finally:
            await redis.aclose()


async def test_a_failure_settled_after_its_lease_was_taken_again_counts_its_runs(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # X ran once (its first delivery) and waited in a backlog claimed four times more
    # (delivery count 5, runs 0). It runs a second time here; while it runs the lease lapses
    # and this member takes it again (another hold of the partition). X fails: two runs of
    # max_deliveries=3, so it runs a third time. It was dead-lettered after two: its count
    # of runs was not looked at under the new hold, and its delivery count stood in for it.
    await _produce(redis_url, topic, 1, partitions=1)
    keys = TopicKeys(topic)
    stream, group = keys.stream(0), "default"
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    await redis.sadd(keys.groups, group)
    got: Any = await redis.xreadgroup(group, "ghost", {stream: ">"})
    x = got[0][1][0][0]
    for _ in range(4):
        await redis.xclaim(stream, group, "ghost", 0, [x])
    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, retry_backoff=0.01, **FAST)
    runs: list[int] = []

    async def fails(m: Message) -> None:
        runs.append(m.deliveries)
        if len(runs) == 1:
            hold = consumer._owned[0]
            await redis.delete(keys.lease(0, group))  # lapsed: the next heartbeat takes it again
            await eventually(lambda: consumer._owned.get(0) not in (None, hold))
        raise RuntimeError("fails")

    async with Running(consumer, fails):
        await eventually(lambda: consumer.stats.dead_lettered == 1)
    assert len(runs) == 2


async def test_a_retry_alone_cut_at_the_deadline_keeps_the_rest_of_its_batch_behind_it(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch [0, 1, 2] fails: 0 is retried alone, 1 and 2 wait behind it. The retry's round
    # trip ends past the lease's local deadline (set to 0 as it returns), so 0 is given back
    # unrun. 1 and 2 used to be handed out next, before 0 was claimed back.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(3)])
    consumer = Consumer(topic, redis_url=redis_url, retry_backoff=0.01, batch_size=10, **FAST)

    async def deadline_passes() -> None:
        for part in consumer._owned.values():
            part.valid_until = 0.0

    cut = after_first_retry(monkeypatch, deadline_passes)
    batches: list[list[int]] = []

    async def handler(ms: list[Message]) -> None:
        batches.append([m.payload["n"] for m in ms])
        if len(batches) == 1:
            raise RuntimeError("the batch fails")

    async with Running(consumer, handler, batch=True):
        await eventually(lambda: consumer.stats.handled == 3, timeout=20)
    assert cut == [1]
    assert [n for batch in batches[1:] for n in batch] == [0, 1, 2]
