"""Enqueue cases: one at a time, many concurrent enqueuers, and batches (library and raw)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core import Producer

from .common import FIELD, Clock, Context, Run, payload, raw_client

__all__ = [
    "lib_batch",
    "lib_concurrent",
    "lib_concurrent_idempotent",
    "lib_one",
    "lib_one_idempotent",
    "raw_batch",
    "raw_concurrent",
    "raw_one",
    "raw_pipeline_xadd",
]


def _split(total: int, parts: int) -> list[int]:
    """``total`` divided into ``parts`` counts that differ by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _batches(total: int, size: int) -> list[int]:
    """Sizes of the batches that make up ``total`` messages."""
    return [min(size, total - i) for i in range(0, total, size)]


def _producer(ctx: Context, case: str) -> Producer:
    return Producer(ctx.topic(case), redis_url=ctx.url, init_partitions=ctx.partitions)


async def lib_one(ctx: Context) -> Run:
    """``await producer.enqueue(payload)`` in a loop."""
    async with _producer(ctx, "one") as producer:
        for i in range(ctx.warm):
            await producer.enqueue(payload(i))
        with Clock() as clock:
            for i in range(ctx.n):
                await producer.enqueue(payload(i))
    return clock.run(ctx.n)


async def lib_one_idempotent(ctx: Context) -> Run:
    """``await producer.enqueue(payload, idempotency_key=...)`` in a loop, every key new."""
    async with _producer(ctx, "one-idempotent") as producer:
        for i in range(ctx.warm):
            await producer.enqueue(payload(i), idempotency_key=f"warm-{i}")
        with Clock() as clock:
            for i in range(ctx.n):
                await producer.enqueue(payload(i), idempotency_key=f"key-{i}")
    return clock.run(ctx.n)


async def raw_one(ctx: Context) -> Run:
    """``await r.xadd(stream, {p: orjson})`` in a loop, round-robin over the partitions."""
    streams = ctx.raw_streams("one")
    k = len(streams)
    async with raw_client(ctx.url) as r:
        for i in range(ctx.warm):
            await r.xadd(streams[i % k], {FIELD: orjson.dumps(payload(i))})
        with Clock() as clock:
            for i in range(ctx.n):
                await r.xadd(streams[i % k], {FIELD: orjson.dumps(payload(i))})
    return clock.run(ctx.n)


async def lib_concurrent(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks, each awaiting ``producer.enqueue`` in a loop."""

    async def worker(producer: Producer, count: int) -> None:
        for i in range(count):
            await producer.enqueue(payload(i))

    async with _producer(ctx, "concurrent") as producer:
        await asyncio.gather(*(worker(producer, c) for c in _split(ctx.warm, ctx.concurrency)))
        with Clock() as clock:
            await asyncio.gather(*(worker(producer, c) for c in _split(ctx.n, ctx.concurrency)))
    return clock.run(ctx.n)


async def lib_concurrent_idempotent(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks, each awaiting ``enqueue`` with a new idempotency key."""

    async def worker(producer: Producer, phase: str, task: int, count: int) -> None:
        for i in range(count):
            await producer.enqueue(payload(i), idempotency_key=f"{phase}-{task}-{i}")

    async with _producer(ctx, "concurrent-idempotent") as producer:
        warm = _split(ctx.warm, ctx.concurrency)
        await asyncio.gather(*(worker(producer, "warm", t, c) for t, c in enumerate(warm)))
        with Clock() as clock:
            timed = _split(ctx.n, ctx.concurrency)
            await asyncio.gather(*(worker(producer, "key", t, c) for t, c in enumerate(timed)))
    return clock.run(ctx.n)


async def raw_concurrent(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks sharing one client, each awaiting XADD in a loop."""
    streams = ctx.raw_streams("concurrent")
    k = len(streams)

    async def worker(r: Redis, offset: int, count: int) -> None:
        for i in range(count):
            await r.xadd(streams[(offset + i) % k], {FIELD: orjson.dumps(payload(i))})

    async with raw_client(ctx.url) as r:
        warm = _split(ctx.warm, ctx.concurrency)
        await asyncio.gather(*(worker(r, w, c) for w, c in enumerate(warm)))
        with Clock() as clock:
            timed = _split(ctx.n, ctx.concurrency)
            await asyncio.gather(*(worker(r, w, c) for w, c in enumerate(timed)))
    return clock.run(ctx.n)


async def lib_batch(ctx: Context) -> Run:
    """``producer.batch_enqueue`` of ``ctx.batch`` payloads in a loop."""
    async with _producer(ctx, "batch") as producer:
        for count in _batches(ctx.warm, ctx.batch):
            await producer.batch_enqueue([payload(i) for i in range(count)])
        with Clock() as clock:
            for count in _batches(ctx.n, ctx.batch):
                await producer.batch_enqueue([payload(i) for i in range(count)])
    return clock.run(ctx.n)


async def raw_batch(ctx: Context) -> Run:
    """A pipeline (no MULTI) of ``ctx.batch`` XADDs in a loop."""
    streams = ctx.raw_streams("batch")
    async with raw_client(ctx.url) as r:
        for count in _batches(ctx.warm, ctx.batch):
            await raw_pipeline_xadd(r, streams, [payload(i) for i in range(count)])
        with Clock() as clock:
            for count in _batches(ctx.n, ctx.batch):
                await raw_pipeline_xadd(r, streams, [payload(i) for i in range(count)])
    return clock.run(ctx.n)


async def raw_pipeline_xadd(r: Redis, streams: list[str], payloads: list[Any]) -> None:
    """XADD ``payloads`` round-robin over ``streams`` in one pipeline round trip."""
    k = len(streams)
    pipe = r.pipeline(transaction=False)
    for i, item in enumerate(payloads):
        pipe.xadd(streams[i % k], {FIELD: orjson.dumps(item)})
    await pipe.execute()


async def lib_submit_concurrent(ctx: Context) -> Run:
    """``ctx.concurrency`` tasks, each awaiting ``producer.submit`` (entry + status record)."""

    async def worker(producer: Producer, count: int) -> None:
        for i in range(count):
            await producer.submit(payload(i))

    async with _producer(ctx, "submit") as producer:
        await asyncio.gather(*(worker(producer, c) for c in _split(ctx.warm, ctx.concurrency)))
        with Clock() as clock:
            await asyncio.gather(*(worker(producer, c) for c in _split(ctx.n, ctx.concurrency)))
    return clock.run(ctx.n)
