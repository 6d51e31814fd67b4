"""End-to-end cases: a producer and a consumer in one process, one event loop.

The producer sends batches of ``ctx.batch`` (``batch_enqueue``, or a raw
pipeline of XADDs) while a warmed-up consumer (``Consumer.process`` with a
no-op handler, or the raw XREADGROUP + XACK loop) drains the topic. Every
payload carries the time it was enqueued; the handler records how long ago
that was. At the maximum rate the producer runs ahead, so latency there is
mostly queueing; the paced case offers a fixed rate, stamping each payload
with its scheduled send time (so a producer that falls behind shows up as
latency instead of hiding it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redisaq_core import Consumer, Producer

from .common import GROUP, Context, Run, Sink, raw_client, raw_consume, wait_until
from .consume import run_consumer
from .enqueue import raw_pipeline_xadd

__all__ = ["lib_paced", "lib_saturated", "raw_paced", "raw_saturated"]

SendBatch = Callable[[list[dict[str, Any]]], Awaitable[Any]]
_BODY = "x" * 32


async def _send(
    send_batch: SendBatch, first: int, n: int, batch: int, rate: float | None
) -> tuple[float, float]:
    """Send ``n`` payloads in batches, as fast as possible or at ``rate`` per second.

    Returns the wall-clock and CPU start times. Paced payloads are stamped with
    their scheduled send time.
    """
    cpu = time.process_time()
    start = time.perf_counter()
    sent = 0
    while sent < n:
        if rate is None:
            count = min(batch, n - sent)
            now = time.perf_counter()
            items = [{"i": first + sent + j, "t": now, "body": _BODY} for j in range(count)]
        else:
            due = min(n, int((time.perf_counter() - start) * rate)) - sent
            if due <= 0:
                await asyncio.sleep(0.0005)
                continue
            count = min(due, batch)
            items = [
                {"i": first + sent + j, "t": start + (sent + j) / rate, "body": _BODY}
                for j in range(count)
            ]
        await send_batch(items)
        sent += count
    return start, cpu


def _result(ctx: Context, sink: Sink, start: tuple[float, float]) -> Run:
    """Rate and CPU per message from the first timed send to the last message handled."""
    wall, cpu = start
    return Run(ctx.n / (sink.t_done - wall), sink.latencies, (sink.cpu_done - cpu) * 1e6 / ctx.n)


async def _lib(ctx: Context, rate: float | None) -> Run:
    topic = ctx.topic("e2e")
    sink = Sink(ctx.warm, ctx.n, latency=True)
    async with Producer(topic, redis_url=ctx.url, init_partitions=ctx.partitions) as producer:
        consumer = Consumer(topic, group_name=GROUP, batch_size=ctx.batch, redis_url=ctx.url)
        running = asyncio.create_task(
            run_consumer(consumer, sink, batch=False, timeout=ctx.timeout)
        )
        try:
            await wait_until(
                lambda: len(consumer.assigned_partitions) == ctx.partitions,
                ctx.timeout,
                "the consumer taking its partitions",
            )
            await _send(producer.batch_enqueue, 0, ctx.warm, ctx.batch, None)
            await asyncio.wait_for(sink.warmed.wait(), ctx.timeout)
            start = await _send(producer.batch_enqueue, ctx.warm, ctx.n, ctx.batch, rate)
            await running
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
    return _result(ctx, sink, start)


async def _raw(ctx: Context, rate: float | None) -> Run:
    streams = ctx.raw_streams("e2e")
    sink = Sink(ctx.warm, ctx.n, latency=True)
    async with raw_client(ctx.url) as reader, raw_client(ctx.url) as writer:
        for stream in streams:
            await reader.xgroup_create(stream, GROUP, id="0", mkstream=True)

        async def send_batch(items: list[dict[str, Any]]) -> None:
            await raw_pipeline_xadd(writer, streams, list(items))

        running = asyncio.create_task(
            asyncio.wait_for(raw_consume(reader, streams, ctx.batch, sink), ctx.timeout)
        )
        try:
            await _send(send_batch, 0, ctx.warm, ctx.batch, None)
            await asyncio.wait_for(sink.warmed.wait(), ctx.timeout)
            start = await _send(send_batch, ctx.warm, ctx.n, ctx.batch, rate)
            await running
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
    return _result(ctx, sink, start)


async def lib_saturated(ctx: Context) -> Run:
    """Producer ``batch_enqueue`` as fast as it can while ``Consumer.process`` drains."""
    return await _lib(ctx, None)


async def raw_saturated(ctx: Context) -> Run:
    """Raw pipelined XADD as fast as it can while the raw XREADGROUP + XACK loop drains."""
    return await _raw(ctx, None)


async def lib_paced(ctx: Context) -> Run:
    """Producer ``batch_enqueue`` at ``ctx.offered_rate`` while ``Consumer.process`` drains."""
    return await _lib(ctx, ctx.offered_rate)


async def raw_paced(ctx: Context) -> Run:
    """Raw pipelined XADD at ``ctx.offered_rate`` while the raw loop drains."""
    return await _raw(ctx, ctx.offered_rate)
