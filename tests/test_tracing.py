"""OpenTelemetry traces: from an HTTP request through the gateway and the stream to a handler.

Real processes: the test process is the client (and the producer) with the SDK
and an in-memory exporter; ``redisaq web`` and ``redisaq worker`` run as child
processes whose SDK writes their spans to files (tests/tracing_support.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from redisaq_core import Consumer, FanOut, Message, Producer
from redisaq_core._tracing import MAX_FIELD, detach, remote_parent
from redisaq_core.dlq import DeadLetters
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, eventually, wait_sync
from tests.tracing_support import read_spans, sdk_in_this_process, span_dict

ROOT = Path(__file__).resolve().parents[1]
FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}
WORKER_FAST = ["--heartbeat-interval", "0.3", "--heartbeat-ttl", "1.2", "--poll-interval", "0.2",
               "--shutdown-timeout", "5"]  # fmt: skip


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans, recorded for the test's duration only."""
    exporter, switch = sdk_in_this_process()
    exporter.clear()
    switch.on = True
    try:
        yield exporter
    finally:
        switch.on = False
        exporter.clear()


def finished(exporter: InMemorySpanExporter, name: str) -> list[dict[str, Any]]:
    return [span_dict(s) for s in exporter.get_finished_spans() if s.name == name]


class Child:
    """``redisaq ARGS`` in a child process with the SDK writing spans to ``spans``."""

    def __init__(self, tmp_path: Path, label: str, *args: str) -> None:
        self.spans = tmp_path / f"{label}-spans.jsonl"
        self.log = tmp_path / f"{label}.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
            "PYTHONPATH", "")]))  # fmt: skip
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.tracing_support", str(self.spans), *args],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip

    def first_line(self, timeout: float = 20) -> str:
        lines: list[bytes] = []
        assert self.proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.daemon = True
        reader.start()
        reader.join(timeout)
        assert lines and lines[0], f"no output; log: {self.log.read_text()}"
        return lines[0].decode().strip()

    def read(self) -> list[dict[str, Any]]:
        return read_spans(self.spans)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def worker(tmp_path: Path, redis_url: str, topic: str, *extra: str) -> Child:
    args = ["--redis-url", redis_url, "worker", "tests.tracing_support:handle", "--topic", topic]
    return Child(tmp_path, "worker", *args, *WORKER_FAST, *extra)


def span_named(child: Child, name: str, count: int = 1) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = wait_sync(
        lambda: (lambda got: got if len(got) >= count else None)(
            [s for s in child.read() if s["name"] == name]
        ),
        timeout=20,
        message=f"{count} span(s) {name!r} from the child; log: {child.log}",
    )
    return found


async def test_a_worker_process_continues_the_producers_trace(
    spans: InMemorySpanExporter, redis_url: str, topic: str, tmp_path: Path
) -> None:
    tracer = trace.get_tracer("tests")
    async with Producer(topic, redis_url=redis_url) as producer:
        with tracer.start_as_current_span("request") as parent:
            entry_id = await producer.enqueue({"n": 1})
            job = await producer.submit({"n": 2})
    sent = finished(spans, f"send {topic}")
    assert len(sent) == 2
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert {s["trace_id"] for s in sent} == {trace_id}
    assert sent[0]["kind"] == "PRODUCER"
    assert sent[0]["attributes"] == {
        "messaging.system": "redisaq", "messaging.operation.type": "send",
        "messaging.operation.name": "enqueue", "messaging.destination.name": topic,
        "messaging.destination.partition.id": "0", "messaging.message.id": entry_id,
    }  # fmt: skip
    assert sent[1]["attributes"]["redisaq.job.id"] == job.id

    child = worker(tmp_path, redis_url, topic, "--name", "w1")
    try:
        done = span_named(child, f"process {topic}", 2)
    finally:
        child.stop()
    by_id = {s["attributes"]["messaging.message.id"]: s for s in done}
    first = by_id[entry_id]
    assert first["trace_id"] == trace_id and first["parent_id"] == sent[0]["span_id"]
    assert first["kind"] == "CONSUMER" and first["status"] == "UNSET"
    assert first["attributes"] == {
        "messaging.system": "redisaq", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": topic,
        "messaging.consumer.group.name": "default", "messaging.client.id": "w1",
        "messaging.destination.partition.id": "0", "messaging.message.id": entry_id,
        "redisaq.message.delivery_count": 1,
    }  # fmt: skip
    submitted = next(s for s in done if s["attributes"].get("redisaq.job.id") == job.id)
    assert submitted["parent_id"] == sent[1]["span_id"]


async def test_a_job_over_the_gateway_carries_the_http_requests_trace(
    spans: InMemorySpanExporter, redis_url: str, topic: str, tmp_path: Path
) -> None:
    gateway = Child(tmp_path, "gateway", "--redis-url", redis_url, "web", "--port", "0")
    child = None
    try:
        url = gateway.first_line()
        child = worker(tmp_path, redis_url, topic)
        with trace.get_tracer("tests").start_as_current_span("client call") as client:
            ctx = client.get_span_context()
            traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            reply = await http.post(
                "/jobs", json={"topic": topic, "payload": {"order": 7}},
                headers={"traceparent": traceparent},
            )  # fmt: skip
            assert reply.status_code == 201, reply.text
            job_id = reply.json()["job_id"]
            record = await eventually(
                lambda: _completed(http, job_id), timeout=20, message="job completed"
            )
        assert record["result"] == {"echo": {"order": 7}}
        trace_id = f"{ctx.trace_id:032x}"
        (sent,) = span_named(gateway, f"send {topic}")
        assert sent["trace_id"] == trace_id
        # Under the request's span: the client's own, or the server span FastAPI's
        # instrumentation (when present) opened under it.
        assert f"{ctx.span_id:016x}" in _ancestors(sent, gateway.read())
        assert sent["attributes"]["redisaq.job.id"] == job_id
        (done,) = span_named(child, f"process {topic}")
        assert done["trace_id"] == trace_id and done["parent_id"] == sent["span_id"]
        assert done["attributes"]["redisaq.job.id"] == job_id
    finally:
        gateway.stop()
        if child is not None:
            child.stop()


def _ancestors(span: dict[str, Any], others: list[dict[str, Any]]) -> list[str]:
    by_id = {s["span_id"]: s for s in others}
    chain = []
    parent = span["parent_id"]
    while parent is not None:
        chain.append(parent)
        parent = by_id[parent]["parent_id"] if parent in by_id else None
    return chain


async def _completed(http: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
    reply = await http.get(f"/jobs/{job_id}")
    body: dict[str, Any] = reply.json()
    return body if reply.status_code == 200 and body.get("status") == "completed" else None


async def test_a_batch_handler_links_every_messages_context(
    spans: InMemorySpanExporter, redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(3)])
    sent = finished(spans, f"send {topic}")
    assert [s["attributes"]["messaging.batch.message_count"] for s in sent] == [3, 3, 3]
    got: list[int] = []

    async def handle(batch: list[Message]) -> None:
        got.extend(m.payload["n"] for m in batch)

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(consumer, handle, batch=True):
        await eventually(lambda: len(got) == 3 and finished(spans, f"process {topic}"))
    (done,) = finished(spans, f"process {topic}")
    assert done["parent_id"] is None
    assert done["links"] == [s["trace_id"] for s in sent]
    assert done["attributes"]["messaging.batch.message_count"] == 3
    (assigned,) = finished(spans, f"assign {topic}")  # a partition taken: a span of no length
    assert assigned["attributes"]["messaging.destination.partition.id"] == "0"


async def test_retries_dead_lettering_and_timeouts_are_events(
    spans: InMemorySpanExporter, redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        bad = await producer.enqueue({"kind": "bad"})
        await producer.enqueue(Message(topic, {"kind": "slow"}, timeout=0.2))

    async def handle(message: Message) -> None:
        if message.payload["kind"] == "bad":
            raise ValueError("no good")
        await asyncio.sleep(5)

    consumer = Consumer(topic, redis_url=redis_url, max_deliveries=2, retry_backoff=0.05, **FAST)
    async with Running(consumer, handle):
        await eventually(
            lambda: len(finished(spans, f"process {topic}")) >= 4, message="four handler runs"
        )
    done = finished(spans, f"process {topic}")
    runs = [s for s in done if s["attributes"]["messaging.message.id"] == bad]
    assert [s["attributes"]["redisaq.message.delivery_count"] for s in runs] == [1, 2]
    assert all(s["status"] == "ERROR" for s in done[:4])
    assert [e["name"] for e in runs[0]["events"]] == ["exception", "retry"]
    assert [e["name"] for e in runs[1]["events"]] == ["exception", "dead_letter"]
    slow = [s for s in done if s["attributes"]["messaging.message.id"] != bad]
    assert [e["name"] for e in slow[0]["events"]][:3] == ["timeout", "exception", "retry"]


async def test_no_field_is_written_while_no_span_records(
    redis: Redis, redis_url: str, topic: str
) -> None:
    sdk_in_this_process()  # a provider whose sampler drops every span
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
        await producer.batch_enqueue([{"n": 2}])
        await producer.submit({"n": 3})
    entries = await redis.xrange(TopicKeys(topic).stream(0))
    assert len(entries) == 3 and all(b"t" not in fields for _, fields in entries)


def test_with_the_api_and_no_sdk_nothing_is_traced(redis_url: str, topic: str) -> None:
    script = f"""
import asyncio, json, sys
import fastapi  # which brings the OpenTelemetry API along
from redisaq_core import Producer
from redisaq_core import _tracing
from redisaq_core.connection import create_client
from redisaq_core.keys import TopicKeys

async def main():
    async with Producer({topic!r}, redis_url={redis_url!r}) as p:
        await p.enqueue({{"n": 1}})
        await p.batch_enqueue([{{"n": 2}}])
        await p.submit({{"n": 3}})
    client = create_client({redis_url!r})
    entries = await client.xrange(TopicKeys({topic!r}).stream(0))
    await client.aclose()
    fields = [sorted(k.decode() for k in f) for _, f in entries]
    print(json.dumps({{"tracer": _tracing.tracer() is None, "fields": fields}}))

asyncio.run(main())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"tracer": True, "fields": [["p"], ["p"], ["j", "p"]]}


@pytest.mark.parametrize(
    "field",
    [
        b"garbage",
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",  # an all-zero trace id
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"\xff\xfe\x00",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + b" " * MAX_FIELD,
    ],
)
async def test_an_unreadable_trace_field_is_ignored_and_the_message_handled(
    spans: InMemorySpanExporter, redis: Redis, redis_url: str, topic: str, field: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    async with Producer(topic, redis_url=redis_url):
        pass  # the topic's metadata
    await redis.xadd(TopicKeys(topic).stream(0), {b"p": b'{"n": 1}', b"t": field})
    got: list[Any] = []

    async def handle(message: Message) -> None:
        got.append(message.payload)

    caplog.set_level(logging.DEBUG, logger="redisaq_core._tracing")
    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: got and finished(spans, f"process {topic}"))
    assert got == [{"n": 1}]
    (done,) = finished(spans, f"process {topic}")
    assert done["parent_id"] is None and done["status"] == "UNSET"
    assert any("trace context field" in r.getMessage() for r in caplog.records)
    async with DeadLetters(topic, redis_url=redis_url) as dead:
        assert await dead.count() == 0


async def test_a_trace_field_is_read_by_consumers_that_do_not_trace(
    redis: Redis, redis_url: str, topic: str
) -> None:
    """An entry with ``t`` from a tracing producer: a consumer without a recording span."""
    exporter, switch = sdk_in_this_process()
    switch.on = True
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.enqueue({"n": uuid.uuid4().hex})
    finally:
        switch.on = False
        exporter.clear()
    ((_, fields),) = await redis.xrange(TopicKeys(topic).stream(0))
    assert fields[b"t"].startswith(b"00-")
    got: list[Any] = []

    async def handle(message: Message) -> None:
        got.append(message)

    async with Running(Consumer(topic, redis_url=redis_url, **FAST), handle):
        await eventually(lambda: got)
    assert got[0].payload == json.loads(fields[b"p"])


async def test_a_servers_request_headers_become_the_parent_when_no_span_is_current(
    spans: InMemorySpanExporter, redis_url: str, topic: str
) -> None:
    """What the gateway does on a FastAPI without its own telemetry."""
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    token = remote_parent({"traceparent": header})
    assert token is not None
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.submit({"n": 1})
    finally:
        detach(token)
    assert not trace.get_current_span().get_span_context().is_valid
    (sent,) = finished(spans, f"send {topic}")
    assert sent["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sent["parent_id"] == "00f067aa0ba902b7"
    with trace.get_tracer("tests").start_as_current_span("instrumented server"):
        assert remote_parent({"traceparent": header}) is None


async def test_a_fan_out_copy_continues_from_the_bridges_span(
    spans: InMemorySpanExporter, redis_url: str, topic: str
) -> None:
    target = f"{topic}-copy"
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1})
    (sent,) = finished(spans, f"send {topic}")
    bridge = FanOut(topic, [target], redis_url=redis_url, batch_size=10, **FAST)
    got: list[Any] = []

    async def handle(message: Message) -> None:
        got.append(message.payload)

    async with bridge:
        task = asyncio.create_task(bridge.run())
        try:
            async with Running(Consumer(target, redis_url=redis_url, **FAST), handle):
                await eventually(lambda: got and finished(spans, f"process {target}"))
        finally:
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)
    (copied,) = finished(spans, f"process {topic}")  # the bridge's span (a batch of one)
    assert (copied["trace_id"], copied["parent_id"]) == (sent["trace_id"], sent["span_id"])
    (done,) = finished(spans, f"process {target}")
    assert (done["trace_id"], done["parent_id"]) == (sent["trace_id"], copied["span_id"])


async def test_idempotent_writes_get_their_spans_and_fields(
    spans: InMemorySpanExporter, redis: Redis, redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        first = await producer.enqueue({"n": 1}, idempotency_key="k1")
        again = await producer.enqueue({"n": 1}, idempotency_key="k1")  # writes nothing
        ids = await producer.batch_enqueue([{"n": 2}, {"n": 3}], idempotency_key="k2")
        job = await producer.submit({"n": 4}, idempotency_key="k3")
    assert again == first
    sent = finished(spans, f"send {topic}")
    assert [s["attributes"]["messaging.message.id"] for s in sent][:4] == [first, first, *ids]
    assert sent[4]["attributes"]["redisaq.job.id"] == job.id
    entries = await redis.xrange(TopicKeys(topic).stream(0))
    assert len(entries) == 4
    for (_, fields), span in zip(entries, [sent[0], *sent[2:]], strict=True):
        assert fields[b"t"].decode().startswith(f"00-{span['trace_id']}-{span['span_id']}-")
