"""Delayed-message cases: scheduling, moving due entries, and how late they arrive.

* **delayed enqueue**, ``ctx.concurrency`` tasks each awaiting
  ``producer.enqueue(p, delay=60)`` (one ``delay.lua`` call per message,
  coalesced into pipelines like ``enqueue``), beside as many tasks sending a raw
  ``ZADD`` of the same entry bytes to one sorted set.
* **move + consume, all due at once**: ``n`` entries are scheduled (untimed)
  for one due time; a warmed-up ``Consumer.process`` owns the partition. The
  clock runs from the due time to the last message handled. Raw: a
  hand-written mover (``ZRANGEBYSCORE ... LIMIT 0 500``, then one pipeline of
  ``XADD`` + ``ZREM``; neither atomic nor fenced) beside the raw XREADGROUP +
  XACK loop.
* **lateness at 5,000/s**: delayed messages offered at ``DELAYED_RATE`` per
  second, each batch with a delay drawn from 0.05-1 s; the latency columns
  are the lateness, handler call minus due time (the due time is the batch's
  scheduled send time plus its delay, so a producer that falls behind counts as
  lateness). Raw: ``ZADD`` paced the same, the raw mover sleeping until the next
  due time (at most 100 ms: it cannot know of an earlier entry added meanwhile)
  and the raw consumer loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core import Consumer, Producer

from .common import FIELD, GROUP, Clock, Context, Run, Sink, payload, raw_client, raw_consume
from .consume import run_consumer

__all__ = [
    "DELAYED_RATE",
    "lib_delayed_enqueue",
    "lib_lateness",
    "lib_move",
    "raw_delayed_enqueue",
    "raw_lateness",
    "raw_move",
]

DELAYED_RATE = 5_000.0
"""Delayed messages offered per second in the lateness case."""
_SHORTEST, _LONGEST = 0.05, 1.0
_MOVE_BATCH = 500


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ---- scheduling ------------------------------------------------------------------------


async def lib_delayed_enqueue(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks, each awaiting ``producer.enqueue(p, delay=60)``."""

    async def worker(producer: Producer, count: int) -> None:
        for i in range(count):
            await producer.enqueue(payload(i), delay=60)

    topic = ctx.topic("delay")
    async with Producer(topic, redis_url=ctx.url, init_partitions=ctx.partitions) as producer:
        await asyncio.gather(*(worker(producer, c) for c in _split(ctx.warm, ctx.concurrency)))
        with Clock() as clock:
            await asyncio.gather(*(worker(producer, c) for c in _split(ctx.n, ctx.concurrency)))
    return clock.run(ctx.n)


def _member(seq: int, item: dict[str, Any]) -> bytes:
    """A raw delayed member: a sequence number (unique, orders ties), then the payload."""
    return b"%016x" % seq + orjson.dumps(item)


async def raw_delayed_enqueue(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks sharing one client, each awaiting a ZADD in a loop."""
    key = f"bench:raw:delay:{ctx.topic('z')}"
    counter = iter(range(1 << 62))

    async def worker(r: Redis, count: int) -> None:
        for i in range(count):
            due = time.time() * 1000 + 60_000
            await r.zadd(key, {_member(next(counter), payload(i)): due})

    async with raw_client(ctx.url) as r:
        await asyncio.gather(*(worker(r, c) for c in _split(ctx.warm, ctx.concurrency)))
        with Clock() as clock:
            await asyncio.gather(*(worker(r, c) for c in _split(ctx.n, ctx.concurrency)))
    return clock.run(ctx.n)


# ---- moving ----------------------------------------------------------------------------


async def _raw_mover(r: Redis, key: str, stream: str, stop: asyncio.Event) -> None:
    """Move due members into the stream; sleep until the next due time (at most 100 ms)."""
    while not stop.is_set():
        now = time.time() * 1000
        due = await r.zrangebyscore(key, "-inf", now, start=0, num=_MOVE_BATCH)
        if due:
            pipe = r.pipeline(transaction=False)
            for member in due:
                pipe.xadd(stream, {FIELD: member[16:]})
            pipe.zrem(key, *due)
            await pipe.execute()
            continue
        head = await r.zrange(key, 0, 0, withscores=True)
        wait = 0.1 if not head else min(0.1, max(0.0, (head[0][1] - now) / 1000))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(wait, 0.001))


def _due_at(seconds_from_now: float) -> tuple[float, float]:
    """(Unix seconds, perf_counter seconds) of the same moment ``seconds_from_now`` ahead."""
    return time.time() + seconds_from_now, time.perf_counter() + seconds_from_now


async def _warm_consumer(
    ctx: Context, producer: Producer, sink: Sink
) -> tuple[Consumer, asyncio.Task[None]]:
    consumer = Consumer(producer.topic, group_name=GROUP, batch_size=ctx.batch, redis_url=ctx.url)
    running = asyncio.create_task(run_consumer(consumer, sink, batch=False, timeout=ctx.timeout))
    for i in range(0, ctx.warm, ctx.batch):
        await producer.batch_enqueue([payload(i + j) for j in range(ctx.batch)])
    await asyncio.wait_for(sink.warmed.wait(), ctx.timeout)
    return consumer, running


async def _finish(running: asyncio.Task[None]) -> None:
    if not running.done():
        running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def lib_move(ctx: Context) -> Run:
    """``n`` entries due at one moment, moved by the consumer's owner and handled."""
    sink = Sink(ctx.warm, ctx.n)
    lead = 1.0 + ctx.n / 10_000
    async with Producer(ctx.topic("move"), redis_url=ctx.url) as producer:
        _, running = await _warm_consumer(ctx, producer, sink)
        try:
            wall, perf = _due_at(lead)
            at = datetime.fromtimestamp(wall, timezone.utc)
            for i in range(0, ctx.n, 1000):
                count = min(1000, ctx.n - i)
                await producer.batch_enqueue([payload(i + j) for j in range(count)], at=at)
            if time.perf_counter() > perf:
                raise RuntimeError("benchmark: scheduling took longer than the lead time")
            cpu = time.process_time()
            await running
        finally:
            await _finish(running)
    return Run(ctx.n / (sink.t_done - perf), cpu_us=(sink.cpu_done - cpu) * 1e6 / ctx.n)


async def raw_move(ctx: Context) -> Run:
    """The same with the raw mover and the raw consumer loop."""
    key, stream = f"bench:raw:move:{ctx.topic('z')}", f"bench:raw:move:{ctx.topic('s')}"
    sink = Sink(0, ctx.n)
    lead = 1.0 + ctx.n / 10_000
    stop = asyncio.Event()
    async with raw_client(ctx.url) as reader, raw_client(ctx.url) as writer:
        await reader.xgroup_create(stream, GROUP, id="0", mkstream=True)
        wall, perf = _due_at(lead)
        for i in range(0, ctx.n, 1000):
            pipe = writer.pipeline(transaction=False)
            for j in range(i, min(ctx.n, i + 1000)):
                pipe.zadd(key, {_member(j, payload(j)): wall * 1000})
            await pipe.execute()
        cpu = time.process_time()
        mover = asyncio.create_task(_raw_mover(writer, key, stream, stop))
        try:
            await asyncio.wait_for(raw_consume(reader, [stream], ctx.batch, sink), ctx.timeout)
        finally:
            stop.set()
            await mover
    return Run(ctx.n / (sink.t_done - perf), cpu_us=(sink.cpu_done - cpu) * 1e6 / ctx.n)


# ---- lateness --------------------------------------------------------------------------

SendDelayed = Callable[[list[dict[str, Any]], float], Awaitable[Any]]


async def _paced(send: SendDelayed, n: int, rate: float, batch: int) -> float:
    """Send ``n`` payloads at ``rate``/s, each batch with a random delay; return CPU start.

    Each payload's ``t`` is its due time: the batch's scheduled send time plus its delay.
    """
    rng = random.Random(7)
    cpu = time.process_time()
    start = time.perf_counter()
    sent = 0
    while sent < n:
        due = min(n, int((time.perf_counter() - start) * rate)) - sent
        if due <= 0:
            await asyncio.sleep(0.0005)
            continue
        count = min(due, batch)
        delay = rng.uniform(_SHORTEST, _LONGEST)
        items = [
            {"i": sent + j, "t": start + (sent + j) / rate + delay, "body": "x" * 32}
            for j in range(count)
        ]
        await send(items, delay)
        sent += count
    return cpu


async def lib_lateness(ctx: Context) -> Run:
    """Delayed messages at ``DELAYED_RATE``/s; latencies are lateness past the due time."""
    sink = Sink(ctx.warm, ctx.n, latency=True)
    async with Producer(ctx.topic("late"), redis_url=ctx.url) as producer:
        _, running = await _warm_consumer(ctx, producer, sink)
        try:

            async def send(items: list[dict[str, Any]], delay: float) -> None:
                await producer.batch_enqueue(items, delay=delay)

            started = time.perf_counter()
            cpu = await _paced(send, ctx.n, DELAYED_RATE, ctx.batch)
            await running
        finally:
            await _finish(running)
    return Run(ctx.n / (sink.t_done - started), sink.latencies, _cpu(sink, cpu, ctx.n))


async def raw_lateness(ctx: Context) -> Run:
    """The same with raw ZADD, the raw mover and the raw consumer loop."""
    key, stream = f"bench:raw:late:{ctx.topic('z')}", f"bench:raw:late:{ctx.topic('s')}"
    sink = Sink(0, ctx.n, latency=True)
    stop = asyncio.Event()
    counter = iter(range(1 << 62))
    async with raw_client(ctx.url) as reader, raw_client(ctx.url) as writer:
        await reader.xgroup_create(stream, GROUP, id="0", mkstream=True)

        async def send(items: list[dict[str, Any]], delay: float) -> None:
            due = (time.time() + delay) * 1000
            pipe = writer.pipeline(transaction=False)
            for item in items:
                pipe.zadd(key, {_member(next(counter), item): due})
            await pipe.execute()

        mover = asyncio.create_task(_raw_mover(writer, key, stream, stop))
        consuming = asyncio.create_task(
            asyncio.wait_for(raw_consume(reader, [stream], ctx.batch, sink), ctx.timeout)
        )
        try:
            started = time.perf_counter()
            cpu = await _paced(send, ctx.n, DELAYED_RATE, ctx.batch)
            await consuming
        finally:
            stop.set()
            await mover
            await _finish(consuming)
    return Run(ctx.n / (sink.t_done - started), sink.latencies, _cpu(sink, cpu, ctx.n))


def _cpu(sink: Sink, cpu_start: float, n: int) -> float:
    return (sink.cpu_done - cpu_start) * 1e6 / n
