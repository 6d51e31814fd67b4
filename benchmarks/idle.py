"""Idle cost: the Redis commands an idle ``Consumer`` makes per second.

A consumer with default settings owns the partitions of an empty topic;
nothing else runs. Over the window the server is watched two ways:

* ``MONITOR``: the requests clients send (``EVALSHA``, ``XREADGROUP``, ...),
  i.e. round trips, counted by command name;
* ``INFO commandstats`` deltas: every command the server ran, including the
  ones inside Lua scripts (minus the benchmark's own ``INFO`` calls).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from redisaq_core import Consumer, Message, Producer

from .common import GROUP, Context, raw_client, wait_until

__all__ = ["IdleCost", "measure_idle"]


@dataclass
class IdleCost:
    """Commands per second of an idle consumer."""

    seconds: float
    requests_per_s: float
    server_commands_per_s: float
    requests: dict[str, int] = field(default_factory=dict)
    heartbeat_interval: float = 0.0
    poll_interval: float = 0.0


async def _commandstats(client: Redis) -> Counter[str]:
    info = await client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


async def _watch(client: Redis, seen: Counter[str], ready: asyncio.Event) -> None:
    async with client.monitor() as monitor:
        ready.set()
        async for line in monitor.listen():
            if line.get("client_type") == "lua":
                continue
            command = str(line.get("command", "")).split(" ", 1)[0].upper()
            seen[command] += 1


async def measure_idle(ctx: Context) -> IdleCost:
    """Run an idle consumer and count its commands over ``ctx.idle_seconds``."""
    topic = ctx.topic("idle")
    async with Producer(topic, redis_url=ctx.url, init_partitions=ctx.partitions):
        pass  # creates the topic with its partitions; nothing is sent
    consumer = Consumer(topic, group_name=GROUP, redis_url=ctx.url)

    async def handle(message: Message) -> None:
        """No messages arrive; nothing to do."""

    task = asyncio.create_task(consumer.process(handle))
    try:
        await wait_until(
            lambda: bool(consumer.assigned_partitions) or task.done(),
            ctx.timeout,
            "the idle consumer starting",
        )
        if task.done():
            task.result()
            raise RuntimeError("benchmark: the idle consumer stopped by itself")
        # Past the first heartbeat, so one-off start-up work (e.g. a second pooled
        # connection's HELLO) is not counted as steady-state cost.
        await asyncio.sleep(consumer.heartbeat_interval + 0.25)
        async with raw_client(ctx.url) as stats, raw_client(ctx.url) as watcher:
            seen: Counter[str] = Counter()
            ready = asyncio.Event()
            before = await _commandstats(stats)
            start = time.perf_counter()
            watching = asyncio.create_task(_watch(watcher, seen, ready))
            await asyncio.wait_for(ready.wait(), ctx.timeout)
            watch_start = time.perf_counter()
            await asyncio.sleep(ctx.idle_seconds)
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            watched = time.perf_counter() - watch_start
            delta = await _commandstats(stats) - before
            elapsed = time.perf_counter() - start
    finally:
        await consumer.stop()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.close()
    # The benchmark's own connections (subcommands count apart: "client|setinfo").
    own = {"info", "monitor", "hello", "client", "ping"}
    delta = Counter({k: n for k, n in delta.items() if k.split("|", 1)[0] not in own})
    return IdleCost(
        seconds=watched,
        requests_per_s=sum(seen.values()) / watched,
        server_commands_per_s=sum(delta.values()) / elapsed,
        requests=dict(sorted(seen.items())),
        heartbeat_interval=consumer.heartbeat_interval,
        poll_interval=consumer.poll_interval,
    )
