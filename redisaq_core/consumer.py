"""``Consumer``: read a topic as a member of a consumer group.

One loop per consumer: take or drop partitions as the heartbeat says, read
the owned partitions (pending entries of a taken-over partition first, then
new ones), run the handler, acknowledge what succeeded. See
:mod:`redisaq_core.membership` for the group protocol and ``docs/design.md``
for the delivery rules.

Per partition, messages are handled one after another in stream order;
different partitions are handled concurrently (at most ``concurrency`` at a
time). A handler that raises leaves its message pending: the partition pauses,
the message is retried after an exponential backoff (its delivery count
raised in Redis each time), and the messages after it wait, so per-key order
holds. After ``max_deliveries`` deliveries the message moves to the
dead-letter stream and the partition goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import F_CREATED, F_KEY, F_TIMEOUT, Deserializer, decode_payload, default_deserializer
from .connection import AnyRedis, RedisComponent
from .dlq import dead_letter_fields
from .errors import ConfigurationError, ConsumerError, DuplicateConsumerError, SerializationError
from .keys import TopicKeys, validate_name
from .membership import LeaseState, Membership
from .message import Message
from .retry import backoff_delay
from .scripts import ACK, DEAD_LETTER, ENSURE_PARTITIONS, run_pipelined

__all__ = ["BatchCallback", "Callback", "Consumer", "ConsumerStats"]

log = logging.getLogger(__name__)

Callback = Callable[[Message], Awaitable[Any]]
BatchCallback = Callable[[list[Message]], Awaitable[Any]]
PartitionsHook = Callable[[list[int]], Any]


@dataclass
class ConsumerStats:
    """Counters of one consumer since it started."""

    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    trimmed: int = 0
    fenced: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Partition:
    number: int
    stream: str
    lease: str
    claiming: bool = True
    cursor: str = "0-0"
    revoking: bool = False
    held: list[Message] = field(default_factory=list)
    retry_at: float = 0.0
    valid_until: float = 0.0


@dataclass
class _Failure:
    message: Message
    error: BaseException | str
    rest: list[Message]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _check_number(value: Any, argument: str, *, minimum: float, integer: bool = False) -> None:
    kinds: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{argument} must be {kind} >= {minimum}, got {value!r}")


class Consumer(RedisComponent):
    """A member of a consumer group on a partitioned topic.

    ``group_name``: members of one group split the partitions; each group gets
    every message. ``consumer_name``: unique per live member (default: host,
    pid and a random suffix). ``batch_size``: entries read per partition per
    round trip, and the size limit of batches given to ``process_batch``
    handlers. ``heartbeat_interval`` / ``heartbeat_ttl``: how often a member
    reports, and after how long without a report it is taken for dead (default
    ``3 * heartbeat_interval``). ``start``: where a new group starts reading,
    ``"earliest"`` (every entry still in the stream) or ``"latest"`` (only new
    ones). ``max_deliveries``: deliveries before a failing message goes to the
    dead-letter stream (``dead_letter=False`` keeps it retrying). ``retry_backoff``:
    the base of the exponential retry delay in seconds, capped at
    ``retry_backoff_max``. ``poll_interval``: the longest a read blocks, which
    bounds idle traffic. ``static``: a restart with the same ``consumer_name``
    within ``heartbeat_ttl`` keeps its partitions. ``on_assign`` / ``on_revoke``:
    called with the partitions gained or given up.
    """

    def __init__(
        self,
        topic: str,
        *,
        group_name: str = "default",
        consumer_name: str | None = None,
        batch_size: int = 10,
        heartbeat_interval: float = 3.0,
        heartbeat_ttl: float | None = None,
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
        deserializer: Deserializer | None = None,
        concurrency: int = 16,
        start: Literal["earliest", "latest"] = "earliest",
        max_deliveries: int = 5,
        dead_letter: bool = True,
        dead_letter_maxlen: int | None = None,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        static: bool = False,
        on_assign: PartitionsHook | None = None,
        on_revoke: PartitionsHook | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self.keys = TopicKeys(topic)
        self.topic = topic
        self.group = validate_name(group_name, "group_name")
        if consumer_name is not None:
            validate_name(consumer_name, "consumer_name")
        self.name = consumer_name or _default_name()
        _check_number(batch_size, "batch_size", minimum=1, integer=True)
        if batch_size > 5000:
            raise ConfigurationError(f"batch_size must be <= 5000, got {batch_size!r}")
        _check_number(heartbeat_interval, "heartbeat_interval", minimum=0.01)
        if heartbeat_ttl is None:
            heartbeat_ttl = 3.0 * heartbeat_interval
        _check_number(heartbeat_ttl, "heartbeat_ttl", minimum=0.0)
        if heartbeat_ttl <= heartbeat_interval:
            raise ConfigurationError(
                f"heartbeat_ttl must be greater than heartbeat_interval ({heartbeat_interval}), "
                f"got {heartbeat_ttl!r}"
            )
        _check_number(concurrency, "concurrency", minimum=1, integer=True)
        if start not in ("earliest", "latest"):
            raise ConfigurationError(f"start must be 'earliest' or 'latest', got {start!r}")
        _check_number(max_deliveries, "max_deliveries", minimum=1, integer=True)
        if dead_letter_maxlen is not None:
            _check_number(dead_letter_maxlen, "dead_letter_maxlen", minimum=1, integer=True)
        _check_number(retry_backoff, "retry_backoff", minimum=0.0)
        _check_number(retry_backoff_max, "retry_backoff_max", minimum=0.0)
        _check_number(poll_interval, "poll_interval", minimum=0.001)
        _check_number(shutdown_timeout, "shutdown_timeout", minimum=0.0)
        if deserializer is not None and not callable(deserializer):
            raise ConfigurationError(f"deserializer must be callable, got {deserializer!r}")
        self.batch_size = batch_size
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_ttl = float(heartbeat_ttl)
        self.deserializer = deserializer or default_deserializer
        self.concurrency = concurrency
        self.start = start
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter
        self.dead_letter_maxlen = dead_letter_maxlen or 0
        self.retry_backoff = float(retry_backoff)
        self.retry_backoff_max = float(retry_backoff_max)
        self.poll_interval = float(poll_interval)
        self.shutdown_timeout = float(shutdown_timeout)
        self.static = static
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.token = uuid.uuid4().hex
        self.stats = ConsumerStats()
        self._owned: dict[int, _Partition] = {}
        # Held while the heartbeat changes ownership, and while revoked partitions are released.
        self._ownership = asyncio.Lock()
        self._members: tuple[str, ...] = ()
        self._partition_count = 0
        self._membership: Membership | None = None
        self._running = False
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._reading: asyncio.Future[Any] | None = None
        self._read_started = False
        self._read_interrupted = False
        self._runner: asyncio.Task[Any] | None = None
        self._fatal: BaseException | None = None
        self._redis_down = False

    # ---- public state ---------------------------------------------------------------

    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions whose lease this member holds now, sorted."""
        return sorted(p for p, s in self._owned.items() if not s.revoking)

    @property
    def members(self) -> tuple[str, ...]:
        """Live members of the group as of the last heartbeat."""
        return self._members

    @property
    def running(self) -> bool:
        """Whether ``process`` or ``process_batch`` is running."""
        return self._running

    # ---- running ----------------------------------------------------------------------

    async def process(self, callback: Callback) -> None:
        """Handle messages one at a time with ``callback(message)`` until :meth:`stop`."""
        await self._run(callback, batch=False)

    async def process_batch(self, callback: BatchCallback) -> None:
        """Handle lists of up to ``batch_size`` messages with ``callback(messages)`` until stop."""
        await self._run(callback, batch=True)

    consume = process
    consume_batch = process_batch

    async def stop(self, timeout: float | None = None) -> None:
        """Stop reading, let in-flight handlers finish, release partitions and leave the group.

        Returns when the consumer has stopped. Handlers still running after
        ``timeout`` (default ``shutdown_timeout``) are cancelled; their
        messages stay pending and are reclaimed by the next owner.
        Idempotent; safe to call from a signal handler's task or a handler.
        """
        if not self._running:
            return
        self._stopping.set()
        self._interrupt_read()
        if self._runner is asyncio.current_task():
            return
        deadline = self.shutdown_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped.wait()), deadline)
        except asyncio.TimeoutError:
            log.warning(
                "consumer %s: handlers still running after %.1fs, cancelling", self.name, deadline
            )
            if self._runner is not None:
                self._runner.cancel()
            await self._stopped.wait()

    async def _on_close(self) -> None:
        await self.stop()

    async def _run(self, handler: Callable[[Any], Awaitable[Any]], *, batch: bool) -> None:
        if not callable(handler):
            raise ConfigurationError(f"callback must be an async callable, got {handler!r}")
        if self._running:
            raise ConsumerError(f"consumer {self.name} is already running")
        # Running from here on, so that a stop() issued while connecting is not lost.
        self._running = True
        self._stopping.clear()
        self._stopped.clear()
        self._fatal = None
        self._runner = asyncio.current_task()
        try:
            redis = await self._ensure()
        except BaseException:
            self._running = False
            self._runner = None
            self._stopped.set()
            raise
        self._membership = Membership(
            redis, self.keys, self.group, self.name, self.token, self.heartbeat_ttl,
            static=self.static,
        )  # fmt: skip
        heart: asyncio.Task[None] | None = None
        try:
            await redis.sadd(self.keys.groups, self.group)
            await self._sync()
            heart = asyncio.create_task(
                self._heartbeat_loop(), name=f"redisaq-heartbeat-{self.name}"
            )
            while not self._stopping.is_set():
                await self._release_revoked()
                try:
                    messages = await self._fetch(redis)
                    if messages:
                        await self._dispatch(redis, handler, messages, batch)
                    self._connection_restored()
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    await self._connection_lost(exc)
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await self._recreate_groups(redis)
            if self._fatal is not None:
                raise self._fatal
        finally:
            if heart is not None:
                heart.cancel()
                await asyncio.gather(heart, return_exceptions=True)
            await asyncio.shield(self._leave())
            self._running = False
            self._reading = None
            self._runner = None
            self._stopped.set()

    def _interrupt_read(self) -> None:
        """End a blocking read early (stop, or partitions gained or revoked)."""
        self._wake.set()
        self._read_interrupted = True
        if self._reading is not None and self._read_started:
            self._reading.cancel()

    async def _read(self, redis: AnyRedis, streams: dict[Any, Any], block_ms: int) -> Any:
        self._read_started = True
        if self._read_interrupted:
            return None
        return await redis.xreadgroup(
            self.group, self.name, streams, count=self.batch_size, block=block_ms
        )

    async def _leave(self) -> None:
        membership, owned = self._membership, list(self._owned)
        self._owned.clear()
        if membership is None:
            return
        try:
            await membership.release(owned)
            await membership.leave()
            log.info("consumer %s left group %s of %s", self.name, self.group, self.topic)
        except (RedisError, OSError) as exc:
            log.warning("consumer %s: could not leave group cleanly: %s", self.name, exc)
        if owned and self.on_revoke is not None:
            await self._call_hook(self.on_revoke, owned)

    # ---- membership -----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._sync()
                if failing:
                    log.info("consumer %s: heartbeat restored", self.name)
                failing = False
            except DuplicateConsumerError as exc:
                log.error("consumer %s: replaced by another instance; stopping", self.name)
                self._fatal = exc
                self._owned.clear()
                self._stopping.set()
                self._interrupt_read()
                return
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("consumer %s: heartbeat failed: %s", self.name, exc)
                failing = True

    async def _sync(self) -> None:
        """Heartbeat, then take, renew or give up partition leases to match the assignment."""
        async with self._ownership:
            await self._sync_locked()

    async def _sync_locked(self) -> None:
        assert self._membership is not None
        view = await self._membership.beat()
        if view.partitions < self._partition_count:
            # The topic's metadata is gone (flushed or restarted Redis): put it back.
            log.warning(
                "consumer %s: topic %s lost its metadata; restoring %d partitions",
                self.name, self.topic, self._partition_count,
            )  # fmt: skip
            await ENSURE_PARTITIONS(self.redis, [self.keys.meta], [self._partition_count, 0])
            view = await self._membership.beat()
        self._members = view.members
        self._partition_count = view.partitions
        mine = view.owned_by(self.name)
        revoked = [s for p, s in self._owned.items() if p not in mine and not s.revoking]
        for part in revoked:
            part.revoking = True
        if revoked:
            self._interrupt_read()
        loop = asyncio.get_running_loop()
        valid_until = loop.time() + self.heartbeat_ttl * 0.8
        states = await self._membership.leases(sorted(mine | set(self._owned)))
        gained: list[int] = []
        fresh: list[int] = []
        for p, state in states.items():
            current = self._owned.get(p)
            if state == LeaseState.LOST:
                if current is not None:
                    log.warning("consumer %s: lease of partition %d lost", self.name, p)
                    del self._owned[p]
                continue
            if current is not None and (state == LeaseState.RENEWED or current.revoking):
                current.valid_until = valid_until
                if p in mine:
                    current.revoking = False  # assigned back before it was released
                continue
            if p not in mine:
                continue
            # Newly ours, or ours again after the lease lapsed: start from the pending entries.
            (fresh if current is not None else gained).append(p)
            self._owned[p] = _Partition(
                p, self.keys.stream(p), self.keys.lease(p, self.group), valid_until=valid_until
            )
        if gained or fresh:
            await self._create_groups(gained + fresh)
            self._interrupt_read()
        await self._sweep()
        if gained:
            log.info("consumer %s: assigned partitions %s", self.name, gained)
            if self.on_assign is not None:
                await self._call_hook(self.on_assign, gained)

    async def _sweep(self) -> None:
        """Claim entries that other consumers hold pending on partitions we own.

        A previous owner's read that was already under way when it gave a partition up
        can still hand it entries after we took over; they would wait in its pending
        list for ever. One XPENDING summary per owned partition finds them.
        """
        parts = [s for s in self._owned.values() if not s.revoking and not s.claiming]
        if not parts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for s in parts:
            pipe.xpending(s.stream, self.group)
        for s, summary in zip(parts, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(summary, Exception):
                continue
            others = [c for c in summary.get("consumers") or () if _text(c["name"]) != self.name]
            if others:
                log.info(
                    "consumer %s: partition %d has entries pending with %s; claiming them",
                    self.name, s.number, ", ".join(_text(c["name"]) for c in others),
                )  # fmt: skip
                s.claiming, s.cursor = True, "0-0"
                self._interrupt_read()

    async def _create_groups(self, partitions: Iterable[int]) -> None:
        redis = self.redis
        pipe = redis.pipeline(transaction=False)
        start = "0" if self.start == "earliest" else "$"
        for p in partitions:
            pipe.xgroup_create(self.keys.stream(p), self.group, id=start, mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result

    async def _recreate_groups(self, redis: AnyRedis) -> None:
        log.warning("consumer %s: group %s missing, creating it again", self.name, self.group)
        for part in self._owned.values():
            part.claiming, part.cursor = True, "0-0"
        await self._create_groups(list(self._owned))

    async def _release_revoked(self) -> None:
        if self._membership is None or not any(s.revoking for s in self._owned.values()):
            return
        async with self._ownership:
            revoked = [p for p, s in self._owned.items() if s.revoking]
            for p in revoked:
                del self._owned[p]
            await self._membership.release(revoked)
        log.info("consumer %s: released partitions %s", self.name, revoked)
        if self.on_revoke is not None:
            await self._call_hook(self.on_revoke, revoked)

    async def _call_hook(self, hook: PartitionsHook, partitions: list[int]) -> None:
        try:
            result = hook(sorted(partitions))
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("consumer %s: partition hook %r failed", self.name, hook)

    async def _connection_lost(self, exc: BaseException) -> None:
        if not self._redis_down:
            log.warning("consumer %s: Redis unreachable (%s); retrying", self.name, exc)
        self._redis_down = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), min(self.poll_interval, 1.0))

    def _connection_restored(self) -> None:
        if self._redis_down:
            log.info("consumer %s: Redis reachable again", self.name)
            self._redis_down = False

    # ---- reading --------------------------------------------------------------------

    async def _fetch(self, redis: AnyRedis) -> list[Message]:
        """The next messages to handle: retries due, then reclaimed entries, then new ones."""
        now = asyncio.get_running_loop().time()
        ready = [s for s in self._owned.values() if not s.revoking and s.valid_until > now]
        due = [s for s in ready if s.held and s.retry_at <= now]
        if due:
            return await self._take_retries(redis, due)
        claiming = [s for s in ready if s.claiming and not s.held]
        if claiming:
            return await self._claim(redis, claiming)
        reading = [s for s in ready if not s.held]
        wait = self.poll_interval
        waiting = [s.retry_at - now for s in ready if s.held]
        if waiting:
            wait = max(0.001, min(wait, *waiting))
        if not reading:
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            return []
        streams: dict[Any, Any] = {s.stream: ">" for s in reading}
        self._read_interrupted = self._read_started = False
        self._reading = asyncio.ensure_future(self._read(redis, streams, int(wait * 1000)))
        try:
            response = await asyncio.shield(self._reading)
        except asyncio.CancelledError:
            read = self._reading
            if not read.cancelled():
                read.cancel()
                raise  # this task itself is being cancelled
            # The read was ended on purpose. Let it wind down before any lease is released;
            # entries it may have been handed stay in our pending list: claim them back
            # before reading new ones.
            await asyncio.wait([read])
            for s in reading:
                s.claiming, s.cursor = True, "0-0"
            return []
        finally:
            self._reading = None
        if not response:
            return []
        by_stream = {s.stream: s for s in reading}
        items = response.items() if isinstance(response, dict) else response
        out: list[Message] = []
        for name, entries in items:
            part = by_stream[name.decode() if isinstance(name, bytes) else name]
            for entry_id, fields in entries:
                out.append(self._message(part, entry_id, fields, 1))
        return out

    async def _claim(self, redis: AnyRedis, parts: list[_Partition]) -> list[Message]:
        """Take over pending entries of partitions just acquired (the previous owner's, or ours)."""
        pipe = redis.pipeline(transaction=False)
        for s in parts:
            pipe.xautoclaim(s.stream, self.group, self.name, 0, s.cursor, count=self.batch_size)
            pipe.xpending_range(s.stream, self.group, s.cursor, "+", self.batch_size)
        results = await pipe.execute()
        out: list[Message] = []
        trimmed: dict[_Partition, list[str]] = {}
        for i, s in enumerate(parts):
            claimed, pending = results[2 * i], results[2 * i + 1]
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            cursor = claimed[0]
            s.cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            for entry_id, fields in claimed[1]:
                if fields is None:
                    trimmed.setdefault(s, []).append(entry_id.decode())
                    continue
                out.append(self._message(s, entry_id, fields, counts.get(entry_id, 1)))
            if len(claimed) > 2 and claimed[2]:
                self.stats.trimmed += len(claimed[2])
                log.warning(
                    "consumer %s: %d pending entries of partition %d were trimmed before "
                    "being handled", self.name, len(claimed[2]), s.number,
                )  # fmt: skip
            if s.cursor in ("0-0", "0"):
                s.claiming = False
        if trimmed:
            self.stats.trimmed += sum(len(v) for v in trimmed.values())
            await self._ack(redis, trimmed)
        self.stats.reclaimed += len(out)
        return out

    async def _take_retries(self, redis: AnyRedis, parts: list[_Partition]) -> list[Message]:
        """Claim again the failed message at the head of each paused partition (delivery +1)."""
        pipe = redis.pipeline(transaction=False)
        for s in parts:
            pipe.xclaim(s.stream, self.group, self.name, 0, [s.held[0].msg_id or "0-0"])
        results = await pipe.execute()
        out: list[Message] = []
        gone: dict[_Partition, list[str]] = {}
        for s, claimed in zip(parts, results, strict=True):
            held, s.held = s.held, []
            head = held[0]
            if claimed and claimed[0][1] is not None:
                head.deliveries += 1
                out.append(head)
                self.stats.retried += 1
            else:
                gone.setdefault(s, []).append(head.msg_id or "")
            out += held[1:]
        if gone:
            self.stats.trimmed += len(gone)
            await self._ack(redis, gone)
        return out

    def _message(
        self, part: _Partition, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
    ) -> Message:
        msg_id = entry_id.decode()
        enqueued = int(msg_id.split("-", 1)[0]) / 1000.0
        try:
            payload = decode_payload(self.deserializer, fields)
        except SerializationError as exc:
            return _Undecodable(part.number, msg_id, fields, exc, deliveries, self)
        created = fields.get(F_CREATED)
        timeout = fields.get(F_TIMEOUT)
        key = fields.get(F_KEY)
        return Message(
            topic=self.topic,
            payload=payload,
            msg_id=msg_id,
            partition_key=key.decode() if key is not None else None,
            partition=part.number,
            created_at=float(created) if created is not None else enqueued,
            enqueued_at=enqueued,
            timeout=float(timeout) if timeout is not None else None,
            deliveries=deliveries,
            group=self.group,
        )

    # ---- handling -------------------------------------------------------------------

    async def _dispatch(
        self,
        redis: AnyRedis,
        handler: Callable[[Any], Awaitable[Any]],
        messages: list[Message],
        batch: bool,
    ) -> None:
        poison = [m for m in messages if isinstance(m, _Undecodable)]
        if poison:
            messages = [m for m in messages if not isinstance(m, _Undecodable)]
        done: dict[int, list[str]] = {}
        failures: list[_Failure] = [_Failure(m, m.error, []) for m in poison]
        if batch:
            for i in range(0, len(messages), self.batch_size):
                chunk = messages[i : i + self.batch_size]
                try:
                    await handler(chunk)
                except Exception as exc:
                    failures += self._batch_failure(chunk, exc)
                else:
                    for m in chunk:
                        done.setdefault(m.partition or 0, []).append(m.msg_id or "")
        else:
            groups: dict[int, list[Message]] = {}
            for m in messages:
                groups.setdefault(m.partition or 0, []).append(m)
            if len(groups) == 1:
                results = [await self._run_partition(handler, next(iter(groups.values())))]
            else:
                gate = asyncio.Semaphore(self.concurrency)

                async def run(msgs: list[Message]) -> tuple[list[str], _Failure | None]:
                    async with gate:
                        return await self._run_partition(handler, msgs)

                results = await asyncio.gather(*(run(msgs) for msgs in groups.values()))
            for p, (ok, failure) in zip(groups, results, strict=True):
                if ok:
                    done[p] = ok
                if failure is not None:
                    failures.append(failure)
        if done:
            by_part = {self._owned[p]: ids for p, ids in done.items() if p in self._owned}
            await self._ack(redis, by_part)
            handled = sum(len(v) for v in done.values())
            self.stats.handled += handled
            for p, ids in done.items():
                self.stats.per_partition[p] = self.stats.per_partition.get(p, 0) + len(ids)
        if failures:
            await self._fail(redis, failures)

    async def _run_partition(
        self, handler: Callable[[Any], Awaitable[Any]], msgs: list[Message]
    ) -> tuple[list[str], _Failure | None]:
        ok: list[str] = []
        loop = asyncio.get_running_loop()
        for i, m in enumerate(msgs):
            part = self._owned.get(m.partition or 0)
            if part is None or part.valid_until <= loop.time():
                # The lease may have passed to another member (this process was paused or
                # cut off): leave the rest pending for the new owner.
                return ok, None
            try:
                if m.timeout:
                    await asyncio.wait_for(handler(m), m.timeout)
                else:
                    await handler(m)
            except Exception as exc:
                return ok, _Failure(m, exc, msgs[i + 1 :])
            ok.append(m.msg_id or "")
        return ok, None

    def _batch_failure(self, chunk: list[Message], exc: BaseException) -> list[_Failure]:
        by_part: dict[int, list[Message]] = {}
        for m in chunk:
            by_part.setdefault(m.partition or 0, []).append(m)
        return [_Failure(msgs[0], exc, msgs[1:]) for msgs in by_part.values()]

    async def _ack(self, redis: AnyRedis, ids: dict[_Partition, list[str]]) -> None:
        calls = [
            (ACK, [s.stream, s.lease], [self.group, self.token, *v]) for s, v in ids.items() if v
        ]
        results = await run_pipelined(redis, calls)
        for (s, v), result in zip(ids.items(), results, strict=True):
            if isinstance(result, Exception):
                raise result
            if int(result) < 0:
                self._fenced(s, len(v))

    def _fenced(self, part: _Partition, count: int) -> None:
        self.stats.fenced += count
        log.warning(
            "consumer %s: partition %d is no longer ours; %d result(s) not acknowledged "
            "(the new owner will handle them again)", self.name, part.number, count,
        )  # fmt: skip
        if self._owned.get(part.number) is part:
            del self._owned[part.number]

    async def _fail(self, redis: AnyRedis, failures: list[_Failure]) -> None:
        now = asyncio.get_running_loop().time()
        dead: list[_Failure] = []
        for f in failures:
            m = f.message
            self.stats.failed += 1
            part = self._owned.get(m.partition or 0)
            if part is None:
                continue
            final = isinstance(m, _Undecodable) or (
                self.dead_letter and m.deliveries >= self.max_deliveries
            )
            if final:
                dead.append(f)
                if f.rest:
                    part.held, part.retry_at = list(f.rest), now
                continue
            log.info(
                "consumer %s: message %s of partition %d failed (delivery %d): %s: %s",
                self.name, m.msg_id, part.number, m.deliveries, type(f.error).__name__, f.error,
            )  # fmt: skip
            part.held = [m, *f.rest]
            part.retry_at = now + backoff_delay(
                m.deliveries, self.retry_backoff, self.retry_backoff_max
            )
        if dead:
            await self._dead_letter(redis, dead)

    async def _dead_letter(self, redis: AnyRedis, failures: list[_Failure]) -> None:
        calls = []
        for f in failures:
            m = f.message
            part = self._owned.get(m.partition or 0)
            if part is None:
                continue
            raw = m.fields if isinstance(m, _Undecodable) else await self._raw(redis, part, m)
            fields = dead_letter_fields(
                topic=self.topic, partition=part.number, group=self.group, msg_id=m.msg_id or "",
                deliveries=m.deliveries, error=f.error, consumer=self.name, original=raw,
            )  # fmt: skip
            keys = [part.stream, part.lease, self.keys.dead_letters(part.number)]
            args = [self.group, self.token, m.msg_id, self.dead_letter_maxlen, *fields]
            calls.append((DEAD_LETTER, keys, args))
        results = await run_pipelined(redis, calls)
        for f, result in zip(failures, results, strict=True):
            if isinstance(result, Exception):
                raise result
            part = self._owned.get(f.message.partition or 0)
            if result == -1 and part is not None:
                self._fenced(part, 1)
                continue
            self.stats.dead_lettered += 1
            log.warning(
                "consumer %s: message %s of partition %s dead-lettered after %d deliveries: %s",
                self.name, f.message.msg_id, f.message.partition, f.message.deliveries, f.error,
            )  # fmt: skip

    async def _raw(self, redis: AnyRedis, part: _Partition, m: Message) -> dict[bytes, bytes]:
        found: Any = await redis.xrange(part.stream, m.msg_id or "-", m.msg_id or "+", count=1)
        return dict(found[0][1]) if found else {}


class _Undecodable(Message):
    """An entry whose payload could not be decoded: it goes to the dead letters at once."""

    __slots__ = ("error", "fields")

    def __init__(
        self,
        partition: int,
        msg_id: str,
        fields: dict[bytes, bytes],
        error: BaseException,
        deliveries: int,
        consumer: Consumer,
    ) -> None:
        super().__init__(
            topic=consumer.topic, payload=None, msg_id=msg_id, partition=partition,
            deliveries=deliveries, group=consumer.group,
        )  # fmt: skip
        self.fields = fields
        self.error = error
