"""Shared pieces of the benchmark cases: the run context, payloads, counting sinks, clients."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core._codec import F_BYTES

__all__ = [
    "FIELD",
    "GROUP",
    "Clock",
    "Context",
    "Run",
    "Sink",
    "ack_raw",
    "entries_of",
    "median",
    "payload",
    "percentile",
    "raw_client",
    "raw_consume",
    "wait_until",
]

FIELD = F_BYTES
"""The stream entry field that holds the payload (the library's own constant)."""

GROUP = "bench"
_BODY = "x" * 32


def payload(i: int) -> dict[str, Any]:
    """A small message (about 70 bytes as JSON) stamped with the time it was made."""
    return {"i": i, "t": time.perf_counter(), "body": _BODY}


@dataclass
class Context:
    """What every case needs: the server, the sizes, and fresh key names."""

    url: str
    n: int
    batch: int = 100
    partitions: int = 1
    concurrency: int = 64
    offered_rate: float = 20_000.0
    idle_seconds: float = 6.0
    timeout: float = 120.0

    @property
    def warm(self) -> int:
        """Messages sent or handled before the clock starts (a multiple of ``batch``)."""
        want = min(max(2 * self.batch, self.n // 10), 2_000)
        return -(-want // self.batch) * self.batch

    def topic(self, case: str) -> str:
        """A topic name no other measurement uses."""
        return f"bench-{case}-{uuid.uuid4().hex[:10]}"

    def raw_streams(self, case: str) -> list[str]:
        """Fresh stream keys for a raw redis-py measurement, one per partition."""
        base = f"bench:raw:{case}:{uuid.uuid4().hex[:10]}"
        return [f"{base}:{p}" for p in range(self.partitions)]


@dataclass
class Run:
    """The outcome of one timed run: a rate and, for end-to-end runs, latencies in ms."""

    rate: float
    latencies_ms: list[float] = field(default_factory=list)
    cpu_us: float = float("nan")
    """CPU time of this Python process per message, in microseconds."""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


class Clock:
    """Wall-clock and CPU time of a timed section: ``with Clock() as c: ...; c.run(n)``."""

    def __enter__(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def run(self, n: int) -> Run:
        """The rate and CPU cost of ``n`` messages over the section."""
        return Run(n / self.wall, cpu_us=self.cpu * 1e6 / n)


class Sink:
    """Counts handled payloads; notes when the warm-up ends and when the last one arrives.

    ``add`` is the same per-message work for the library's handlers and the raw
    loops: a count, and for latency runs the time since the payload was made.
    """

    def __init__(self, warm: int, n: int, *, latency: bool = False) -> None:
        self.warm = warm
        self.total = warm + n
        self.count = 0
        self.latency = latency
        self.latencies: list[float] = []
        self.t_warm = 0.0
        self.t_done = 0.0
        self.cpu_warm = 0.0
        self.cpu_done = 0.0
        self.warmed = asyncio.Event()
        self.done = asyncio.Event()

    def add(self, item: dict[str, Any]) -> None:
        """Record one handled payload."""
        self.count += 1
        now = time.perf_counter()
        if self.latency and self.count > self.warm:
            self.latencies.append((now - item["t"]) * 1000.0)
        if self.count == self.warm:
            self.t_warm = now
            self.cpu_warm = time.process_time()
            self.warmed.set()
        if self.count == self.total:
            self.t_done = now
            self.cpu_done = time.process_time()
            self.done.set()

    @property
    def rate(self) -> float:
        """Messages per second between the end of the warm-up and the last message."""
        return (self.total - self.warm) / (self.t_done - self.t_warm)

    @property
    def cpu_us(self) -> float:
        """CPU microseconds of this process per message over the same span as :attr:`rate`."""
        return (self.cpu_done - self.cpu_warm) * 1e6 / (self.total - self.warm)

    def run(self) -> Run:
        """The :class:`Run` this sink measured (rate from the end of the warm-up)."""
        return Run(self.rate, self.latencies, self.cpu_us)


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Redis]:
    """A plain redis-py asyncio client (hiredis parser when installed, raw bytes)."""
    client = Redis.from_url(url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


def entries_of(response: Any) -> list[tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """The ``(stream, entries)`` pairs of an XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not response:
        return []
    return list(response.items()) if isinstance(response, dict) else list(response)


async def ack_raw(client: Redis, acks: list[tuple[Any, list[bytes]]]) -> None:
    """XACK each stream's ids: one call for one stream, one pipeline for several."""
    if len(acks) == 1:
        stream, ids = acks[0]
        await client.xack(stream, GROUP, *ids)
        return
    pipe = client.pipeline(transaction=False)
    for stream, ids in acks:
        pipe.xack(stream, GROUP, *ids)
    await pipe.execute()


async def raw_consume(client: Redis, streams: list[str], batch: int, sink: Sink) -> None:
    """The raw consumer loop: XREADGROUP COUNT ``batch`` over ``streams``, decode, XACK."""
    wanted: dict[Any, Any] = dict.fromkeys(streams, ">")
    while not sink.done.is_set():
        response = await client.xreadgroup(GROUP, "raw", wanted, count=batch, block=100)
        acks: list[tuple[Any, list[bytes]]] = []
        for stream, entries in entries_of(response):
            ids = []
            for entry_id, fields in entries:
                sink.add(orjson.loads(fields[FIELD]))
                ids.append(entry_id)
            acks.append((stream, ids))
        if acks:
            await ack_raw(client, acks)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> None:
    """Poll ``condition`` every 10 ms until true; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: {what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.01)
