"""Shared pieces of the fan-out tests: reading targets back, checks, bridge processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from redisaq_core import Producer
from redisaq_core._assignment import partition_for_key
from redisaq_core.connection import AnyRedis
from redisaq_core.keys import TopicKeys

ROOT = Path(__file__).resolve().parents[1]

Row = tuple[int, str, dict[str, Any]]
"""(partition, entry id, decoded payload) of one target entry."""


async def produce(
    url: str, topic: str, payloads: list[dict[str, Any]], *, partitions: int, key: str | None
) -> None:
    """Put ``payloads`` on ``topic`` (created with ``partitions``), 1000 per round trip."""
    async with Producer(topic, redis_url=url, init_partitions=partitions) as producer:
        for i in range(0, len(payloads), 1000):
            await producer.batch_enqueue(payloads[i : i + 1000], partition_key=key)


async def create_topic(url: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions (and nothing in it)."""
    async with Producer(topic, redis_url=url, init_partitions=partitions):
        pass


async def partitions_of(redis: AnyRedis, topic: str) -> int:
    """The topic's partition count from its metadata (0 if it has none)."""
    raw: Any = await redis.hget(TopicKeys(topic).meta, "partitions")
    return int(raw or 0)


async def rows(redis: AnyRedis, topic: str) -> list[Row]:
    """Every entry of every partition of ``topic``, in stream order per partition."""
    keys = TopicKeys(topic)
    out: list[Row] = []
    for p in range(await partitions_of(redis, topic)):
        start = "-"
        while True:
            chunk: Any = await redis.xrange(keys.stream(p), start, "+", count=5000)
            if not chunk:
                break
            for entry_id, fields in chunk:
                data = fields.get(b"p")
                payload = orjson.loads(data if data is not None else fields[b"s"])
                out.append((p, entry_id.decode(), payload))
            last = chunk[-1][0].decode()
            ms, seq = last.split("-")
            start = f"{ms}-{int(seq) + 1}"
    return out


async def total_length(redis: AnyRedis, topics: Iterable[str]) -> int:
    """Entries in all partitions of ``topics``."""
    total = 0
    for topic in topics:
        keys = TopicKeys(topic)
        for p in range(await partitions_of(redis, topic)):
            total += int(await redis.xlen(keys.stream(p)))
    return total


async def pending(redis: AnyRedis, topic: str, group: str) -> int:
    """Entries delivered to ``group`` and not acknowledged, over the topic's partitions."""
    keys = TopicKeys(topic)
    total = 0
    for p in range(await partitions_of(redis, topic)):
        try:
            info: Any = await redis.xpending(keys.stream(p), group)
        except Exception:  # no stream or no group yet
            continue
        total += int(info["pending"])
    return total


def assert_exactly_once(found: list[Row], expected: set[int], what: str = "") -> None:
    """Each ``n`` of ``expected`` appears exactly once in ``found``, and nothing else."""
    counts = Counter(row[2]["n"] for row in found)
    lost = expected - set(counts)
    duplicated = {n: c for n, c in counts.items() if c > 1}
    extra = set(counts) - expected
    assert not lost, f"{what}: {len(lost)} lost, e.g. {sorted(lost)[:10]}"
    assert not duplicated, f"{what}: {len(duplicated)} duplicated, e.g. {list(duplicated)[:10]}"
    assert not extra, f"{what}: unexpected {sorted(extra)[:10]}"


def assert_key_order(found: list[Row], key: str = "k") -> None:
    """Per partition, the ``n`` of each key increase in stream order."""
    last: dict[tuple[int, Any], int] = {}
    for partition, _, payload in found:
        k = (partition, payload[key])
        assert last.get(k, -1) < payload["n"], f"key {payload[key]} out of order in {partition}"
        last[k] = payload["n"]


def assert_routed(found: list[Row], partitions: int, key: str = "k") -> None:
    """Each entry is in the partition its key picks (the producer's rule)."""
    for partition, _, payload in found:
        assert partition == partition_for_key(payload[key], partitions), payload


class Bridges:
    """Starts ``redisaq fanout`` processes; none outlives the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, redis_url: str, *args: str) -> subprocess.Popen[bytes]:
        """``redisaq -v --redis-url URL fanout ARGS...``, its output in a log file."""
        command = [
            sys.executable, "-m", "redisaq_core.cli.main", "-v", "--redis-url", redis_url,
            "fanout", *args,
        ]  # fmt: skip
        log = open(self.log_dir / f"bridge.{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=log, stderr=log)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, index: int = -1) -> str:
        """The output of a started process (the last one by default)."""
        n = index if index >= 0 else len(self.procs) + index
        return (self.log_dir / f"bridge.{n}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        """Kill every process still running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
