"""The loop that enqueues the ticks of schedules (see :mod:`redisaq_core.schedule`).

One task per schedule: read the server's time and the schedule's last tick,
enqueue what :meth:`Schedule.plan` gives (each with the tick's idempotency key,
so a tick another process enqueued first writes nothing), record each tick once
enqueued (``ZADD XX GT``: never back, and never bringing back a removed schedule's;
a stored schedule's first record only while it is stored, ``schedule_start.lua``),
then sleep until the next tick. A record lost while the ticker runs (Redis restarted
without its data) is put back from the last tick it handled, so the ticks since then are
missed ones (those within the grace are enqueued), not skipped as a new schedule's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import ResponseError

from ._failures import REDIS_FAILURES, foreign_type
from ._scripts import CLEAR_FOREIGN, SCHEDULE_START
from .connection import AnyRedis
from .errors import ConfigurationError, RedisaqError, SerializationError
from .keys import schedule_definitions, schedule_ticks
from .message import Message

if TYPE_CHECKING:
    from .producer import Producer
    from .schedule import Schedule

__all__ = ["Ticker"]

MAX_SLEEP = 60.0
"""The longest sleep between two looks at the server's clock, in seconds."""
LATE = 0.001
"""Seconds after a tick's time a ticker wakes up for it."""
TICKS_PER_ROUND = 1000
"""The most ticks one schedule enqueues before it looks at the clock again."""
STOP_WAIT = 10.0
"""Seconds :meth:`Ticker.stop` waits for its tasks to end."""


SKEW_MS = 60_000
"""How far a recorded tick may be ahead of the server's clock (clocks of cluster nodes)."""


def _checked(raw: float, now: int) -> int | None:
    """A recorded last tick, or ``None`` if another client wrote something that isn't one."""
    if not math.isfinite(raw) or raw < 0 or raw > now + SKEW_MS:
        return None
    return int(raw)


class Ticker:
    """Runs schedules, one task each, enqueueing through ``producer_for(schedule)``."""

    def __init__(
        self,
        redis: AnyRedis | None,
        producer_for: Callable[[Schedule], Awaitable[Producer]],
        logger: logging.Logger,
        *,
        stored: bool = False,
        topic: str | None = None,
    ) -> None:
        self._redis = redis
        self._stored = stored  # the schedules are Scheduler's: a removed one's record stays gone
        # A producer's (its topic): a schedule's tick record is that topic's, so that the same
        # name on two topics is two schedules. A stored schedule's name is unique.
        self._topic = topic
        self._producer_for = producer_for
        self.logger = logger
        self._schedules: dict[str, Schedule] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._handled: dict[str, int] = {}  # the last tick recorded here, per schedule

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules added, in the order they were added."""
        return list(self._schedules.values())

    def add(self, schedule: Schedule, *, replace: bool = False) -> None:
        """Run ``schedule`` (now if started, else from :meth:`start`)."""
        if schedule.name in self._schedules and not replace:
            raise ConfigurationError(f"a schedule named {schedule.name!r} was already added")
        self._schedules[schedule.name] = schedule
        task = self._tasks.pop(schedule.name, None)
        if task is not None:
            task.cancel()
        if self._started:
            self._spawn(schedule)

    async def remove(self, name: str) -> None:
        """Stop running the schedule ``name`` (if it runs)."""
        self._schedules.pop(name, None)
        self._handled.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=STOP_WAIT)

    def start(self, redis: AnyRedis | None = None) -> None:
        """Start a task for each schedule that has none (``redis``: the client to use)."""
        if redis is not None:
            self._redis = redis
        self._started = True
        for schedule in self._schedules.values():
            if schedule.name not in self._tasks:
                self._spawn(schedule)

    async def stop(self) -> None:
        """Cancel every task and wait for them (at most ``STOP_WAIT`` s); :meth:`start` again."""
        self._started = False
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT)
            for task in pending:
                self.logger.warning("%s did not stop within %.0fs", task.get_name(), STOP_WAIT)

    def _spawn(self, schedule: Schedule) -> None:
        self._tasks[schedule.name] = asyncio.create_task(
            self._run(schedule), name=f"redisaq-schedule-{schedule.name}"
        )

    async def _run(self, schedule: Schedule) -> None:
        self.logger.info("schedule %s: running", schedule.name)
        failures = 0
        while True:
            try:
                delay = await self._round(schedule)
                failures = 0
            except Exception as exc:
                failures = min(failures + 1, 10)  # 2**failures stays a float (no overflow)
                delay = min(5.0, 0.05 * 2**failures)
                self.logger.warning(
                    "schedule %s: %s: %s (trying again in %.2fs)",
                    schedule.name, type(exc).__name__, exc, delay,
                    exc_info=not isinstance(exc, (*REDIS_FAILURES, RedisaqError)),
                )  # fmt: skip
            if self._tasks.get(schedule.name) is not asyncio.current_task():
                # Stopped, removed or replaced. The cancellation itself may have been lost:
                # redis-py can swallow one that lands mid-command.
                return
            await asyncio.sleep(delay)

    async def _round(self, schedule: Schedule) -> float:
        """Enqueue the ticks due now; return the seconds to sleep until the next one."""
        assert self._redis is not None
        redis = self._redis
        seconds, micros = await redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        keys = [schedule_ticks(), *([schedule_definitions()] if self._stored else [])]
        member = self._member(schedule)
        raw = await self._last_tick(redis, member)
        handled = self._handled.get(schedule.name)
        if raw is None and handled is not None and handled <= now:
            # The record is gone, not the schedule (Redis restarted without its data): the
            # ticks since the last one handled here are missed ones, not a new schedule's.
            await SCHEDULE_START(redis, keys, [member, handled])
            raw = await self._last_tick(redis, member)
        last = None if raw is None else _checked(raw, now)
        ticks, record = schedule.plan(last, now)
        if last is None and raw is not None:
            self.logger.warning(
                "schedule %s: its last tick in Redis (%r) is not a time up to now; "
                "starting again from the next tick", schedule.name, raw,
            )  # fmt: skip
            await redis.zadd(schedule_ticks(), {member: record}, xx=True)
            self._handled[schedule.name] = record
        elif last is None:
            if await SCHEDULE_START(redis, keys, [member, record]):
                self._handled[schedule.name] = record
        else:
            # Each tick is recorded once enqueued: a round cut off between the two leaves
            # that one tick to the next round, whose enqueue finds its idempotency key.
            if ticks:  # where the tick's key picks the partition, every process must agree
                await (await self._producer_for(schedule)).refresh_partitions()
            for tick in ticks:
                await self._fire(schedule, tick)
                await redis.zadd(schedule_ticks(), {member: tick}, xx=True, gt=True)
                self._handled[schedule.name] = tick
            if record > last:
                await redis.zadd(schedule_ticks(), {member: record}, xx=True, gt=True)
            self._handled[schedule.name] = record
            if len(ticks) >= TICKS_PER_ROUND:
                return 0.0
        return min(MAX_SLEEP, (schedule.after(now) - now) / 1000 + LATE)

    def _member(self, schedule: Schedule) -> str:
        """The member of ``schedule`` in the ticks set: ``"<topic> <name>"``, or the name alone.

        A space is in no topic and no name; a stored schedule's name is unique.
        """
        return schedule.name if self._topic is None else f"{self._topic} {schedule.name}"

    async def _last_tick(self, redis: AnyRedis, member: str) -> float | None:
        """The last tick recorded in Redis for a schedule's ``member`` (``None``: none)."""
        try:
            raw: float | None = await redis.zscore(schedule_ticks(), member)
        except ResponseError as exc:
            if not foreign_type(exc):
                raise
            # Another client's key of another type holds no tick: written over (unless another
            # schedule's round did so already and recorded its tick there).
            self.logger.warning("schedule ticks: %s is no sorted set; replaced", schedule_ticks())
            await CLEAR_FOREIGN(redis, [schedule_ticks()], ["zset"])
            raw = await redis.zscore(schedule_ticks(), member)
        return raw

    async def _fire(self, schedule: Schedule, tick: int) -> None:
        producer = await self._producer_for(schedule)
        message = Message(producer.topic, schedule.payload, created_at=tick / 1000)
        key = schedule.idempotency_key(tick)
        try:
            if schedule.job:
                await producer.submit(
                    message,
                    priority=schedule.priority,
                    partition_key=schedule.partition_key,
                    idempotency_key=key,
                )
            else:
                await producer.enqueue(
                    message, schedule.partition_key, priority=schedule.priority,
                    idempotency_key=key,
                )  # fmt: skip
        except (ConfigurationError, SerializationError) as exc:
            # A payload the producer refuses is refused at every tick: say so, go on.
            self.logger.error(
                "schedule %s: the tick at %d ms was not enqueued: %s", schedule.name, tick, exc
            )
            return
        self.logger.debug("schedule %s: tick at %d ms enqueued", schedule.name, tick)
