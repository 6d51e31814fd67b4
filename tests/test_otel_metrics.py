"""The recorder's figures through an OpenTelemetry meter (an SDK with an in-memory reader)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from redisaq_core import Consumer, Message, Producer
from redisaq_core.metrics import _recorder
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}

_reader: InMemoryMetricReader | None = None


def reader() -> InMemoryMetricReader:
    """This process's meter provider (set once), read in memory."""
    global _reader
    if _reader is None:
        _reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader


def points(topic: str) -> dict[str, dict[str, Any]]:
    """``{instrument: {"unit", "<partition>": value or histogram count}}`` for ``topic``."""
    out: dict[str, dict[str, Any]] = {}
    data = reader().get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes or {})
                    if attributes.get("messaging.destination.name") != topic:
                        continue
                    found = out.setdefault(metric.name, {"unit": metric.unit})
                    partition = attributes["messaging.destination.partition.id"]
                    found[partition] = getattr(point, "value", None)
                    if found[partition] is None:
                        found[partition] = point.count  # a histogram
    return out


async def test_counters_histograms_and_gauges_follow_the_semantic_conventions(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader()
    monkeypatch.setattr(_recorder, "GAUGE_INTERVAL", 0.2)
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}])
        await producer.enqueue(Message(topic, {"n": 5}))

    async def handle(message: Message) -> None:
        if message.payload["n"] == 2:
            raise ValueError("two is bad")

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.05, **FAST)
    async with Running(consumer, handle):
        found = await eventually(
            lambda: (lambda p: p if p.get("redisaq.partition.dead_letters", {}).get("0") else None)(
                points(topic)
            ),
            message="a dead letter counted by the gauge",
        )
    assert found["messaging.client.sent.messages"] == {"unit": "{message}", "0": 5}
    assert found["messaging.client.consumed.messages"] == {"unit": "{message}", "0": 4}
    assert found["messaging.process.duration"] == {"unit": "s", "0": 4}
    assert found["redisaq.message.end_to_end.duration"] == {"unit": "s", "0": 4}
    assert found["redisaq.messages.failed"]["0"] == 2
    assert found["redisaq.messages.retried"]["0"] == 1
    assert found["redisaq.messages.dead_lettered"]["0"] == 1
    assert found["redisaq.partition.dead_letters"]["0"] == 1
    assert found["redisaq.partition.lag"]["0"] == 0
    assert found["redisaq.partition.pending"]["0"] == 0
    assert points(topic)["redisaq.messages.in_flight"]["0"] == 0
