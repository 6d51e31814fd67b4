"""``Consumer``: read a topic as a member of a consumer group.

One loop per consumer: take or drop partitions as the heartbeat says, read
the owned partitions (pending entries of a taken-over partition first, then
new ones), run the handler, acknowledge what succeeded. See
:mod:`redisaq_core._membership` for the group protocol and ``docs/design.md``
for the delivery rules.

Per partition, messages are handled in stream order, partitions side by side
(up to ``concurrency``). A failed message is retried after a backoff, the
messages behind it waiting; after ``max_deliveries`` it is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._checks import integer, number
from ._codec import Deserializer, Serializer, default_deserializer, default_serializer
from ._compat import legacy_logger, stored_partitions
from ._delayed import DelayedMover
from ._delivery import POLL_INTERVAL, ConsumerStats, OwnedPartition, Reader, sweep_period
from ._failures import REDIS_FAILURES, Recovery, recovery_for
from ._growth import add_group, grow, start_at_end
from ._handling import Dispatcher
from ._membership import LEASE_VALIDITY, LeaseState, Membership
from ._read_ahead import ReadAhead
from ._retention import read_mode, server_features
from ._scripts import FORGET_CONSUMER, run_pipelined
from ._settlement import Settler
from ._tasks import cancel_and_wait, finish_shielded, uncancel, wait_event
from .connection import AnyRedis, RedisComponent, is_cluster
from .errors import AlreadyRunningError, ConfigurationError, ConsumerError, DuplicateConsumerError
from .keys import TopicKeys, validate_name
from .logs import log_context, reset_log_context
from .message import Message, Received
from .metrics import MetricsRecorder

if TYPE_CHECKING:
    from .registry import Keepalive, ServiceRegistry

__all__ = [
    "BatchCallback",
    "Callback",
    "Consumer",
    "ConsumerOptions",
    "ConsumerStats",
    "SingleCallback",
]

log = logging.getLogger(__name__)

Callback = Callable[[Received], Awaitable[Any]]
SingleCallback = Callback  # redisaq 0.1.5's name


class ConsumerOptions(TypedDict, total=False):
    """How a consumer runs in its group: the keywords a bridge passes on to its consumer."""

    heartbeat_interval: float
    heartbeat_ttl: float | None
    poll_interval: float
    start: Literal["earliest", "latest"]
    max_deliveries: int
    dead_letter: bool
    dead_letter_maxlen: int | None
    retry_backoff: float
    retry_backoff_max: float
    shutdown_timeout: float
    max_processing_time: float | None
    static: bool


BatchCallback = Callable[[list[Message]], Awaitable[Any]]
PartitionsHook = Callable[[list[int]], Any]


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Consumer(RedisComponent):
    """A member of a consumer group on a partitioned topic.

    ``group_name``: members of one group split the partitions; each group gets every
    message. ``consumer_name``: unique per live member (default: host, pid and a random
    suffix). ``batch_size``: entries read per partition per round trip, and the size
    limit of batches given to ``process_batch`` handlers. ``heartbeat_interval`` /
    ``heartbeat_ttl``: how often a member reports, and after how long without a report
    it is taken for dead (default ``3 * heartbeat_interval``). ``start``: where a new
    group starts reading, ``"earliest"`` (every entry still in the stream) or
    ``"latest"`` (only new ones). ``max_deliveries``: handler runs before a failing
    message goes to the dead-letter stream (``dead_letter=False`` keeps it retrying;
    undecodable entries and job results that can't be serialized go there anyway).
    ``retry_backoff``: the base of the exponential retry delay in seconds, capped at
    ``retry_backoff_max``. ``poll_interval``: the longest a read blocks (10 s; an idle
    read ends sooner, at its leases' local deadline), which bounds idle traffic.
    ``static``: a restart with the same ``consumer_name`` within ``heartbeat_ttl`` keeps
    its partitions. ``on_assign`` / ``on_revoke``: called with the partitions gained or
    given up. ``registry``: a :class:`~redisaq_core.registry.ServiceRegistry` in which
    the consumer registers itself (service type ``consumer``, id ``topic/group/name``,
    its partitions in the metadata) while it runs; deleting that registration stops it
    gracefully. ``metrics``: keep the topic's counters and latency histograms in Redis
    (:mod:`redisaq_core.metrics`; flushed once a second). ``max_processing_time``: the
    longest one handler call (a message, or a batch for ``process_batch``) may run,
    300 s by default (``None``: no limit). A call still running then is cancelled and counts
    as a failed delivery (retried, then dead-lettered), so a hung handler can't hold its
    partition while the consumer keeps heartbeating; it is checked on every heartbeat,
    so the cut comes within ``heartbeat_interval`` after the limit. ``Message.timeout``
    sets a limit per message, to the millisecond. ``logger``: where the consumer's own
    log records go (default ``redisaq_core.consumer``); ``debug`` is accepted from
    redisaq 0.1.5 code and deprecated.
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
        serializer: Serializer | None = None,
        concurrency: int = 16,
        start: Literal["earliest", "latest"] = "earliest",
        max_deliveries: int = 5,
        dead_letter: bool = True,
        dead_letter_maxlen: int | None = None,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 30.0,
        poll_interval: float = POLL_INTERVAL,
        shutdown_timeout: float = 30.0,
        max_processing_time: float | None = 300.0,
        static: bool = False,
        on_assign: PartitionsHook | None = None,
        on_revoke: PartitionsHook | None = None,
        registry: ServiceRegistry | None = None,
        metrics: bool = True,
        logger: logging.Logger | None = None,
        debug: bool | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self.logger = legacy_logger("Consumer", debug, logger, log)
        self.keys = TopicKeys(topic)
        self.topic = topic
        self.group = validate_name(group_name, "group_name")
        if consumer_name is not None:
            validate_name(consumer_name, "consumer_name")
        self.name = consumer_name or _default_name()
        integer(batch_size, "batch_size", maximum=5000)
        number(heartbeat_interval, "heartbeat_interval", minimum=0.01)
        if heartbeat_ttl is None:
            heartbeat_ttl = 3.0 * heartbeat_interval
        number(heartbeat_ttl, "heartbeat_ttl", minimum=0.0)
        if heartbeat_ttl <= heartbeat_interval:
            raise ConfigurationError(
                f"heartbeat_ttl must be greater than heartbeat_interval ({heartbeat_interval}), "
                f"got {heartbeat_ttl!r}"
            )
        integer(concurrency, "concurrency")
        if start not in ("earliest", "latest"):
            raise ConfigurationError(f"start must be 'earliest' or 'latest', got {start!r}")
        integer(max_deliveries, "max_deliveries")
        if dead_letter_maxlen is not None:
            integer(dead_letter_maxlen, "dead_letter_maxlen")
        number(retry_backoff, "retry_backoff", minimum=0.0)
        number(retry_backoff_max, "retry_backoff_max", minimum=0.0)
        number(poll_interval, "poll_interval", minimum=0.001)
        number(shutdown_timeout, "shutdown_timeout", minimum=0.0)
        if max_processing_time is not None:
            number(max_processing_time, "max_processing_time", minimum=0.001)
        for argument, hook in (("deserializer", deserializer), ("serializer", serializer)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{argument} must be callable, got {hook!r}")
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
        self._longest_block = self.poll_interval
        self.shutdown_timeout = float(shutdown_timeout)
        self.max_processing_time = (
            None if max_processing_time is None else float(max_processing_time)
        )
        self.static = static
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.registry = registry
        self.metrics = metrics
        self._metrics: MetricsRecorder | None = None
        self._registration: Keepalive | None = None
        self._reported: list[int] | None = None
        self.token = uuid.uuid4().hex
        self.stats = ConsumerStats()
        self._owned: dict[int, OwnedPartition] = {}
        self._reader = Reader(
            self.keys, self.group, self.name, self.token, batch_size=batch_size,
            deserializer=self.deserializer, stats=self.stats,
        )  # fmt: skip
        self._settler = Settler(
            self.keys, self.group, self.name, self.token,
            serializer=serializer or default_serializer, max_deliveries=max_deliveries,
            dead_letter=dead_letter, dead_letter_maxlen=self.dead_letter_maxlen, stats=self.stats,
            retry_backoff=self.retry_backoff, retry_backoff_max=self.retry_backoff_max,
        )  # fmt: skip
        self._ahead = ReadAhead(self._settler, self._reader, self._owned, self._fenced)
        self._dispatcher = Dispatcher(
            keys=self.keys, group=self.group, settler=self._settler, stats=self.stats,
            owned=self._owned, fenced=self._fenced, batch_size=batch_size,
            concurrency=concurrency, dead_letter=dead_letter, max_deliveries=max_deliveries,
            max_processing_time=self.max_processing_time,
        )  # fmt: skip
        self._mover = DelayedMover(
            self.keys, self.group, self.name, self.token, self._owned, logger=self.logger,
            check_interval=self.heartbeat_interval * sweep_period(heartbeat_interval),
        )  # fmt: skip
        self._priorities = 1
        self._beats = 0
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
        self._recreated_at = float("-inf")
        self._groups_gone: BaseException | None = None
        self._reclaimed = False
        self._forced = False
        self._touched: set[str] = set()
        self._stop_task: asyncio.Task[None] | None = None  # a stop a handler asked for

    # ---- public state ---------------------------------------------------------------
    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions whose lease this member holds now, sorted."""
        return sorted(p for p, s in self._owned.items() if not s.revoking)

    @property
    def group_name(self) -> str:
        """The consumer group's name (``group``)."""
        return self.group

    @property
    def consumer_name(self) -> str:
        """The name of this member in the group (``name``)."""
        return self.name

    @property
    def partitions(self) -> list[int]:
        """Same as :attr:`assigned_partitions` (redisaq 0.1.5's name)."""
        return self.assigned_partitions

    @property
    def serializer(self) -> Serializer:
        """How handler results of jobs are stored (``serializer=``)."""
        return self._settler.serializer

    async def get_num_partitions(self) -> int:
        """The topic's partition count as stored in Redis now (connecting if needed)."""
        return await stored_partitions(await self._ensure(), self.keys)

    @property
    def members(self) -> tuple[str, ...]:
        """Live members of the group as of the last heartbeat."""
        return self._members

    @property
    def running(self) -> bool:
        """Whether ``process`` or ``process_batch`` is running."""
        return self._running

    @property
    def deletes_acked(self) -> bool:
        """Whether acknowledging deletes what every group acknowledged (``delete-acked``)."""
        return self._settler.delete_acked

    # ---- running ----------------------------------------------------------------------
    async def process(self, callback: Callback) -> None:
        """Handle messages one at a time with ``callback(message)`` until :meth:`stop`."""
        await self._run(callback, batch=False)

    async def process_batch(self, callback: BatchCallback, batch_size: int | None = None) -> None:
        """Handle lists of up to ``batch_size`` messages with ``callback(messages)`` until stop.

        ``batch_size`` here replaces the consumer's (as redisaq 0.1.5's ``consume_batch``).
        """
        if batch_size is not None:
            self._set_batch_size(batch_size)
        await self._run(callback, batch=True)

    def _set_batch_size(self, batch_size: int) -> None:
        integer(batch_size, "batch_size", maximum=5000)
        self.batch_size = self._reader.batch_size = self._dispatcher.batch_size = batch_size

    consume = process
    consume_batch = process_batch

    async def stop(self, timeout: float | None = None) -> None:
        """Stop reading, let in-flight handlers finish, release partitions and leave the group.

        Returns when the consumer has stopped (a batch it read ahead is handled
        first). Handlers still running after ``timeout`` (default
        ``shutdown_timeout``) are cancelled; their messages stay pending and are
        reclaimed by the next owner.
        Idempotent; safe to call from a signal handler's task or a handler (or a
        task a handler started): there it returns at once, and the stop, its
        timeout included, goes on without it.
        """
        if not self._running:
            return
        self._stopping.set()
        self._interrupt_read()
        deadline = self.shutdown_timeout if timeout is None else timeout
        if self._runner is asyncio.current_task() or self._dispatcher.in_handler():
            self._stop_task = asyncio.create_task(self._stop_within(deadline))  # not awaited
            return
        await self._stop_within(deadline)

    async def _stop_within(self, deadline: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped.wait()), deadline)
        except asyncio.TimeoutError:
            self.logger.warning(
                "consumer %s: handlers still running after %.1fs, cancelling", self.name, deadline
            )
            if self._runner is not None:
                self._forced = True
                self._runner.cancel()
            await self._stopped.wait()

    async def _on_close(self) -> None:
        await self.stop()

    async def _run(self, handler: Callable[[Any], Awaitable[Any]], *, batch: bool) -> None:
        if not callable(handler):
            raise ConfigurationError(f"callback must be an async callable, got {handler!r}")
        if self._running:
            raise AlreadyRunningError(f"consumer {self.name} is already running")
        # Running from here on, so that a stop() issued while connecting is not lost.
        self._running = True
        self._stopping.clear()
        self._stopped.clear()
        self._fatal = None
        self._groups_gone = None
        self._runner = asyncio.current_task()
        try:
            redis = await self._ensure()
        except BaseException:
            self._running = False
            self._runner = None
            self._stopped.set()
            raise
        self._settler.deferrable = not is_cluster(redis)
        self._membership = Membership(
            redis, self.keys, self.group, self.name, self.token, self.heartbeat_ttl,
            static=self.static,
        )  # fmt: skip
        heart: asyncio.Task[None] | None = None
        logged = log_context(topic=self.topic, group=self.group, consumer=self.name)
        try:
            if self.metrics:
                self._metrics = MetricsRecorder(redis, self.topic, self.group, consumer=self.name)
                self.stats.recorder = self._metrics
                await self._metrics.start()
            await self._join(redis, self._membership)
            heart = asyncio.create_task(
                self._heartbeat_loop(), name=f"redisaq-heartbeat-{self.name}"
            )
            self._mover.start(redis)  # moves due delayed entries of the owned partitions
            while not self._stopping.is_set() or (self._ahead.pending and not self._redis_down):
                try:
                    if self._groups_gone is not None:
                        await self._recreate_groups(self._groups_gone)
                        self._groups_gone = None
                    await self._release_revoked()
                    messages = await self._fetch(redis)
                    if messages:
                        await self._dispatcher.dispatch(
                            redis, handler, messages, batch, reclaimed=self._reclaimed
                        )
                    self._connection_restored()
                except REDIS_FAILURES as exc:
                    recovery = recovery_for(exc)
                    if recovery is Recovery.RECREATE:
                        self._groups_gone = exc
                    elif recovery is Recovery.RETRY:
                        # A lost reply may have left entries pending with us: claim them first.
                        for part in self._owned.values():
                            part.reclaim()
                        await self._connection_lost(exc)
                    else:
                        raise ConsumerError(
                            f"consumer {self.name} of topic {self.topic!r} stopped: Redis "
                            f"answered {exc!s} (not an outage a retry would fix)"
                        ) from exc
            if self._fatal is not None:
                raise self._fatal
        except asyncio.CancelledError:
            if not self._forced:
                raise
            # stop() ran out of time and cancelled the handlers: that is a stop, not an error.
            uncancel()
        finally:
            await self._clean_up(self._ahead.discard(self.redis, redis_down=self._redis_down))
            if heart is not None:
                await cancel_and_wait(heart)
            await self._clean_up(self._dispatcher.jobs.aclose())
            await self._mover.stop()
            await self._clean_up(self._leave())
            if self._registration is not None:
                await self._clean_up(self._registration.stop())
                self._registration = None
            if self._metrics is not None:
                await self._clean_up(self._metrics.stop())
                self._metrics = self.stats.recorder = None
            self._forced = self._running = False
            self._reading = self._runner = None
            self._stopped.set()
            reset_log_context(logged)

    async def _join(self, redis: AnyRedis, membership: Membership) -> None:
        """Join the group; while Redis can't serve it (down, out of memory), wait and retry."""
        delay, told, new_group = 0.1, False, False
        while True:
            try:
                # start="latest" only for a group new to the topic: one created again (Redis
                # flushed, the group deleted) or on a later partition reads from the start.
                new_group = await add_group(redis, self.keys, self.group) or new_group
                if new_group and self.start == "latest":
                    await start_at_end(redis, self.keys, self.group)
                await server_features(redis)  # once per client: warns about an evicting server
                await self._sync()  # reads the topic's retention with the partitions it gains
                if (failed := membership.lease_failure()) is not None:  # a later beat retries
                    self.logger.warning("consumer %s: a lease call failed as it joined: %r",
                                        self.name, failed)  # fmt: skip
                await self._register()
                return
            except REDIS_FAILURES as exc:
                if recovery_for(exc) is not Recovery.RETRY:
                    raise
                if not told:
                    self.logger.warning("consumer %s: cannot join yet (%s); retrying",
                                        self.name, exc)  # fmt: skip
                    told = True
                await wait_event(self._stopping, delay)
                if self._stopping.is_set():
                    return
                delay = min(delay * 2, 5.0)

    async def _clean_up(self, step: Awaitable[Any]) -> None:
        """Run a step of leaving, shielded from cancellation, unless stop() ran out of time.

        Once stop() has cancelled the handlers, Redis may be what held them up: each step
        then gets at most ``heartbeat_ttl``, and what it could not do expires on its own.
        """
        limit = self.heartbeat_ttl if self._forced else None
        if not await finish_shielded(step, limit, forced=lambda: self._forced):
            self.logger.warning("consumer %s: a step of leaving did not finish", self.name)

    def _interrupt_read(self) -> None:
        """End a blocking read early (stop, or partitions gained or revoked)."""
        self._wake.set()
        self._mover.wake()
        self._read_interrupted = True
        if self._reading is not None and self._read_started:
            self._reading.cancel()

    async def _read(
        self, redis: AnyRedis, parts: list[OwnedPartition], block_ms: int
    ) -> list[Received]:
        self._read_started = True
        if self._read_interrupted:
            return []
        return await self._reader.read(redis, parts, block_ms)

    async def _register(self) -> None:
        if self.registry is None:
            return
        self._reported = self.assigned_partitions
        self._registration = await self.registry.register_consumer(
            topic=self.topic, group=self.group, consumer_name=self.name,
            partitions=self._reported, interval=self.heartbeat_interval,
            ttl=self.heartbeat_ttl, on_shutdown=self.stop,
        )  # fmt: skip

    async def _report_partitions(self) -> None:
        if self._registration is None or self.assigned_partitions == self._reported:
            return
        await self._registration.set_partitions(partitions := self.assigned_partitions)
        self._reported = partitions  # only once the call went through

    async def _leave(self) -> None:
        membership, owned = self._membership, list(self._owned)
        if membership is None:
            self._owned.clear()
            return
        try:
            # What the last batch left to acknowledge goes before the leases.
            await self._settler.flush(self.redis, self._owned, self._fenced, last=True)
        except REDIS_FAILURES as exc:
            self.logger.warning("consumer %s: last batch not acknowledged: %s", self.name, exc)
        self._owned.clear()
        self._settler.runs.clear()
        try:
            await membership.leave(owned)  # leaves even if a release failed, then raises
            # Our consumer entries where nothing of ours is pending (Redis never removes them).
            streams, self._touched = sorted(self._touched), set()
            calls = [(FORGET_CONSUMER, [s], [self.group, self.name]) for s in streams]
            await run_pipelined(self.redis, calls)
            self.logger.info("consumer %s left group %s of %s", self.name, self.group, self.topic)
        except REDIS_FAILURES as exc:
            self.logger.warning("consumer %s: could not leave group cleanly: %s", self.name, exc)
        await self._call_hook(self.on_revoke, owned)

    # ---- membership -----------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self._dispatcher.cut_off_hung(asyncio.get_running_loop().time())
            try:
                await self._sync()
                await self._report_partitions()
                await self._dispatcher.jobs.check(self.redis)  # cancelled jobs' handlers
                if self._membership is not None:  # a lease call that failed: after the rest
                    self._membership.check_leases()
                if failing:
                    self.logger.info("consumer %s: heartbeat restored", self.name)
                failing = False
            except DuplicateConsumerError as exc:
                self.logger.error("consumer %s: replaced by another instance; stopping", self.name)
                self._fatal = exc
                self._owned.clear()
                self._stopping.set()
                self._interrupt_read()
                return
            except Exception as exc:  # Redis failed, or a reply data of other clients spoilt
                if not failing:
                    self.logger.warning("consumer %s: heartbeat failed: %r", self.name, exc,
                                        exc_info=not isinstance(exc, REDIS_FAILURES))  # fmt: skip
                failing = True

    async def _sync(self) -> None:
        """Heartbeat, then take, renew or give up partition leases to match the assignment."""
        async with self._ownership:
            await self._sync_locked()

    async def _sync_locked(self) -> None:
        assert self._membership is not None
        now = asyncio.get_running_loop().time()
        valid_until = now + self.heartbeat_ttl * LEASE_VALIDITY  # from before any renewal
        deadlines = {p: s.valid_until for p, s in self._owned.items()}
        due, held = self._membership.due(deadlines, now, self.heartbeat_interval)
        view = await self._membership.beat(renew=due, blind=len(held))
        renewed = self._membership.renewed
        if view.partitions < self._partition_count or view.priorities < self._priorities:
            # The topic's metadata is gone (flushed or restarted Redis): put it back.
            self.logger.warning(
                "consumer %s: topic %s lost its metadata; restoring %d partitions",
                self.name, self.topic, self._partition_count,
            )  # fmt: skip
            await grow(self.redis, self.keys, self._partition_count, priorities=self._priorities)
            view = await self._membership.beat()
        for part in self._owned.values() if self._membership.moved() else ():
            part.look_again()  # one back from a pause may have read ours
        self._members = view.members
        self._partition_count = view.partitions
        # New priority levels (never fewer: their entries would strand): read below.
        self._priorities = max(self._priorities, view.priorities)
        mine = view.owned_by(self.name)
        revoked = [s for p, s in self._owned.items() if p not in mine and not s.revoking]
        for part in revoked:
            part.revoking = True
        if revoked:
            self._interrupt_read()
        states = dict(renewed)
        rebuild = {p for p, s in self._owned.items() if len(s.streams) != self._priorities}
        rest = sorted(((mine - set(self._owned)) | set(due) | rebuild) - set(renewed))
        states.update(await self._membership.leases(rest, set(held)))  # leaves out failures
        gained: list[int] = []
        fresh: list[int] = []
        for p, state in states.items():
            current = self._owned.get(p)
            if state == LeaseState.LOST:
                if current is not None:
                    self.logger.warning("consumer %s: lease of partition %d lost", self.name, p)
                    self._drop(current)
                continue
            stale = current is not None and len(current.streams) != self._priorities
            if (
                current is not None
                and not stale
                and (state == LeaseState.RENEWED or current.revoking)
            ):
                current.valid_until = valid_until
                if p in mine:
                    current.revoking = False  # assigned back before it was released
                continue
            if p not in mine:
                continue
            if stale and state == LeaseState.RENEWED and current is not None:  # held throughout
                self._reader.widen(current, self._priorities, valid_until)
                fresh.append(p)
                continue
            if current is not None:  # ours again after the lease lapsed: what it held goes back
                self._settler.give_back.owe_held([current])
            (fresh if current is not None else gained).append(p)
            self._owned[p] = self._reader.partition(p, self._priorities, valid_until)
        self._wake.set()  # a partition past its local deadline may be readable again
        if gained or fresh:
            await self._create_groups(parts := [self._owned[p] for p in gained + fresh])
            for part in parts:  # not from _owned: a refused settlement may drop one meanwhile
                self._touched.update(part.streams)
            self._interrupt_read()
        self._beats += 1  # strays come at a hand-over: look next beat, then about each minute
        every = self._beats % sweep_period(self.heartbeat_interval) == 0
        settled = [
            s for s in self._owned.values()
            if not s.revoking and not s.claiming and (s.sweeps > 0 or every)
        ]  # fmt: skip
        for part in settled:
            part.sweeps -= 1
        for part in await self._reader.strays(self.redis, settled) if settled else ():
            part.reclaim()
            self._interrupt_read()
        if gained or every:  # a topic set to delete-acked since is seen within a minute
            streams = [s for part in self._owned.values() for s in part.streams]
            deleting = await read_mode(self.redis, self.keys, streams, self.deletes_acked)
            self._settler.delete_acked = deleting
        if gained:
            self.logger.info("consumer %s: assigned partitions %s", self.name, gained)
            await self._call_hook(self.on_assign, gained)
        if every:  # index entries of expired job records (_job_index.py); last: it may raise
            await self._settler.index.sweep(self.redis, list(self._owned))

    async def _create_groups(self, parts: list[OwnedPartition]) -> None:
        await self._reader.create_groups(self.redis, parts, "0")

    async def _recreate_groups(self, exc: BaseException) -> None:
        """A stream or the group was deleted (or Redis flushed): create the groups again."""
        now = asyncio.get_running_loop().time()
        if now - self._recreated_at < 5.0:  # deleted again at once: no spin
            await wait_event(self._stopping, min(self.poll_interval, 1.0))
        else:
            self.logger.warning(
                "consumer %s: group %s or its stream is gone (%s); creating it again",
                self.name, self.group, exc,
            )  # fmt: skip
        self._recreated_at = asyncio.get_running_loop().time()
        for part in self._owned.values():
            part.reclaim()
        await self._create_groups(list(self._owned.values()))

    async def _release_revoked(self) -> None:
        going = [s for s in self._owned.values() if s.revoking]
        if self._membership is None or not going:
            return
        # Before the leases go: what a read ahead brings is given back, the acks are sent.
        await self._ahead.give_back(self.redis, going)
        await self._settler.flush(self.redis, self._owned, self._fenced)
        failed: BaseException | None = None
        async with self._ownership:  # revoked meanwhile: released on the next round
            revoked = [s.number for s in going if self._owned.get(s.number) is s and s.revoking]
            for p in revoked:
                del self._owned[p]
            try:
                await self._membership.release(revoked)
            except REDIS_FAILURES as exc:  # gone all the same: a lease not released lapses
                failed = exc
        if revoked:
            self.logger.info("consumer %s: released partitions %s", self.name, revoked)
            await self._call_hook(self.on_revoke, revoked)
        if failed is not None:
            raise failed

    async def _call_hook(self, hook: PartitionsHook | None, partitions: list[int]) -> None:
        if hook is None or not partitions:
            return
        try:
            result = hook(sorted(partitions))
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            self.logger.exception("consumer %s: partition hook %r failed", self.name, hook)

    async def _connection_lost(self, exc: BaseException) -> None:
        if not self._redis_down:
            self.logger.warning("consumer %s: Redis unreachable (%s); retrying", self.name, exc)
        self._redis_down = True
        await wait_event(self._stopping, min(self.poll_interval, 1.0))

    def _connection_restored(self) -> None:
        if self._redis_down:
            self.logger.info("consumer %s: Redis reachable again", self.name)
            self._redis_down = False

    # ---- reading --------------------------------------------------------------------
    async def _fetch(self, redis: AnyRedis) -> list[Received]:
        """The next messages to handle: read ahead, retries due, reclaimed entries, new ones.

        Acknowledgements the last batch left for now go out first: with the read, in one
        round trip, when it is a read of new entries; else on their own. While behind, the
        next read goes out before the messages are handled (``_read_ahead.py``).
        """
        self._reclaimed = False
        # An interrupt (stop, a rebalance) during the sends below: the read returns at once.
        self._read_interrupted = self._read_started = False
        messages = await self._ahead.take() if self._ahead.pending else []
        if self._stopping.is_set():
            return messages  # what was read ahead is handled; nothing more is read
        now = asyncio.get_running_loop().time()
        ready = [s for s in self._owned.values() if s.ready(now)]
        due = [s for s in ready if s.held and s.retry_at <= now]
        claiming = [s for s in ready if s.claiming and not s.held]
        reading = [s for s in ready if not s.held]
        # With the read only while behind: a caught-up read blocks, acks should not wait.
        then_read = reading if self._reader.behind and not (due or claiming) else []
        messages = messages or await self._settler.flush(
            redis, self._owned, self._fenced, self._reader, then_read
        )
        if messages:
            if not self._stopping.is_set():
                await self._ahead.start(redis, messages)
            return messages
        await self._ahead.give_back(redis)  # what partitions could not take, before they claim
        # Only partitions still ours: a heartbeat may have found a lease lost meanwhile.
        due, claiming = ([s for s in x if self._owned.get(s.number) is s] for x in (due, claiming))
        if due or claiming:  # retries first: claims come after them
            if due:
                messages, gone = await self._reader.retries(redis, due, self._settler.runs)
            else:
                messages, gone = await self._reader.claim(redis, claiming)
                self._reclaimed = True
            self._settler.ack_gone(gone, self._owned)
            return messages
        wait = self.poll_interval
        waiting = [s.retry_at - now for s in ready if s.held]
        if waiting:
            wait = max(0.001, min(wait, *waiting))
        if not reading:
            self._wake.clear()
            await wait_event(self._wake, wait)
            return []
        # Not past the leases' local deadline: nothing is handed to it once they may lapse.
        wait = max(0.001, min(wait, *(s.valid_until - now for s in reading)))
        self._reading = asyncio.ensure_future(self._read(redis, reading, int(wait * 1000)))
        try:
            return await asyncio.shield(self._reading)
        except asyncio.CancelledError:  # the read ended on purpose, or this task is cancelled
            read, forced = self._reading, not self._reading.cancelled()
            read.cancel()  # it winds down before any lease goes; what it brought never runs
            limit = self.heartbeat_ttl if forced else None
            self._settler.give_back.owe_each(await self._reader.wind_down(read, limit))
            if forced:
                raise
            for s in reading:
                s.reclaim()
            return []
        finally:
            self._reading = None

    def _fenced(self, part: OwnedPartition, count: int) -> None:
        self.stats.fenced += count
        self.logger.warning(
            "consumer %s: partition %d is no longer ours; %d result(s) not acknowledged "
            "(the new owner will handle them again)", self.name, part.number, count,
        )  # fmt: skip
        self._drop(part)

    def _drop(self, part: OwnedPartition) -> None:
        """Forget a hold found lost (if still held); what it held unrun is given back."""
        if self._owned.get(part.number) is part:
            self._settler.give_back.owe_held([part])
            del self._owned[part.number]
