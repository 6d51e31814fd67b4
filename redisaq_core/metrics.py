"""Metrics: counted in memory on the hot path, kept in Redis, read back as one view.

:class:`MetricsRecorder` counts in plain dicts (a few dict operations per
call) and adds its counts to the topic's metrics hash once per
``flush_interval`` with one script call (one round trip, applied atomically).
:func:`topic_metrics` reads that hash together with the live figures of the
streams (length, pending, lag, dead letters, owners), so that any process can
see the whole system; :func:`redisaq_core.prometheus.render_prometheus`
turns such views into the Prometheus text format.

Layout of the hash ``TopicKeys(topic).metrics``. Field names are tokens
separated by single spaces (topic, group and consumer names never contain
whitespace); ``P`` is a partition number, ``G`` a group name::

    "P produced"                       messages added to partition P (by producers)
    "P G handled"                      handler calls that returned
    "P G failed"                       handler calls that raised (or timed out)
    "P G retried"                      failed messages scheduled for another delivery
    "P G dead_lettered"                messages moved to the dead-letter stream
    "P G timed_out"                    handler calls cancelled at the message's timeout
    "P G trimmed"                      pending entries found trimmed from the stream
    "P G handler_seconds count|sum|max"     handler duration of handled messages
    "P G handler_seconds le=B"              how many of them took <= B seconds and more
                                            than the next smaller bound ("le=+Inf": the rest)
    "P G end_to_end_seconds ..."       the same for enqueue-to-handled time
    "P G in_flight C"                  gauge of consumer C: "<n> <server ms> <interval ms>"

Bucket fields hold per-bucket (not cumulative) counts; readers add them up.
In-flight gauges are per consumer and carry the server time of their last
write and the writer's flush interval: a reader counts a gauge only while it
is fresh (written within three intervals plus two seconds), so the in-flight
count of a consumer that died does not stay in the sum. A recorder rewrites
its non-zero gauges on every flush and deletes them when it stops; gauges
stale for more than an hour are deleted by :func:`topic_metrics`.

Lag (entries of a partition not yet delivered to a group) comes from
``XINFO GROUPS`` on Redis 7 and later. Redis 6.2 has no such figure, so it is
counted by a script that walks the entries after the group's
last-delivered-id, at most :data:`LAG_SCAN_LIMIT` of them: a larger lag is
exact only when none of the stream was delivered yet (then it is the stream
length); otherwise the view reports :data:`LAG_SCAN_LIMIT` with ``lag_exact``
false, a lower bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .codec import shown_text
from .connection import AnyRedis
from .errors import ConfigurationError
from .failures import REDIS_FAILURES
from .keys import TopicKeys, validate_name
from .scripts import Script, run_pipelined

__all__ = [
    "COUNTERS",
    "DEFAULT_BUCKETS",
    "HISTOGRAMS",
    "LAG_SCAN_LIMIT",
    "MetricsRecorder",
    "bucket_label",
    "topic_metrics",
]

log = logging.getLogger(__name__)

METRICS_FLUSH = Script("metrics_flush")
STREAM_LAG = Script("stream_lag")

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the latency histogram buckets, as Prometheus' defaults."""
COUNTERS = ("handled", "failed", "retried", "dead_lettered", "timed_out", "trimmed")
"""The per-group, per-partition counters."""
HISTOGRAMS = ("handler_seconds", "end_to_end_seconds")
"""The per-group, per-partition latency histograms."""
LAG_SCAN_LIMIT = 10_000
"""Most entries counted one by one to find a group's lag on Redis < 7."""
_GAUGE_GRACE_MS = 2000
_GAUGE_FORGET_MS = 3_600_000


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
    what is left. If a flush fails (Redis unreachable), its counts are kept
    and sent with the next one.
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
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

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

    def handled_many(
        self, partition: int, handler_seconds: float, ages: Sequence[float | None]
    ) -> None:
        """``len(ages)`` messages were handled by one handler call (a batch) in ``handler_seconds``.

        ``ages`` are the messages' end-to-end times (``None`` when unknown).
        """
        n = len(ages)
        if not n:
            return
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
        e = f.e2e
        known = [a if a > 0 else 0.0 for a in ages if a is not None]
        if not known:
            return
        ints[e.count] = ints.get(e.count, 0) + len(known)
        sums[e.sum] = sums.get(e.sum, 0.0) + sum(known)
        top = max(known)
        if top > maxes.get(e.max, -1.0):
            maxes[e.max] = top
        names = e.buckets
        for age in known:
            name = names[bisect.bisect_left(bounds, age)]
            ints[name] = ints.get(name, 0) + 1

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
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
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
            try:
                await METRICS_FLUSH(
                    self.redis,
                    [self.keys.metrics],
                    [int(self.flush_interval * 1000), *args, *gauges],
                )
            except BaseException:
                self._merge(ints, sums, maxes)
                raise
            if final:
                self._gauges.clear()
            self._dirty_gauges.clear()

    def _gauge_args(self, final: bool) -> list[Any]:
        out: list[Any] = []
        for partition, n in self._gauges.items():
            field = self._fields[partition].gauge
            if final:
                out += ["d", field, ""]
            elif n or partition in self._dirty_gauges:
                out += ["g", field, n]
        return out

    def _merge(self, ints: dict[str, int], sums: dict[str, float], maxes: dict[str, float]) -> None:
        for field, n in ints.items():
            self._ints[field] = self._ints.get(field, 0) + n
        for field, value in sums.items():
            self._sums[field] = self._sums.get(field, 0.0) + value
        for field, value in maxes.items():
            self._maxes[field] = max(value, self._maxes.get(field, value))


# ---- reading ------------------------------------------------------------------------


def _number(value: Any) -> float:
    try:
        return float(shown_text(value))
    except ValueError:
        return 0.0


def _empty_histogram() -> dict[str, Any]:
    return {"count": 0, "sum": 0.0, "max": 0.0, "le": {}}


def _empty_partition(partition: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "partition": partition, "owner": None, "pending": 0, "lag": 0, "lag_exact": True,
        "in_flight": 0, "trimmed_unread": 0,
    }  # fmt: skip
    out.update(dict.fromkeys(COUNTERS, 0))
    out.update({name: _empty_histogram() for name in HISTOGRAMS})
    return out


def _merge_histogram(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["count"] += other["count"]
    into["sum"] += other["sum"]
    into["max"] = max(into["max"], other["max"])
    for bound, n in other["le"].items():
        into["le"][bound] = into["le"].get(bound, 0) + n


def _finish_histogram(h: dict[str, Any]) -> dict[str, Any]:
    """Replace the per-bucket counts by cumulative ``buckets`` ``[[bound, count], ...]``."""
    per_bucket: dict[float, int] = {b: 0 for b in (*DEFAULT_BUCKETS, math.inf)}
    for bound, n in h.pop("le").items():
        per_bucket[bound] = per_bucket.get(bound, 0) + n
    total, buckets = 0, []
    for bound in sorted(per_bucket):
        total += per_bucket[bound]
        buckets.append([bucket_label(bound), total])
    h["buckets"] = buckets
    h["count"] = max(h["count"], total)
    return h


class _Metrics:
    """The metrics hash of a topic, parsed."""

    def __init__(self, raw: Mapping[Any, Any], now_ms: int) -> None:
        self.produced: dict[int, int] = {}
        self.groups: dict[str, dict[int, dict[str, Any]]] = {}
        self.gauges: dict[str, dict[int, dict[str, int]]] = {}
        self.forget: list[str] = []
        for key, value in raw.items():
            tokens = shown_text(key).split(" ")
            try:
                self._add(tokens, value, now_ms)
                if len(tokens) == 4 and tokens[2] == "in_flight":
                    written = int(shown_text(value).split(" ")[1])
                    if now_ms - written > _GAUGE_FORGET_MS:
                        self.forget.append(shown_text(key))
            except (ValueError, IndexError):
                log.debug("ignoring metrics field %r", key)

    def partition(self, group: str, partition: int) -> dict[str, Any]:
        parts = self.groups.setdefault(group, {})
        if partition not in parts:
            parts[partition] = _empty_partition(partition)
        return parts[partition]

    def _add(self, tokens: list[str], value: Any, now_ms: int) -> None:
        partition = int(tokens[0])
        if len(tokens) == 2 and tokens[1] == "produced":
            self.produced[partition] = int(_number(value))
            return
        group = tokens[1]
        if len(tokens) == 3 and tokens[2] in COUNTERS:
            self.partition(group, partition)[tokens[2]] = int(_number(value))
        elif len(tokens) == 4 and tokens[2] in HISTOGRAMS:
            h = self.partition(group, partition)[tokens[2]]
            part = tokens[3]
            if part.startswith("le="):
                bound = math.inf if part == "le=+Inf" else float(part[3:])
                h["le"][bound] = h["le"].get(bound, 0) + int(_number(value))
            elif part in ("count", "sum", "max"):
                h[part] = int(_number(value)) if part == "count" else _number(value)
        elif len(tokens) == 4 and tokens[2] == "in_flight":
            n, written, interval = (int(x) for x in shown_text(value).split(" "))
            if now_ms - written <= 3 * interval + _GAUGE_GRACE_MS:
                self.gauges.setdefault(group, {}).setdefault(partition, {})[tokens[3]] = n


def _summary_pending(value: Any) -> tuple[int, dict[str, int]]:
    if not isinstance(value, dict):
        return 0, {}
    consumers = {
        shown_text(c["name"]): int(c["pending"]) for c in value.get("consumers") or () if c
    }
    return int(value.get("pending") or 0), consumers


async def topic_metrics(redis: AnyRedis, topic: str) -> dict[str, Any]:
    """The whole view of one topic: stored counters and live figures, JSON-ready.

    Shape (times in Unix seconds of the server's clock)::

        {"topic", "time", "exists", "partitions", "priorities", "groups_count",
         "produced", "length", "dead_letters",            # topic totals
         "maxlen", "trim", "over_maxlen",                 # retention (Producer(maxlen, trim))
         "partition_stats": [{"partition", "produced", "length", "dead_letters",
                              "over_maxlen"}],
         "groups": [{"group",
                     "members": [{"name", "last_heartbeat", "age", "partitions",
                                  "pending", "in_flight"}],
                     "partitions": [{"partition", "owner", "pending", "lag", "lag_exact",
                                     "in_flight", "handled", "failed", "retried",
                                     "dead_lettered", "timed_out", "trimmed",
                                     "trimmed_unread", "handler_seconds",
                                     "end_to_end_seconds"}],
                     "totals": {the same figures summed over the partitions}}]}

    A histogram is ``{"count", "sum", "max", "buckets": [[bound, cumulative count],
    ..., ["+Inf", count]]}``. ``length``, ``pending`` and ``lag`` add up every
    priority level of a partition. ``exists`` is false for a topic with no
    metadata (all figures are then zero). Three pipelined round trips (two on
    Redis 7 when every lag is known). ``over_maxlen``: entries a ``trim="acked"``
    topic keeps past ``maxlen`` because a group has not acknowledged them.
    ``trimmed_unread``: entries trimmed before the group read them (from the
    stream's entries-added and the group's entries-read; on Redis 6.2, which
    keeps neither, only for a group that has read nothing, from the producers'
    count, else ``None``).
    """
    return await _TopicReader(redis, TopicKeys(topic)).read()


class _TopicReader:
    """The steps of :func:`topic_metrics`."""

    def __init__(self, redis: AnyRedis, keys: TopicKeys) -> None:
        self.redis = redis
        self.keys = keys
        self.now_ms = 0
        self.partitions = 0
        self.priorities = 1
        self.exists = False
        self.stored = _Metrics({}, 0)
        self.names: set[str] = set()
        self.streams: list[tuple[int, int]] = []
        self.infos: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        self.length: dict[int, int] = {}
        self.dlq: list[int] = []
        self.maxlen: int | None = None
        self.trim = "maxlen"
        self.added: dict[tuple[int, int], tuple[int, int | None]] = {}
        self.members: dict[tuple[str, str], dict[str, Any]] = {}

    async def read(self) -> dict[str, Any]:
        await self._meta()
        await self._streams()
        groups = sorted(self.names)
        views = await self._groups(groups)
        stored = self.stored
        return {
            "topic": self.keys.topic,
            "time": self.now_ms / 1000.0,
            "exists": self.exists,
            "partitions": self.partitions,
            "priorities": self.priorities,
            "groups_count": len(groups),
            "produced": sum(stored.produced.values()),
            "length": sum(self.length.values()),
            "dead_letters": sum(self.dlq),
            "maxlen": self.maxlen,
            "trim": self.trim,
            "over_maxlen": sum(self._over(p) for p in range(self.partitions)),
            "partition_stats": [
                {
                    "partition": p,
                    "produced": stored.produced.get(p, 0),
                    "length": self.length[p],
                    "dead_letters": self.dlq[p],
                    "over_maxlen": self._over(p),
                }
                for p in range(self.partitions)
            ],
            "groups": views,
        }

    def _over(self, partition: int) -> int:
        if self.maxlen is None or self.trim != "acked":
            return 0
        return max(0, self.length[partition] - self.maxlen * self.priorities)

    async def _meta(self) -> None:
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.meta)
        pipe.smembers(keys.groups)
        pipe.hgetall(keys.metrics)
        # TIME on its own: a cluster pipeline refuses commands without a key.
        (meta, group_set, raw_metrics), (sec, usec) = await asyncio.gather(
            pipe.execute(), self.redis.time()
        )
        self.now_ms = int(sec) * 1000 + int(usec) // 1000
        self.exists = bool(meta)
        self.partitions = int(_number(meta.get(b"partitions", 0)))
        self.priorities = max(1, int(_number(meta.get(b"priorities", 1))))
        if b"maxlen" in meta:
            self.maxlen = int(_number(meta[b"maxlen"]))
            self.trim = shown_text(meta.get(b"trim", b"maxlen"))
        self.stored = _Metrics(raw_metrics, self.now_ms)
        self.names = {shown_text(g) for g in group_set} | set(self.stored.groups)
        self.names |= set(self.stored.gauges)

    async def _streams(self) -> None:
        keys = self.keys
        self.streams = [(p, lv) for p in range(self.partitions) for lv in range(self.priorities)]
        pipe = self.redis.pipeline(transaction=False)
        for p, level in self.streams:
            pipe.xlen(keys.stream(p, level))
            pipe.xinfo_groups(keys.stream(p, level))
        for p in range(self.partitions):
            pipe.xlen(keys.dead_letters(p))
        for p, level in self.streams:
            pipe.xinfo_stream(keys.stream(p, level))
        results = await pipe.execute(raise_on_error=False)
        described = results[2 * len(self.streams) + self.partitions :]
        for (p, level), info in zip(self.streams, described, strict=True):
            if isinstance(info, dict):
                added = info.get("entries-added")
                self.added[(p, level)] = (
                    int(info.get("length") or 0),
                    None if added is None else int(added),
                )
        self.length = dict.fromkeys(range(self.partitions), 0)
        for i, (p, level) in enumerate(self.streams):
            n, info = results[2 * i], results[2 * i + 1]
            self.length[p] += n if isinstance(n, int) else 0
            if isinstance(info, list):
                self.infos[(p, level)] = {shown_text(g["name"]): g for g in info}
                self.names |= set(self.infos[(p, level)])
        self.dlq = [
            n if isinstance(n, int) else 0
            for n in results[2 * len(self.streams) : 2 * len(self.streams) + self.partitions]
        ]

    async def _groups(self, groups: list[str]) -> list[dict[str, Any]]:
        keys, stored = self.keys, self.stored
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.zrange(keys.members(g), 0, -1, withscores=True)
            pipe.hgetall(keys.assignment(g))
        pending = [(g, p, lv) for g in groups for p, lv in self.streams
                   if g in self.infos.get((p, lv), {})]  # fmt: skip
        for g, p, level in pending:
            pipe.xpending(keys.stream(p, level), g)
        if stored.forget:
            pipe.hdel(keys.metrics, *stored.forget)
        results = await pipe.execute(raise_on_error=False)
        views = [self._group(g, results[2 * i], results[2 * i + 1]) for i, g in enumerate(groups)]
        for i, (g, p, level) in enumerate(pending):
            count, consumers = _summary_pending(results[2 * len(groups) + i])
            stored.partition(g, p)["pending"] += count
            self._trimmed_unread(stored.partition(g, p), g, p, level)
            for name, n in consumers.items():
                if (g, name) in self.members:
                    self.members[(g, name)]["pending"] += n
        await self._lags(groups)
        for g, by_partition in stored.gauges.items():
            for p, consumers in by_partition.items():
                stored.partition(g, p)["in_flight"] = sum(consumers.values())
                for name, n in consumers.items():
                    if (g, name) in self.members:
                        self.members[(g, name)]["in_flight"] += n
        for view in views:
            self._totals(view)
        return views

    def _trimmed_unread(self, row: dict[str, Any], group: str, p: int, level: int) -> None:
        """Entries removed from the stream that the group had not read (7.0+; else None)."""
        length, added = self.added.get((p, level), (0, None))
        info = self.infos[(p, level)][group]
        read = info.get("entries-read")
        if read is None and shown_text(info.get("last-delivered-id") or "") == "0-0":
            read = 0  # a group that has read nothing yet
        if added is None and read == 0 and self.priorities == 1:
            # Redis 6.2 keeps no entries-added: for a group that has read nothing, the
            # producers' own count of the partition stands in for it.
            added = self.stored.produced.get(p)
        if added is None or read is None or row["trimmed_unread"] is None:
            row["trimmed_unread"] = None
            return
        row["trimmed_unread"] += max(0, added - length - int(read))

    def _group(self, group: str, members_raw: Any, assignment_raw: Any) -> dict[str, Any]:
        assignment: dict[int, str] = {}
        if isinstance(assignment_raw, dict):
            for k, v in assignment_raw.items():
                if shown_text(k).isdigit():
                    assignment[int(shown_text(k))] = shown_text(v)
        for p in range(self.partitions):
            self.stored.partition(group, p)["owner"] = assignment.get(p)
        members: list[dict[str, Any]] = []
        for name, score in members_raw if isinstance(members_raw, list) else ():
            member = {
                "name": shown_text(name),
                "last_heartbeat": score / 1000.0,
                "age": max(0.0, (self.now_ms - score) / 1000.0),
                "partitions": sorted(p for p, m in assignment.items() if m == shown_text(name)),
                "pending": 0,
                "in_flight": 0,
            }
            members.append(member)
            self.members[(group, member["name"])] = member
        return {"group": group, "members": members}

    async def _lags(self, groups: list[str]) -> None:
        """Take the lag from XINFO where the server gives it; count it with a script elsewhere."""
        targets: list[dict[str, Any]] = []
        calls: list[Any] = []
        for g in groups:
            for p, level in self.streams:
                info = self.infos.get((p, level), {}).get(g)
                if info is None:
                    continue
                row = self.stored.partition(g, p)
                if info.get("lag") is not None:
                    row["lag"] += int(info["lag"])
                    continue
                last = shown_text(info.get("last-delivered-id") or "0-0")
                targets.append(row)
                calls.append((STREAM_LAG, [self.keys.stream(p, level)], [last, LAG_SCAN_LIMIT]))
        for row, result in zip(targets, await run_pipelined(self.redis, calls), strict=True):
            if isinstance(result, list):
                row["lag"] += int(result[0])
                row["lag_exact"] = row["lag_exact"] and bool(int(result[1]))
            else:
                row["lag_exact"] = False

    def _totals(self, view: dict[str, Any]) -> None:
        by_partition = self.stored.groups.get(view["group"], {})
        rows = [by_partition[p] for p in sorted(by_partition)]
        totals = _empty_partition(0)
        del totals["partition"], totals["owner"]
        for row in rows:
            for key in ("pending", "lag", "in_flight", *COUNTERS):
                totals[key] += row[key]
            totals["lag_exact"] = totals["lag_exact"] and row["lag_exact"]
            if totals["trimmed_unread"] is not None:
                unread = row["trimmed_unread"]
                totals["trimmed_unread"] = (
                    None if unread is None else totals["trimmed_unread"] + unread
                )
            for name in HISTOGRAMS:
                _merge_histogram(totals[name], row[name])
                _finish_histogram(row[name])
        for name in HISTOGRAMS:
            _finish_histogram(totals[name])
        view["partitions"] = rows
        view["totals"] = totals
