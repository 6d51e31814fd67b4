"""Server time per job: the library's job path beside the same record writes sent raw.

    python -m benchmarks.jobs_server [--n 20000] [--partitions 1]

Starts its own server, drains ``--n`` jobs (``Producer.submit``) three ways, and
prints the server's CPU per job from ``INFO commandstats`` (every command's
``usec``; a script's commands count inside its ``EVALSHA``, so only top-level
calls are summed): a plain ``XREADGROUP`` + ``XACK`` loop over plain entries,
``Consumer.process_batch`` over jobs, and the raw loop of ``consume.raw_jobs_batch``
(the job records' writes as plain pipelined commands). The second and third
bound what any consumer of such jobs can reach, whatever its client costs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from redisaq_core.embedded import EmbeddedRedis

from . import consume
from .common import GROUP, Context, Run, raw_client

__all__ = ["main"]

_INNER = {"cmdstat_" + name for name in ("xack", "hset", "hget", "hmget", "expire", "zadd",
                                         "publish", "time", "get")}  # fmt: skip
"""Commands the job scripts make: counted in their EVALSHA already, left out of the sum."""


async def _server_usec(client: Redis, scripted: bool) -> float:
    stats = await client.info("commandstats")
    return float(
        sum(
            v["usec"]
            for k, v in stats.items()
            if not (scripted and k in _INNER)
            and not k.startswith(("cmdstat_info", "cmdstat_config"))
        )
    )


async def _measure(
    ctx: Context, drain: Callable[[], Awaitable[Run]], scripted: bool
) -> tuple[float, float]:
    """(messages/s, server usec per message) of one drain, its set-up done before."""
    async with raw_client(ctx.url) as client:
        await client.config_resetstat()
        result = await drain()
        usec = await _server_usec(client, scripted)
    return result.rate, usec / (ctx.warm + ctx.n)


async def _main(n: int, partitions: int) -> None:
    async with EmbeddedRedis() as server:
        ctx = Context(url=server.url, n=n, partitions=partitions)
        total = ctx.warm + n
        version = await _version(server.url)
        print(f"server {version}, {n} messages, {partitions} partition(s); server CPU per message")
        streams = ctx.raw_streams("jobs-server")
        async with raw_client(ctx.url) as client:
            await consume.fill(client, streams, total)
            for stream in streams:
                await client.xgroup_create(stream, GROUP, id="0")
        rate, usec = await _measure(ctx, lambda: consume.drain_raw(ctx, streams), False)
        _line("raw XREADGROUP + XACK, plain entries", rate, usec)
        topic = ctx.topic("jobs-server")
        await consume.submit_jobs(ctx, topic, total)
        rate, usec = await _measure(ctx, lambda: consume.drain_jobs(ctx, topic), True)
        _line("library, jobs (process_batch)", rate, usec)
        keys = await consume.submit_jobs(ctx, ctx.topic("jobs-server-raw"), total)
        rate, usec = await _measure(ctx, lambda: consume.drain_raw_jobs(ctx, keys), False)
        _line("raw, jobs with the same record writes", rate, usec)


def _line(name: str, rate: float, usec: float) -> None:
    print(f"  {name:40} {usec:6.2f} us   ({rate:,.0f} msgs/s)")


async def _version(url: str) -> str:
    async with raw_client(url) as client:
        return str((await client.info("server"))["redis_version"])


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_main(args.n, args.partitions))


if __name__ == "__main__":
    main()
