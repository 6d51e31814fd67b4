"""ResultStore and JobHandle against a real Redis, with records written as the consumer does."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    JobFailedError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    JobTimeoutError,
    NotConnectedError,
    ResultStore,
)
from redisaq_core._scripts import JOB_UPDATE, JOBS_STARTED
from redisaq_core.connection import is_cluster
from redisaq_core.keys import TopicKeys, job_id, parse_job_id
from tests import job_records as jr
from tests.helpers import eventually


@pytest.fixture
async def store(redis: Redis) -> Any:
    async with ResultStore(redis=redis) as s:
        yield s


def _waiting(store: ResultStore) -> int:
    assert store._listener is not None
    return store._listener.waiting


async def test_record_through_its_life(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 2)
    jid = await jr.submit(redis, topic, 1, priority=2, payload={"n": 1})
    record = await store.get(jid)
    assert record is not None
    assert (record.status, record.topic, record.partition, record.priority) == (
        JobStatus.QUEUED, topic, 1, 2,
    )  # fmt: skip
    assert record.attempts == 0 and record.msg_id and record.queued_at
    assert record.result_ttl == 3600 and not record.finished and not record.has_result

    await jr.activate(redis, jid, worker="c1")
    await jr.fail(redis, jid, "bad input", "ValueError")
    assert await store.status(jid) is JobStatus.FAILED
    await jr.activate(redis, jid, worker="c2")
    await jr.complete(redis, jid, {"answer": 42}, worker="c2")
    record = await store.get(jid)
    assert record is not None and record.status is JobStatus.COMPLETED and record.finished
    assert record.attempts == 2 and record.worker == "c2"
    assert record.error == "bad input" and record.error_type == "ValueError"
    assert record.result == {"answer": 42} and record.has_result
    assert set(record.timestamps) == {"queued", "active", "failed", "completed"}
    assert record.queued_at <= record.active_at <= record.completed_at  # type: ignore[operator]
    data = record.as_dict()
    assert data["status"] == "completed" and data["result"] == {"answer": 42}
    assert orjson.loads(orjson.dumps(data)) == data
    assert 0 < await redis.ttl(TopicKeys(topic).job(1, jid)) <= 3600


async def test_text_results_reach_the_deserializer_as_str(redis: Redis, topic: str) -> None:
    seen: list[Any] = []

    def deserializer(data: bytes | str) -> Any:
        seen.append(data)
        return orjson.loads(data)

    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    await jr.complete(redis, jid, ["x"], text=True)
    async with ResultStore(redis=redis, deserializer=deserializer) as s:
        assert await JobHandle(jid, s).result(timeout=5) == ["x"]
    assert seen == ['["x"]']


async def test_undecodable_result_is_reported(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    await jr.complete(redis, jid, 1)
    await redis.hset(TopicKeys(topic).job(0, jid), "result", b"\xff not json")
    async with ResultStore(redis=redis) as s:
        record = await s.get(jid)
        assert record is not None and record.result is None and record.result_error
        with pytest.raises(Exception, match="cannot deserialize"):
            await JobHandle(jid, s).result()


async def test_unknown_and_malformed_ids(store: ResultStore, topic: str) -> None:
    jid = job_id(topic, 0, "abc")
    assert await store.get(jid) is None
    assert await store.status(jid) is None
    with pytest.raises(JobNotFoundError):
        await store.wait(jid, timeout=5)
    for bad in ("nope", "t/x/1", "t/1/"):
        with pytest.raises(ConfigurationError):
            await store.get(bad)
        with pytest.raises(ConfigurationError):
            JobHandle(bad, store)
    with pytest.raises(ConfigurationError):
        await store.wait(jid, timeout=-1)


async def test_wait_returns_when_the_job_completes(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    handle = JobHandle(jid, store)
    assert repr(handle) == f"JobHandle({jid!r})" and handle.partition == 0
    waiter = asyncio.create_task(handle.result(timeout=10))
    await eventually(lambda: _waiting(store) == 1, timeout=5)
    await jr.activate(redis, jid)
    await jr.fail(redis, jid)  # not final: the waiter goes on waiting
    await jr.activate(redis, jid)
    assert not waiter.done()
    await jr.complete(redis, jid, {"ok": True})
    assert await asyncio.wait_for(waiter, 5) == {"ok": True}
    assert _waiting(store) == 0
    assert await handle.status() is JobStatus.COMPLETED
    record = await handle.record()
    assert record is not None and record.attempts == 2


async def test_finished_job_returns_at_once(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    await jr.complete(redis, jid, "done")
    started = time.monotonic()
    assert (await store.wait(jid, timeout=5)).result == "done"
    assert time.monotonic() - started < 2


async def test_dead_job_raises_from_result(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    handle = JobHandle(jid, store)
    waiter = asyncio.create_task(handle.result(timeout=10))
    await eventually(lambda: _waiting(store) == 1, timeout=5)
    await jr.activate(redis, jid)
    await jr.kill(redis, jid, "division by zero", "ZeroDivisionError")
    with pytest.raises(JobFailedError, match="division by zero") as info:
        await waiter
    assert info.value.job_id == jid and info.value.error_type == "ZeroDivisionError"
    record = await store.wait(jid, timeout=5)  # wait itself returns the dead record
    assert record.status is JobStatus.DEAD and record.dead_at is not None


async def test_wait_times_out(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    with pytest.raises(JobTimeoutError, match=jid):
        await store.wait(jid, timeout=0.2)
    with pytest.raises(TimeoutError):  # JobTimeoutError is a TimeoutError too
        await JobHandle(jid, store).result(timeout=0.1)
    assert _waiting(store) == 0


async def test_wait_many(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 3)
    ids = [await jr.submit(redis, topic, i % 3) for i in range(6)]
    assert await store.wait_many([]) == []
    with pytest.raises(JobTimeoutError, match="6 of 6 jobs"):
        await store.wait_many(ids, timeout=0.2)
    task = asyncio.create_task(store.wait_many(ids, timeout=10))
    await eventually(lambda: _waiting(store) == 6, timeout=5)
    for n, jid in enumerate(reversed(ids)):
        await jr.complete(redis, jid, n)
    records = await task
    assert [r.id for r in records] == ids
    assert [r.result for r in records] == [5, 4, 3, 2, 1, 0]
    missing = job_id(topic, 0, "gone")
    with pytest.raises(JobNotFoundError):
        await store.wait_many([ids[0], missing], timeout=5)
    assert _waiting(store) == 0


@pytest.mark.alone
@pytest.mark.single_node
async def test_ten_thousand_concurrent_waits_on_one_client(redis_url: str, topic: str) -> None:
    name = f"rs-{uuid.uuid4().hex[:8]}"
    client = Redis.from_url(redis_url, client_name=name)
    writer = Redis.from_url(redis_url)
    n = 10_000
    keys = TopicKeys(topic)
    try:
        await jr.make_topic(writer, topic, 4)
        ids = [job_id(topic, i % 4, uuid.uuid4().hex) for i in range(n)]
        now = await jr.server_ms(writer)
        pipe = writer.pipeline(transaction=False)
        for jid in ids:
            p = parse_job_id(jid)[1]
            pipe.hset(keys.job(p, jid), mapping={"status": "queued", "queued_at": now,
                                                 "updated_at": now, "result_ttl": 60})  # fmt: skip
            pipe.zadd(keys.jobs(p), {jid: now})
        await pipe.execute()
        async with ResultStore(redis=client) as store:
            tasks = [asyncio.create_task(JobHandle(jid, store).result(timeout=50)) for jid in ids]
            await eventually(lambda: _waiting(store) == n, timeout=30, interval=0.1)
            clients: Any = await writer.client_list()
            mine = [c for c in clients if c.get("name") == name]
            assert 1 <= len(mine) <= 4, mine  # one pub/sub connection and a few pooled ones
            done_ms = await jr.server_ms(writer)
            for start in range(0, n, 1000):
                pipe = writer.pipeline(transaction=False)
                for i, jid in enumerate(ids[start : start + 1000], start):
                    p = parse_job_id(jid)[1]
                    pipe.hset(keys.job(p, jid), mapping={
                        "status": "completed", "completed_at": done_ms,
                        "result": orjson.dumps(i), "result_kind": "b"})  # fmt: skip
                    pipe.publish(keys.job_channel, f"{jid} completed")
                await pipe.execute()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 40)
            assert results == list(range(n))
            assert _waiting(store) == 0
            clients = await writer.client_list()
            assert len([c for c in clients if c.get("name") == name]) <= 4
    finally:
        for p in range(4):
            await writer.delete(keys.jobs(p))
        await client.aclose()
        await writer.aclose()


async def test_lost_pubsub_connection_rereads_records(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    waiter = asyncio.create_task(store.wait(jid, timeout=20))
    await eventually(lambda: _waiting(store) == 1, timeout=5)
    # The job completes while its announcement is lost: only the record says so.
    await jr.complete(redis, jid, "late", publish=False)
    await asyncio.sleep(0)
    assert not waiter.done()
    on_every_node = {"target_nodes": redis.get_nodes()} if is_cluster(redis) else {}
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub", **on_every_node)
    record = await asyncio.wait_for(waiter, 15)
    assert record.result == "late"
    # The store keeps working on its new connection.
    other = await jr.submit(redis, topic)
    task = asyncio.create_task(store.wait(other, timeout=10))
    await eventually(lambda: _waiting(store) == 1, timeout=5)
    await jr.complete(redis, other, "again")
    assert (await task).result == "again"


async def test_result_ttl_is_honoured(redis: Redis, store: ResultStore, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic, result_ttl=1)
    keeper = await jr.submit(redis, topic, result_ttl=3600)
    await jr.complete(redis, jid, "short-lived")
    assert (await store.wait(jid, timeout=5)).result == "short-lived"
    await eventually(lambda: _is_none(store.get(jid)), timeout=5, interval=0.1)
    assert await store.status(jid) is None
    with pytest.raises(JobNotFoundError):
        await JobHandle(jid, store).result(timeout=1)
    # The index still names it until a listing skips and removes it.
    assert await redis.zscore(TopicKeys(topic).jobs(0), jid) is not None
    assert [r.id for r in await store.list_jobs(topic)] == [keeper]
    assert await redis.zscore(TopicKeys(topic).jobs(0), jid) is None


async def _is_none(value: Any) -> bool:
    return await value is None


async def test_a_listing_skips_records_another_client_replaced(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    await jr.make_topic(redis, topic, 1)
    replaced, kept = await jr.submit(redis, topic), await jr.submit(redis, topic)
    await redis.set(TopicKeys(topic).job(0, replaced), "not a hash")
    await redis.hset(TopicKeys(topic).job(0, kept), "result_ttl", "inf")
    assert [r.id for r in await store.list_jobs(topic)] == [kept]
    record = await store.get(kept)
    assert record is not None and record.result_ttl is None
    # Progress nested past the JSON decoder's depth reads as none (it raised RecursionError).
    await redis.hset(TopicKeys(topic).job(0, kept), "progress", "[" * 100_000)
    record = await store.get(kept)
    assert record is not None and record.progress is None
    assert [r.id for r in await store.list_jobs(topic)] == [kept]


async def test_a_listing_skips_an_index_another_client_replaced_or_spoilt(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    # Partition 0's index is a key of another type; partition 1's names a gone job at an
    # infinite score. The listing skips both. Before, the first failed every listing with
    # WRONGTYPE, the second with OverflowError (also the gateway's /jobs and the dashboard).
    await jr.make_topic(redis, topic, 2)
    kept = await jr.submit(redis, topic, 1)
    await redis.set(TopicKeys(topic).jobs(0), "another client's")
    await redis.zadd(TopicKeys(topic).jobs(1), {f"{topic}/1/gone": float("inf")})
    assert [r.id for r in await store.list_jobs(topic)] == [kept]
    assert await redis.zscore(TopicKeys(topic).jobs(1), f"{topic}/1/gone") is None  # cleaned
    assert kept in [r.id for r in await store.list_jobs(limit=1000)]
    await redis.delete(TopicKeys(topic).jobs(0))  # the listing of every topic in other tests


async def test_a_completed_job_is_not_marked_active_or_failed_again(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    # A member paused past its lease resumes after another completed the job (or a member
    # of another group takes it). Before, it marked the job active (or failed) over the
    # final "completed" for good: its own completion is fenced, and waiters hung.
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    keys = TopicKeys(topic)
    await redis.hset(keys.job(0, jid), "status", "completed")
    prefix = keys.job(0, "")
    await redis.set(keys.lease(0, "g"), "tok")  # another group's member: its lease is its own
    started = [keys.jobs(0), keys.lease(0, "g"), keys.job(0, jid)]
    await JOBS_STARTED(redis, started, ["ch", "me", len(prefix), "tok", 2])
    failed = [jid, "ch", "failed", "me", "boom", "RuntimeError", 0]
    assert await JOB_UPDATE(redis, [keys.job(0, jid), keys.jobs(0)], failed) == 0
    assert await store.status(jid) is JobStatus.COMPLETED


async def test_list_jobs_newest_first_across_topics_and_partitions(
    redis: Redis, store: ResultStore
) -> None:
    a, b = f"ta-{uuid.uuid4().hex[:8]}", f"tb-{uuid.uuid4().hex[:8]}"
    await jr.make_topic(redis, a, 3)
    await jr.make_topic(redis, b, 2)
    order = []
    for i in range(12):
        t, p = (a, i % 3) if i % 2 else (b, i % 2)
        jid = await jr.submit(redis, t, p)
        order.append(jid)
        await jr.next_ms(redis)  # distinct millisecond scores, for a strict order
    for jid in order[::3]:
        await jr.activate(redis, jid)
        order.remove(jid)
        order.append(jid)
        await jr.next_ms(redis)
    newest_first = order[::-1]
    listed = [r.id for r in await store.list_jobs(limit=1000)]
    assert [i for i in listed if i in set(order)] == newest_first
    only_a = [r.id for r in await store.list_jobs(a, limit=100)]
    assert only_a == [i for i in newest_first if i.startswith(f"{a}/")]
    assert [r.id for r in await store.list_jobs(a, limit=2)] == only_a[:2]
    active = await store.list_jobs(status="active", limit=1000)
    assert {r.id for r in active} >= set(order[-4:])
    assert all(r.status is JobStatus.ACTIVE for r in active)
    assert [r.id for r in await store.list_jobs(b, status=JobStatus.QUEUED, limit=1)] == [
        next(i for i in newest_first if i.startswith(f"{b}/") and i not in order[-4:])
    ]
    assert await store.list_jobs(f"none-{uuid.uuid4().hex[:6]}") == []
    with pytest.raises(ConfigurationError):
        await store.list_jobs(status="nope")
    with pytest.raises(ConfigurationError):
        await store.list_jobs(limit=0)


async def test_list_jobs_with_a_filter_reads_past_the_first_page(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    await jr.make_topic(redis, topic, 2)
    ids = [await jr.submit(redis, topic, i % 2) for i in range(250)]
    for jid in ids[:3]:
        await jr.kill(redis, jid)
    dead = await store.list_jobs(topic, status="dead", limit=10)
    assert sorted(r.id for r in dead) == sorted(ids[:3])


async def test_close_fails_pending_waits(redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    store = ResultStore(redis=redis)
    await store.connect()
    waiter = asyncio.create_task(store.wait(jid))
    await eventually(lambda: _waiting(store) == 1, timeout=5)
    await store.close()
    await store.close()
    with pytest.raises(NotConnectedError):
        await waiter
    with pytest.raises(NotConnectedError):
        await store.get(jid)
    assert await redis.ping()  # a given client is not closed


async def test_store_from_url(redis_url: str, redis: Redis, topic: str) -> None:
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    await jr.complete(redis, jid, [1, 2])
    async with ResultStore(redis_url=redis_url) as store:
        assert (await store.wait(jid, timeout=5)).result == [1, 2]
    with pytest.raises(ConfigurationError):
        ResultStore(deserializer="nope")  # type: ignore[arg-type]


async def test_a_dead_job_is_not_marked_failed_again(
    redis: Redis, store: ResultStore, topic: str
) -> None:
    # A member paused past its lease resumes after another member dead-lettered the job:
    # its handler's failure is recorded with job_update, which no lease fences. Before, it
    # wrote "failed" over the final "dead" for good (the entry is acknowledged, no retry
    # comes), so a wait begun after that hung until its timeout.
    await jr.make_topic(redis, topic, 1)
    jid = await jr.submit(redis, topic)
    await jr.activate(redis, jid)
    await jr.kill(redis, jid, "boom", "ValueError")
    keys = TopicKeys(topic)
    failed = [jid, keys.job_channel, "failed", "paused", "late", "RuntimeError", 0]
    assert await JOB_UPDATE(redis, [keys.job(0, jid), keys.jobs(0)], failed) == 0
    record = await store.wait(jid, timeout=1)
    assert record.status is JobStatus.DEAD and record.error == "boom"
