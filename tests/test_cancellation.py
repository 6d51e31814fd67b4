"""Cancelling jobs (queued, waiting for a retry, running, finished) and job progress.

The running job is cancelled both in a consumer of this process and in a real
``redisaq worker`` subprocess, from the CLI (another process). Every test
runs on a Redis Cluster too (``--cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redisaq_core import (
    ConfigurationError,
    Consumer,
    InvalidProgressError,
    JobCancelledError,
    JobFinishedError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    NotConnectedError,
    Producer,
    Received,
    ResultStore,
)
from redisaq_core._cancellation import JOBS_CANCELLED, RunningJobs, _CancelNotices
from redisaq_core._retention import server_features
from redisaq_core._scripts import JOBS_STARTED
from redisaq_core._settlement import Settler
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, died_with, eventually, redisaq
from tests.proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "poll_interval": 0.1, "retry_backoff": 0.01}


async def acked(redis: Any, topic: str, partition: int = 0, group: str = "default") -> bool:
    """Whether every entry of a partition delivered to ``group`` was acknowledged."""
    summary = await redis.xpending(TopicKeys(topic).stream(partition), group)
    return int(summary["pending"]) == 0


async def dead_letters(redis: Any, topic: str, partition: int = 0) -> int:
    return int(await redis.xlen(TopicKeys(topic).dead_letters(partition)))


async def ttl(redis: Any, job_id: str) -> int:
    topic, _, rest = job_id.partition("/")
    return int(await redis.ttl(TopicKeys(topic).job(int(rest.split("/")[0]), job_id)))


async def expiring(redis: Any, job_id: str) -> bool:
    return await ttl(redis, job_id) > 0


async def test_a_queued_job_cancelled_before_a_consumer_runs_is_skipped(
    redis_url: str, redis: Any, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, result_ttl=600) as producer:
        jobs = [await producer.submit({"n": n}) for n in range(3)]
        assert await jobs[1].cancel() is JobStatus.CANCELLED
        record = await jobs[1].record()
        assert record is not None and record.status is JobStatus.CANCELLED
        assert record.cancelled_at is not None and record.finished
        assert await ttl(redis, jobs[1].id) == -1  # kept until a consumer settles the entry
        # Waiting on it returns at once; its result is an error that says why.
        assert (await jobs[1].wait(timeout=5)).status is JobStatus.CANCELLED
        with pytest.raises(JobCancelledError, match="was cancelled"):
            await jobs[1].result(timeout=5)

        seen: list[int] = []

        async def handler(m: Received) -> int:
            seen.append(m.payload["n"])
            return int(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            assert await jobs[0].result(timeout=10) == 0
            assert await jobs[2].result(timeout=10) == 2
            await eventually(lambda: acked(redis, topic), message="all acknowledged")
            await eventually(lambda: expiring(redis, jobs[1].id), message="the record expires")
        assert seen == [0, 2]
        record = await jobs[1].record()
        assert record is not None and record.status is JobStatus.CANCELLED
        assert record.attempts == 0 and record.active_at is None and record.worker is None
        assert 0 < await ttl(redis, jobs[1].id) <= 600
        assert await dead_letters(redis, topic) == 0


async def test_cancelled_entries_are_deleted_with_delete_acked(
    redis_url: str, redis: Any, topic: str
) -> None:
    if not (await server_features(redis)).acked_trim:
        pytest.skip("delete-acked needs Redis 8.2 or newer")
    stream = TopicKeys(topic).stream(0)
    async with Producer(topic, redis_url=redis_url, trim="delete-acked") as producer:
        jobs = [await producer.submit({"n": n}) for n in range(3)]
        await jobs[1].cancel()

        async def handler(m: Received) -> int:
            return int(m.payload["n"])

        async with Running(Consumer(topic, redis_url=redis_url, **FAST), handler):
            assert await jobs[2].result(timeout=10) == 2

            async def emptied() -> bool:
                return int(await redis.xlen(stream)) == 0

            await eventually(emptied, message="every entry deleted, the cancelled one too")
        assert await jobs[1].status() is JobStatus.CANCELLED


async def test_a_batch_handler_never_gets_a_cancelled_job(
    redis_url: str, redis: Any, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        jobs = [await producer.submit({"n": n}) for n in range(4)]
        await jobs[0].cancel()
        await jobs[3].cancel()
        batches: list[list[int]] = []

        async def handler(batch: list[Received]) -> list[int]:
            batches.append([m.payload["n"] for m in batch])
            return [m.payload["n"] for m in batch]

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler, batch=True):
            assert [await j.result(timeout=10) for j in jobs[1:3]] == [1, 2]
            await eventually(lambda: acked(redis, topic), message="all acknowledged")
        assert sorted(n for b in batches for n in b) == [1, 2]
        statuses = [await j.status() for j in jobs]
        assert statuses == [JobStatus.CANCELLED, JobStatus.COMPLETED, JobStatus.COMPLETED,
                            JobStatus.CANCELLED]  # fmt: skip


@pytest.mark.parametrize("notice", ["published", "lost"])
async def test_a_job_cancelled_while_it_waits_its_turn_is_not_run(
    redis_url: str, redis: Any, topic: str, notice: str
) -> None:
    # J1 and J2 are read together and marked active; J1's handler runs first. J2, cancelled
    # meanwhile (CANCELLING), never runs once its worker learns of it, from the notice or,
    # when that is lost, from the heartbeat's read of its status: J1 is released two
    # heartbeats after. Before, J2's handler ran and the job ended "completed".
    release, ran = asyncio.Event(), []

    async def handler(m: Received) -> int:
        ran.append(m.payload["n"])
        if m.payload["n"] == 1:
            await release.wait()
        return int(m.payload["n"])

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        j1, j2 = [await producer.submit({"n": n}) for n in (1, 2)]
        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            await eventually(lambda: ran == [1], message="J1 runs")
            members = TopicKeys(topic).members(consumer.group)
            cancelled_at = await redis.zscore(members, consumer.name) or 0
            if notice == "lost":
                key = TopicKeys(topic).job(0, j2.id)
                await redis.hset(key, "status", "cancelling")  # as cancel() does, unannounced
            else:
                assert await j2.cancel() is JobStatus.CANCELLING
            await eventually(
                lambda: _beaten_since(redis, members, consumer.name, cancelled_at + 300),
                message="two heartbeats after the cancellation",
            )
            release.set()
            assert (await j1.wait(timeout=10)).status is JobStatus.COMPLETED
            assert (await j2.wait(timeout=10)).status is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), message="all acknowledged")
    assert ran == [1]


async def test_a_job_cancelled_as_it_is_marked_active_is_not_run(
    redis_url: str, redis: Any, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # J is cancelled (CANCELLING) just after its worker marked it active, and the notice
    # reaches the worker before that round trip's reply is taken. The notice used to be
    # dropped (J was neither running nor waiting yet): J's handler ran and J ended completed.
    started, notified = Settler.started, []
    notice = RunningJobs._notified
    monkeypatch.setattr(
        RunningJobs, "_notified", lambda self, job: (notified.append(job), notice(self, job))
    )
    ran: list[Any] = []

    async def handler(m: Received) -> None:
        ran.append(m.payload)

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        first = await producer.submit("first")  # its handler call subscribes to the notices
        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            assert (await first.wait(timeout=10)).status is JobStatus.COMPLETED
            job = await producer.submit("cancelled")

            async def cancelled_meanwhile(self: Settler, r: Any, messages: Any) -> Any:
                out = await started(self, r, messages)
                if any(m.job_id == job.id for m in messages):
                    assert await job.cancel() is JobStatus.CANCELLING
                    await eventually(lambda: job.id in notified, message="the notice came")
                return out

            monkeypatch.setattr(Settler, "started", cancelled_meanwhile)
            assert (await job.wait(timeout=10)).status is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), message="all acknowledged")
    assert ran == ["first"]


async def _beaten_since(redis: Any, members: str, name: str, since: float) -> bool:
    return (await redis.zscore(members, name) or 0) > since


async def test_a_running_job_is_cancelled_and_not_retried(
    redis_url: str, redis: Any, topic: str
) -> None:
    started = asyncio.Event()
    outcomes: list[str] = []

    async def handler(m: Received) -> str:
        if m.payload == "slow":
            assert await m.progress(0.25) is True
            assert await m.progress({"step": 2, "of": 4}) is True
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                outcomes.append("cancelled")
                raise
        outcomes.append(str(m.payload))
        return str(m.payload)

    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit("slow")
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=3, **FAST)
        async with Running(consumer, handler):
            await asyncio.wait_for(started.wait(), 10)
            record = await job.record()
            assert record is not None and record.progress == {"step": 2, "of": 4}
            async with ResultStore(redis_url=redis_url) as other:  # another client
                assert await other.cancel(job.id) is JobStatus.CANCELLING
                assert await other.cancel(job.id) is JobStatus.CANCELLING  # asked again: fine
                final = await other.wait(job.id, timeout=10)
            assert final.status is JobStatus.CANCELLED and final.attempts == 1
            assert final.cancelling_at is not None and final.cancelled_at is not None
            await eventually(lambda: acked(redis, topic), message="acknowledged")
            # The consumer goes on with the next job.
            assert await (await producer.submit("next")).result(timeout=10) == "next"
        assert outcomes == ["cancelled", "next"]
        assert await dead_letters(redis, topic) == 0
        assert consumer.stats.failed == 0
        record = await job.record()
        assert record is not None and record.status is JobStatus.CANCELLED
        assert record.attempts == 1 and record.error is None


async def test_the_worker_is_told_at_once_and_the_heartbeat_finds_a_lost_notice(
    redis_url: str, redis: Any, topic: str
) -> None:
    running = asyncio.Event()

    async def handler(m: Received) -> None:
        running.set()
        await asyncio.sleep(60)

    async with Producer(topic, redis_url=redis_url) as producer:
        # Heartbeats 5 s apart: a cancellation within 2 s came through the cancel channel.
        slow_beats = {"heartbeat_interval": 5.0, "poll_interval": 0.1}
        async with Running(Consumer(topic, redis_url=redis_url, **slow_beats), handler):
            job = await producer.submit(1)
            await asyncio.wait_for(running.wait(), 10)
            assert await job.cancel() is JobStatus.CANCELLING
            assert (await job.wait(timeout=2)).status is JobStatus.CANCELLED

        # A notice lost (here: none sent, the state written as the cancel script would):
        # the next heartbeat reads the record and cancels the handler.
        running.clear()
        async with Running(Consumer(topic, redis_url=redis_url, **FAST), handler):
            job = await producer.submit(2)
            await asyncio.wait_for(running.wait(), 10)
            await redis.hset(TopicKeys(topic).job(0, job.id), "status", "cancelling")
            assert (await job.wait(timeout=10)).status is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), message="acknowledged")


async def test_a_cancellation_sent_before_the_worker_listens_is_not_left_to_the_heartbeat(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel channel is subscribed to when the first job starts; a cancellation
    published before that took is read back from the records right after it."""
    cancelled = asyncio.Event()
    subscribed = _CancelNotices.subscribed

    async def late(self: _CancelNotices, *channels: str) -> None:
        await cancelled.wait()  # the listener comes up only after the notice went out
        await subscribed(self, *channels)

    monkeypatch.setattr(_CancelNotices, "subscribed", late)
    started = asyncio.Event()

    async def handler(m: Received) -> None:
        started.set()
        await asyncio.sleep(60)

    slow_beats = {"heartbeat_interval": 5.0, "poll_interval": 0.1}
    consumer = Consumer(topic, redis_url=redis_url, **slow_beats)
    async with Producer(topic, redis_url=redis_url) as producer, Running(consumer, handler):
        job = await producer.submit(1)
        await asyncio.wait_for(started.wait(), 10)
        assert await job.cancel() is JobStatus.CANCELLING  # published to nobody
        cancelled.set()
        assert (await job.wait(timeout=3)).status is JobStatus.CANCELLED


async def test_a_handler_that_swallows_the_cancellation_still_ends_cancelled(
    redis_url: str, redis: Any, topic: str
) -> None:
    running = asyncio.Event()
    calls: list[str] = []

    async def handler(m: Received) -> str:
        calls.append(m.payload)
        if m.payload == "slow":
            await asyncio.sleep(1)  # longer than its timeout: the timer must still work
            return "too late"
        running.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if m.payload == "swallow":
                return "swallowed"
            raise RuntimeError("cancelled, reported as an error") from None
        return "never"

    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, handler):
            for payload in ("swallow", "wrap"):
                running.clear()
                job = await producer.submit(payload)
                await asyncio.wait_for(running.wait(), 10)
                assert await job.cancel() is JobStatus.CANCELLING
                assert (await job.wait(timeout=10)).status is JobStatus.CANCELLED
            # Nothing of those cancellations is left on the consumer's task.
            slow = await producer.submit("slow", timeout=0.05)
            assert (await slow.wait(timeout=10)).status is JobStatus.DEAD
            await eventually(lambda: acked(redis, topic), message="acknowledged")
        assert calls == ["swallow", "wrap", "slow"]
        assert await dead_letters(redis, topic) == 1  # only the slow one


async def test_a_record_another_client_broke_does_not_stop_the_check(
    redis: Any, topic: str
) -> None:
    keys = TopicKeys(topic)
    broken, asked = (f"{topic}/0/{uuid.uuid4().hex}" for _ in range(2))
    await redis.set(keys.job(0, broken), "not a hash")
    await redis.hset(keys.job(0, asked), mapping={"status": "cancelling"})
    watcher = RunningJobs(keys)

    async def run(job_id: str) -> None:
        watcher.enter(Received(topic, None, partition=0, job_id=job_id))
        await asyncio.sleep(60)

    tasks = {job_id: asyncio.create_task(run(job_id)) for job_id in (broken, asked)}
    try:
        await eventually(lambda: len(watcher._running) == 2, message="both running")
        await watcher.check(redis)
        await asyncio.wait([tasks[asked]], timeout=5)
        assert tasks[asked].cancelled()
        assert not tasks[broken].done()
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_a_job_waiting_for_its_retry_is_cancelled(
    redis_url: str, redis: Any, topic: str
) -> None:
    calls: list[int] = []

    async def handler(m: Received) -> None:
        calls.append(m.deliveries)
        raise RuntimeError("try again later")

    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit({"n": 1})
        options = {**FAST, "retry_backoff": 1.0, "retry_backoff_max": 1.0}
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=5, **options)
        async with Running(consumer, handler):

            async def failed() -> bool:
                return await job.status() is JobStatus.FAILED

            await eventually(failed, message="first attempt failed")
            assert await job.cancel() is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), timeout=15, message="settled")
        assert calls == [1]
        assert await dead_letters(redis, topic) == 0
        assert await job.status() is JobStatus.CANCELLED


async def test_finished_and_unknown_jobs_say_so_and_change_nothing(
    redis_url: str, redis: Any, topic: str
) -> None:
    async def handler(m: Received) -> int:
        return 1

    async with Producer(topic, redis_url=redis_url) as producer:
        done = await producer.submit({"n": 1})
        cancelled = await producer.submit({"n": 2})
        await cancelled.cancel()
        async with Running(Consumer(topic, redis_url=redis_url, **FAST), handler):
            assert await done.result(timeout=10) == 1
        before = await done.record()
        assert before is not None
        with pytest.raises(JobFinishedError, match="already completed") as caught:
            await done.cancel()
        assert caught.value.status == "completed" and caught.value.job_id == done.id
        assert await done.record() == before
        with pytest.raises(JobFinishedError, match="already cancelled"):
            await cancelled.cancel()

    async with ResultStore(redis_url=redis_url) as store:
        unknown = JobHandle(f"{topic}/0/{uuid.uuid4().hex}", store)
        with pytest.raises(JobNotFoundError, match="has no record"):
            await unknown.cancel()
        assert await unknown.record() is None
        with pytest.raises(ConfigurationError, match="not a job id"):
            await store.cancel("nope")
        for read in (store.get, store.status, store.wait, store.cancel):  # a digit, not ASCII
            with pytest.raises(ConfigurationError, match="not a job id"):
                await read(f"{topic}/\u00b2/abc")


async def test_progress_values_are_checked_and_non_jobs_are_a_no_op(
    redis_url: str, topic: str
) -> None:
    errors: list[str] = []
    results: list[bool] = []

    async def handler(m: Received) -> None:
        for bad in (math.nan, math.inf, {"x": math.nan}, {1, 2}, True, "half", {"x": object()},
                    {"big": "x" * 5000}):  # fmt: skip
            try:
                await m.progress(bad)
            except InvalidProgressError as exc:
                errors.append(str(exc))
        results.append(await m.progress(3))

    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"plain": True})
        job = await producer.submit({"job": True})
        async with Running(Consumer(topic, redis_url=redis_url, **FAST), handler):
            await job.wait(timeout=10)
            await eventually(lambda: len(results) == 2, message="both handled")
        record = await job.record()
    assert len(errors) == 16
    assert any("finite number" in e for e in errors)
    assert any("at most 4096" in e for e in errors)
    assert any("got set" in e for e in errors) and any("got bool" in e for e in errors)
    assert sorted(results) == [False, True]  # the plain message: nothing to record
    assert record is not None and record.progress == 3
    outside = Received(topic, {"x": 1}, job_id=job.id)
    with pytest.raises(NotConnectedError, match="inside a consumer's handler"):
        await outside.progress(1)


@pytest.mark.parametrize("marked", ["active", "queued"])
async def test_a_cancelled_job_out_of_runs_is_settled_cancelled_not_dead(
    redis_url: str, redis: Any, topic: str, marked: str
) -> None:
    # Its worker died (having marked it active, or before that); the job is cancelled, and
    # the next member finds it out of runs (max_deliveries=1). It settles it cancelled, as
    # it would a job it still had runs for. Before, it dead-lettered it and wrote "dead"
    # over the final "cancelled" that cancel() had already returned.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 0})
        await died_with(redis, topic)
        await redis.hset(TopicKeys(topic).job(0, job.id), "status", marked)
        expected = JobStatus.CANCELLING if marked == "active" else JobStatus.CANCELLED
        assert await job.cancel() is expected
        ran: list[Any] = []
        consumer = Consumer(topic, redis_url=redis_url, max_deliveries=1, **FAST)
        async with Running(consumer, ran.append):
            await eventually(lambda: acked(redis, topic), message="settled")
        record = await job.record()
    assert record is not None and record.status is JobStatus.CANCELLED
    assert ran == [] and await dead_letters(redis, topic) == 0


async def test_a_record_another_client_replaced_reads_as_none_everywhere(
    redis_url: str, redis: Any, topic: str
) -> None:
    # Before, get(), status(), wait() and cancel() raised a bare WRONGTYPE (the gateway
    # answered 503 "Redis unavailable", the CLI printed a traceback).
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        job = await producer.submit({"n": 0})
        key = TopicKeys(topic).job(0, job.id)
        await redis.delete(key)
        await redis.lpush(key, "another client's")
        assert await job.record() is None and await job.status() is None
        with pytest.raises(JobNotFoundError, match="has no record"):
            await job.cancel()
        with pytest.raises(JobNotFoundError, match="has no record"):
            await job.wait(timeout=5)


async def test_progress_on_a_record_another_client_replaced_is_a_no_op(
    redis_url: str, redis: Any, topic: str
) -> None:
    # Before, progress() raised WRONGTYPE, and the job was dead-lettered.
    results: list[bool] = []

    async def handler(m: Received) -> None:
        assert m.job_id is not None
        key = TopicKeys(topic).job(m.partition, m.job_id)
        await redis.delete(key)
        await redis.set(key, "another client's")
        results.append(await m.progress(50))

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.submit({"n": 0})
        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handler):
            await eventually(lambda: consumer.stats.handled == 1, message="handled")
            await eventually(lambda: acked(redis, topic), message="settled")
    assert results == [False]
    assert consumer.stats.handled == 1 and consumer.stats.dead_lettered == 0


async def test_progress_from_a_handler_whose_lease_moved_on_writes_nothing(
    redis: Any, redis_url: str, topic: str
) -> None:
    # A handler that runs on after its partition's lease went to another member reports to
    # a job that is that member's now. Before, its progress was stored and announced.
    results: list[bool] = []
    keys = TopicKeys(topic)

    async def handler(m: Received) -> None:
        lease = keys.lease(m.partition, "default")
        token = await redis.get(lease)
        await redis.set(lease, "another member")
        results.append(await m.progress(1))
        await redis.set(lease, token)  # back before the next heartbeat looks
        results.append(await m.progress(2))

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        handle = await producer.submit({"n": 0})
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=5, poll_interval=0.1)
        async with Running(consumer, handler):
            await eventually(lambda: consumer.stats.handled == 1, message="handled")
    assert results == [False, True]
    record = await redis.hget(keys.job(0, handle.id), "progress")
    assert record == b"2"


# ---- a real worker process, cancelled from the CLI --------------------------------------

HANDLER = """
import asyncio, os

_FILE = open(os.environ["RECORD_FILE"], "a", buffering=1)


async def handle(m):
    _FILE.write(f"start {m.payload} {m.deliveries}\\n")
    if m.payload == "slow":
        await m.progress({"step": 1})
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            _FILE.write(f"cancelled {m.payload}\\n")
            raise
    return m.payload
"""


@pytest.fixture
def worker_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "cancel_handler.py").write_text(HANDLER)
    (tmp_path / "records.txt").touch()
    yield tmp_path


def start_worker(redis_url: str, topic: str, worker_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RECORD_FILE=str(worker_dir / "records.txt"),
               PYTHONPATH=os.pathsep.join([str(worker_dir), str(ROOT)]))  # fmt: skip
    args = [sys.executable, "-m", "redisaq_core.cli.main", "-v", "worker", "cancel_handler:handle",
            "--redis-url", redis_url, "--topic", topic, "--heartbeat-interval", "0.3",
            "--heartbeat-ttl", "1.2", "--poll-interval", "0.2", "--max-deliveries", "3",
            "--retry-backoff", "0.05", "--shutdown-timeout", "5"]  # fmt: skip
    with open(worker_dir / "stderr.log", "ab") as log:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)


async def test_a_job_whose_worker_was_killed_is_settled_cancelled_by_the_next(
    redis_url: str, redis: Any, topic: str, worker_dir: Path
) -> None:
    records = worker_dir / "records.txt"
    first = start_worker(redis_url, topic, worker_dir)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            job = await producer.submit("slow")
            await eventually(lambda: "start slow" in records.read_text(), timeout=30,
                             message="the first worker started the job")  # fmt: skip
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            # Nobody runs it now: the record says "active" until someone settles it.
            assert await job.cancel() is JobStatus.CANCELLING
            second = start_worker(redis_url, topic, worker_dir)
            final = await job.wait(timeout=30)
            assert final.status is JobStatus.CANCELLED and final.attempts == 1
            await eventually(lambda: acked(redis, topic), message="acknowledged")
            assert records.read_text().splitlines() == ["start slow 1"]  # not run again
            assert await dead_letters(redis, topic) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


@pytest.mark.alone
async def test_a_running_job_is_cancelled_from_another_process(
    redis_url: str, redis: Any, topic: str, worker_dir: Path
) -> None:
    records = worker_dir / "records.txt"
    worker = start_worker(redis_url, topic, worker_dir)
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            job = await producer.submit("slow")
            await eventually(lambda: "start slow" in records.read_text(), timeout=30,
                             message="the worker started the job")  # fmt: skip

            async def progressed() -> bool:
                record = await job.record()
                return record is not None and record.progress == {"step": 1}

            await eventually(progressed, message="progress recorded")
            result = redisaq("--redis-url", redis_url, "jobs", "cancel", job.id)
            assert result.returncode == 0, result.stderr
            assert result.stdout.split() == [job.id, "cancelling"]
            final = await job.wait(timeout=15)
            assert final.status is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), message="acknowledged")
            # The worker goes on; the cancelled job was never run again.
            assert await (await producer.submit("after")).result(timeout=15) == "after"
            lines = records.read_text().splitlines()
            assert lines == ["start slow 1", "cancelled slow", "start after 1"]
            assert await dead_letters(redis, topic) == 0

            again = redisaq("--redis-url", redis_url, "jobs", "cancel", job.id)
            assert again.returncode == 1 and "already cancelled" in again.stderr
            unknown = redisaq("--redis-url", redis_url, "jobs", "cancel",
                              f"{topic}/0/{uuid.uuid4().hex}", "--format", "json")  # fmt: skip
            assert unknown.returncode == 1 and "has no record" in unknown.stderr
            assert unknown.stdout == ""
            malformed = redisaq("--redis-url", redis_url, "jobs", "cancel", "nope")
            assert malformed.returncode == 2 and "not a job id" in malformed.stderr
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert worker.returncode == 0, (worker_dir / "stderr.log").read_text()
    # With no worker running, a queued job is cancelled at once (JSON output).
    async with Producer(topic, redis_url=redis_url) as producer:
        queued = await producer.submit("later")
    as_json = redisaq("--redis-url", redis_url, "jobs", "cancel", queued.id, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert '"status": "cancelled"' in as_json.stdout


# ---- a delayed job cancelled while it waits ---------------------------------------------


@pytest.mark.parametrize("via", ["handle", "cli"])
async def test_a_delayed_job_cancelled_while_scheduled_is_moved_but_never_run(
    redis_url: str, redis: Any, topic: str, via: str
) -> None:
    seen: list[str] = []

    async def handler(m: Received) -> str:
        seen.append(m.payload)
        return str(m.payload)

    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with contextlib.AsyncExitStack() as stack:
            if via == "handle":  # the owner is there, waiting for the entry to fall due
                await stack.enter_async_context(Running(consumer, handler))
                await eventually(lambda: consumer.assigned_partitions, message="partition owned")
                job = await producer.submit("delayed", delay=0.5)
                assert await job.status() is JobStatus.SCHEDULED
                assert await job.cancel() is JobStatus.CANCELLED
            else:  # no owner yet, so the entry stays scheduled however long the CLI takes
                job = await producer.submit("delayed", delay=0.2)
                assert await job.status() is JobStatus.SCHEDULED
                result = await asyncio.to_thread(
                    redisaq, "--redis-url", redis_url, "jobs", "cancel", job.id
                )
                assert result.returncode == 0, result.stderr
                assert result.stdout.split() == [job.id, "cancelled"]
                await stack.enter_async_context(Running(consumer, handler))
            assert await job.status() is JobStatus.CANCELLED
            later = await producer.submit("later", delay=0.3)  # due after the cancelled one
            assert await later.result(timeout=15) == "later"

            async def both_moved() -> bool:
                waiting = int(await redis.zcard(keys.delayed(0, 0)))
                return waiting == 0 and int(await redis.xlen(keys.stream(0))) == 2

            await eventually(both_moved, message="the cancelled entry moved into the stream too")
            await eventually(lambda: acked(redis, topic), message="both acknowledged")
        assert seen == ["later"]
        record = await job.record()
        assert record is not None and record.status is JobStatus.CANCELLED
        assert record.attempts == 0 and record.active_at is None and record.worker is None
        assert await dead_letters(redis, topic) == 0


async def test_a_final_status_stays_when_another_group_settles_the_job_later(
    redis_url: str, redis: Any, topic: str
) -> None:
    # Two groups run the job. Group "a" is cancelled and settles it "cancelled", final: its
    # waiters were told so. Group "b"'s batch handler (never interrupted) returns afterwards.
    # Before, its completion wrote "completed" with its result over the final status.
    in_a, in_b, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle_a(message: Received) -> str:
        in_a.set()
        await asyncio.sleep(60)
        return "a"

    async def handle_b(messages: list[Received]) -> list[str]:
        in_b.set()
        await release.wait()
        return ["b" for _ in messages]

    async with Producer(topic, redis_url=redis_url) as producer:
        a = Consumer(topic, group_name="a", redis_url=redis_url, **FAST)
        b = Consumer(topic, group_name="b", redis_url=redis_url, **FAST)
        async with Running(a, handle_a), Running(b, handle_b, batch=True):
            job = await producer.submit({"n": 1})
            await asyncio.wait_for(asyncio.gather(in_a.wait(), in_b.wait()), 10)
            assert await job.cancel() is JobStatus.CANCELLING
            assert (await job.wait(timeout=10)).status is JobStatus.CANCELLED
            release.set()
            await eventually(lambda: acked(redis, topic, group="b"), message="b acknowledged")
        record = await job.record()
        assert record is not None and record.status is JobStatus.CANCELLED, record
        assert record.result is None


async def test_a_job_completed_by_another_group_stays_completed_when_cancelled_late(
    redis: Any, topic: str
) -> None:
    # The mirror case, at the script: a cancelled run settled after another group's worker
    # completed the job leaves it completed (acknowledging its entry all the same).
    keys = TopicKeys(topic)
    job_id = f"{topic}/0/j1"
    record = keys.job(0, job_id)
    await redis.hset(record, mapping={"status": "completed", "result": "r", "result_ttl": 60})
    entry = await redis.xadd(keys.stream(0), {"j": job_id})
    await redis.xgroup_create(keys.stream(0), "g", id="0")
    await redis.xreadgroup("g", "me", {keys.stream(0): ">"})
    await redis.set(keys.lease(0, "g"), "tok")
    call = [keys.stream(0), keys.lease(0, "g"), keys.jobs(0), record]
    assert await JOBS_CANCELLED(redis, call, ["g", "tok", keys.job_channel, entry, job_id]) == 1
    assert await redis.hget(record, "status") == b"completed"
    assert await acked(redis, topic, group="g")


@pytest.mark.single_node
async def test_a_cancelled_job_is_not_run_when_marking_its_batch_active_fails(
    redis_url: str, redis: Any, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The script that marks a partition's jobs active also names those cancelled. When it
    # failed (here Redis is out of memory: the write for the job before it is refused), its
    # error was taken for "none cancelled" and every handler of the batch ran, the
    # cancelled job's too. Now the batch is given back and read again once Redis answers.
    gate = asyncio.Event()
    seen: list[Any] = []

    async def handler(m: Received) -> None:
        seen.append(m.job_id or m.payload)
        if not m.job_id:
            await gate.wait()

    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue("first")
        consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
        async with Running(consumer, handler):
            await eventually(lambda: seen == ["first"], message="the first message runs")
            runs, stays = await producer.submit(1), await producer.submit(2)
            assert await stays.cancel() is JobStatus.CANCELLED
            policy = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 1)
            try:
                gate.set()
                await eventually(
                    lambda: len(seen) > 1 or JOBS_STARTED.sha in caplog.text,
                    message="the batch of both jobs was read",
                )
            finally:
                await redis.config_set("maxmemory", 0)
                await redis.config_set("maxmemory-policy", policy)
            assert (await runs.wait(timeout=10)).status is JobStatus.COMPLETED
            assert (await stays.wait(timeout=10)).status is JobStatus.CANCELLED
            await eventually(lambda: acked(redis, topic), message="all acknowledged")
    assert seen == ["first", runs.id]


@pytest.mark.single_node
async def test_a_failure_reported_after_the_lease_moved_leaves_the_running_job_cancellable(
    redis_url: str, topic: str
) -> None:
    # A member cut off past its lease while its handler runs a job; the new owner claims
    # the job and runs it. Then the cut-off member's handler fails, and its "failed" reaches
    # Redis. Before, that write had no fence: it went over the new owner's "active", so a
    # cancel took the running job for one not started and marked it cancelled at once. The
    # running handler was never told, ran to its end, and its result was dropped.
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    cut_in, cut_fails, owner_in, owner_stopped = (asyncio.Event() for _ in range(4))

    async def cut_handler(m: Received) -> None:
        cut_in.set()
        await cut_fails.wait()
        raise RuntimeError("failed after the lease moved")

    async def owner_handler(m: Received) -> str:
        owner_in.set()
        try:
            await asyncio.Event().wait()  # runs until cancelled
        except asyncio.CancelledError:
            owner_stopped.set()
            raise
        return "ran to the end"

    fast = {"heartbeat_interval": 0.2, "heartbeat_ttl": 1.0, "poll_interval": 0.1}
    async with FaultProxy(port) as proxy, Producer(topic, redis_url=redis_url) as producer:
        cut = Consumer(topic, redis_url=proxy.url, consumer_name="cut", **fast)
        owner = Consumer(topic, redis_url=redis_url, consumer_name="owner", **fast)
        cut_run = Running(cut, cut_handler)
        await cut_run.__aenter__()
        cut_stopped = False
        try:
            await eventually(lambda: cut.assigned_partitions == [0], message="cut holds it")
            handle = await producer.submit({"n": 1})
            await eventually(cut_in.is_set, message="the cut-off member runs the job")
            proxy.blackhole = True
            async with Running(owner, owner_handler):
                await eventually(owner_in.is_set, timeout=10, message="the new owner runs it")
                cut_fails.set()
                await eventually(lambda: cut.stats.failed == 1, message="the late failure")
                proxy.blackhole = False
                cut_stopped = True
                await cut_run.__aexit__(None, None, None)  # its settlement went out and back
                assert await handle.cancel() is JobStatus.CANCELLING
                await eventually(owner_stopped.is_set, timeout=5, message="handler cancelled")
                record = await handle.wait(timeout=10)
                assert record.status is JobStatus.CANCELLED
        finally:
            proxy.blackhole = False
            if not cut_stopped:
                await cut_run.__aexit__(None, None, None)
        await owner.close()
