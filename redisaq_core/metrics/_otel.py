"""The recorder's counts published through an OpenTelemetry meter as well.

With ``opentelemetry-api`` installed and a meter provider configured by the
application, each :class:`~redisaq_core.metrics.MetricsRecorder` also records
its events on these instruments (meter ``redisaq_core``; names after the
OpenTelemetry messaging conventions where one fits):

=======================================  ==============  ====================================
instrument                               unit            what
=======================================  ==============  ====================================
``messaging.client.sent.messages``       ``{message}``   counter: messages enqueued
``messaging.client.consumed.messages``   ``{message}``   counter: handler calls that returned
``messaging.process.duration``           ``s``           histogram: handler time
``redisaq.message.end_to_end.duration``  ``s``           histogram: enqueued to handled
``redisaq.messages.failed``              ``{message}``   counter: handler calls that raised
``redisaq.messages.retried``             ``{message}``   counter: failed messages run again
``redisaq.messages.dead_lettered``       ``{message}``   counter: moved to the dead letters
``redisaq.messages.timed_out``           ``{message}``   counter: handlers cut off
``redisaq.messages.trimmed``             ``{message}``   counter: pending entries trimmed away
``redisaq.messages.in_flight``           ``{message}``   up-down counter: being handled now
``redisaq.partition.lag``                ``{message}``   gauge: not yet delivered to the group
``redisaq.partition.pending``            ``{message}``   gauge: delivered, not acknowledged
``redisaq.partition.dead_letters``       ``{message}``   gauge: entries in the dead letters
=======================================  ==============  ====================================

Attributes: ``messaging.system`` (``redisaq``), ``messaging.destination.name``
(the topic), ``messaging.destination.partition.id`` and, for consumers,
``messaging.consumer.group.name``. The gauges are read from Redis (one
:func:`~redisaq_core.metrics.topic_metrics` view) by each consumer's recorder
every :data:`GAUGE_INTERVAL` seconds, for its own group.

While no meter provider is configured, :func:`otel_metrics` returns ``None`` and
the recorder makes no call here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._tracing import SYSTEM
from ..connection import AnyRedis

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry.metrics import NoOpMeterProvider, Observation
except ImportError:  # pragma: no cover - the otel extra is not installed
    _metrics = None  # type: ignore[assignment]

__all__ = ["GAUGE_INTERVAL", "OtelMetrics", "View", "otel_metrics", "read_views_with"]

log = logging.getLogger(__name__)

GAUGE_INTERVAL = 10.0
"""Seconds between two reads of the gauges (lag, pending, dead letters) from Redis."""

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bounds in seconds (the recorder's own), advised to the SDK."""

COUNTER_NAMES = {
    "failed": "redisaq.messages.failed",
    "retried": "redisaq.messages.retried",
    "dead_lettered": "redisaq.messages.dead_lettered",
    "timed_out": "redisaq.messages.timed_out",
    "trimmed": "redisaq.messages.trimmed",
}
"""The recorder's counters other than ``handled``, by their instrument names."""


View = Callable[[AnyRedis, str], Awaitable[dict[str, Any]]]
"""What reads a topic's view (:func:`~redisaq_core.metrics.topic_metrics`)."""

_view: View | None = None


def read_views_with(view: View) -> None:
    """Read the gauges with ``view`` (set by the package: the reader imports the recorder)."""
    global _view
    _view = view


class _Instruments:
    """The instruments of one meter provider (made once: a name is registered once)."""

    def __init__(self, meter: Meter) -> None:
        msg = "{message}"
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", msg, "Messages a producer enqueued"
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages", msg, "Messages a handler call returned for"
        )
        self.duration = meter.create_histogram(
            "messaging.process.duration", "s", "Duration of handler calls",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )  # fmt: skip
        self.end_to_end = meter.create_histogram(
            "redisaq.message.end_to_end.duration", "s", "From enqueued to handled",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )  # fmt: skip
        self.counters = {
            name: meter.create_counter(full, msg, f"Messages {name.replace('_', ' ')}")
            for name, full in COUNTER_NAMES.items()
        }
        self.in_flight = meter.create_up_down_counter(
            "redisaq.messages.in_flight", msg, "Messages being handled now"
        )
        self.gauges: dict[str, dict[tuple[tuple[str, Any], ...], int]] = {
            "lag": {}, "pending": {}, "dead_letters": {},
        }  # fmt: skip
        for name, text in (
            ("lag", "Entries of a partition not yet delivered to the group"),
            ("pending", "Entries delivered to the group and not acknowledged"),
            ("dead_letters", "Entries in a partition's dead-letter stream"),
        ):
            meter.create_observable_gauge(
                f"redisaq.partition.{name}", [self._observer(name)], msg, text
            )

    def _observer(self, name: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, dict(k)) for k, v in list(self.gauges[name].items())]

        return observe


_made: dict[int, tuple[MeterProvider, _Instruments]] = {}


def _instruments() -> _Instruments | None:
    if _metrics is None:
        return None
    provider = _metrics.get_meter_provider()
    if isinstance(provider, NoOpMeterProvider) or type(provider).__name__.startswith("_Proxy"):
        return None
    found = _made.get(id(provider))
    if found is None or found[0] is not provider:
        found = _made[id(provider)] = (provider, _Instruments(provider.get_meter("redisaq_core")))
    return found[1]


class OtelMetrics:
    """One recorder's side of the instruments: its attributes per partition, built once."""

    def __init__(self, instruments: _Instruments, topic: str, group: str | None) -> None:
        self.instruments = instruments
        self.topic = topic
        self.group = group
        self._attributes: dict[int, dict[str, Any]] = {}
        self.next_gauges = 0.0

    def attributes(self, partition: int) -> dict[str, Any]:
        """The attributes of ``partition`` (built on first use)."""
        found = self._attributes.get(partition)
        if found is None:
            found = {
                "messaging.system": SYSTEM,
                "messaging.destination.name": self.topic,
                "messaging.destination.partition.id": str(partition),
            }
            if self.group is not None:
                found["messaging.consumer.group.name"] = self.group
            self._attributes[partition] = found
        return found

    def produced(self, partition: int, n: int) -> None:
        """``n`` messages were enqueued."""
        self.instruments.sent.add(n, self.attributes(partition))

    def handled(self, partition: int, seconds: float, ages: Sequence[float | None]) -> None:
        """``len(ages)`` messages were handled by a call of ``seconds``."""
        attributes = self.attributes(partition)
        i = self.instruments
        i.consumed.add(len(ages), attributes)
        for age in ages:
            i.duration.record(seconds, attributes)
            if age is not None:
                i.end_to_end.record(max(age, 0.0), attributes)

    def counted(self, partition: int, name: str, n: int) -> None:
        """The recorder's counter ``name`` went up by ``n``."""
        self.instruments.counters[name].add(n, self.attributes(partition))

    def in_flight(self, partition: int, delta: int) -> None:
        """Messages being handled in ``partition`` changed by ``delta``."""
        self.instruments.in_flight.add(delta, self.attributes(partition))

    async def read_gauges(self, redis: AnyRedis) -> None:
        """Read lag, pending and dead letters of the topic (for this recorder's group)."""
        if _view is None:
            return
        view = await _view(redis, self.topic)
        gauges = self.instruments.gauges
        base: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.destination.name": self.topic,
        }
        for stats in view.get("partition_stats", []):
            key = {**base, "messaging.destination.partition.id": str(stats["partition"])}
            gauges["dead_letters"][tuple(sorted(key.items()))] = int(stats["dead_letters"])
        for group in view.get("groups", []):
            if group["group"] != self.group:
                continue
            for p in group["partitions"]:
                key = {
                    **base,
                    "messaging.destination.partition.id": str(p["partition"]),
                    "messaging.consumer.group.name": self.group,
                }
                k = tuple(sorted(key.items()))
                gauges["lag"][k] = int(p["lag"] or 0)
                gauges["pending"][k] = int(p["pending"] or 0)


def otel_metrics(topic: str, group: str | None) -> OtelMetrics | None:
    """The instruments for a recorder of ``topic`` (and ``group``), or ``None`` while off."""
    found = _instruments()
    return None if found is None else OtelMetrics(found, topic, group)
