"""Jobs end to end: submit, status lifecycle, results awaited from another client, timeouts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from redisaq_core import Consumer, Message, Producer, _delivery
from redisaq_core.errors import (
    ConfigurationError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
)
from redisaq_core.keys import TopicKeys, parse_job_id
from redisaq_core.results import JobStatus, ResultStore
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1, "retry_backoff": 0.01}


async def test_submitted_job_is_followed_to_its_result(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        handle = await producer.submit({"x": 20}, partition_key="x")
        assert await handle.status() == JobStatus.QUEUED

        async def handle_job(m: Message) -> Any:
            assert m.job_id == handle.id
            return {"double": m.payload["x"] * 2}

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handle_job):
            assert await handle.result(timeout=10) == {"double": 40}
        # Another process (here: another client) sees the same record.
        async with ResultStore(redis_url=redis_url) as store:
            record = await store.get(handle.id)
            assert record is not None and record.status == JobStatus.COMPLETED
            assert record.attempts == 1 and record.worker == consumer.name
            assert record.result == {"double": 40}


async def test_a_finished_job_is_returned_whatever_the_timeout(redis_url: str, topic: str) -> None:
    # A timeout of 0 (a look that may not block) cancelled the wait before it read the record:
    # a job completed long before raised JobTimeoutError.
    async with Producer(topic, redis_url=redis_url) as producer:
        done, waiting = await producer.submit("a"), await producer.submit("b", delay=3600)

        async def handle_job(m: Message) -> Any:
            return f"got {m.payload}"

        async with Running(Consumer(topic, redis_url=redis_url, **FAST), handle_job):
            assert await done.result(timeout=10) == "got a"
        assert await done.result(timeout=0) == "got a"
        async with ResultStore(redis_url=redis_url) as store:
            assert (await store.wait(done.id, timeout=0)).status is JobStatus.COMPLETED
            records = await store.wait_many([done.id, done.id], timeout=0)
            assert [r.result for r in records] == ["got a", "got a"]
            with pytest.raises(JobTimeoutError, match="1 of 2 jobs"):
                await store.wait_many([done.id, waiting.id], timeout=0)
            with pytest.raises(JobTimeoutError, match="within 0 s"):
                await store.wait(waiting.id, timeout=0)
            with pytest.raises(JobNotFoundError):
                await store.wait(f"{topic}/0/none", timeout=0)
        for timeout in (0, 0.001, 0.002, 0.005) * 5:  # deadlines that land mid-read
            async with ResultStore(redis_url=redis_url) as store:
                with pytest.raises(JobTimeoutError):
                    await asyncio.wait_for(store.wait_many([waiting.id], timeout), 10)
                with pytest.raises(JobTimeoutError):
                    await asyncio.wait_for(store.wait(waiting.id, timeout), 10)


async def test_retry_then_success_and_dead(redis_url: str, topic: str) -> None:
    attempts: dict[int, int] = {}

    async def handler(m: Message) -> Any:
        n = m.payload["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n == 1 and attempts[n] < 2:
            raise RuntimeError("flaky")
        if n == 2:
            raise ValueError("always broken")
        return n

    async with Producer(topic, redis_url=redis_url) as producer:
        jobs = [await producer.submit({"n": n}) for n in range(3)]
        async with ResultStore(redis_url=redis_url) as store:
            consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, **FAST)
            async with Running(consumer, handler):
                assert await jobs[0].result(timeout=10) == 0
                assert await jobs[1].result(timeout=10) == 1
                with pytest.raises(JobFailedError, match="always broken"):
                    await jobs[2].result(timeout=10)
            flaky = await store.get(jobs[1].id)
            dead = await store.get(jobs[2].id)
        assert flaky is not None and flaky.attempts == 2 and flaky.status == JobStatus.COMPLETED
        assert flaky.error == "flaky"  # the last failure stays on record
        assert dead is not None and dead.status == JobStatus.DEAD and dead.attempts == 3
        assert dead.error_type == "ValueError"


async def test_handler_timeout_fails_the_job(redis_url: str, topic: str) -> None:
    async def slow(m: Message) -> None:
        await asyncio.sleep(5)

    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit({"n": 1}, timeout=0.05)
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, **FAST)
        async with Running(consumer, slow):
            with pytest.raises(JobFailedError, match=r"did not finish within 0\.05s"):
                await job.result(timeout=10)
        assert consumer.stats.timed_out == 2


async def test_result_ttl_expires_the_record(redis_url: str, topic: str) -> None:
    async def handler(m: Message) -> str:
        return "ok"

    async with Producer(topic, redis_url=redis_url, result_ttl=1) as producer:
        job = await producer.submit("payload")
        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            assert await job.result(timeout=10) == "ok"
        await eventually(lambda: _gone(job.status()), timeout=5)
        with pytest.raises(ConfigurationError, match="result_ttl must be"):
            await producer.submit("x", result_ttl=0)


async def _gone(status: Any) -> bool:
    return await status is None


async def test_plain_enqueue_writes_no_job_records(redis_url: str, redis: Any, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
    from redisaq_core.keys import TopicKeys

    assert await redis.zcard(TopicKeys(topic).jobs(0)) == 0


async def test_batch_handler_results_per_message(redis_url: str, topic: str) -> None:
    async def handler(batch: list[Message]) -> list[int]:
        return [m.payload * 10 for m in batch]

    async with Producer(topic, redis_url=redis_url) as producer:
        jobs = [await producer.submit(n) for n in range(5)]
        consumer = Consumer(topic, redis_url=redis_url, batch_size=5, **FAST)
        async with Running(consumer, handler, batch=True):
            results = [await j.result(timeout=10) for j in jobs]
    assert results == [0, 10, 20, 30, 40]


async def test_a_result_that_cannot_be_stored_dead_letters_its_job_at_once(
    redis_url: str, topic: str
) -> None:
    # Job 0 returns what JSON can't hold: its handler ran to the end, so it is not run again
    # for a result of the same kind. Job 1, behind it in the partition, fails every time:
    # each of its runs counts (it used to run twice as often as max_deliveries allows).
    runs = {0: 0, 1: 0}

    async def handler(m: Message) -> Any:
        runs[m.payload] += 1
        if m.payload == 1:
            raise RuntimeError("always fails")
        return object()

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        jobs = [await producer.submit(n) for n in range(2)]
        # A lease that lapsed on a loaded machine would run job 0 again (its settlement
        # refused): a long TTL keeps the count of runs to what the handler did.
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, heartbeat_ttl=10, **FAST)
        async with Running(consumer, handler):
            for job in jobs:
                with pytest.raises(JobFailedError):
                    await job.result(timeout=10)
            await eventually(lambda: consumer.stats.dead_lettered == 2)
        async with ResultStore(redis_url=redis_url) as store:
            records = [await store.get(job.id) for job in jobs]
    assert runs == {0: 1, 1: 2}
    assert [r.status if r else None for r in records] == [JobStatus.DEAD, JobStatus.DEAD]
    assert records[0] is not None and records[0].error_type == "SerializationError"


async def test_a_result_that_cannot_be_stored_at_a_forced_stop_dead_letters_its_job(
    redis_url: str, topic: str
) -> None:
    # Partition 0's jobs return what JSON can't hold while partition 1's first handler
    # hangs until a stop runs out of time. The consumer dead-letters those jobs as it
    # leaves, as its settlement would have; before, it left them pending and the next
    # member ran them again.
    runs = dict.fromkeys(range(6), 0)
    hang = True
    hung = asyncio.Event()

    async def handler(m: Message) -> Any:
        runs[m.payload["n"]] += 1
        if m.partition == 1 and hang:
            hung.set()
            await asyncio.Event().wait()
        return object()

    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        jobs = [await producer.submit({"n": n}, partition_key="n") for n in range(6)]
        partition = {n: parse_job_id(job.id)[1] for n, job in enumerate(jobs)}
        assert set(partition.values()) == {0, 1}
        first = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
        task = asyncio.create_task(first.process(handler))
        await asyncio.wait_for(hung.wait(), 10)
        await eventually(lambda: all(runs[n] for n, p in partition.items() if p == 0))
        await first.stop(timeout=0.3)
        await task
        await first.close()
        hang = False
        async with ResultStore(redis_url=redis_url) as store:
            second = Consumer(topic, redis_url=redis_url, **FAST)
            async with Running(second, handler):
                for job in jobs:
                    with pytest.raises(JobFailedError):
                        await job.result(timeout=10)
            records = [await store.get(job.id) for job in jobs]
    assert {n: runs[n] for n, p in partition.items() if p == 0} == {
        n: 1 for n, p in partition.items() if p == 0
    }
    assert all(r is not None and r.status == JobStatus.DEAD for r in records)
    assert all(r is not None and r.error_type == "SerializationError" for r in records)


async def test_a_jobs_index_another_client_replaced_stops_no_job(
    redis_url: str, redis: Any, topic: str
) -> None:
    # The index only lists jobs: one of another type is left alone. Before, submit() raised
    # after writing the job (a retry wrote it twice), and the consumer stopped on WRONGTYPE.
    index = TopicKeys(topic).jobs(0)
    await redis.set(index, "another client's")

    async def double(m: Message) -> int:
        return int(m.payload["n"]) * 2

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        jobs = [await producer.submit({"n": n}) for n in range(2)]
        jobs.append(await producer.submit({"n": 2}, delay=0.2))
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, double):
            done = [await job.wait(timeout=10) for job in jobs]
            assert consumer.running
    assert [r.status for r in done] == [JobStatus.COMPLETED] * 3
    assert await redis.get(index) == b"another client's"
    await redis.delete(index)  # the listing of every topic in other tests


@pytest.mark.parametrize("ends", ["completed", "dead"])
async def test_a_waiter_learns_of_a_record_deleted_while_its_job_was_pending(
    redis_url: str, redis: Any, topic: str, ends: str
) -> None:
    # Before, the job was settled without an announcement, and wait() waited for ever.
    async def handler(m: Message) -> int:
        if ends == "dead":
            raise RuntimeError("fails")
        return 1

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 0})
        store, read = job.store, asyncio.Event()
        first_read = store._read

        async def read_then_say(*args: Any) -> Any:
            record = await first_read(*args)
            read.set()
            return record

        store._read = read_then_say  # type: ignore[method-assign]
        waiting = asyncio.create_task(job.wait(timeout=20))
        await asyncio.wait_for(read.wait(), 10)  # the waiter found the job pending
        await redis.delete(TopicKeys(topic).job(0, job.id))
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handler):
            with pytest.raises(JobNotFoundError, match="has no record"):
                await waiting


async def test_a_job_completed_by_one_group_stays_completed_when_another_dead_letters_it(
    redis_url: str, topic: str
) -> None:
    # Each group gets every message. Before, group b's dead letter wrote "dead" over the
    # "completed" group a had left (jobs_started and job_update already left it alone).
    async def fails(m: Message) -> None:
        raise RuntimeError("group b fails")

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 1})
        a = Consumer(topic, redis_url=redis_url, group_name="a", **FAST)
        async with Running(a, lambda m: asyncio.sleep(0, 7)):
            assert (await job.wait(timeout=10)).status is JobStatus.COMPLETED
        b = Consumer(topic, redis_url=redis_url, group_name="b", max_deliveries=1, **FAST)
        async with Running(b, fails):
            await eventually(lambda: b.stats.dead_lettered == 1, message="group b dead-letters")
        record = await job.record()
    assert record is not None and record.status is JobStatus.COMPLETED and record.result == 7


@pytest.mark.single_node
@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("timeout", [0.3, 0])
async def test_a_wait_ends_at_its_timeout_while_redis_stalls(
    redis_url: str, redis: Any, topic: str, many: bool, timeout: float
) -> None:
    # The look for a job finished before the call was outside the deadline: with Redis
    # stalled, wait(timeout=0.3) took as long as Redis did. With timeout 0 (one look), that
    # look was not bounded at all.
    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit({"n": 1})
    loop = asyncio.get_running_loop()

    async def wait(store: ResultStore, timeout: float) -> Any:
        return await (store.wait_many([job.id], timeout) if many else store.wait(job.id, timeout))

    async with ResultStore(redis_url=redis_url) as store:
        with pytest.raises(JobTimeoutError):  # connected and subscribed
            await wait(store, 0.1)
        await redis.execute_command("CLIENT", "PAUSE", 1500, "ALL")  # UNPAUSE waits for it too
        try:
            started = loop.time()
            with pytest.raises(JobTimeoutError):
                await wait(store, timeout)
            took = loop.time() - started
        finally:
            await redis.execute_command("CLIENT", "UNPAUSE")
    assert took < 1.2, f"timeout {timeout} s, took {took:.2f} s (Redis answers after 1.5 s)"


@pytest.mark.skipif(not hasattr(asyncio.Task, "cancelling"), reason="Python 3.11+ counts them")
async def test_a_wait_in_a_task_that_caught_an_earlier_cancellation_waits(
    redis_url: str, topic: str
) -> None:
    # A task that caught a cancellation once and went on (its count of cancellations stays
    # up) waits for a job like any other.
    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit({"n": 1})
    entered = asyncio.Event()
    async with ResultStore(redis_url=redis_url) as store:

        async def caller() -> Any:
            try:
                entered.set()
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass
            return await store.wait(job.id)

        task = asyncio.create_task(caller())
        await entered.wait()
        task.cancel()

        async def work(m: Message) -> str:
            return "done"

        async with Running(Consumer(topic, redis_url=redis_url, **FAST), work):
            record = await asyncio.wait_for(task, 15)
    assert record.status is JobStatus.COMPLETED


@pytest.mark.parametrize("record", ["kept", "expired"])
async def test_a_replayed_job_is_queued_again_and_keeps_its_result(
    redis_url: str, redis: Any, topic: str, record: str
) -> None:
    # A dead job is replayed. Its record used to stay "dead" (a waiter got the old failure
    # at once) with the expiry its death set: once that ran out during the run again, the
    # result was dropped as "gone". A record expired before the replay never came back.
    from redisaq_core import DeadLetters

    fail = [True]

    async def handler(m: Message) -> str:
        if fail[0]:
            raise RuntimeError("fails first")
        return "done"

    async with Producer(topic, redis_url=redis_url, result_ttl=2) as producer:
        job = await producer.submit({"n": 1})
        key = TopicKeys(topic).job(parse_job_id(job.id)[1], job.id)
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handler):
            assert (await job.wait(timeout=10)).status is JobStatus.DEAD
            fail[0] = False
            if record == "expired":
                await redis.delete(key)
            async with DeadLetters(topic, redis_url=redis_url) as dead:
                assert await dead.replay() == 1
            finished = await job.wait(timeout=10)
            assert finished.status is JobStatus.COMPLETED
            assert finished.error is None and await job.result() == "done"
        await consumer.close()
    assert await redis.ttl(key) > 0


async def test_a_job_trimmed_while_it_waits_for_its_retry_ends_dead(
    redis_url: str, redis: Any, topic: str
) -> None:
    # The entry of a failed job is trimmed before its retry: the retry finds it gone and
    # acknowledges it. Its record used to stay "failed" for good (no expiry, no
    # announcement), and a waiter without a timeout waited for ever.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 1})

        async def handler(m: Message) -> None:
            await redis.xtrim(TopicKeys(topic).stream(0), maxlen=0)
            raise RuntimeError("fails")

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            finished = await job.wait(timeout=10)
        await consumer.close()
    assert finished.status is JobStatus.DEAD and finished.error_type == "EntryTrimmed"
    key = TopicKeys(topic).job(0, job.id)
    assert 0 < await redis.ttl(key) <= 3600


async def test_a_handle_from_submit_decodes_results_with_the_producers_result_deserializer(
    redis_url: str, topic: str
) -> None:
    # A consumer writes results with its own serializer. The handles submit returns read
    # them with orjson whatever the producer was given, and raised SerializationError.
    def serialize(value: Any) -> bytes:
        return b"~" + repr(value).encode()

    def deserialize(data: bytes | str) -> Any:
        text = data.decode() if isinstance(data, bytes) else data
        return ("decoded", text.removeprefix("~"))

    async with Producer(topic, redis_url=redis_url, result_deserializer=deserialize) as producer:
        job = await producer.submit({"n": 1})
        delayed = await producer.submit({"n": 2}, delay=0.01)
        consumer = Consumer(topic, redis_url=redis_url, serializer=serialize, **FAST)

        async def handler(m: Message) -> int:
            return int(m.payload["n"]) * 10

        async with Running(consumer, handler):
            assert await job.result(timeout=10) == ("decoded", "10")
            assert await delayed.result(timeout=10) == ("decoded", "20")
        await consumer.close()
    with pytest.raises(ConfigurationError, match="result_deserializer must be callable"):
        Producer(topic, redis_url=redis_url, result_deserializer="orjson")  # type: ignore[arg-type]


async def test_the_index_entries_of_expired_job_records_are_swept(
    redis_url: str, redis: Any, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With jobs flowing and no listing reading that far, the jobs index kept an entry for
    # every job ever run: only a listing dropped those whose records had expired.
    monkeypatch.setattr(_delivery, "SWEEP_SECONDS", 0)  # a sweep every 10 heartbeats
    index = TopicKeys(topic).jobs(0)
    async with Producer(topic, redis_url=redis_url, init_partitions=1, result_ttl=1) as producer:
        for n in range(150):
            await producer.submit({"n": n})
        live = await producer.submit({"n": -1}, delay=3600)  # scheduled: its record stays
        consumer = Consumer(topic, redis_url=redis_url, **FAST)

        async def handler(m: Message) -> int:
            return 1

        async with Running(consumer, handler):
            await eventually(lambda: consumer.stats.handled == 150)
            await eventually(lambda: _members(redis, index, [live.id]), timeout=15)
        await consumer.close()


async def _members(redis: Any, key: str, expected: list[str]) -> bool:
    return [m.decode() for m in await redis.zrange(key, 0, -1)] == expected
