"""Counting on the hot path: :class:`MetricsRecorder`.

It adds its counts to the topic's metrics hash once per ``flush_interval``
(the layout is in :mod:`redisaq_core.metrics`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

from .._failures import REDIS_FAILURES
from .._scripts import Script
from .._tasks import cancel_and_wait
from ..connection import AnyRedis
from ..errors import ConfigurationError
from ..keys import TopicKeys, validate_name
from ._otel import GAUGE_INTERVAL, otel_metrics
from ._series import series_args

__all__ = [
    "COUNTERS",
    "DEFAULT_BUCKETS",
    "HISTOGRAMS",
    "METRICS_FLUSH",
    "MetricsRecorder",
    "bucket_label",
]

log = logging.getLogger(__name__)


METRICS_FLUSH = Script("metrics_flush")


DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histogram buckets, as Prometheus' defaults."""


COUNTERS = ("handled", "failed", "retried", "dead_lettered", "timed_out", "trimmed")
"""The per-group, per-partition counters."""


HISTOGRAMS = ("handler_seconds", "end_to_end_seconds")
"""The per-group, per-partition latency histograms."""


_GAUGE_GRACE_MS = 2000


_GAUGE_FORGET_MS = 3_600_000


_FLUSHED_MS = 3_600_000
"""The least time a recorder's last flush number is kept (a flush is sent again within it)."""


def bucket_label(value: float) -> str:
    """A histogram bound as Prometheus writes it in ``le`` (``0.005``, ``10``, ``+Inf``)."""
    return "+Inf" if math.isinf(value) else f"{value:g}"


class _Histogram:
    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self, prefix: str, bounds: Sequence[float]) -> None:
        self.count = f"{prefix} count"
        self.sum = f"{prefix} sum"
        self.max = f"{prefix} max"
        self.buckets = [f"{prefix} le={bucket_label(b)}" for b in (*bounds, math.inf)]


class _Fields:
    """The field names of one partition, built once."""

    __slots__ = ("counters", "e2e", "gauge", "handler")

    def __init__(self, partition: int, group: str, consumer: str, bounds: Sequence[float]) -> None:
        base = f"{partition} {group}"
        self.counters = {name: f"{base} {name}" for name in COUNTERS}
        self.handler = _Histogram(f"{base} handler_seconds", bounds)
        self.e2e = _Histogram(f"{base} end_to_end_seconds", bounds)
        self.gauge = f"{base} in_flight {consumer}"


class MetricsRecorder:
    """Count a topic's events in memory and flush them to Redis every ``flush_interval`` s.

    The counting methods are synchronous and cheap enough for every message.
    ``group`` is required by every method but :meth:`produced` (a producer's
    recorder has none). ``consumer`` names this recorder's in-flight gauges
    (default: a random name). ``buckets`` are the histogram's upper bounds in
    seconds. ``redis`` is a client this recorder uses but never closes.

    Use ``async with`` or :meth:`start` / :meth:`stop`; :meth:`stop` flushes
    what is left. If a flush fails (Redis unreachable), it is sent again as it
    was, before the next one; a flush Redis applied but whose reply was lost is
    not counted twice (each carries a number Redis keeps for an hour).
    """

    def __init__(
        self,
        redis: AnyRedis,
        topic: str,
        group: str | None = None,
        *,
        consumer: str | None = None,
        flush_interval: float = 1.0,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.redis = redis
        self.keys = TopicKeys(topic)
        self.topic = topic
        self.group = None if group is None else validate_name(group, "group")
        self.consumer = validate_name(consumer or uuid.uuid4().hex[:12], "consumer")
        if (
            isinstance(flush_interval, bool)
            or not isinstance(flush_interval, (int, float))
            or not 0 < flush_interval < math.inf
        ):
            raise ConfigurationError(
                f"flush_interval must be a number of seconds > 0, got {flush_interval!r}"
            )
        bounds = sorted(float(b) for b in buckets)
        if (
            not bounds
            or any(not 0 < b < math.inf for b in bounds)
            or len(set(bounds)) < len(bounds)
        ):
            raise ConfigurationError(
                f"buckets must be distinct finite numbers > 0, got {list(buckets)!r}"
            )
        self.flush_interval = float(flush_interval)
        self._bounds = bounds
        self._fields: dict[int, _Fields] = {}
        self._produced: dict[int, str] = {}
        self._ints: dict[str, int] = {}
        self._sums: dict[str, float] = {}
        self._maxes: dict[str, float] = {}
        self._gauges: dict[int, int] = {}
        self._dirty_gauges: set[int] = set()
        self._lock = asyncio.Lock()
        self._flushed_key = self.keys.flushed(uuid.uuid4().hex)
        self._flushes = 0
        self._unsent: list[Any] | None = None  # a flush whose reply never came, to send again
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._otel = otel_metrics(topic, self.group)  # None: no OpenTelemetry meter provider

    def _make(self, partition: int) -> _Fields:
        if self.group is None:
            raise ConfigurationError(
                f"MetricsRecorder of topic {self.topic!r} has no group: pass group= to count "
                "anything but produced messages"
            )
        fields = _Fields(partition, self.group, self.consumer, self._bounds)
        self._fields[partition] = fields
        return fields

    def _count(self, partition: int, name: str, n: int) -> None:
        f = self._fields.get(partition) or self._make(partition)
        field = f.counters[name]
        self._ints[field] = self._ints.get(field, 0) + n
        if self._otel is not None:
            self._otel.counted(partition, name, n)

    def _observe(self, h: _Histogram, seconds: float) -> None:
        seconds = seconds if seconds > 0 else 0.0
        ints = self._ints
        ints[h.count] = ints.get(h.count, 0) + 1
        self._sums[h.sum] = self._sums.get(h.sum, 0.0) + seconds
        if seconds > self._maxes.get(h.max, -1.0):
            self._maxes[h.max] = seconds
        bucket = h.buckets[bisect.bisect_left(self._bounds, seconds)]
        ints[bucket] = ints.get(bucket, 0) + 1

    def produced(self, partition: int, n: int = 1) -> None:
        """``n`` messages were added to ``partition``."""
        field = self._produced.get(partition)
        if field is None:
            field = self._produced[partition] = f"{partition} produced"
        self._ints[field] = self._ints.get(field, 0) + n
        if self._otel is not None:
            self._otel.produced(partition, n)

    def handled(
        self, partition: int, handler_seconds: float, end_to_end_seconds: float | None = None
    ) -> None:
        """A handler returned after ``handler_seconds``.

        ``end_to_end_seconds`` is the time since the message was enqueued
        (``None`` when unknown).
        """
        f = self._fields.get(partition) or self._make(partition)
        field = f.counters["handled"]
        self._ints[field] = self._ints.get(field, 0) + 1
        self._observe(f.handler, handler_seconds)
        if end_to_end_seconds is not None:
            self._observe(f.e2e, end_to_end_seconds)
        if self._otel is not None:
            self._otel.handled(partition, handler_seconds, (end_to_end_seconds,))

    def handled_each(
        self, partition: int, handler_seconds: Sequence[float], ages: Sequence[float]
    ) -> None:
        """Messages handled one handler call each, in ``handler_seconds``; ``ages``: end to end."""
        if not handler_seconds:
            return
        f = self._fields.get(partition) or self._make(partition)
        field = f.counters["handled"]
        self._ints[field] = self._ints.get(field, 0) + len(handler_seconds)
        self._observe_many(f.handler, handler_seconds)
        self._observe_many(f.e2e, ages)
        if self._otel is not None:
            for seconds, age in zip(handler_seconds, ages, strict=True):
                self._otel.handled(partition, seconds, (age,))

    def _observe_many(self, h: _Histogram, values: Sequence[float]) -> None:
        """Observe ``values`` at once: sorted, each bucket's count is two bisects."""
        if not values:
            return
        ordered = sorted(values)
        if ordered[0] < 0:
            ordered = [v if v > 0 else 0.0 for v in ordered]
        ints, n, below = self._ints, len(ordered), 0
        for name, bound in zip(h.buckets, self._bounds, strict=False):
            upto = bisect.bisect_right(ordered, bound)
            if upto > below:
                ints[name] = ints.get(name, 0) + upto - below
                below = upto
        if n > below:
            last = h.buckets[-1]
            ints[last] = ints.get(last, 0) + n - below
        ints[h.count] = ints.get(h.count, 0) + n
        self._sums[h.sum] = self._sums.get(h.sum, 0.0) + sum(ordered)
        if ordered[-1] > self._maxes.get(h.max, -1.0):
            self._maxes[h.max] = ordered[-1]

    def handled_many(self, partition: int, handler_seconds: float, ages: Sequence[float]) -> None:
        """``len(ages)`` messages were handled by one handler call (a batch) in ``handler_seconds``.

        ``ages`` are the messages' end-to-end times.
        """
        n = len(ages)
        if not n:
            return
        if self._otel is not None:
            self._otel.handled(partition, handler_seconds, ages)
        f = self._fields.get(partition) or self._make(partition)
        ints, sums, maxes, bounds = self._ints, self._sums, self._maxes, self._bounds
        field = f.counters["handled"]
        ints[field] = ints.get(field, 0) + n
        h = f.handler
        took = handler_seconds if handler_seconds > 0 else 0.0
        ints[h.count] = ints.get(h.count, 0) + n
        sums[h.sum] = sums.get(h.sum, 0.0) + took * n
        if took > maxes.get(h.max, -1.0):
            maxes[h.max] = took
        bucket = h.buckets[bisect.bisect_left(bounds, took)]
        ints[bucket] = ints.get(bucket, 0) + n
        self._observe_many(f.e2e, ages)

    def failed(self, partition: int) -> None:
        """A handler raised (or was cancelled at its timeout)."""
        self._count(partition, "failed", 1)

    def retried(self, partition: int) -> None:
        """A failed message was scheduled for another delivery."""
        self._count(partition, "retried", 1)

    def dead_lettered(self, partition: int) -> None:
        """A message was moved to the dead-letter stream."""
        self._count(partition, "dead_lettered", 1)

    def timed_out(self, partition: int) -> None:
        """A handler was cancelled because the message's timeout passed."""
        self._count(partition, "timed_out", 1)

    def trimmed(self, partition: int, n: int = 1) -> None:
        """``n`` pending entries were found trimmed from the stream before being handled."""
        self._count(partition, "trimmed", n)

    def in_flight(self, partition: int, delta: int) -> None:
        """Change this consumer's count of messages being handled in ``partition`` by ``delta``."""
        if partition not in self._fields:
            self._make(partition)
        self._gauges[partition] = self._gauges.get(partition, 0) + delta
        self._dirty_gauges.add(partition)
        if self._otel is not None:
            self._otel.in_flight(partition, delta)

    async def __aenter__(self) -> MetricsRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start flushing every ``flush_interval`` seconds (idempotent)."""
        if self._task is None and not self._stopped:
            self._task = asyncio.create_task(self._run(), name=f"redisaq-metrics-{self.topic}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            # Shielded: a flush cancelled after Redis applied it would be counted twice. If
            # this loop is cancelled meanwhile, the flush ends on its own and says how.
            flush = asyncio.ensure_future(self.flush())
            flush.add_done_callback(self._flushed)
            with contextlib.suppress(*REDIS_FAILURES):  # _flushed says so
                await asyncio.shield(flush)
            await self._otel_gauges()

    async def _otel_gauges(self) -> None:
        """Read the OpenTelemetry gauges every ``GAUGE_INTERVAL`` (a consumer's recorder)."""
        if self._otel is None:
            self._otel = otel_metrics(self.topic, self.group)  # a provider set since
        now = asyncio.get_running_loop().time()
        if self._otel is None or self.group is None or now < self._otel.next_gauges:
            return
        self._otel.next_gauges = now + max(GAUGE_INTERVAL, self.flush_interval)
        try:
            await self._otel.read_gauges(self.redis)
        except Exception as exc:  # Redis away, or a view it can't read: the next time, then
            log.debug("metrics of %s: gauges not read: %r", self.topic, exc)

    def _flushed(self, flush: asyncio.Future[None]) -> None:
        error = None if flush.cancelled() else flush.exception()
        if error is not None:
            log.warning("metrics of %s: flush failed, will retry: %s", self.topic, error)

    async def stop(self) -> None:
        """Stop flushing, flush what is left and remove this recorder's gauges (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        try:
            await asyncio.shield(self._flush(final=True))
        except REDIS_FAILURES as exc:
            log.warning("metrics of %s: final flush failed: %s", self.topic, exc)

    async def flush(self) -> None:
        """Send the counts gathered since the last flush now (one round trip)."""
        await self._flush(final=False)

    async def _flush(self, *, final: bool) -> None:
        async with self._lock:
            if self._unsent is not None:
                await self._send(self._unsent)
                self._unsent = None
            ints, self._ints = self._ints, {}
            sums, self._sums = self._sums, {}
            maxes, self._maxes = self._maxes, {}
            args: list[Any] = []
            for field, n in ints.items():
                args += ["i", field, n]
            for field, value in sums.items():
                args += ["f", field, repr(value)]
            for field, value in maxes.items():
                args += ["m", field, repr(value)]
            gauges = self._gauge_args(final)
            if not args and not gauges:
                return
            self._flushes += 1
            keep = max(_FLUSHED_MS, int(10_000 * self.flush_interval))
            flush = ["n", keep, self._flushes, *args, *gauges, *series_args(ints)]
            try:
                await self._send(flush)
            except BaseException:
                # Sent again as it is, under its number: applied already, it is not again.
                self._unsent = flush
                raise
            if final:
                self._gauges.clear()
            self._dirty_gauges.clear()

    async def _send(self, flush: list[Any]) -> None:
        await METRICS_FLUSH(
            self.redis,
            [self.keys.metrics, self.keys.series, self._flushed_key],
            [int(self.flush_interval * 1000), *flush],
        )

    def _gauge_args(self, final: bool) -> list[Any]:
        out: list[Any] = []
        for partition, n in self._gauges.items():
            field = self._fields[partition].gauge
            if final:
                out += ["d", field, ""]
            elif n or partition in self._dirty_gauges:
                out += ["g", field, n]
        return out
