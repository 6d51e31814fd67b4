"""Periodic jobs: a :class:`Schedule` says what to enqueue when; a :class:`Scheduler` runs them.

A schedule ticks on a cron expression (in a time zone) or every fixed interval
(ticks at whole multiples of the interval since the Unix epoch, so every process
agrees on them). Each tick enqueues the schedule's payload on its topic with the
idempotency key ``schedule:<name>:<tick ms>``: the check and the write are one
atomic step in the partition's slot, so any number of processes may run the same
schedule and each tick is enqueued once, with no leader. The last tick handled
is kept in Redis (``ZADD GT``, so it never goes back) and tells a scheduler
which ticks it missed while none ran; times are the Redis server's (``TIME``).

A schedule runs while a producer it was given to is connected
(:meth:`Producer.add_schedule <redisaq_core.producer.Producer.add_schedule>`), or
is stored in Redis (:meth:`Scheduler.add`) and run by :meth:`Scheduler.run`
(``redisaq schedule run``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ._assignment import key_value
from ._checks import integer, number
from ._failures import REDIS_FAILURES
from ._tasks import wait_event
from ._ticks import TICKS_PER_ROUND, Ticker
from .connection import AnyRedis, RedisComponent
from .errors import ConfigurationError
from .keys import MAX_PRIORITIES, schedule_definitions, schedule_ticks, validate_name
from .producer import Producer

__all__ = ["MissedTicks", "Schedule", "Scheduler"]

WAKE_SLACK_MS = 1000
"""Milliseconds after a tick's time that count as on time whatever ``grace`` is (a
scheduler wakes up just after a tick, then asks the server's time)."""

log = logging.getLogger(__name__)

MissedTicks = Literal["skip", "catch_up"]
"""What happens to ticks that passed while no scheduler ran (see :class:`Schedule`)."""

MIN_EVERY = 0.01
"""The shortest ``every`` interval, in seconds."""
MAX_EVERY = 10 * 366 * 86_400
"""The longest ``every`` interval, in seconds (ten years)."""
MAX_CATCH_UP = 1000
"""The most missed ticks one ``catch_up`` schedule enqueues when a scheduler starts."""
_CRON_EXTRA = "pip install 'redisaq-core[cron]'"


def _croniter() -> Any:
    try:
        return importlib.import_module("croniter").croniter
    except ImportError:
        raise ConfigurationError(
            f"cron schedules need the croniter package: {_CRON_EXTRA}"
        ) from None


class Schedule:
    """A periodic job: enqueue ``payload`` on ``topic`` at every tick.

    ``name`` identifies the schedule (processes that run the same name share its
    ticks). Exactly one of ``cron`` (a cron expression such as ``"*/5 * * * *"``,
    read by croniter, the ``cron`` extra; a sixth field counts seconds) and
    ``every`` (a ``timedelta`` or seconds, 0.01 to ten years) says when it ticks;
    ``timezone`` (an IANA name, default ``"UTC"``) is the zone a cron expression
    is read in. ``topic``: where ticks go; a schedule given to a producer may
    leave it out (the producer's topic). ``partition_key``, ``priority``: as for
    ``Producer.enqueue``. ``job=True`` submits each tick as a job
    (``Producer.submit``), whose status and result are tracked. Each tick's
    message has ``created_at`` set to the tick's time.

    A tick enqueued up to ``grace`` seconds (default 60) after its time, plus a
    second for the scheduler to wake up and ask the server's time, is on time.
    Older ticks were missed (no scheduler ran): ``missed="skip"`` (the default)
    drops them, ``missed="catch_up"`` enqueues the latest
    ``max_catch_up`` of them (default 10, at most 1000), oldest first. A
    schedule that has never run starts with its next tick.
    """

    def __init__(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: timedelta | float | None = None,
        payload: Any = None,
        topic: str | None = None,
        timezone: str = "UTC",
        partition_key: str | None = None,
        priority: int | None = None,
        job: bool = False,
        missed: MissedTicks = "skip",
        max_catch_up: int = 10,
        grace: float = 60.0,
    ) -> None:
        validate_name(name, "schedule name")
        if len(name.encode()) > 200:
            raise ConfigurationError(f"schedule name must be at most 200 bytes, got {name!r}")
        self.name = name
        if topic is not None:
            validate_name(topic, "topic")
        self.topic = topic
        if (cron is None) == (every is None):
            raise ConfigurationError(
                f"schedule {name!r}: give exactly one of cron= and every=, "
                f"got {'both' if cron is not None else 'neither'}"
            )
        self.timezone = timezone
        self.zone = _zone(timezone)
        self.cron = cron
        self._cron: Any = None
        self._every_ms = 0
        self.every: float | None = None
        if cron is not None:
            self._cron = _check_cron(cron)
        else:
            given = every.total_seconds() if isinstance(every, timedelta) else every
            seconds = number(given, "every", minimum=MIN_EVERY, maximum=MAX_EVERY, seconds=True)
            self._every_ms = round(seconds * 1000)
            self.every = self._every_ms / 1000  # whole milliseconds
        self.payload = payload
        if partition_key is not None:  # a tick it can't place would be dropped at every tick
            key_value(payload, partition_key)
        self.partition_key = partition_key
        if priority is not None:
            integer(priority, "priority", minimum=0, maximum=MAX_PRIORITIES - 1)
        self.priority = priority
        if not isinstance(job, bool):
            raise ConfigurationError(f"job must be True or False, got {job!r}")
        self.job = job
        if missed not in ("skip", "catch_up"):
            raise ConfigurationError(f"missed must be 'skip' or 'catch_up', got {missed!r}")
        self.missed: MissedTicks = missed
        self.max_catch_up = integer(max_catch_up, "max_catch_up", maximum=MAX_CATCH_UP)
        self.grace = number(grace, "grace", minimum=0, maximum=86_400, seconds=True)

    def __repr__(self) -> str:
        when = f"cron={self.cron!r}" if self.cron is not None else f"every={self.every!r}"
        return f"Schedule({self.name!r}, {when}, topic={self.topic!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def idempotency_key(self, tick_ms: int) -> str:
        """The idempotency key of the tick at ``tick_ms`` (ms since the epoch)."""
        return f"schedule:{self.name}:{tick_ms}"

    def before(self, ms: int) -> int:
        """The latest tick strictly before ``ms`` (ms since the epoch)."""
        if self._cron is None:
            return ((ms - 1) // self._every_ms) * self._every_ms
        start = datetime.fromtimestamp(ms / 1000, self.zone)
        found: datetime = self._cron(self.cron, start).get_prev(datetime)
        return round(found.timestamp() * 1000)

    def after(self, ms: int) -> int:
        """The first tick strictly after ``ms`` (ms since the epoch)."""
        if self._cron is None:
            return (ms // self._every_ms + 1) * self._every_ms
        start = datetime.fromtimestamp(ms / 1000, self.zone)
        found: datetime = self._cron(self.cron, start).get_next(datetime)
        return round(found.timestamp() * 1000)

    def plan(self, last: int | None, now: int) -> tuple[list[int], int]:
        """``(ticks to enqueue now, oldest first; the last tick handled afterwards)``.

        ``last``: the last tick handled (``None``: the schedule never ran), ``now``:
        the server's time, both in ms since the epoch. At most 1000 ticks at a time.
        """
        due = self.before(now + 1)
        if last is None or due <= last:
            return [], due if last is None else last
        cutoff = now - round(self.grace * 1000) - WAKE_SLACK_MS  # ticks before it were missed
        start = max(last, self.before(cutoff))
        if self.missed == "catch_up":
            for _ in range(self.max_catch_up):
                if start <= last:
                    break
                start = self.before(start)
            start = max(start, last)
        ticks: list[int] = []
        tick = self.after(start)
        while tick <= now and len(ticks) < TICKS_PER_ROUND:
            ticks.append(tick)
            tick = self.after(tick)
        return ticks, ticks[-1] if ticks else start

    def to_dict(self) -> dict[str, Any]:
        """The schedule as JSON-ready data (what :class:`Scheduler` stores)."""
        return {
            "name": self.name,
            "topic": self.topic,
            "cron": self.cron,
            "every": self.every,
            "timezone": self.timezone,
            "payload": self.payload,
            "partition_key": self.partition_key,
            "priority": self.priority,
            "job": self.job,
            "missed": self.missed,
            "max_catch_up": self.max_catch_up,
            "grace": self.grace,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Schedule:
        """A schedule from :meth:`to_dict`'s output; ``ConfigurationError`` if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ConfigurationError(f"not a schedule definition: {str(data)[:200]!r}")
        unknown = set(data) - _FIELDS
        if unknown:
            raise ConfigurationError(
                f"schedule {data['name']!r}: unknown field(s) {', '.join(sorted(unknown))}"
            )
        fields = {k: v for k, v in data.items() if k != "name" and v is not None}
        try:
            return cls(data["name"], **fields)
        except TypeError as exc:
            raise ConfigurationError(f"schedule {data['name']!r}: {exc}") from None


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"timezone must be an IANA zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigurationError(
            f"timezone {name!r} is not a known IANA zone (e.g. 'UTC', 'Europe/Paris')"
        ) from None


def _check_cron(expression: Any) -> Any:
    """The ``croniter`` class, once it has read ``expression`` without error."""
    if not isinstance(expression, str) or not expression.strip():
        raise ConfigurationError(f"cron must be a cron expression string, got {expression!r}")
    croniter = _croniter()
    try:
        croniter(expression)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cron expression {expression!r} is not valid: {exc}") from None
    try:  # such as "0 0 30 2 *": it reads, but no date matches it
        croniter(expression).get_next(float)
        croniter(expression).get_prev(float)
    except (ValueError, KeyError, TypeError, OverflowError):
        raise ConfigurationError(
            f"cron expression {expression!r} is not valid: it matches no date"
        ) from None
    return croniter


_FIELDS = frozenset(Schedule("_", every=1).to_dict())


def _dumps(schedule: Schedule) -> bytes:
    try:
        return orjson.dumps(schedule.to_dict())
    except TypeError as exc:
        raise ConfigurationError(
            f"schedule {schedule.name!r}: a stored schedule's payload must be JSON: {exc}"
        ) from None


class Scheduler(RedisComponent):
    """Schedules stored in Redis: :meth:`add`, :meth:`remove`, :meth:`list`, and :meth:`run`.

    :meth:`run` enqueues the ticks of every stored schedule (or of those named)
    until :meth:`stop`, with one producer per topic. It reads the stored
    schedules again every ``reload_interval`` seconds, so schedules added,
    changed or removed meanwhile are picked up. Run it in as many processes as
    you like: each tick is enqueued once.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
        reload_interval: float = 2.0,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        number(reload_interval, "reload_interval", above=0, seconds=True)
        self.reload_interval = float(reload_interval)
        self.logger = logger or log
        self._producers: dict[str, Producer] = {}
        self._stopping = asyncio.Event()
        self._reported: set[bytes] = set()

    async def add(self, schedule: Schedule, *, replace: bool = False) -> None:
        """Store ``schedule`` (it needs a ``topic`` and a JSON payload).

        A schedule of the same name is a ``ConfigurationError`` unless ``replace``;
        a replaced schedule keeps its last tick. A new one starts with its next tick.
        """
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(f"expected a Schedule, got {schedule!r}")
        if schedule.topic is None:
            raise ConfigurationError(f"schedule {schedule.name!r}: a stored schedule needs topic=")
        data = _dumps(schedule)
        redis = self._redis or await self._ensure()
        seconds, micros = await redis.time()
        if replace:
            created = bool(await redis.hset(schedule_definitions(), schedule.name, data))
        else:
            created = bool(await redis.hsetnx(schedule_definitions(), schedule.name, data))
            if not created:
                raise ConfigurationError(
                    f"schedule {schedule.name!r} exists: remove it first, or replace it"
                )
        due = schedule.before(int(seconds) * 1000 + int(micros) // 1000 + 1)
        # A new schedule starts from its next tick, whatever an earlier one of its name left.
        await redis.zadd(schedule_ticks(), {schedule.name: due}, nx=not created)

    async def remove(self, name: str) -> bool:
        """Delete the stored schedule ``name`` and its last tick; whether it existed."""
        redis = self._redis or await self._ensure()
        removed = await redis.hdel(schedule_definitions(), name)
        await redis.zrem(schedule_ticks(), name)
        return bool(removed)

    async def list(self) -> list[Schedule]:
        """The stored schedules, by name (definitions that can't be read are logged, skipped)."""
        redis = self._redis or await self._ensure()
        raw = await redis.hgetall(schedule_definitions())
        found = [s for s in (self._parse(n, v) for n, v in raw.items()) if s is not None]
        return sorted(found, key=lambda s: s.name)

    async def last_ticks(self) -> dict[str, float]:
        """Each schedule's last tick handled, in seconds since the epoch."""
        redis = self._redis or await self._ensure()
        pairs: Any = await redis.zrange(schedule_ticks(), 0, -1, withscores=True)
        return {_text(name): float(score) / 1000 for name, score in pairs}

    def _parse(self, name: bytes | str, raw: bytes | str) -> Schedule | None:
        try:
            schedule = Schedule.from_dict(orjson.loads(raw))
            if schedule.name != _text(name) or schedule.topic is None:
                raise ConfigurationError("its name or topic does not match the entry")
            return schedule
        except Exception as exc:  # whatever another client stored there: not a schedule
            key = _text(name).encode() + b"\0" + (raw if isinstance(raw, bytes) else raw.encode())
            if key not in self._reported:
                self._reported.add(key)
                self.logger.warning(
                    "stored schedule %r can't be read, skipped: %s", _text(name), exc
                )
            return None

    async def run(self, names: Iterable[str] | None = None) -> None:
        """Enqueue the ticks of the stored schedules (only ``names`` if given) until stopped."""
        redis = self._redis or await self._ensure()
        wanted = None if names is None else set(names)
        stopping = self._stopping
        ticker = Ticker(redis, self._producer_for, self.logger, stored=True)
        running: dict[str, Schedule] = {}
        try:
            while not stopping.is_set():
                try:
                    stored = {s.name: s for s in await self.list()}
                except REDIS_FAILURES as exc:
                    self.logger.warning("cannot read the stored schedules: %s", exc)
                    stored = running
                for name, schedule in stored.items():
                    if (wanted is None or name in wanted) and running.get(name) != schedule:
                        ticker.add(schedule, replace=True)
                        running[name] = schedule
                for name in [n for n in running if n not in stored]:
                    await ticker.remove(name)
                    del running[name]
                ticker.start()
                await wait_event(stopping, self.reload_interval)
        finally:
            await ticker.stop()
            producers, self._producers = list(self._producers.values()), {}
            for producer in producers:
                await producer.close()

    async def _producer_for(self, schedule: Schedule) -> Producer:
        assert schedule.topic is not None
        producer = self._producers.get(schedule.topic)
        if producer is None:
            # Made before connecting, so that schedules of one topic share one producer.
            producer = self._producers[schedule.topic] = Producer(schedule.topic, redis=self.redis)
        await producer.connect()  # at once when connected; a failed connect is tried again
        return producer

    async def stop(self, timeout: float | None = None) -> None:
        """Make :meth:`run` return (at once, or at its start); ``timeout`` is unused."""
        self._stopping.set()

    async def _on_close(self) -> None:
        await self.stop()


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw
