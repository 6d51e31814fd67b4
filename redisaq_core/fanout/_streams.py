"""``FanOut``: copy every message of one topic to several topics, each exactly once.

A bridge reads its source topic as a member of a consumer group (a
:class:`~redisaq_core.consumer.Consumer` with the usual group protocol:
several bridges split the source's partitions, a dead bridge's pending
entries are claimed by the others, failures are retried and dead-lettered)
and, per batch, writes each entry to every target topic and acknowledges it
on the source::

    async with FanOut("orders", ["billing", "shipping"], redis_url=url) as bridge:
        await bridge.run()                    # until `await bridge.stop()`

``targets`` is a list of topic names, or a mapping of topic name to a
*transform*: a callable taking the :class:`~redisaq_core.message.Message`
(payload decoded) and returning the payload to write to that target, or
``None`` to skip that target for this message (``None`` in place of a
transform copies the message unchanged). A transform may be a coroutine
function.

Routing. An entry goes to the target partition its partition key picks there
(``partition_for_key(payload[partition_key], target partitions)``, the
producer's rule), so per-key order holds in every target: the entries of one
key are in one source partition, which one bridge at a time handles in
stream order. An entry without a partition key goes to the partition picked
by the same hash of its source entry id, so that a redelivered entry lands
where its first write went. The target's partition count is read from its
metadata; a target topic that does not exist yet is created with
``target_partitions`` partitions (default: the source's count when the bridge
starts, 1 if the source does not exist yet). Priority
levels are kept as far as the target has them. Payloads are copied as stored,
without decoding, unless a transform or a partition key needs them decoded
(with ``deserializer``; ``serializer`` encodes what a transform returns).

Guarantees, per deployment:

* **One Redis server** (or a primary with replicas): each batch of a source
  partition is one Lua script (``lua/fanout.lua``) that checks that this
  bridge holds the source partition's lease, acknowledges each entry, and
  writes an entry to its targets only when its acknowledgement found it still
  pending. A bridge killed at any moment (SIGKILL included) leaves each
  entry either fanned out and acknowledged, or neither: the next owner of the
  partition handles it, once. **Every target gets every source message
  exactly once**, as long as the source's consumer group survives (a Redis
  restarted without persistence recreates the group and starts over) and
  within Redis's own durability (see the README).
* **Redis Cluster**: the targets' partitions live in other hash slots, so one
  atomic step is impossible. Each target partition's writes are one script
  (``lua/fanout_write.lua``) that writes an entry only if it can create the
  entry's idempotency record (``SET NX``, keyed by source, group, partition
  and entry id, in the target partition's slot); the source entries are
  acknowledged (fenced by the lease) after every target write succeeded.
  A batch handled again after a crash, or by the partition's next owner,
  finds the records and writes nothing twice. Records live ``dedupe_ttl``
  (default one day) until their entry is acknowledged, then
  ``dedupe_grace`` (default one minute, for a slow former owner's late
  write). **Exactly once per target**, unless an entry written but not
  acknowledged is handled again more than ``dedupe_ttl`` later (the bridges
  were down that long), or a former owner paused for more than
  ``dedupe_grace`` between reading a batch and writing it: then a
  duplicate is possible, never a loss. A bridge that lost its lease may
  still write a batch its successor also handles; the records make that
  harmless.

Failures. A transform (or routing) that raises for an entry holds that entry
and the entries behind it in its source partition; the entries of the batch
before it, and the entries of the batch's other partitions, are fanned out
at once. The held entry is retried after the consumer's backoff (the
entries behind it follow), and after ``max_deliveries`` it goes to the source's
dead-letter stream (no target gets it) and the entries behind it are fanned
out. So per-key order holds in every target, a dead-lettered entry being
absent from all of them. A Redis connection failure (or a cluster failover)
during a write is retried with backoff until it succeeds or the bridge
stops; the writes are idempotent, so a retry never duplicates.

Metrics (``metrics=True``): the source's consumer-group metrics count the
fanned-out messages as ``handled`` with ``handler_seconds`` (the duration of
the batch's fan-out step) and ``end_to_end_seconds`` (from the source enqueue
to the fan-out); each target's metrics count the entries written to it as
``produced`` per partition. :attr:`FanOut.stats` also counts, per target,
entries written and entries a transform skipped.

``FanOut.from_lists`` is the list mode for users of plain Redis lists
(mpush): see :class:`~redisaq_core.fanout.ListFanOut`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from .._assignment import key_value
from .._checks import integer, number
from .._codec import (
    F_BYTES,
    F_CREATED,
    F_KEY,
    F_TEXT,
    F_TIMEOUT,
    Deserializer,
    Serializer,
    default_deserializer,
    default_serializer,
    encode_payload,
)
from .._delivery import POLL_INTERVAL
from .._failures import REDIS_FAILURES, UNREACHABLE
from .._growth import add_member
from .._tracing import current_field
from ..connection import AnyRedis, RedisComponent, is_cluster
from ..consumer import Consumer
from ..errors import AlreadyRunningError, ConfigurationError
from ..keys import MAX_PARTITIONS, TopicKeys, partition_count, validate_name
from ..message import Message, Received
from ..metrics import MetricsRecorder
from ._lists import ListFanOut
from ._writer import Entry, FanOutStats, Fields, Target, Writer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..consumer import ConsumerOptions
    from ..registry import Keepalive, ServiceInfo, ServiceRegistry

__all__ = ["FANOUT_SERVICE_TYPE", "FanOut", "FanOutStats", "Transform"]

log = logging.getLogger(__name__)

FANOUT_SERVICE_TYPE = "fanout"
"""The service type fan-out bridges register themselves with."""

Transform = Callable[[Received], Any]
"""A target's transform: the payload to write for a message, or ``None`` to skip it."""


def _raw(data: bytes | str) -> bytes | str:
    """The consumer's deserializer: keep payloads as stored (decoded only when needed)."""
    return data


class FanOut(RedisComponent):
    """Fan a topic out to several topics: every message to every target, exactly once.

    ``source``: the topic read; ``targets``: topic names, or a mapping of
    topic name to transform (see the module docstring). ``group_name``: the
    consumer group the bridges share (bridges with different groups each copy
    everything). ``batch_size``: entries read and fanned out per step.
    ``maxlen`` / ``approximate``: trim each target stream on every write.
    ``target_partitions``: the partition count of a target topic created by
    the bridge (default: the source's). ``dedupe_ttl`` / ``dedupe_grace``:
    lifetimes of the idempotency records on Redis Cluster. ``registry``:
    register the bridge (service type ``fanout``) while it runs; deleting the
    registration stops it gracefully. The remaining keyword arguments
    (:class:`~redisaq_core.consumer.ConsumerOptions`: heartbeats, retries, dead
    letters, shutdown) are passed to the bridge's
    :class:`~redisaq_core.consumer.Consumer`.

    Give either ``redis=`` (a client that is never closed here) or
    ``redis_url=``. ``await run()`` until ``await stop()``; or ``async with``.
    """

    def __init__(
        self,
        source: str,
        targets: Sequence[str] | Mapping[str, Transform | None],
        *,
        group_name: str = "fanout",
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
        batch_size: int = 100,
        consumer_name: str | None = None,
        maxlen: int | None = None,
        approximate: bool = True,
        target_partitions: int | None = None,
        serializer: Serializer | None = None,
        deserializer: Deserializer | None = None,
        dedupe_ttl: float = 86_400.0,
        dedupe_grace: float = 60.0,
        refresh_interval: float = 3.0,
        registry: ServiceRegistry | None = None,
        metrics: bool = True,
        **consumer_options: Unpack[ConsumerOptions],
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self._longest_block = consumer_options.get("poll_interval", POLL_INTERVAL)
        self.source = validate_name(source, "source")
        self.group = validate_name(group_name, "group_name")
        integer(batch_size, "batch_size", maximum=5000)
        self.batch_size = batch_size
        self.targets = self._check_targets(source, targets)
        if maxlen is not None:
            integer(maxlen, "maxlen")
        if target_partitions is not None:
            integer(target_partitions, "target_partitions", maximum=MAX_PARTITIONS)
        for argument, hook in (("serializer", serializer), ("deserializer", deserializer)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{argument} must be callable, got {hook!r}")
        # Whole milliseconds, as PX and PEXPIRE take them (0 or past 2**53 ms: refused there).
        self.dedupe_ttl = number(dedupe_ttl, "dedupe_ttl", minimum=0.001, maximum=1e9, seconds=True)
        self.dedupe_grace = number(
            dedupe_grace, "dedupe_grace", minimum=0.001, maximum=1e9, seconds=True
        )
        if self.dedupe_grace > self.dedupe_ttl:
            raise ConfigurationError(
                f"dedupe_grace must not exceed dedupe_ttl ({self.dedupe_ttl}), got {dedupe_grace!r}"
            )
        self.refresh_interval = number(refresh_interval, "refresh_interval", above=0, seconds=True)
        if registry is not None:
            from ..registry import ServiceRegistry

            if not isinstance(registry, ServiceRegistry):
                raise ConfigurationError(f"registry must be a ServiceRegistry, got {registry!r}")
        self.maxlen = maxlen
        self.approximate = approximate
        self.target_partitions = target_partitions
        self.serializer: Serializer = serializer or default_serializer
        self.deserializer: Deserializer = deserializer or default_deserializer
        self.registry = registry
        self.metrics = metrics
        self.consumer = Consumer(
            source, group_name=group_name, consumer_name=consumer_name, batch_size=batch_size,
            redis=self._client(), deserializer=_raw, metrics=metrics, **consumer_options,
        )  # fmt: skip
        """The consumer that reads the source (its ``stats`` count reads, retries, dead letters)."""
        self.stats = FanOutStats(
            written=dict.fromkeys((t.topic for t in self.targets), 0),
            skipped=dict.fromkeys((t.topic for t in self.targets), 0),
        )
        self._keys = TopicKeys(source)
        self._writer = Writer(
            name=self.consumer.name, source=source, group=self.group, token=self.consumer.token,
            targets=self.targets, stats=self.stats,
            trim=["0", "~"] if maxlen is None else [maxlen, "~" if approximate else "="],
            new_partitions=target_partitions or 1, dedupe_ttl=self.dedupe_ttl,
            dedupe_grace=self.dedupe_grace, refresh_interval=self.refresh_interval,
            deleting=lambda: self.consumer.deletes_acked,
        )  # fmt: skip
        self._plain = [t.index for t in self.targets if t.transform is None]
        self._transformed = [t for t in self.targets if t.transform is not None]
        self._cluster = False
        self._stopping = False
        self._running = False
        self._finished = asyncio.Event()
        self._finished.set()
        self._registration: Keepalive | None = None
        self._task: asyncio.Task[Any] | None = None

    @staticmethod
    def _check_targets(
        source: str, targets: Sequence[str] | Mapping[str, Transform | None]
    ) -> list[Target]:
        if isinstance(targets, Mapping):
            pairs = list(targets.items())
        elif isinstance(targets, (str, bytes)) or not isinstance(targets, Iterable):
            raise ConfigurationError(
                f"targets must be a list of topic names or a mapping of topic name to "
                f"transform, got {targets!r}"
            )
        else:
            pairs = [(t, None) for t in targets]
        if not pairs:
            raise ConfigurationError("targets must name at least one topic, got none")
        out: list[Target] = []
        for topic, transform in pairs:
            validate_name(topic, "targets")
            if topic == source:
                raise ConfigurationError(f"targets must not include the source topic {source!r}")
            if any(t.topic == topic for t in out):
                raise ConfigurationError(f"targets names {topic!r} twice")
            if transform is not None and not callable(transform):
                raise ConfigurationError(
                    f"targets: the transform of {topic!r} must be callable or None, "
                    f"got {transform!r}"
                )
            out.append(Target(len(out), topic, transform))
        return out

    from_lists = staticmethod(ListFanOut)
    """The list mode (mpush): :class:`~redisaq_core.fanout.ListFanOut`, under this name too."""

    # ---- life cycle -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The bridge's member name in the source's consumer group."""
        return self.consumer.name

    @property
    def service_id(self) -> str:
        """The id under which the bridge registers itself: ``fanout/<source>/<group>/<name>``."""
        return f"{FANOUT_SERVICE_TYPE}/{self.source}/{self.group}/{self.name}"

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is running."""
        return self._running

    @property
    def assigned_partitions(self) -> list[int]:
        """Source partitions this bridge holds now."""
        return self.consumer.assigned_partitions

    async def connect(self) -> None:
        """Connect, create missing target topics and read their partition counts (idempotent).

        A bridge is not opened again after :meth:`close`: make a new one.
        """
        if self._closed:
            raise self._not_connected()
        await super().connect()

    async def _on_connect(self, client: AnyRedis) -> None:
        await self.consumer.connect()
        self._cluster = is_cluster(client)
        await self._prepare(client)

    async def _prepare(self, redis: AnyRedis) -> None:
        count = self.target_partitions
        if count is None:
            count = max(1, partition_count(await redis.hget(self._keys.meta, "partitions")))
        self._writer.new_partitions = count
        await self._writer.refresh(redis)  # creates the targets that have no metadata yet
        await add_member(redis, TopicKeys.topic_index(), *(t.topic for t in self.targets))
        for target in self.targets:
            if self.metrics and target.recorder is None:
                target.recorder = MetricsRecorder(redis, target.topic)
                await target.recorder.start()

    async def _on_close(self) -> None:
        await self.stop()
        for target in self.targets:
            if target.recorder is not None:
                await target.recorder.stop()
                target.recorder = None
        await self.consumer.close()

    async def run(self) -> None:
        """Fan out until :meth:`stop` (or a remote shutdown through the registry)."""
        if self._running:
            raise AlreadyRunningError(f"fan-out bridge {self.name} is already running")
        if self._closed:
            raise self._not_connected()
        self._running = True
        self._task = asyncio.current_task()
        self._finished.clear()
        try:
            await self.connect()
            if self.registry is not None:
                self._registration = self.registry.keepalive(
                    self._service_info(), interval=self.consumer.heartbeat_interval,
                    ttl=self.consumer.heartbeat_ttl, on_shutdown=self.stop,
                )  # fmt: skip
                await self._registration.start()
            log.info(
                "fan-out %s: %s -> %s (group %s)", self.name, self.source,
                ", ".join(t.topic for t in self.targets), self.group,
            )  # fmt: skip
            if not self._stopping:  # no await between this check and the consumer's start
                await self.consumer.process_batch(self._handle)
        finally:
            try:
                await asyncio.shield(self._flush())
            finally:
                if self._registration is not None:
                    await asyncio.shield(self._registration.stop())
                    self._registration = None
                self._running = self._stopping = False  # that stop() is spent: run() again runs
                self._task = None
                self._finished.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop reading, finish the batch in flight, leave the group; return once stopped.

        ``timeout`` (default the consumer's ``shutdown_timeout``): after it, the
        batch in flight is cancelled; its entries stay pending and are fanned
        out by the partition's next owner. Idempotent.
        """
        self._stopping = True
        await self.consumer.stop(timeout)
        if self._running and asyncio.current_task() is not self._task:
            await self._finished.wait()

    def _service_info(self) -> ServiceInfo:
        from ..registry import ServiceInfo

        return ServiceInfo(
            service_id=self.service_id,
            host=socket.gethostname() or "localhost",
            port=0,
            service_type=FANOUT_SERVICE_TYPE,
            metadata={
                "mode": "stream",
                "source": self.source,
                "targets": [t.topic for t in self.targets],
                "group": self.group,
                "consumer": self.name,
                "pid": os.getpid(),
            },
        )

    # ---- one batch --------------------------------------------------------------------

    async def _handle(self, batch: list[Message]) -> None:
        """The consumer's batch handler: fan out what can be, hold the rest.

        When an entry can't be fanned out (its transform raised), the entries
        of its partition from it on are held: they are left in ``chunk`` and
        the error is raised, so the consumer retries (or dead-letters) the
        first of them and keeps the others behind it; everything else in the
        batch has been fanned out and acknowledged by then.
        """
        chunk = cast(list[Received], batch)  # what a consumer reads
        entries, held, error = await self._plan(chunk)
        if entries:
            await self._write(entries)
        if error is not None:
            # The consumer takes the messages left in the list as failed: per partition the
            # first one failed and the others wait behind it.
            chunk[:] = held
            raise error

    async def _plan(
        self, chunk: list[Received]
    ) -> tuple[list[Entry], list[Received], BaseException | None]:
        entries: list[Entry] = []
        blocked: set[int] = set()
        held: list[Received] = []
        error: BaseException | None = None
        for m in chunk:
            partition = m.partition
            if partition in blocked:
                held.append(m)
                continue
            try:
                entries.append(await self._entry(m))
            except Exception as exc:
                self.stats.failed += 1
                log.info(
                    "fan-out %s: entry %s of partition %d held: %s: %s",
                    self.name, m.msg_id, partition, type(exc).__name__, exc,
                )  # fmt: skip
                blocked.add(partition)
                held.append(m)
                if error is None:
                    error = exc
        return entries, held, error

    async def _entry(self, m: Received) -> Entry:
        raw = m.payload
        fields: Fields = [F_BYTES, raw] if isinstance(raw, bytes) else [F_TEXT, str(raw).encode()]
        if m.partition_key is not None:
            fields += [F_KEY, m.partition_key]
        if m.enqueued_at is not None and m.created_at != m.enqueued_at:
            fields += [F_CREATED, repr(m.created_at)]
        if m.timeout is not None:
            fields += [F_TIMEOUT, repr(float(m.timeout))]
        fields += current_field()  # the copy's trace goes on from the bridge's span
        decoded: Received | None = None
        if m.partition_key is not None:
            decoded = self._decoded(m)
            hash_ = zlib.crc32(key_value(decoded.payload, m.partition_key))
        else:
            hash_ = zlib.crc32(m.msg_id.encode())
        outputs: list[tuple[Fields, list[int]]] = []
        if self._plain:
            outputs.append((fields, self._plain))
        for target in self._transformed:
            assert target.transform is not None
            # Decoded for each: a transform that changes its payload changes no other's.
            result = target.transform(self._decoded(m))
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                self.stats.skipped[target.topic] += 1
                continue
            kind, data = encode_payload(self.serializer, result)
            extra = fields[2:]
            if m.partition_key is not None and not (
                isinstance(result, Mapping) and m.partition_key in result
            ):
                extra = extra[2:]  # the new payload lacks the key field: don't name it
            outputs.append(([kind, data, *extra], [target.index]))
        return Entry(m, hash_, outputs)

    def _decoded(self, m: Received) -> Received:
        raw = m.payload
        return replace(m, payload=self.deserializer(raw))

    async def _write(self, entries: list[Entry]) -> None:
        """Run the batch's writes, retrying while Redis is unreachable (they are idempotent)."""
        delay = 0.05
        failing = False
        while True:
            try:
                if self._cluster:
                    await self._writer.write_cluster(self.redis, entries)
                else:
                    await self._writer.write_single(self.redis, entries)
                if failing:
                    log.info("fan-out %s: writes go through again", self.name)
                return
            except UNREACHABLE as exc:
                if self._stopping:
                    raise
                if not failing:
                    log.warning("fan-out %s: write failed, retrying: %s", self.name, exc)
                failing = True
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def _flush(self) -> None:
        """Shorten the idempotency records of the last batch (Redis Cluster) on the way out."""
        if self._cluster and self.consumer.connected:
            try:
                await self._writer.flush(self.redis)
            except REDIS_FAILURES as exc:
                log.warning("fan-out %s: could not shorten idempotency records: %s", self.name, exc)
