"""``max_deliveries`` counts handler runs of a message delivered again, not its claims.

A message whose handler may have ended its process is counted in its
partition's ``runs`` hash before each run after its first delivery, including
the retries a member makes itself. A run counted for a message that then never
ran is taken back; the delivery count, raised for a whole backlog by every
claim, decides nothing for a message whose runs are counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from redisaq_core import Consumer, Message, Producer, _handling
from redisaq_core._delivery import Reader
from redisaq_core._settlement import Settler
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, after_first_retry, died_with, eventually, stopped_when

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}


async def test_a_retry_that_ends_its_process_counts_as_a_run(redis_url: str, topic: str) -> None:
    # max_deliveries=2: run 1 fails, its retry (run 2) ends its process (a stop that runs out
    # of time cuts it off). The next member dead-letters it without running it; it used to
    # run it a third time (the retry was not counted).
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    runs: list[int] = []
    hung = asyncio.Event()

    async def fails_then_hangs(m: Message) -> None:
        runs.append(m.deliveries)
        if len(runs) == 1:
            raise RuntimeError("run 1 fails")
        hung.set()
        await asyncio.Event().wait()

    options = {"max_deliveries": 2, "retry_backoff": 0.01, **FAST}
    await stopped_when(Consumer(topic, redis_url=redis_url, **options), fails_then_hangs, hung)

    async def record(m: Message) -> None:
        runs.append(m.deliveries)

    second = Consumer(topic, redis_url=redis_url, **options)
    async with Running(second, record):
        await eventually(lambda: second.stats.handled + second.stats.dead_lettered == 1)
    assert runs == [1, 2]
    assert second.stats.dead_lettered == 1


async def test_a_redelivered_job_cut_off_while_marked_active_keeps_its_count_of_runs(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job a member died with (its first delivery counted as a run) is claimed, and its run
    # is counted; marking it active then fails, so that run never happened. max_deliveries=2
    # allows the run it gets next; it used to be dead-lettered unrun.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.submit({"n": 0})
    await died_with(redis, topic)
    started = Settler.started
    cut: list[int] = []

    async def fails_once(self: Settler, r: Any, messages: Any) -> Any:
        if not cut:
            cut.append(messages[0].deliveries)
            raise RedisConnectionError("connection lost (injected)")
        return await started(self, r, messages)

    monkeypatch.setattr(Settler, "started", fails_once)
    ran: list[int] = []

    async def record(m: Message) -> None:
        ran.append(m.deliveries)

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, **FAST)
    async with Running(consumer, record):
        await eventually(lambda: consumer.stats.handled + consumer.stats.dead_lettered == 1)
    assert cut == [2]
    assert ran == [2]
    assert consumer.stats.dead_lettered == 0


async def test_a_message_behind_one_that_ends_its_process_keeps_its_retries(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # K ended the process of three members in turn (run 3 times, max_deliveries=3). X, behind
    # it, may have run on the first (counted) but not since, though each claim raised its
    # delivery count (4 once claimed here). X fails once: it is retried, not dead-lettered
    # (its delivery count was taken for its runs).
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": 0}, {"n": 1}])
    k, _ = await died_with(redis, topic, 3)
    await redis.hset(TopicKeys(topic).runs(0, "default"), k, 2)  # its runs on ghost-1, -2
    ran: list[tuple[int, int]] = []

    async def x_fails_once(m: Message) -> None:
        ran.append((m.payload["n"], m.deliveries))
        if ran == [(1, 4)]:
            raise RuntimeError("X fails once")

    consumer = Consumer(
        topic, redis_url=redis_url, max_deliveries=3, retry_backoff=0.01, **FAST
    )  # fmt: skip
    async with Running(consumer, x_fails_once):
        await eventually(lambda: consumer.stats.handled + consumer.stats.dead_lettered == 2)
    assert ran == [(1, 4), (1, 5)]
    assert consumer.stats.dead_lettered == 1  # K, without a fourth run
    assert await redis.hlen(TopicKeys(topic).runs(0, "default")) == 0


@pytest.mark.parametrize("spoilt", ["many", str(2**63 - 1), "a string key"])
async def test_a_count_of_runs_another_client_spoilt_is_written_over(
    redis_url: str, redis: Redis, topic: str, spoilt: str
) -> None:
    # Run 1 fails; before its retry another client writes what is no integer where its runs
    # are counted (or the largest one, or a key of another type). The retry counts it as
    # the first run and goes on; HINCRBY's error used to stop the consumer as a fault no
    # retry would fix.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    runs: list[int] = []
    key = TopicKeys(topic).runs(0, "default")

    async def fails_once(m: Message) -> None:
        runs.append(m.deliveries)
        if len(runs) == 1:
            if spoilt == "a string key":
                await redis.set(key, spoilt)
            else:
                await redis.hset(key, m.msg_id, spoilt)
            raise RuntimeError("run 1 fails")

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, retry_backoff=0.05, **FAST)
    async with Running(consumer, fails_once):
        await eventually(lambda: consumer.stats.handled == 1)
        assert consumer.running
    assert runs == [1, 2]
    assert await redis.ttl(key) != -1  # a hash written over keeps its time to live


async def test_a_count_of_runs_spoilt_while_its_run_is_under_way_stops_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The retry (a counted run) succeeds after another client wrote a key of another type
    # where its runs are counted. Forgetting the count (HDEL) used to stop the consumer.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    runs: list[int] = []

    async def fails_once(m: Message) -> None:
        runs.append(m.deliveries)
        if len(runs) == 1:
            raise RuntimeError("run 1 fails")
        await redis.set(TopicKeys(topic).runs(0, "default"), "another client's")

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, retry_backoff=0.05, **FAST)
    async with Running(consumer, fails_once):
        await eventually(lambda: consumer.stats.handled == 1)
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.enqueue({"n": 1})
        await eventually(lambda: consumer.stats.handled == 2)
        assert consumer.running
    assert runs == [1, 2, 1]


async def test_no_run_is_counted_for_a_backlog_whose_partition_was_lost_meanwhile(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A member died with 4 messages (their first delivery counted as a run). The next one
    # claims them and runs them one at a time; during the first run another member holds the
    # lease for a while, and the partition is dropped. The other 3 never run there: before,
    # a run was counted for each all the same, and with max_deliveries=2 the member that
    # took the partition back dead-lettered them without ever running them.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        for n in range(4):
            await producer.enqueue({"n": n})
    stream = keys.stream(0)
    await redis.xgroup_create(stream, "default", id="0", mkstream=True)
    await redis.xreadgroup("default", "died", {stream: ">"}, count=4)
    ran: list[int] = []

    async def handle(m: Message) -> None:
        ran.append(m.payload["n"])
        if len(ran) == 1:
            await redis.set(keys.lease(0, "default"), "another member", px=1500)
            await eventually(lambda: not consumer.assigned_partitions, message="dropped")

    consumer = Consumer(
        topic, redis_url=redis_url, max_deliveries=2, heartbeat_ttl=1.2, retry_backoff=0.05,
        **FAST,
    )  # fmt: skip
    async with Running(consumer, handle):
        await eventually(
            lambda: {1, 2, 3} <= set(ran) or consumer.stats.dead_lettered >= 3,
            timeout=15, message="the rest run or dead-lettered",
        )  # fmt: skip
    assert {1, 2, 3} <= set(ran)
    assert consumer.stats.dead_lettered <= 1  # the first: its run's result was refused


# A run counted just before the partition's lease is found gone never happens here. It is
# given back all the same, without the lease, if the entry's counts are still those of this
# member's delivery: before, it stayed counted, and the member that took the partition next
# dead-lettered the message one real run early. Three ways, each seen in a chaos run.


async def _one(redis_url: str, topic: str, *, job: bool = False) -> None:
    """One message (a job with ``job``) on a topic of one partition."""
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await (producer.submit if job else producer.enqueue)({"n": 0})


def _member(topic: str, redis_url: str, **options: Any) -> Consumer:
    """A consumer that finds a lease gone within a second (max_deliveries=2 unless given)."""
    return Consumer(
        topic, redis_url=redis_url, **{"max_deliveries": 2, "heartbeat_ttl": 1.2, **FAST, **options}
    )  # fmt: skip


async def _settled(consumer: Consumer, handler: Any, n: int = 1) -> None:
    """Run ``consumer`` until ``n`` messages are handled or dead-lettered."""
    async with Running(consumer, handler):
        await eventually(
            lambda: consumer.stats.handled + consumer.stats.dead_lettered == n, timeout=20
        )


def _recording(ran: list[int]) -> Any:
    """A handler that notes each message's delivery count."""

    async def record(m: Message) -> None:
        ran.append(m.deliveries)

    return record


def _failing(ran: list[int]) -> Any:
    """A handler that notes each message's delivery count, then fails."""

    async def fails(m: Message) -> None:
        ran.append(m.deliveries)
        raise RuntimeError(f"run {len(ran)} fails")

    return fails


def _lease_taken_once(
    redis: Redis, topic: str, consumer: Consumer, cut: list[int], *, dropped: bool = True
) -> Any:
    """An awaitable to run once where the lease should be found gone: another member holds
    it for a while (1.5 s); with ``dropped``, it returns once this one's heartbeat dropped
    the partition."""

    async def take(deliveries: int) -> None:
        if cut:
            return
        cut.append(deliveries)
        await redis.set(TopicKeys(topic).lease(0, "default"), "another member", px=1500)
        if dropped:
            await eventually(lambda: not consumer.assigned_partitions, message="dropped")

    return take


async def test_a_run_counted_for_a_job_whose_lease_is_gone_when_marked_active_is_given_back(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _one(redis_url, topic, job=True)
    await died_with(redis, topic)
    consumer = _member(topic, redis_url)
    cut: list[int] = []
    take = _lease_taken_once(redis, topic, consumer, cut, dropped=False)  # found by the mark
    started = Settler.started

    async def lease_gone_once(self: Settler, r: Any, messages: Any) -> Any:
        await take(messages[0].deliveries)
        return await started(self, r, messages)

    monkeypatch.setattr(Settler, "started", lease_gone_once)
    ran: list[int] = []
    await _settled(consumer, _recording(ran))
    assert cut == [2]
    assert ran == [2]  # its delivery that never ran was given back too
    assert consumer.stats.dead_lettered == 0 and consumer.stats.fenced == 1


@pytest.mark.parametrize("moved_first", [False, True], ids=["found-gone", "moved-first"])
async def test_a_redelivery_whose_lease_goes_as_its_run_is_counted_keeps_its_runs(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch, moved_first: bool
) -> None:
    # found-gone: the run is counted, then the heartbeat finds the lease gone; the run
    # never happened and is given back (it used to stay counted).
    # moved-first: the lease goes to another member just before the count, unseen by the
    # heartbeat yet. The count used to be made all the same (and the handler ran under a
    # lease no longer held), so the next holder found a run too many and dead-lettered it.
    await _one(redis_url, topic)
    await died_with(redis, topic)
    consumer = _member(topic, redis_url)
    cut: list[int] = []
    take = _lease_taken_once(redis, topic, consumer, cut, dropped=not moved_first)
    count_run = _handling.count_run

    async def lease_goes(r: Any, keys: Any, group: str, token: str, m: Any) -> int:
        if moved_first:
            await take(m.deliveries)
        count = await count_run(r, keys, group, token, m)
        if not moved_first:
            await take(count)
        return count

    monkeypatch.setattr(_handling, "count_run", lease_goes)
    ran: list[int] = []
    await _settled(consumer, _recording(ran))
    assert cut == ([2] if moved_first else [1])  # the delivery count, or the run counted
    assert ran == [2]
    assert consumer.stats.dead_lettered == 0
    assert consumer.stats.fenced == 0 or not moved_first


async def test_a_redelivery_whose_count_of_runs_lost_its_reply_keeps_its_runs(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A message a member died with is claimed, and its run counted; the reply is lost with
    # the connection, so it never runs and is given back. The count used to stay, and
    # max_deliveries=2 dead-lettered it at its next claim without a run.
    await _one(redis_url, topic)
    await died_with(redis, topic)
    count_run, lost = _handling.count_run, []

    async def reply_lost(r: Any, keys: Any, group: str, token: str, m: Any) -> int:
        count = await count_run(r, keys, group, token, m)
        if not lost:
            lost.append(count)
            raise RedisConnectionError("connection lost with the reply (injected)")
        return count

    monkeypatch.setattr(_handling, "count_run", reply_lost)
    ran: list[int] = []
    consumer = _member(topic, redis_url)
    await _settled(consumer, _recording(ran))
    assert lost == [1]
    assert ran == [2]
    assert consumer.stats.dead_lettered == 0
    assert await redis.hgetall(TopicKeys(topic).runs(0, "default")) == {}


async def test_a_retry_counted_as_its_lease_is_found_gone_is_given_back(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _one(redis_url, topic)
    consumer = _member(topic, redis_url, retry_backoff=0.01)
    cut: list[int] = []
    take = _lease_taken_once(redis, topic, consumer, cut)
    retries = Reader.retries

    async def lease_gone_once(self: Reader, r: Any, parts: Any, runs: Any = None) -> Any:
        out = await retries(self, r, parts, runs)
        await take(out[0][0].deliveries if out[0] else 0)
        return out

    monkeypatch.setattr(Reader, "retries", lease_gone_once)
    ran: list[int] = []

    async def fails_once(m: Message) -> None:
        ran.append(m.deliveries)
        if len(ran) == 1:
            raise RuntimeError("run 1 fails")

    await _settled(consumer, fails_once)
    assert cut == [2]  # the retry claimed, and its run counted
    assert ran == [1, 2]
    assert consumer.stats.dead_lettered == 0


@pytest.mark.parametrize("lease_lapses", [False, True], ids=["sent-again", "lease-lapsed"])
async def test_a_retry_whose_reply_was_lost_counts_one_run(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch, lease_lapses: bool
) -> None:
    # Redis makes the retry (its claim and its count of runs) but the reply is lost with the
    # connection. Sent again, it used to count a second run the handler never made; with
    # the lease gone for a while meanwhile (the partition given up before it is sent
    # again), the run it counted stayed counted. Either way max_deliveries=3 dead-lettered
    # the message after two real runs.
    await _one(redis_url, topic)
    consumer = _member(topic, redis_url, max_deliveries=3, retry_backoff=0.01)

    async def reply_lost() -> None:
        if lease_lapses:
            await redis.set(TopicKeys(topic).lease(0, "default"), "another member", px=1500)
        raise RedisConnectionError("connection lost with the reply (injected)")

    lost = after_first_retry(monkeypatch, reply_lost)
    ran: list[int] = []
    await _settled(consumer, _failing(ran))
    assert lost == [1]
    assert len(ran) == 3
    assert consumer.stats.dead_lettered == 1


async def test_a_retry_under_way_as_the_lease_is_taken_afresh_keeps_its_count(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry's round trip is under way when the lease lapses and the heartbeat takes it
    # again (a new hold). The retry is made; its hold is gone, so it is given back, and the
    # message is claimed afresh. It used to run under the new hold all the same, while the
    # give-back erased its count: 4 runs with max_deliveries=3.
    await _one(redis_url, topic)
    consumer = _member(topic, redis_url, max_deliveries=3, retry_backoff=0.01)

    async def taken_afresh() -> None:
        old = consumer._owned[0]
        await redis.delete(TopicKeys(topic).lease(0, "default"))
        await eventually(
            lambda: consumer._owned.get(0) not in (None, old), message="the lease taken again"
        )

    done = after_first_retry(monkeypatch, taken_afresh)
    ran: list[int] = []
    await _settled(consumer, _failing(ran))
    assert done == [1]
    assert len(ran) == 3


async def test_an_earlier_static_instance_neither_counts_nor_runs_what_its_successor_holds(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instance 2 ("second") of static member "w" holds E, failed once, for its retry.
    # Instance 1 ("first"), not yet aware it was replaced, claims E under the same name
    # (delivery count 1 -> 2). Its count of the run is refused (the lease is instance 2's),
    # so it does not run E. It used to count and run it; with both counts raised, a retry
    # sent again after a lost reply would have taken them for its own.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
    options: dict[str, Any] = {
        "consumer_name": "w", "static": True, "redis_url": redis_url, "max_deliveries": 3,
    }  # fmt: skip
    first = Consumer(topic, heartbeat_interval=5.0, heartbeat_ttl=15.0, **options)
    second = Consumer(topic, retry_backoff=0.01, **options, **FAST)
    gate, at_gate = asyncio.Event(), asyncio.Event()
    claim, count_run = Reader.claim, _handling.count_run

    async def stalls(self: Reader, r: Any, parts: Any) -> Any:
        if self is first._reader and not at_gate.is_set():
            at_gate.set()
            await gate.wait()
        return await claim(self, r, parts)

    counted: list[int] = []

    async def noted(r: Any, keys: Any, group: str, token: str, m: Any) -> int:
        count = await count_run(r, keys, group, token, m)
        if token == first.token:
            counted.append(count)
        return count

    monkeypatch.setattr(Reader, "claim", stalls)
    monkeypatch.setattr(_handling, "count_run", noted)
    runs: list[str] = []

    async def handler(m: Message) -> None:
        runs.append("first" if first._dispatcher.in_handler() else "second")
        if len(runs) == 1:  # instance 1 wakes up while instance 2 waits for its retry
            gate.set()
            await eventually(lambda: counted, message="instance 1 counting its run")
        raise RuntimeError("fails")

    first_task = asyncio.create_task(first.process(handler))
    second_task = None
    try:
        await asyncio.wait_for(at_gate.wait(), 10)
        second_task = asyncio.create_task(second.process(handler))
        await eventually(lambda: second.stats.dead_lettered == 1, timeout=15)
        assert counted == [-1]
        assert runs == ["second", "second", "second"]
    finally:
        for consumer in (second, first):
            await consumer.stop(timeout=0.3)
        await asyncio.gather(first_task, *[t for t in (second_task,) if t], return_exceptions=True)
        for consumer in (second, first):
            await consumer.close()


async def test_an_earlier_instance_of_a_static_member_takes_back_no_run_its_successor_made(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Instance 1 of static member "w" claims job J (a member died with it) and counts its
    # run, then stalls before marking J active. Instance 2 of "w" takes the lease over, claims
    # J (pending with "w" still) and counts its run, which really starts. Instance 1 then
    # finds the lease gone: its give-back, with no lease, finds J's counts changed since its
    # own delivery and leaves them. Before (given back on "still pending with w" alone) it
    # erased instance 2's run, and J could run past max_deliveries.
    await _one(redis_url, topic, job=True)
    (j,) = await died_with(redis, topic)
    keys = TopicKeys(topic)
    options: dict[str, Any] = {
        "consumer_name": "w", "static": True, "redis_url": redis_url, "max_deliveries": 3,
    }  # fmt: skip
    first = Consumer(topic, heartbeat_interval=5.0, heartbeat_ttl=15.0, **options)
    gate, at_gate = asyncio.Event(), asyncio.Event()
    started = Settler.started

    async def stalls(self: Settler, r: Any, messages: Any) -> Any:
        if self is first._settler and not at_gate.is_set():
            at_gate.set()
            await gate.wait()
        return await started(self, r, messages)

    monkeypatch.setattr(Settler, "started", stalls)
    running = asyncio.Event()

    async def hangs(m: Message) -> None:
        running.set()
        await asyncio.Event().wait()

    first_task = asyncio.create_task(first.process(hangs))
    second = Consumer(topic, **options, **FAST)
    try:
        await asyncio.wait_for(at_gate.wait(), 10)
        assert await redis.hget(keys.runs(0, "default"), j) == b"1"
        second_task = asyncio.create_task(second.process(hangs))
        await asyncio.wait_for(running.wait(), 10)
        assert await redis.hget(keys.runs(0, "default"), j) == b"2"
        gate.set()
        await eventually(
            lambda: first.stats.fenced == 1 and not first._settler.give_back.owed,
            message="the first instance fenced, and done with its give-back",
        )  # fmt: skip
        pending: Any = await redis.xpending_range(keys.stream(0), "default", "-", "+", 1)
        assert (pending[0]["consumer"], pending[0]["times_delivered"]) == (b"w", 3)
        assert await redis.hget(keys.runs(0, "default"), j) == b"2"
    finally:
        for consumer in (second, first):
            await consumer.stop(timeout=0.3)
        await asyncio.gather(first_task, second_task, return_exceptions=True)
        for consumer in (second, first):
            await consumer.close()


async def test_a_run_counted_for_an_earlier_delivery_that_ran_is_not_given_back(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # M fails twice (its retry counted: a run that happened) and waits for its next retry
    # when the lease is lost. The partition is taken again and its claim brings M, and the
    # lease is found gone again while that claim is out: M never runs on it. Its give-back
    # must not take back the retry's run, counted for an earlier delivery that ran; it used
    # to, and M ran 4 times with max_deliveries=3.
    await _one(redis_url, topic)
    consumer = _member(topic, redis_url, max_deliveries=3, retry_backoff=1.0, retry_backoff_max=1.0)
    lease = TopicKeys(topic).lease(0, "default")

    async def lose_lease() -> None:
        await redis.set(lease, "another member", px=1500)
        await eventually(lambda: not consumer.assigned_partitions, message="dropped")

    async def lose_once_held() -> None:
        await eventually(
            lambda: (part := consumer._owned.get(0)) is not None and part.head_failed,
            message="held for its retry",
        )  # fmt: skip
        await lose_lease()

    claim = Reader.claim
    cut: list[int] = []

    async def lost_during_claim(self: Reader, r: Any, parts: Any) -> Any:
        out = await claim(self, r, parts)
        if losing and not cut and out[0]:
            cut.append(out[0][0].deliveries)
            await lose_lease()
        return out

    monkeypatch.setattr(Reader, "claim", lost_during_claim)
    ran: list[int] = []
    losing: list[asyncio.Task[None]] = []

    async def fails(m: Message) -> None:
        ran.append(m.deliveries)
        if len(ran) == 2:
            losing.append(asyncio.create_task(lose_once_held()))
        raise RuntimeError(f"run {len(ran)} fails")

    await _settled(consumer, fails)
    await asyncio.gather(*losing)
    assert consumer.stats.dead_lettered == 1
    assert cut == [3]
    assert ran == [1, 2, 3]


async def test_what_waits_behind_a_failure_when_the_lease_is_found_gone_is_given_back(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 0 fails and 1, 2 wait behind it (read once, never run) when the heartbeat finds the
    # lease gone. They are given back, so their next claim is their first delivery: 1 fails
    # once on its first run and is retried. Before, the dropped hold's 1 and 2 kept their
    # delivery, the claim counted it as a run, and 1 was dead-lettered after one real run.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": n} for n in range(3)])
    consumer = _member(topic, redis_url, retry_backoff=1.0, retry_backoff_max=1.0)
    lease = TopicKeys(topic).lease(0, "default")

    async def lose_once_held() -> None:
        await eventually(
            lambda: (part := consumer._owned.get(0)) is not None and len(part.held) == 3,
            message="1 and 2 held behind 0",
        )  # fmt: skip
        await redis.set(lease, "another member", px=1500)
        await eventually(lambda: not consumer.assigned_partitions, message="dropped")

    ran: list[tuple[int, int]] = []
    losing: list[asyncio.Task[None]] = []

    async def fails_first_runs(m: Message) -> None:
        n = m.payload["n"]
        ran.append((n, m.deliveries))
        if n == 0 and not losing:
            losing.append(asyncio.create_task(lose_once_held()))
        if sum(1 for k, _ in ran if k == n) == 1 and n < 2:
            raise RuntimeError(f"{n} fails on its first run")

    await _settled(consumer, fails_first_runs, 3)
    await asyncio.gather(*losing)
    assert consumer.stats.dead_lettered == 0, ran
    assert [n for n, _ in ran] == [0, 0, 1, 1, 2]


async def test_a_retry_after_the_lease_moved_takes_nothing_from_the_new_owner(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0 fails; before its retry another member takes the lease and claims 0. This member's
    # heartbeat has not noticed yet, and it retries: the claim is refused, so 0 stays with
    # its new owner, and no run is counted. Before, XCLAIM (which looks at no owner) took
    # it back and counted a run that never happened; the new owner, claiming it again, then
    # dead-lettered a flaky message after one real run.
    await _one(redis_url, topic)
    keys = TopicKeys(topic)
    stream = keys.stream(0)
    consumer = _member(
        topic, redis_url, heartbeat_interval=5.0, heartbeat_ttl=15.0, retry_backoff=0.5,
        retry_backoff_max=0.5,
    )  # fmt: skip
    retries, tried = Reader.retries, asyncio.Event()

    async def noted(self: Reader, r: Any, parts: Any, runs: Any = None) -> Any:
        try:
            return await retries(self, r, parts, runs)
        finally:
            tried.set()

    monkeypatch.setattr(Reader, "retries", noted)

    async def fails(m: Message) -> None:
        raise RuntimeError("0 fails")

    async with Running(consumer, fails):
        await eventually(
            lambda: (part := consumer._owned.get(0)) is not None and part.head_failed,
            message="0 waits for its retry",
        )  # fmt: skip
        await redis.set(keys.lease(0, "default"), "another member", px=30_000)
        (entry,) = await redis.xpending_range(stream, "default", "-", "+", 1)
        await redis.xclaim(stream, "default", "other", 0, [entry["message_id"]])
        await asyncio.wait_for(tried.wait(), 10)
        pending: Any = await redis.xpending_range(stream, "default", "-", "+", 1)
        assert (pending[0]["consumer"], pending[0]["times_delivered"]) == (b"other", 2)
        assert await redis.hgetall(keys.runs(0, "default")) == {}
        assert consumer.stats.failed == 1 and consumer.stats.retried == 0
