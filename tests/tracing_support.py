"""OpenTelemetry SDK set-ups for the tracing tests: in this process, and in child processes.

``python -m tests.tracing_support SPANS_FILE REDISAQ_ARGS...`` runs the ``redisaq``
command with the SDK configured as an application would (a tracer provider with
a span processor), its spans written to ``SPANS_FILE`` as JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """The parts of a finished span the tests look at, JSON-ready (ids as hex)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [f"{link.context.trace_id:032x}" for link in span.links],
        "status": span.status.status_code.name,
    }


class FileSpanExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.lock, self.path.open("a") as out:
            for span in spans:
                out.write(json.dumps(span_dict(span), default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a child process wrote so far."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


class Switch(Sampler):
    """Samples every span while ``on``, none otherwise (this process's other tests)."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
        attributes: Attributes = None, links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:  # fmt: skip
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "Switch"


_installed: tuple[InMemorySpanExporter, Switch] | None = None


def sdk_in_this_process() -> tuple[InMemorySpanExporter, Switch]:
    """This process's tracer provider (set once): its in-memory exporter and sampler switch.

    The switch is off between tracing tests, so the spans other tests make are not
    recording and no entry gets a trace field.
    """
    global _installed
    if _installed is None:
        exporter, switch = InMemorySpanExporter(), Switch()
        provider = TracerProvider(sampler=switch)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _installed = exporter, switch
    return _installed


async def handle(message: Any) -> Any:
    """A worker's handler: a job's result is its payload, under ``echo``."""
    return {"echo": message.payload}


async def flaky(message: Any) -> Any:
    """A worker's handler that logs, and fails a message's first delivery."""
    logging.getLogger("tests.handler").warning("handling %s", message.msg_id)
    if message.deliveries == 1:
        raise RuntimeError("first delivery fails")
    return "done"


def main(argv: list[str]) -> int:
    """Configure the SDK to write spans to ``argv[0]``, then run ``redisaq argv[1:]``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(Path(argv[0]))))
    trace.set_tracer_provider(provider)
    from redisaq_core.cli.main import main as redisaq

    try:
        return redisaq(argv[1:])
    finally:
        provider.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
