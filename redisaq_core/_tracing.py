"""Traces: OpenTelemetry spans for sending and handling messages, and the context in entries.

With ``opentelemetry-api`` installed (the ``otel`` extra) and a tracer provider
configured by the application (the SDK, or any other implementation), a
producer starts one ``send`` span per message (kind ``PRODUCER``) and, when that
span is recording, writes its W3C ``traceparent`` into the entry as the short
field ``t`` (see :mod:`redisaq_core._codec`). A consumer starts one
``process`` span (kind ``CONSUMER``) around each handler call: parented on the
producer's span for a single message, linked to every message's producer span
for a batch handler, as the OpenTelemetry messaging conventions advise. The span
is current while the handler runs, so the handler's own spans (and redis-py's
instrumentation, when enabled) nest under it. It ends after the message was
settled, with the handler's status; a timeout, a retry or a dead-lettering is an
event on it.

Without the API, or while no tracer provider is configured (the API alone returns
a proxy), :func:`tracer` returns ``None`` and nothing else here runs: no span,
no field. A ``t`` field that can't be read (written by another client, or too
long) is ignored with a debug log; the message is handled as usual.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._codec import F_TRACE
from .message import Received

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanContext, Tracer

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    _trace = None  # type: ignore[assignment]
    _context = None  # type: ignore[assignment]

__all__ = [
    "MAX_FIELD",
    "SYSTEM",
    "ProcessSpans",
    "Traced",
    "context_of",
    "current_field",
    "detach",
    "entry_ids",
    "mark",
    "process_spans",
    "remote_parent",
    "send_spans",
    "traceparent",
    "tracer",
]

log = logging.getLogger(__name__)

SYSTEM = "redisaq"
"""The value of ``messaging.system``."""

MAX_FIELD = 256
"""Longest ``t`` field read (a ``traceparent`` is 55 characters); longer ones are ignored."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")

_T = TypeVar("_T")


class Traced(Received):
    """A received message whose entry has a trace context field (``t``, still unparsed)."""

    __slots__ = ("trace",)

    trace: bytes


# The global provider is read without the API's accessor, which looks at os.environ on
# every call while no provider is set: this check runs once per call or batch.
_GLOBAL = _trace is not None and hasattr(_trace, "_TRACER_PROVIDER")
_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_cached: tuple[Any, Tracer | None] = (None, None)


def tracer() -> Tracer | None:
    """The library's tracer, or ``None`` while no tracer provider is configured (a cheap check)."""
    if _trace is None:
        return None
    if _GLOBAL and not _FROM_ENV:
        provider = _trace._TRACER_PROVIDER
        if provider is None:
            return None
    else:
        provider = _trace.get_tracer_provider()
    global _cached
    if provider is _cached[0]:
        return _cached[1]
    found: Tracer | None = None
    if not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider)):
        from importlib.metadata import PackageNotFoundError, version

        try:
            release = version("redisaq-core")
        except PackageNotFoundError:  # pragma: no cover - a source tree
            release = None
        found = provider.get_tracer("redisaq_core", release)
    _cached = (provider, found)
    return found


def traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` of ``ctx``."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"


def context_of(raw: bytes | str | None) -> SpanContext | None:
    """The remote span context in a ``t`` field, or ``None`` (with a debug log) if unreadable."""
    if raw is None or _trace is None:
        return None
    if len(raw) > MAX_FIELD:
        log.debug("trace context field of %d bytes ignored (over %d)", len(raw), MAX_FIELD)
        return None
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        text = ""
    found = _TRACEPARENT.fullmatch(text)
    if found is None or found[1] == "ff" or (found[1] == "00" and found[5]):
        log.debug("trace context field %r ignored: not a W3C traceparent", raw[:80])
        return None
    trace_id, span_id = int(found[2], 16), int(found[3], 16)
    if not trace_id or not span_id:
        log.debug("trace context field %r ignored: zero trace or span id", raw[:80])
        return None
    return _trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=_trace.TraceFlags(int(found[4], 16))
    )


class _Off:
    """What :func:`send_spans` returns while tracing is off: does nothing."""

    __slots__ = ()

    def wrap(
        self, call: Awaitable[_T], ids: Callable[[_T], Iterable[Any]], job_id: str | None = None
    ) -> Awaitable[_T]:
        """``call`` itself."""
        return call


_OFF = _Off()


class _Sends:
    """The producer spans of one call, one per message; the entries get their context."""

    __slots__ = ("spans",)

    def __init__(
        self, tracer: Tracer, topic: str, operation: str, items: Sequence[tuple[int, list[Any]]]
    ) -> None:
        assert _trace is not None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": topic,
        }
        if len(items) > 1:
            attributes["messaging.batch.message_count"] = len(items)
        self.spans: list[Span] = []
        for partition, fields in items:
            span = tracer.start_span(
                f"send {topic}",
                kind=_trace.SpanKind.PRODUCER,
                attributes={**attributes, "messaging.destination.partition.id": str(partition)},
            )
            if span.is_recording():
                fields += [F_TRACE, traceparent(span.get_span_context())]
            self.spans.append(span)

    def wrap(
        self, call: Awaitable[_T], ids: Callable[[_T], Iterable[Any]], job_id: str | None = None
    ) -> Awaitable[_T]:
        """``call`` (the write), ending the spans with its outcome: ``ids(reply)`` are the ids."""
        return self._sent(call, ids, job_id)

    async def _sent(
        self, call: Awaitable[_T], ids: Callable[[_T], Iterable[Any]], job_id: str | None
    ) -> _T:
        assert _trace is not None and _context is not None
        # One message: its span is current while it is sent (redis-py's spans nest under it).
        one = len(self.spans) == 1
        token = _context.attach(_trace.set_span_in_context(self.spans[0])) if one else None
        try:
            reply = await call
        except BaseException as exc:
            for span in self.spans:
                _failed(span, exc)
            raise
        else:
            for span, entry_id in zip(self.spans, ids(reply), strict=False):
                if entry_id is None:
                    continue
                if isinstance(entry_id, bytes):
                    entry_id = entry_id.decode()
                span.set_attribute("messaging.message.id", str(entry_id))
                if job_id is not None:
                    span.set_attribute("redisaq.job.id", job_id)
            return reply
        finally:
            if token is not None:
                _context.detach(token)
            for span in self.spans:
                span.end()


def send_spans(topic: str, operation: str, items: Sequence[tuple[int, list[Any]]]) -> _Sends | _Off:
    """Producer spans for ``items`` ((partition, list that ends with the entry's fields)).

    When a span records, its context is added to the end of its list: build the
    write from the lists after this call, then ``await spans.wrap(write, ids)``.
    While tracing is off this returns a shared object whose ``wrap`` returns the
    write itself.
    """
    found = tracer()
    if found is None or not items:
        return _OFF
    return _Sends(found, topic, operation, items)


class ProcessSpans:
    """The consumer spans of one dispatch: one per handler call, ended once settled."""

    __slots__ = ("consumer", "group", "open", "topic", "tracer")

    def __init__(self, tracer: Tracer, topic: str, group: str, consumer: str) -> None:
        self.tracer = tracer
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self.open: dict[int, Span] = {}
        """Spans by ``id()`` of each message they cover (a batch's span under each of them)."""

    def _attributes(self, partition: int | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": self.topic,
            "messaging.consumer.group.name": self.group,
            "messaging.client.id": self.consumer,
        }
        if partition is not None:
            attributes["messaging.destination.partition.id"] = str(partition)
        return attributes

    async def run(self, messages: list[Received], call: Awaitable[_T]) -> _T:
        """Await ``call`` (the handler's call on ``messages``) in a consumer span."""
        assert _trace is not None and _context is not None
        first = messages[0]
        parent: Context | None = None
        links: list[Link] = []
        if len(messages) == 1:
            attributes = self._attributes(first.partition)
            attributes["messaging.message.id"] = first.msg_id
            attributes["redisaq.message.delivery_count"] = first.deliveries
            if first.job_id:
                attributes["redisaq.job.id"] = first.job_id
            remote = context_of(getattr(first, "trace", None))
            if remote is not None:
                parent = _trace.set_span_in_context(_trace.NonRecordingSpan(remote))
        else:
            same = all(m.partition == first.partition for m in messages)
            attributes = self._attributes(first.partition if same else None)
            attributes["messaging.batch.message_count"] = len(messages)
            for m in messages:
                remote = context_of(getattr(m, "trace", None))
                if remote is not None:
                    links.append(_trace.Link(remote))
        span = self.tracer.start_span(
            f"process {self.topic}",
            context=parent,
            kind=_trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        for m in messages:
            self.open[id(m)] = span
        token = _context.attach(_trace.set_span_in_context(span))
        try:
            return await call
        except asyncio.TimeoutError as exc:
            span.add_event("timeout")
            _failed(span, exc)
            raise
        except Exception as exc:
            _failed(span, exc)
            raise
        except asyncio.CancelledError:  # the consumer stopped: no settlement will end it
            span.add_event("cancelled")
            span.end()
            for m in messages:
                self.open.pop(id(m), None)
            raise
        finally:
            _context.detach(token)

    def end(self, failures: Iterable[tuple[Received, BaseException | str, bool]]) -> None:
        """End every span, after settlement: ``failures`` (message, error, dead-lettered?)."""
        assert _trace is not None
        for m, error, dead in failures:
            span = self.open.get(id(m))
            if span is None:
                continue
            attributes = {"messaging.message.id": m.msg_id, "exception.type": _name(error)}
            if dead:
                span.add_event("dead_letter", attributes)
            else:
                span.add_event("retry", {**attributes, "next_delivery": m.deliveries + 1})
        ended: set[int] = set()
        for span in self.open.values():
            if id(span) not in ended:
                ended.add(id(span))
                span.end()
        self.open.clear()


def _name(error: BaseException | str) -> str:
    return "str" if isinstance(error, str) else type(error).__qualname__


def _failed(span: Span, exc: BaseException) -> None:
    assert _trace is not None
    span.record_exception(exc)
    span.set_attribute("error.type", _name(exc))
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, f"{_name(exc)}: {exc}"))


def mark(operation: str, topic: str, group: str, consumer: str, **attributes: Any) -> None:
    """A span of no length for a rare step of a consumer (a partition taken, released, claimed).

    Nothing while tracing is off.
    """
    found = tracer()
    if found is None:
        return
    found.start_span(
        f"{operation} {topic}",
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.name": operation,
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.client.id": consumer,
            **attributes,
        },
    ).end()


def current_field() -> list[Any]:
    """``[F_TRACE, traceparent]`` of the current span if it records, else ``[]``.

    For entries written on behalf of a handler (the fan-out bridge's copies).
    """
    if tracer() is None or _trace is None:
        return []
    span = _trace.get_current_span()
    if not span.is_recording():
        return []
    return [F_TRACE, traceparent(span.get_span_context())]


def process_spans(topic: str, group: str, consumer: str) -> ProcessSpans | None:
    """Consumer spans for one dispatch, or ``None`` while tracing is off."""
    found = tracer()
    return None if found is None else ProcessSpans(found, topic, group, consumer)


def remote_parent(headers: Any) -> object | None:
    """Make the trace context in HTTP ``headers`` current, unless a span already is.

    Returns a token for :func:`detach` (``None``: nothing was attached). For servers
    without their own OpenTelemetry instrumentation (the web gateway).
    """
    if tracer() is None or _trace is None or _context is None:
        return None
    if _trace.get_current_span().get_span_context().is_valid:
        return None  # an instrumented server already made the request's span current
    from opentelemetry import propagate

    return _context.attach(propagate.extract(headers))


def detach(token: object | None) -> None:
    """Undo :func:`remote_parent`."""
    if token is not None and _context is not None:
        _context.detach(token)  # type: ignore[arg-type]


def entry_ids(reply: Any) -> list[Any]:
    """The entry ids in a write's reply, for its spans: an id, ``[created, id, ...]``, or a list."""
    if not isinstance(reply, list):
        return [reply]
    if reply and isinstance(reply[0], int):
        return [reply[1]]
    return [
        r[1] if isinstance(r, list) and len(r) > 1 else None if isinstance(r, Exception) else r
        for r in reply
    ]
