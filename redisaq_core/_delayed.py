"""Delayed entries: a consumer moves the due ones of its partitions into their streams.

``Producer.enqueue(..., delay=...)`` (or ``at=``) keeps an entry in its
partition's delayed set (:meth:`~redisaq_core.keys.TopicKeys.delayed`), scored by
its due time in milliseconds of the Redis server's clock (``lua/delay.lua``).
Each member of a consumer group runs one :class:`DelayedMover` beside its read
loop; for each partition whose lease it holds, it calls ``lua/move_due.lua``
when the partition's next entry is due. The script checks the lease (fencing),
reads the server's ``TIME``, adds every due entry to the stream and removes it
from the set in one atomic step, and returns the next due time. An entry
added to the stream wakes the consumer's blocking read like any producer's
XADD, so the read loop does not change and reads no more often.

The mover knows when to call from three sources:

* the script's reply: the partition's next due time;
* a nudge: when an entry becomes its partition's earliest, ``delay.lua``
  publishes ``"<partition> <due ms>"`` on the topic's due channel, to which the
  mover is subscribed; so an entry scheduled while the consumer is blocked in
  a read, due before the read ends, is moved on time;
* a check of every owned partition right after a partition is gained, after
  each (re)subscription (nudges sent while the pub/sub connection was down went
  nowhere), and every ``check_interval`` (about a minute, as the stray sweep)
  in case a connection died without anyone noticing.

Server times are turned into this process's monotonic clock with the offset
seen in the latest reply (the reply arrives after the script read ``TIME``, so
the mover errs towards waking late by up to one round trip, never early).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from ._codec import optional_text
from ._delivery import OwnedPartition
from ._failures import REDIS_FAILURES
from ._scripts import MOVE_DUE, ScriptCall, run_pipelined
from ._tasks import cancel_and_wait, wait_event
from .connection import AnyRedis
from .keys import TopicKeys

__all__ = ["MOVE_LIMIT", "DelayedMover"]

log = logging.getLogger(__name__)

MOVE_LIMIT = 500
"""Due entries moved per priority level per script call; more are moved by the next call."""

_PUBSUB_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, RuntimeError)


class DelayedMover:
    """Moves the due delayed entries of the partitions in ``owned`` into their streams.

    ``owned`` is the consumer's map of partitions whose lease it holds; the mover
    reads it and never changes it. Call :meth:`wake` when it changed. ``moved``
    counts the entries this mover has moved.
    """

    def __init__(
        self,
        keys: TopicKeys,
        group: str,
        name: str,
        token: str,
        owned: Mapping[int, OwnedPartition],
        *,
        check_interval: float,
        logger: logging.Logger = log,
    ) -> None:
        self.keys = keys
        self.group = group
        self.name = name
        self.token = token
        self.owned = owned
        self.check_interval = check_interval
        self.logger = logger
        self.moved = 0
        self._redis: AnyRedis | None = None
        # When each partition's next entry is due, for the hold and the levels it was seen at.
        self._next: dict[int, tuple[OwnedPartition, int, float]] = {}
        self._hints: dict[int, float] = {}
        self._offset: float | None = None
        self._event = asyncio.Event()
        self._check_all = True
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: set[int] = set()

    def start(self, redis: AnyRedis) -> None:
        """Start moving and listening for nudges (no-op if started)."""
        if self._tasks:
            return
        self._redis = redis
        self._check_all = True
        self._tasks = [
            asyncio.create_task(self._run(), name=f"redisaq-delayed-{self.name}"),
            asyncio.create_task(self._listen(), name=f"redisaq-delayed-nudges-{self.name}"),
        ]

    async def stop(self) -> None:
        """Stop both tasks; a move under way is not cut half-way (it is one script)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await cancel_and_wait(task)

    def wake(self) -> None:
        """Look at the owned partitions again (some were gained or lost)."""
        self._event.set()

    # ---- when --------------------------------------------------------------------------

    def _local(self, server_ms: float) -> float:
        """The local monotonic time at ``server_ms`` of the server's clock."""
        if self._offset is None:
            return -math.inf  # no reply yet: look now
        return (server_ms - self._offset) / 1000.0

    def _due(self, part: OwnedPartition) -> float:
        """When the partition's next entry is due (local time; -inf: unknown, look now)."""
        known = self._next.get(part.number)
        seen = known is not None and known[0] is part and known[1] == len(part.streams)
        when = known[2] if known is not None and seen else -math.inf
        return min(when, self._hints.get(part.number, math.inf))

    def _nudged(self, data: Any) -> None:
        """A nudge ``"<partition> <due ms>"``; anything else on the channel is ignored."""
        try:
            partition_text, due_text = (optional_text(data) or "").split(" ")
            partition, due = int(partition_text), float(due_text)
        except ValueError:
            return
        if partition in self.owned and math.isfinite(due):
            when = self._local(due)
            self._hints[partition] = min(self._hints.get(partition, math.inf), when)
            self._event.set()

    # ---- moving ------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_all = -math.inf
        failing = False
        while True:
            now = loop.time()
            parts = [p for p in self.owned.values() if p.streams and p.valid_until > now]
            lapsed = [p for p in self.owned.values() if p.streams and p.valid_until <= now]
            for part in lapsed:  # its lease may have lapsed: looked at once it is renewed
                self._next.pop(part.number, None)
            every = self._check_all or now - last_all >= self.check_interval
            todo = [p for p in parts if every or self._due(p) <= now]
            if every:
                self._check_all, last_all = False, now
            if todo:
                try:
                    await self._move(todo)
                except Exception as exc:  # Redis failed, or what other clients stored spoilt it
                    if not failing:
                        self.logger.warning(
                            "consumer %s: cannot move delayed entries yet: %r", self.name, exc,
                            exc_info=not isinstance(exc, REDIS_FAILURES),
                        )  # fmt: skip
                    failing = True
                    self._check_all = True  # the hints it took are spent: look at every one
                    await self._sleep(min(self.check_interval, 1.0))
                    continue
                if failing:
                    self.logger.info("consumer %s: moving delayed entries again", self.name)
                failing = False
                continue
            wake = min([self._due(p) for p in parts] + [last_all + self.check_interval])
            if lapsed:  # a heartbeat renews the lease without a wake()
                wake = min(wake, now + min(self.check_interval, 1.0))
            await self._sleep(wake - loop.time())

    async def _sleep(self, seconds: float) -> None:
        self._event.clear()
        await wait_event(self._event, max(seconds, 0.001))

    def _note(self, part: OwnedPartition, when: float) -> None:
        self._next[part.number] = (part, len(part.streams), when)

    def _call(self, part: OwnedPartition, jobs: list[bytes]) -> ScriptCall:
        number = part.number
        keys: list[Any] = [part.lease, self.keys.jobs(number), self.keys.dead_letters(number)]
        for level, stream in enumerate(part.streams):
            keys += [self.keys.delayed(part.number, level), stream]
        prefix = self.keys.job(part.number, "").encode()
        keys += [prefix + job for job in jobs]  # as stored: another client's may be no UTF-8
        args = [
            self.token, len(part.streams), MOVE_LIMIT, self.keys.job_channel, self.keys.topic,
            self.group, self.name, part.number, *jobs,
        ]  # fmt: skip
        return MOVE_DUE, keys, args

    async def _move(self, parts: list[OwnedPartition]) -> None:
        """One move call per partition (pipelined), again for those that asked for job keys."""
        assert self._redis is not None
        loop = asyncio.get_running_loop()
        todo: dict[OwnedPartition, list[bytes]] = {part: [] for part in parts}
        for part in parts:
            self._hints.pop(part.number, None)  # the calls below see what they announced
        for _ in range(8):
            calls = [self._call(part, jobs) for part, jobs in todo.items()]
            replies = await run_pipelined(self._redis, calls)
            arrived = loop.time() * 1000.0
            again: dict[OwnedPartition, list[bytes]] = {}
            for part, reply in zip(todo, replies, strict=True):
                if isinstance(reply, BaseException):
                    # This partition only (a key of the wrong type, a node failing over):
                    # the others go on; it is tried again a little later.
                    if part.number not in self._failing:
                        self.logger.warning(
                            "consumer %s: cannot move delayed entries of partition %d: %s",
                            self.name, part.number, reply,
                        )  # fmt: skip
                    self._failing.add(part.number)
                    self._note(part, loop.time() + min(self.check_interval, 1.0))
                    continue
                self._failing.discard(part.number)
                if int(reply[0]) < 0:
                    # The lease is not ours now: the heartbeat drops the partition, or takes
                    # the lease back (it lapsed while Redis was away) under this same hold.
                    self._note(part, loop.time() + min(self.check_interval, 1.0))
                    continue
                moved, next_due, server_now = int(reply[0]), int(reply[1]), int(reply[2])
                self._offset = server_now - arrived
                self.moved += moved
                wanted = [j if isinstance(j, bytes) else str(j).encode() for j in reply[3:]]
                if wanted:
                    again[part] = wanted
                    continue
                when = math.inf if next_due < 0 else self._local(next_due)
                if moved == 0 and next_due >= 0 and next_due <= server_now:
                    when = loop.time() + 0.05  # due but not movable now: no spin
                self._note(part, when)
            if not again:
                return
            todo = again  # entries of jobs: called again with their records' keys
        for part in todo:  # still asking after all those calls: look again a little later
            self._note(part, loop.time() + 0.05)

    # ---- nudges ------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Take nudges from the topic's due channel; after each (re)subscription look at all."""
        assert self._redis is not None
        delay, failing = 0.1, False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.due_channel)
                while True:
                    message = await pubsub.get_message(timeout=self.check_interval)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        # Nudges sent before this went nowhere: look at every partition.
                        self._check_all = True
                        self._event.set()
                        if failing:
                            self.logger.info("consumer %s: due channel subscribed", self.name)
                        delay, failing = 0.1, False
                    elif message.get("type") == "message":
                        self._nudged(message.get("data"))
            except _PUBSUB_FAILURES as exc:
                if not failing:
                    self.logger.warning(
                        "consumer %s: due channel lost (%s); delayed entries are checked "
                        "every %.1fs until it is back", self.name, exc, self.check_interval,
                    )  # fmt: skip
                failing = True
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
