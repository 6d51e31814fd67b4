"""The recorder's figures through an OpenTelemetry meter.

The meter provider (the SDK, read in memory) is set in a child process: a
global provider would stay on for every later test of this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import asyncio, json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

from redisaq_core import Consumer, Message, Producer
from redisaq_core.metrics import _recorder
from tests.helpers import Running, eventually

_recorder.GAUGE_INTERVAL = 0.2  # the gauges read from Redis every 0.2 s, not 10
URL, TOPIC = sys.argv[1], sys.argv[2]


def points():
    out = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.get("messaging.destination.name") != TOPIC:
                        continue
                    found = out.setdefault(metric.name, {"unit": metric.unit})
                    key = attributes["messaging.destination.partition.id"]
                    found[key] = getattr(point, "value", None)
                    if found[key] is None:
                        found[key] = point.count  # a histogram
                    if "messaging.consumer.group.name" in attributes:
                        found["group"] = attributes["messaging.consumer.group.name"]
    return out


async def main():
    async with Producer(TOPIC, redis_url=URL) as producer:
        await producer.batch_enqueue([{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}])
        await producer.enqueue(Message(TOPIC, {"n": 5}))

    async def handle(message):
        if message.payload["n"] == 2:
            raise ValueError("two is bad")

    consumer = Consumer(TOPIC, redis_url=URL, max_deliveries=2, retry_backoff=0.05,
                        heartbeat_interval=0.2, poll_interval=0.1)
    async with Running(consumer, handle):
        found = await eventually(
            lambda: (lambda p: p if p.get("redisaq.partition.dead_letters", {}).get("0") else None)(
                points()
            ),
            message="a dead letter counted by the gauge",
        )
    found["after"] = points()["redisaq.messages.in_flight"]
    print(json.dumps(found))

asyncio.run(main())
"""


def test_counters_histograms_and_gauges_follow_the_semantic_conventions(
    redis_url: str, topic: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, redis_url, topic], cwd=ROOT, capture_output=True,
        text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["messaging.client.sent.messages"] == {"unit": "{message}", "0": 5}
    group = {"unit": "{message}", "group": "default"}
    assert found["messaging.client.consumed.messages"] == {**group, "0": 4}
    assert found["messaging.process.duration"] == {"unit": "s", "group": "default", "0": 4}
    assert found["redisaq.message.end_to_end.duration"]["0"] == 4
    assert found["redisaq.messages.failed"] == {**group, "0": 2}
    assert found["redisaq.messages.retried"] == {**group, "0": 1}
    assert found["redisaq.messages.dead_lettered"] == {**group, "0": 1}
    assert found["redisaq.partition.dead_letters"] == {"unit": "{message}", "0": 1}
    assert found["redisaq.partition.lag"] == {**group, "0": 0}
    assert found["redisaq.partition.pending"] == {**group, "0": 0}
    assert found["after"] == {**group, "0": 0}  # in flight, after the consumer stopped
