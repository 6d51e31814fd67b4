"""Consume cases: ``Consumer.process`` and ``process_batch`` against a raw XREADGROUP + XACK loop.

Each run pre-fills a fresh topic (or fresh raw streams) with warm-up plus
``n`` messages, then drains it with no-op handlers; the clock runs from the
end of the warm-up to the last message handled.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core import Consumer, Message, Producer
from redisaq_core._retention import TrimMode
from redisaq_core.keys import TopicKeys

from .common import (
    FIELD,
    GROUP,
    Context,
    Run,
    Sink,
    entries_of,
    payload,
    raw_client,
    raw_consume,
)

__all__ = [
    "drain_jobs",
    "drain_raw",
    "drain_raw_jobs",
    "fill",
    "lib_jobs_batch",
    "lib_process",
    "lib_process_batch",
    "lib_process_batch_delete_acked",
    "lib_process_batch_no_metrics",
    "raw_jobs_batch",
    "raw_process",
    "run_consumer",
    "submit_jobs",
]

_FILL_CHUNK = 10_000
_FILL = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[(i - 1) % #KEYS + 1], '*', ARGV[2], ARGV[3])
end
return 0
"""


async def fill(client: Redis, streams: list[str], total: int) -> None:
    """Append ``total`` entries round-robin over ``streams``, server-side (untimed set-up).

    Each entry is what the library's producer writes for a plain payload: one
    field, ``p``, holding the orjson bytes.
    """
    data = orjson.dumps(payload(0))
    for start in range(0, total, _FILL_CHUNK):
        count = min(_FILL_CHUNK, total - start)
        await client.eval(_FILL, len(streams), *streams, count, FIELD, data)


async def _fill_topic(ctx: Context, topic: str, total: int, trim: TrimMode = "maxlen") -> None:
    """Create ``topic`` with the library's producer, then put ``total`` messages on it."""
    async with Producer(
        topic, redis_url=ctx.url, init_partitions=ctx.partitions, trim=trim
    ) as producer:
        streams = [producer.keys.stream(p) for p in range(producer.partitions)]
    async with raw_client(ctx.url) as client:
        await fill(client, streams, total)


async def run_consumer(consumer: Consumer, sink: Sink, *, batch: bool, timeout: float) -> None:
    """Run ``consumer`` with a no-op handler feeding ``sink`` until it has seen everything."""

    async def handle(message: Message) -> None:
        sink.add(message.payload)

    async def handle_batch(messages: list[Message]) -> None:
        for message in messages:
            sink.add(message.payload)

    task = asyncio.create_task(
        consumer.process_batch(handle_batch) if batch else consumer.process(handle)
    )
    try:
        done = asyncio.create_task(sink.done.wait())
        finished, _ = await asyncio.wait(
            {task, done}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if task in finished:
            task.result()
            raise RuntimeError("benchmark: the consumer stopped before handling every message")
        if done not in finished:
            done.cancel()
            raise TimeoutError(
                f"benchmark: consumer handled {sink.count} of {sink.total} within {timeout:.0f}s"
            )
    finally:
        await consumer.stop()
        await task
        await consumer.close()


async def _lib(
    ctx: Context, *, batch: bool, metrics: bool = True, trim: TrimMode = "maxlen"
) -> Run:
    topic = ctx.topic("process-batch" if batch else "process")
    await _fill_topic(ctx, topic, ctx.warm + ctx.n, trim)
    sink = Sink(ctx.warm, ctx.n)
    consumer = Consumer(
        topic, group_name=GROUP, batch_size=ctx.batch, redis_url=ctx.url, metrics=metrics
    )
    await run_consumer(consumer, sink, batch=batch, timeout=ctx.timeout)
    return sink.run()


async def lib_process(ctx: Context) -> Run:
    """``Consumer.process`` (one handler call per message) draining a pre-filled topic."""
    return await _lib(ctx, batch=False)


async def lib_process_batch(ctx: Context) -> Run:
    """``Consumer.process_batch`` (one handler call per batch) draining a pre-filled topic."""
    return await _lib(ctx, batch=True)


async def lib_process_batch_no_metrics(ctx: Context) -> Run:
    """``Consumer.process_batch`` with ``metrics=False``: the cost of metrics, by difference."""
    return await _lib(ctx, batch=True, metrics=False)


async def lib_process_batch_delete_acked(ctx: Context) -> Run:
    """``process_batch`` on a ``trim="delete-acked"`` topic: XACKDEL in place of XACK (8.2+)."""
    return await _lib(ctx, batch=True, trim="delete-acked")


async def submit_jobs(ctx: Context, topic: str, total: int) -> TopicKeys:
    """Put ``total`` jobs on a new ``topic`` with ``Producer.submit`` (untimed set-up)."""
    async with Producer(topic, redis_url=ctx.url, init_partitions=ctx.partitions) as producer:
        for start in range(0, total, 1000):
            count = min(1000, total - start)
            await asyncio.gather(*(producer.submit(payload(start + i)) for i in range(count)))
        return producer.keys


async def lib_jobs_batch(ctx: Context) -> Run:
    """``Consumer.process_batch`` draining jobs (``Producer.submit``): status and results too."""
    topic = ctx.topic("jobs")
    await submit_jobs(ctx, topic, ctx.warm + ctx.n)
    return await drain_jobs(ctx, topic)


async def drain_jobs(ctx: Context, topic: str) -> Run:
    """``Consumer.process_batch`` over the jobs :func:`submit_jobs` put on ``topic``."""
    sink = Sink(ctx.warm, ctx.n)
    consumer = Consumer(topic, group_name=GROUP, batch_size=ctx.batch, redis_url=ctx.url)
    await run_consumer(consumer, sink, batch=True, timeout=ctx.timeout)
    return sink.run()


async def raw_process(ctx: Context) -> Run:
    """XREADGROUP COUNT ``batch`` + XACK of each batch, draining pre-filled raw streams."""
    streams = ctx.raw_streams("consume")
    async with raw_client(ctx.url) as r:
        await fill(r, streams, ctx.warm + ctx.n)
        for stream in streams:
            await r.xgroup_create(stream, GROUP, id="0")
    return await drain_raw(ctx, streams)


async def drain_raw(ctx: Context, streams: list[str]) -> Run:
    """The raw XREADGROUP + XACK loop over ``streams`` (their group made, entries added)."""
    async with raw_client(ctx.url) as r:
        sink = Sink(ctx.warm, ctx.n)
        await asyncio.wait_for(raw_consume(r, streams, ctx.batch, sink), ctx.timeout)
        return sink.run()


async def raw_jobs_batch(ctx: Context) -> Run:
    """The job records' writes as plain pipelined commands, beside a raw XREADGROUP loop.

    Per batch: one pipeline marks each job active (HSET, PUBLISH), one completes it (HSET
    with its result, EXPIRE, index ZADD, PUBLISH) and acknowledges its entry: what
    ``Consumer`` writes for a job, without the scripts that make it atomic and fenced.
    """
    keys = await submit_jobs(ctx, ctx.topic("raw-jobs"), ctx.warm + ctx.n)
    return await drain_raw_jobs(ctx, keys)


async def drain_raw_jobs(ctx: Context, keys: TopicKeys) -> Run:
    """The raw loop of :func:`raw_jobs_batch` over the jobs put on ``keys``' topic."""
    parts = {keys.stream(p).encode(): p for p in range(ctx.partitions)}
    wanted: dict[Any, Any] = dict.fromkeys(parts, ">")
    sink = Sink(ctx.warm, ctx.n)
    async with raw_client(ctx.url) as r:
        for stream in parts:
            await r.xgroup_create(stream, GROUP, id="0")

        async def drain() -> None:
            channel = keys.job_channel
            while not sink.done.is_set():
                response = await r.xreadgroup(GROUP, "raw", wanted, count=ctx.batch, block=100)
                read = [
                    (stream, entry_id, fields[b"j"].decode(), parts[stream], fields[FIELD])
                    for stream, entries in entries_of(response)
                    for entry_id, fields in entries
                ]
                now = int(time.time() * 1000)
                pipe = r.pipeline(transaction=False)
                for _, _, job, p, _ in read:
                    pipe.execute_command(
                        "HSET", keys.job(p, job), "status", "active", "active_at", now,
                        "updated_at", now, "worker", "raw", "attempts", 1,
                    )  # fmt: skip
                    pipe.execute_command("PUBLISH", channel, f"{job} active")
                await pipe.execute()
                done = [
                    (stream, entry_id, job, p, orjson.loads(data))
                    for stream, entry_id, job, p, data in read
                ]
                now = int(time.time() * 1000)
                pipe = r.pipeline(transaction=False)
                for stream, entry_id, job, p, item in done:
                    sink.add(item)
                    record = keys.job(p, job)
                    pipe.execute_command(
                        "HSET", record, "status", "completed", "completed_at", now,
                        "updated_at", now, "worker", "raw", "result", b"null", "result_kind", "b",
                    )  # fmt: skip
                    pipe.execute_command("EXPIRE", record, 3600)
                    pipe.execute_command("ZADD", keys.jobs(p), now, job)
                    pipe.execute_command("PUBLISH", channel, f"{job} completed")
                    pipe.execute_command("XACK", stream, GROUP, entry_id)
                await pipe.execute()

        await asyncio.wait_for(drain(), ctx.timeout)
        return sink.run()
