"""``Producer``: put messages on a topic's partitions.

Concurrent ``enqueue`` calls share round trips: while one XADD is in flight,
calls made meanwhile wait in a queue and go out together in the next
pipeline, each caller still getting its own id or its own error. A lone
caller pays one plain XADD. ``batch_enqueue`` sends its whole list in one
pipeline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
import warnings
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, ResponseError

from ._appends import append
from ._assignment import key_value, partition_for_key
from ._batching import CommandBatcher
from ._checks import Due, due_time, integer, number, payload_list
from ._codec import (
    F_CREATED,
    F_JOB,
    F_KEY,
    F_TIMEOUT,
    Deserializer,
    Serializer,
    default_serializer,
    encode_payload,
)
from ._compat import UNSET, legacy_logger, renamed, stored_partitions, zero_is_none
from ._failures import REDIS_FAILURES, out_of_memory
from ._growth import add_member, grow
from ._once import check_once, first_job
from ._retention import Retention, TrimMode, check_trim, server_features
from ._scripts import (
    DELAY,
    ENQUEUE_ONCE,
    SUBMIT,
    Script,
    ScriptCall,
    run_pipelined,
)
from ._tasks import cancel_and_wait
from ._ticks import Ticker
from ._tracing import entry_ids, send_spans
from .connection import AnyRedis, RedisComponent
from .errors import (
    ConfigurationError,
    PartitionError,
    SerializationError,
    ServerOutOfMemoryError,
)
from .keys import (
    MAX_PARTITIONS,
    MAX_PRIORITIES,
    RESULT_TTL,
    TopicKeys,
    job_id,
    partition_count,
    priority_levels,
)
from .message import Message
from .metrics import MetricsRecorder

if TYPE_CHECKING:
    from .results import JobHandle, ResultStore
    from .schedule import Schedule

__all__ = ["Producer"]

log = logging.getLogger(__name__)


class Producer(RedisComponent):
    """Enqueue messages on a partitioned topic.

    ``init_partitions`` is the partition count a new topic starts with (an
    existing topic with fewer is raised to it, never lowered). ``maxlen`` caps
    each partition stream on every XADD (``approximate=True`` lets Redis trim
    in whole nodes, which is much cheaper). ``trim``: ``"maxlen"`` (default)
    trims whether or not the topic's groups have read the entries;
    ``"acked"`` never removes an entry some group has not acknowledged, so a
    lagging group loses nothing and the stream grows past ``maxlen`` while it
    lags; ``"delete-acked"`` (Redis 8.2 and newer) has consumers delete each
    entry once every group acknowledged it (see :mod:`redisaq_core._retention`).
    ``serializer`` turns a payload into ``bytes`` or ``str`` (default: orjson).
    The partition count is re-read every ``refresh_interval`` seconds, so partitions added by
    :meth:`request_partition_increase` elsewhere are used without a restart.
    ``priorities``: the number of priority levels (``0 .. priorities-1``, higher
    is more urgent); with the default 1 there is one stream per partition and no
    cost at all. A message's ``priority`` (0 to 15) maps onto the levels the topic
    has: one at or above the highest level goes to the highest, so on a topic with
    one level every priority is accepted and all messages are level 0.
    ``result_ttl``: how long (seconds) :meth:`submit` keeps a job's record and
    result once it has finished. ``result_deserializer``: how the handles
    :meth:`submit` returns decode a job's result (orjson by default; give the
    counterpart of the consumers' ``serializer``). ``metrics``: count produced messages
    per partition in the topic's metrics (flushed once a second).
    ``max_payload_bytes``: a serialized payload larger than this (1 MiB by
    default; ``None``: no limit) is refused with ``SerializationError`` before
    anything is written. ``idempotency_window``: how long (seconds, 24 h by
    default) an ``idempotency_key`` given to :meth:`enqueue`, :meth:`batch_enqueue`
    or :meth:`submit` is remembered. ``logger``: where the producer's own log
    records go (default ``redisaq_core.producer``); ``debug`` is accepted from
    redisaq 0.1.5 code and deprecated.
    """

    def __init__(
        self,
        topic: str,
        *,
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
        maxlen: int | None = None,
        approximate: bool = True,
        trim: TrimMode = "maxlen",
        init_partitions: int = 1,
        serializer: Serializer | None = None,
        refresh_interval: float = 3.0,
        priorities: int = 1,
        result_ttl: float = RESULT_TTL,
        result_deserializer: Deserializer | None = None,
        metrics: bool = True,
        max_payload_bytes: int | None = 1_048_576,
        idempotency_window: float = 86_400.0,
        logger: logging.Logger | None = None,
        debug: bool | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self.logger = legacy_logger("Producer", debug, logger, log)
        self.keys = TopicKeys(topic)
        self.topic = topic
        if maxlen is not None:
            integer(maxlen, "maxlen")
        integer(init_partitions, "init_partitions", maximum=MAX_PARTITIONS)
        integer(priorities, "priorities", maximum=MAX_PRIORITIES)
        number(result_ttl, "result_ttl", minimum=1, seconds=True)
        number(refresh_interval, "refresh_interval", above=0, seconds=True)
        for name, given in [
            ("serializer", serializer),
            ("result_deserializer", result_deserializer),
        ]:
            if given is not None and not callable(given):
                raise ConfigurationError(f"{name} must be callable, got {given!r}")
        if max_payload_bytes is not None:
            integer(max_payload_bytes, "max_payload_bytes")
        number(idempotency_window, "idempotency_window", minimum=1, maximum=2**31, seconds=True)
        self.idempotency_window = int(idempotency_window)
        self.max_payload_bytes = max_payload_bytes
        self.maxlen = maxlen
        self.approximate = approximate
        self.trim: TrimMode = check_trim(trim, maxlen)
        self._retention = Retention(self.keys, maxlen, approximate, self.trim)
        self.init_partitions = init_partitions
        self.serializer: Serializer = serializer or default_serializer
        self.refresh_interval = float(refresh_interval)
        self.priorities = priorities
        self.result_ttl = result_ttl
        self.result_deserializer = result_deserializer
        self.metrics = metrics
        self._metrics: MetricsRecorder | None = None
        self._levels = 1
        self._partitions = 0
        self._trim: list[Any] = []
        self._results: ResultStore | None = None
        self._heads: list[list[Any]] = []
        self._round_robin = itertools.count()
        self._batcher: CommandBatcher | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._ticker = Ticker(None, self._self_for, self.logger, topic=self.topic)

    @property
    def partitions(self) -> int:
        """The topic's partition count as last seen (0 before ``connect()``)."""
        return self._partitions

    async def _on_connect(self, client: AnyRedis) -> None:
        count, levels = await grow(
            client, self.keys, self.init_partitions, priorities=self.priorities
        )
        await add_member(client, TopicKeys.topic_index(), self.topic)
        await server_features(client)  # once per client: warns about an evicting server
        await self._retention.start(client)
        if self.maxlen is not None or self.trim != "maxlen":
            # What the consumers and the topic view read; a producer that sets no
            # retention leaves what another one set.
            retention: list[Any] = ["trim", self.trim]
            if self.maxlen is not None:
                retention += ["maxlen", self.maxlen]
            await client.hset(self.keys.meta, items=retention)
        if self.metrics:
            self._metrics = MetricsRecorder(client, self.topic)
            await self._metrics.start()
        self._levels = int(levels)
        self._set_partitions(int(count))
        self._refresher = asyncio.create_task(self._refresh_loop(), name="redisaq-producer-refresh")
        self._ticker.start(client)

    async def _on_close(self) -> None:
        await self._ticker.stop()
        if self._refresher is not None:
            await cancel_and_wait(self._refresher)
            self._refresher = None
        if self._batcher is not None:
            await self._batcher.aclose()
            self._batcher = None  # bound to this client; connect() again makes another
        await self._retention.close()
        if self._results is not None:
            await self._results.close()
            self._results = None
        if self._metrics is not None:
            await self._metrics.stop()
            self._metrics = None

    def _set_partitions(self, count: int) -> None:
        if count == self._partitions:
            return
        if self._partitions:
            self.logger.info("topic %s: partitions %d -> %d", self.topic, self._partitions, count)
        trim = self._retention.xadd_options()
        # The options as bytes: redis-py passes bytes through, where it encodes a str or an
        # int anew for every entry. (The key stays text: the retention counts by it.)
        options = [str(a).encode() for a in (*trim, "*")]
        self._heads = [["XADD", self.keys.stream(p), *options] for p in range(count)]
        self._partitions = count
        self._trim = trim

    async def refresh_partitions(self) -> None:
        """Read the topic's partition and priority counts now.

        The refresh task does so every ``refresh_interval``. Where an idempotency key picks
        the partition, producers that saw different counts would write its message to two
        partitions: a schedule's ticker calls this before each round of ticks.
        """
        redis = self._redis or await self._ensure()
        raw, levels = await redis.hmget(self.keys.meta, ["partitions", "priorities"])
        if levels is not None:
            self._levels = max(self._levels, priority_levels(levels))
        if (count := partition_count(raw)) > self._partitions:
            self._set_partitions(count)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh_partitions()
                await self._retention.sweep(self.redis, self._streams())
            except Exception as exc:  # Redis failed, or what other clients stored spoilt a read
                traceback = not isinstance(exc, REDIS_FAILURES)
                self.logger.warning(
                    "topic %s: cannot refresh partitions or trim: %r", self.topic, exc,
                    exc_info=traceback,
                )  # fmt: skip

    def _streams(self) -> list[str]:
        return [
            self.keys.stream(p, level)
            for p in range(self._partitions)
            for level in range(self._levels)
        ]

    def _fields(
        self, item: Any, partition_key: str | None, priority: int | None, once: str | None = None
    ) -> tuple[int, int, list[Any]]:
        """(partition, level, entry fields) for one payload or ``Message``; nothing is sent.

        Without a partition key, an idempotency key (``once``) picks the partition, so that
        a repeated call lands where the first one did.
        """
        extra: list[Any] = []
        if isinstance(item, Message):
            if item.topic != self.topic:
                raise ConfigurationError(
                    f"message topic {item.topic!r} differs from producer topic {self.topic!r}"
                )
            payload = item.payload
            partition_key = partition_key or zero_is_none(item.partition_key)
            extra += [F_CREATED, repr(number(item.created_at, "Message.created_at"))]
            if zero_is_none(item.timeout) is not None:
                timeout = number(item.timeout, "Message.timeout", above=0)
                extra += [F_TIMEOUT, repr(timeout)]
            if priority is None and item.priority:
                priority = item.priority
        else:
            payload = item
        level = self._level(priority)
        if partition_key == "":  # redisaq 0.1.5's "no key"
            partition_key = None
        if partition_key is None and once is not None:
            partition = partition_for_key(once, self._partitions)
        elif partition_key is None:
            partition = next(self._round_robin) % self._partitions
        else:
            partition = partition_for_key(key_value(payload, partition_key), self._partitions)
            extra += [F_KEY, partition_key]
        field, data = encode_payload(self.serializer, payload)
        size = len(data) if isinstance(data, bytes) else len(data.encode())
        if self.max_payload_bytes is not None and size > self.max_payload_bytes:
            raise SerializationError(
                f"payload of {size:,} bytes is over max_payload_bytes="
                f"{self.max_payload_bytes:,} (topic {self.topic!r}); nothing was written"
            )
        return partition, level, [field, data, *extra]

    def _level(self, priority: int | None) -> int:
        if priority is None or priority == 0:
            return 0
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ConfigurationError(f"priority must be an integer, got {priority!r}")
        if not 0 <= priority < MAX_PRIORITIES:
            raise ConfigurationError(
                f"priority must be between 0 and {MAX_PRIORITIES - 1}, got {priority!r}"
            )
        # A priority maps onto the levels the topic has: one above its highest level goes
        # to the highest (on a topic with one level, every message is level 0).
        return min(priority, self._levels - 1)

    def _command(
        self,
        item: Any,
        partition_key: str | None,
        priority: int | None = None,
        trim: list[Any] | None = None,
    ) -> tuple[int, list[Any]]:
        """(partition, XADD arguments) for one payload or ``Message``; raises before sending.

        ``trim``: XADD trim options for this call instead of the producer's.
        """
        partition, level, fields = self._fields(item, partition_key, priority)
        if not level and trim is None:
            return partition, [*self._heads[partition], *fields]
        options = self._trim if trim is None else trim
        return partition, ["XADD", self.keys.stream(partition, level), *options, "*", *fields]

    def _legacy(
        self, item: Any, timeout: float | None, maxlen: int | None, approximate: bool | None
    ) -> tuple[Any, list[Any] | None]:
        """Redisaq 0.1.5's ``timeout``, ``maxlen`` and ``approximate`` of one call.

        ``timeout`` becomes the message's ``Message.timeout`` (0: none); ``maxlen`` and
        ``approximate`` trim this call's XADD (deprecated: set them on the producer).
        """
        if zero_is_none(timeout) is not None:
            if isinstance(item, Message):
                raise ConfigurationError("pass timeout on the Message, not to enqueue()")
            item = Message(self.topic, item, timeout=timeout)
        if maxlen is None and approximate is None:
            return item, None
        warnings.warn(
            "maxlen= and approximate= per call are deprecated: set them on the Producer",
            DeprecationWarning,
            stacklevel=3,
        )
        if self.trim != "maxlen":
            raise ConfigurationError(f"maxlen per call needs trim='maxlen', not {self.trim!r}")
        limit = self.maxlen if maxlen is None else integer(maxlen, "maxlen")
        if limit is None:
            return item, []
        exact = self.approximate if approximate is None else approximate
        return item, ["MAXLEN", "~" if exact else "=", limit]

    async def enqueue(
        self,
        message: Any = UNSET,
        partition_key: str | None = None,
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        payload: Any = UNSET,
        timeout: float | None = None,
        maxlen: int | None = None,
        approximate: bool | None = None,
    ) -> str:
        """Put one payload (or ``Message``) on the topic and return its stream entry id.

        ``partition_key`` names a payload field; messages with equal values of
        that field go to the same partition, in order. Without it messages
        are spread over the partitions in turn. ``priority`` (0 to 15):
        consumers take waiting messages of a higher level first; a priority above
        the topic's highest level goes to that level. ``idempotency_key``: a second
        call with the same key within
        ``idempotency_window`` writes nothing and returns the first call's entry id
        (the check and the write are one atomic step on the server, so a call resent
        after a lost reply is safe). Without a ``partition_key`` the key picks the
        partition. ``delay`` (seconds) or ``at`` (a timezone-aware ``datetime``): the
        message waits in its partition until then (by the Redis server's clock), and
        the id returned is ``"delayed:<partition>:<n>"`` (see "Delayed messages" in the
        README); a message already due goes straight to the stream. ``payload=`` (for
        ``message``), ``timeout`` (the handler's time limit, as ``Message.timeout``),
        ``maxlen`` and ``approximate`` are redisaq 0.1.5's spellings.
        """
        due = due_time(delay, at)
        trim = None
        legacy = timeout is not None or maxlen is not None or approximate is not None
        if legacy or payload is not UNSET:
            message = renamed("payload", "message", payload, message)
            message, trim = self._legacy(message, timeout, maxlen, approximate)
        if message is UNSET:
            raise TypeError("enqueue() needs the message (or payload=)")
        redis = self._redis or await self._ensure()
        if due is not None:
            if trim is not None:
                raise ConfigurationError("maxlen per call does not go with delay or at")
            once = None if idempotency_key is None else check_once(idempotency_key)
            partition, stream, call = self._delay_call(message, partition_key, priority, due, once)
            try:
                reply = await self._run_call(redis, call)
            except Exception as exc:
                if out_of_memory(exc):
                    raise self._out_of_memory("the message was not enqueued") from exc
                raise
            return self._delayed(redis, partition, stream, reply)[0]
        if idempotency_key is not None:
            once = check_once(idempotency_key)
            if trim is not None:
                raise ConfigurationError("maxlen per call does not go with idempotency_key")
            try:
                return await self._enqueue_once(redis, message, partition_key, priority, once)
            except Exception as exc:
                if out_of_memory(exc):
                    raise self._out_of_memory("the message was not enqueued") from exc
                raise
        partition, command = self._command(message, partition_key, priority, trim)
        spans = send_spans(self.topic, "enqueue", ((partition, command),))
        try:
            entry_id = _text(await spans.wrap(self._send(redis, command), entry_ids))
        except Exception as exc:
            if out_of_memory(exc):
                raise self._out_of_memory("the message was not enqueued") from exc
            raise
        self._retention.wrote(redis, (command[1],))
        if self._metrics is not None:
            self._metrics.produced(partition)
        return entry_id

    def _out_of_memory(self, what: str) -> ServerOutOfMemoryError:
        """What a write refused with Redis's OOM reply raises, saying ``what`` happened."""
        return ServerOutOfMemoryError(
            f"Redis is out of memory (at its maxmemory) and refused the write to topic "
            f"{self.topic!r}: {what}"
        )

    def _once_call(
        self, item: Any, partition_key: str | None, priority: int | None, key: str
    ) -> tuple[int, tuple[Script, list[Any], list[Any]]]:
        partition, level, fields = self._fields(item, partition_key, priority, key)
        maxlen, op = self._trim_args()
        stream = self.keys.stream(partition, level)
        keys = [stream, self.keys.once(partition, key)]
        return partition, (ENQUEUE_ONCE, keys, [self.idempotency_window, maxlen, op, *fields])

    async def _enqueue_once(
        self, redis: AnyRedis, item: Any, partition_key: str | None, priority: int | None,
        key: str,
    ) -> str:  # fmt: skip
        partition, (script, keys, args) = self._once_call(item, partition_key, priority, key)
        spans = send_spans(self.topic, "enqueue", ((partition, args),))
        command = ["EVALSHA", script.sha, len(keys), *keys, *args]
        created, entry_id = await spans.wrap(self._run(redis, script, command), entry_ids)
        if created:
            self._retention.wrote(redis, keys[:1])
            if self._metrics is not None:
                self._metrics.produced(partition)
        return _text(entry_id)

    def _delay_call(
        self, item: Any, partition_key: str | None, priority: int | None, due: Due,
        once: str | None, job_ttl: int | None = None,
    ) -> tuple[int, str, ScriptCall]:  # fmt: skip
        """(partition, stream, ``delay.lua`` call) scheduling one entry; nothing is sent.

        With ``job_ttl`` the entry is a job's, and the call creates its record.
        """
        partition, level, fields = self._fields(item, partition_key, priority, once)
        stream = self.keys.stream(partition, level)
        keys = [self.keys.delayed(partition, level), self.keys.delayed_sequence(partition), stream]
        job = ""
        if job_ttl is not None:
            job = job_id(self.topic, partition, uuid.uuid4().hex)
            fields += [F_JOB, job]
            keys += [self.keys.job(partition, job), self.keys.jobs(partition)]
        if once is not None:
            keys.append(self.keys.once(partition, once))
        maxlen, op = self._trim_args()
        args = [
            due[0], due[1], self.keys.due_channel, partition, maxlen, op,
            self.idempotency_window if once is not None else 0, job, self.keys.job_channel,
            self.topic, level, job_ttl or 0, *fields,
        ]  # fmt: skip
        return partition, stream, (DELAY, keys, args)

    async def _run_call(self, redis: AnyRedis, call: ScriptCall) -> Any:
        script, keys, args = call
        return await self._run(redis, script, ["EVALSHA", script.sha, len(keys), *keys, *args])

    def _delayed(self, redis: AnyRedis, partition: int, stream: str, reply: Any) -> tuple[str, str]:
        """(id, job id) from a ``delay.lua`` reply, counting what it wrote."""
        created, entry_id, job = bool(reply[0]), _text(reply[1]), _text(reply[2])
        if created:
            if not entry_id.startswith("delayed:"):
                self._retention.wrote(redis, (stream,))
            if self._metrics is not None:
                self._metrics.produced(partition)
        return entry_id, job

    async def _send(self, redis: AnyRedis, command: list[Any]) -> Any:
        """Run one command, sharing a pipeline round trip with concurrent callers."""
        if self._batcher is None:
            self._batcher = CommandBatcher(redis)
        return await self._batcher.call(*command)

    async def _run(self, redis: AnyRedis, script: Script, command: list[Any]) -> Any:
        """Run an ``EVALSHA`` of ``script`` (``command``) through :meth:`_send`.

        If the server lacks the script, it is loaded where the call runs (the node of the
        first key, ``command[3]``) and the call repeated.
        """
        try:
            return await self._send(redis, command)
        except NoScriptError:
            await script.load(redis, command[3:4])
            return await self._send(redis, command)

    def _trim_args(self) -> tuple[int, str]:
        """(maxlen, trim) for the scripts that XADD: 0 is unbounded; as ``xadd_options()``."""
        maxlen = 0 if self._retention.emulated else self.maxlen or 0
        op = "~" if self.approximate else "="
        return maxlen, f"ACKED{op}" if self.trim != "maxlen" else op

    async def batch_enqueue(
        self,
        payloads: Iterable[Any],
        partition_key: str | None = None,
        *,
        priority: int | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        at: datetime | None = None,
        timeout: float | None = None,
        maxlen: int | None = None,
        approximate: bool | None = None,
    ) -> list[str]:
        """Enqueue many payloads in one round trip; return their ids in input order.

        Every payload is serialized before anything is sent, so a payload that
        can't be encoded raises ``SerializationError`` with nothing enqueued; a str,
        bytes or mapping (one payload, not a list of them) raises ``ConfigurationError``.
        A batch cut off half-way (the connection dropped) may have written some
        of its entries: give an ``idempotency_key`` and a retry of the same batch
        writes only those missing (payload ``i`` is enqueued under ``"<key>:<i>"``).
        ``delay`` or ``at`` (every payload due then, in input order), ``timeout``,
        ``maxlen`` and ``approximate``: as for :meth:`enqueue`.
        """
        payloads = payload_list(payloads)
        due = due_time(delay, at)
        trims = None
        if timeout is not None or maxlen is not None or approximate is not None:
            items = []
            for item in payloads:
                item, trims = self._legacy(item, timeout, maxlen, approximate)
                items.append(item)
            payloads = items
        redis = self._redis or await self._ensure()
        if due is not None:
            if trims is not None:
                raise ConfigurationError("maxlen per call does not go with delay or at")
            key = None if idempotency_key is None else check_once(idempotency_key)
            return await self._batch_delayed(
                redis, list(payloads), partition_key, priority, due, key
            )
        if idempotency_key is not None:
            key = check_once(idempotency_key)
            try:
                return await self._batch_once(redis, list(payloads), partition_key, priority, key)
            except Exception as exc:
                if out_of_memory(exc):
                    raise self._out_of_memory(
                        "entries refused were not enqueued; the same call enqueues them"
                    ) from exc
                raise
        entries = [self._fields(item, partition_key, priority) for item in payloads]
        if not entries:
            return []
        spans = send_spans(self.topic, "batch_enqueue", [(p, f) for p, _, f in entries])
        streams = [self.keys.stream(p, level) for p, level, _ in entries]
        write = append(redis, list(zip(streams, (f for _, _, f in entries), strict=True)),
                       self._trim if trims is None else trims)  # fmt: skip
        try:
            results = await spans.wrap(write, list)
        except Exception as exc:
            if out_of_memory(exc):
                raise self._out_of_memory(
                    "part of the batch may have been written; "
                    "call with an idempotency_key to make a retry write only what is missing"
                ) from exc
            raise
        self._retention.wrote(redis, streams)
        if self._metrics is not None:
            for partition, _, _ in entries:
                self._metrics.produced(partition)
        return [r.decode() for r in results]

    async def _batch_once(
        self, redis: AnyRedis, items: list[Any], partition_key: str | None,
        priority: int | None, key: str,
    ) -> list[str]:  # fmt: skip
        calls = [
            self._once_call(item, partition_key, priority, f"{key}:{i}")
            for i, item in enumerate(items)
        ]
        spans = send_spans(self.topic, "batch_enqueue", [(p, c[2]) for p, c in calls])
        replies = await spans.wrap(run_pipelined(redis, [c for _, c in calls]), entry_ids)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        written = [call for call, reply in zip(calls, replies, strict=True) if reply[0]]
        self._retention.wrote(redis, [keys[0] for _, (_, keys, _) in written])
        if self._metrics is not None:
            for partition, _ in written:
                self._metrics.produced(partition)
        return [_text(reply[1]) for reply in replies]

    async def _batch_delayed(
        self, redis: AnyRedis, items: list[Any], partition_key: str | None,
        priority: int | None, due: Due, key: str | None,
    ) -> list[str]:  # fmt: skip
        calls = [
            self._delay_call(
                item, partition_key, priority, due, None if key is None else f"{key}:{i}"
            )
            for i, item in enumerate(items)
        ]
        try:
            replies = await run_pipelined(redis, [call for _, _, call in calls])
        except Exception as exc:
            if out_of_memory(exc):
                raise self._out_of_memory("part of the batch may have been written") from exc
            raise
        ids = []
        failure: Exception | None = None
        for (partition, stream, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                failure = failure or reply
            else:
                ids.append(self._delayed(redis, partition, stream, reply)[0])
        if failure is not None:
            if out_of_memory(failure):
                raise self._out_of_memory(
                    "part of the batch may have been written; "
                    "call with an idempotency_key to make a retry write only what is missing"
                ) from failure
            raise failure
        return ids

    async def submit(
        self,
        payload: Any,
        *,
        priority: int | None = None,
        partition_key: str | None = None,
        result_ttl: float | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        delay: float | None = None,
        at: datetime | None = None,
    ) -> JobHandle:
        """Enqueue ``payload`` as a job whose status and result are tracked; return its handle.

        The job's record (status ``queued``) is created in the same step as the
        entry. Consumers move it to ``active``, then ``completed`` with the
        handler's return value (kept ``result_ttl`` seconds), or ``failed``
        (retrying) and finally ``dead``. ``timeout``: seconds the handler may run.
        ``idempotency_key``: as for :meth:`enqueue`; a repeat returns the first job's handle.
        ``delay`` or ``at``: as for :meth:`enqueue`; the job is ``scheduled`` until due,
        then ``queued``.
        """
        due = due_time(delay, at)
        redis = self._redis or await self._ensure()
        ttl = self.result_ttl if result_ttl is None else result_ttl
        number(ttl, "result_ttl", minimum=1, seconds=True)
        item = payload
        if timeout is not None:
            if isinstance(payload, Message):
                raise ConfigurationError("pass timeout on the Message, not to submit()")
            number(timeout, "Message.timeout", above=0)  # 0 means "none" only on enqueue
            item = Message(topic=self.topic, payload=payload, timeout=timeout)
        once = None if idempotency_key is None else check_once(idempotency_key)
        if due is not None:
            partition, stream, call = self._delay_call(
                item, partition_key, priority, due, once, max(1, int(ttl))
            )
            try:
                reply = await self._run_call(redis, call)
            except Exception as exc:
                if out_of_memory(exc):
                    raise self._out_of_memory("the job was not submitted") from exc
                raise
            job = first_job(self._delayed(redis, partition, stream, reply)[1], once)
            return self._handle(redis, job)
        partition, level, fields = self._fields(item, partition_key, priority, once)
        job = job_id(self.topic, partition, uuid.uuid4().hex)
        maxlen, op = self._trim_args()
        stream = self.keys.stream(partition, level)
        command = [
            "EVALSHA", SUBMIT.sha, 3 if once is None else 4,
            stream, self.keys.job(partition, job), self.keys.jobs(partition),
            *(() if once is None else (self.keys.once(partition, once),)),
            maxlen, op, job, self.keys.job_channel, self.topic, partition, level,
            max(1, int(ttl)), self.idempotency_window if once else 0, *fields, F_JOB, job,
        ]  # fmt: skip
        spans = send_spans(self.topic, "submit", ((partition, command),))
        try:
            reply = await spans.wrap(self._run(redis, SUBMIT, command), entry_ids, job)
        except Exception as exc:
            if out_of_memory(exc):
                raise self._out_of_memory("the job was not submitted") from exc
            raise
        created = True
        if once is not None:  # {created, entry id, job id}: a repeat returns the first job
            created, job = bool(reply[0]), first_job(_text(reply[2]), once)
        if created:
            self._retention.wrote(redis, (stream,))
            if self._metrics is not None:
                self._metrics.produced(partition)
        return self._handle(redis, job)

    def _handle(self, redis: AnyRedis, job: str) -> JobHandle:
        from .results import JobHandle, ResultStore  # results.py imports this module

        if self._results is None:
            self._results = ResultStore(redis=redis, deserializer=self.result_deserializer)
        return JobHandle(job, self._results)

    def add_schedule(self, schedule: Schedule) -> None:
        """Enqueue the ticks of ``schedule`` on this topic while the producer is connected.

        Any number of processes may run the same schedule: each tick is enqueued once
        (see :mod:`redisaq_core.schedule`). A schedule's ``topic``, if set, must be
        this producer's.
        """
        if not callable(getattr(schedule, "plan", None)):  # schedule.py imports this module
            raise ConfigurationError(f"expected a Schedule, got {schedule!r}")
        if schedule.topic not in (None, self.topic):
            raise ConfigurationError(
                f"schedule {schedule.name!r} is for topic {schedule.topic!r}, "
                f"not this producer's {self.topic!r}"
            )
        encode_payload(self.serializer, schedule.payload)  # else every tick would be dropped
        self._ticker.add(schedule)

    async def _self_for(self, schedule: Schedule) -> Producer:
        return self

    async def get_num_partitions(self) -> int:
        """The topic's partition count as stored in Redis now (connecting if needed)."""
        return await stored_partitions(self._redis or await self._ensure(), self.keys)

    async def request_partition_increase(
        self, partitions: int = UNSET, *, num_partitions: int = UNSET
    ) -> int:
        """Raise the topic's partition count to ``partitions`` and return it.

        Partitions are never removed: a lower count raises ``PartitionError``.
        Consumers pick the new partitions up on their next heartbeat, other
        producers within ``refresh_interval``. Keys map to partitions by
        ``crc32(key) % partitions``, so after an increase some keys move to a
        new partition: order per key holds from then on, not across the change.
        ``num_partitions=`` is redisaq 0.1.5's spelling.
        """
        partitions = renamed("num_partitions", "partitions", num_partitions, partitions)
        integer(partitions, "partitions", maximum=MAX_PARTITIONS)
        redis = self._redis or await self._ensure()
        try:
            count, levels = await grow(
                redis, self.keys, partitions, exact=True, priorities=self.priorities
            )
        except ResponseError as exc:
            raise PartitionError(
                f"topic {self.topic!r}: {str(exc).removeprefix('PARTITIONS ')}"
            ) from None
        self._levels = max(self._levels, int(levels))
        self._set_partitions(int(count))
        return int(count)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
