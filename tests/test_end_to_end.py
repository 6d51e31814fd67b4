"""Whole-system checks: metrics kept by real producers and consumers, a job followed by the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from redisaq_core import Consumer, Message, Producer
from redisaq_core.metrics import topic_metrics
from tests.helpers import Running, eventually

ROOT = Path(__file__).resolve().parents[1]


async def test_metrics_equal_what_the_test_counted(
    redis_url: str, redis: Redis, topic: str
) -> None:
    n, poison = 60, {7, 21}
    calls: dict[str, int] = {"ok": 0, "failed": 0}

    async def handle(m: Message) -> None:
        if m.payload["n"] in poison:
            calls["failed"] += 1
            raise RuntimeError("poison")
        calls["ok"] += 1

    async with Producer(topic, redis_url=redis_url, init_partitions=3) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(n)], partition_key="n")
        consumer = Consumer(
            topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.01,
            heartbeat_interval=0.2, poll_interval=0.1,
        )  # fmt: skip
        async with Running(consumer, handle):
            await eventually(lambda: consumer.stats.dead_lettered == len(poison))
            await eventually(lambda: consumer.stats.handled == n - len(poison))
    # Producer and consumer flushed their figures when they closed.
    view: Any = await topic_metrics(redis, topic)
    assert view["produced"] == n
    (group,) = view["groups"]
    totals = group["totals"]
    assert totals["handled"] == calls["ok"] == n - len(poison)
    assert totals["failed"] == calls["failed"] == 2 * len(poison)
    assert totals["retried"] == consumer.stats.retried == len(poison)
    assert totals["dead_lettered"] == len(poison)
    assert totals["pending"] == 0 and totals["lag"] == 0
    assert totals["handler_seconds"]["count"] == n - len(poison)
    assert view["dead_letters"] == len(poison)


async def handle_job(m: Message) -> Any:
    """Handler of the worker process below."""
    return {"sum": sum(m.payload)}


async def test_job_followed_from_another_process_by_the_cli(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit([1, 2, 3])
        worker = subprocess.Popen(
            [sys.executable, "-m", "redisaq_core.cli.main", "worker",
             "tests.test_end_to_end:handle_job", "--topic", topic, "--redis-url", redis_url,
             "--heartbeat-interval", "0.2", "--poll-interval", "0.1"],
            cwd=ROOT,
        )  # fmt: skip
        try:
            assert await job.result(timeout=20) == {"sum": 6}
        finally:
            worker.terminate()
            assert worker.wait(timeout=15) == 0
    shown = subprocess.run(
        [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
         "monitor", "job", job.id, "--format", "json"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["status"] == "completed" and record["result"] == {"sum": 6}
    assert record["attempts"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
         "monitor", "job", f"{topic}/0/nope", "--format", "json"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert missing.returncode == 1
