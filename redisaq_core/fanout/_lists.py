"""List mode of the fan-out bridge, for users of plain Redis lists (mpush).

::

    bridge = FanOut.from_lists("demo:mpush:in", ["demo:mpush:out0", "demo:mpush:out1"],
                               redis_url=url)
    await bridge.run()                        # until `await bridge.stop()`

A publisher pushes onto the input list with a plain ``LPUSH``; each
subscriber pops its own output list with ``BRPOP`` (or ``BRPOPLPUSH``), as
before. The bridge loops:

1. ``BLMOVE in pending RIGHT LEFT pop_timeout`` (``BRPOPLPUSH`` on servers
   older than 6.2): the oldest item moves to the pending list; then, without
   blocking, up to ``batch_size - 1`` more with ``LMOVE``;
2. one script (``lua/list_push.lua``): ``LPUSH`` the items onto every output
   list, ``LREM`` each from the pending list, in one step.

At start-up, and after a lost connection, items left in the pending list (by
a bridge killed between steps 1 and 2) are pushed to every output list, oldest
first, before anything else, with the same script. A list another client
replaced by a key of another type is reported and waited for: items stay
where they are (in the input or the pending list) until it is a list again.

Guarantees. Items keep their order in every output list (FIFO, as the input).
Step 2 is atomic, so with one bridge per pending list an item reaches every
output list exactly once, even when the bridge is killed between the steps.
In general the promise is **at least once**: a pending list shared by two
live bridges (don't; give each bridge its own ``pending``) makes one push
again what the other is about to push, and lists carry no message ids, so
equal items can't be told apart to deduplicate. Graceful shutdown takes at
most ``pop_timeout``: the blocking pop in progress ends, its items are pushed,
and the loop exits.

Keys are the user's own list names, with no hash tags added. On Redis Cluster
the input, pending and output lists must share one hash slot (give them a
common hash tag, e.g. ``{mpush}:in``), since both steps span them; the bridge
checks this when it connects.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.crc import key_slot
from redis.exceptions import ResponseError

from .._checks import integer, number
from .._failures import REDIS_FAILURES, Recovery, foreign_type, recovery_for
from .._scripts import LIST_PUSH
from .._tasks import wait_event
from ..connection import AnyRedis, RedisComponent, is_cluster
from ..errors import AlreadyRunningError, ConfigurationError

if TYPE_CHECKING:
    from ..registry import Keepalive, ServiceInfo, ServiceRegistry

__all__ = ["ListFanOut", "ListFanOutStats"]

log = logging.getLogger(__name__)


@dataclass
class ListFanOutStats:
    """Counters of one list bridge since it started.

    ``moved``: items taken from the input list. ``recovered``: items found in
    the pending list (left by a killed bridge) and pushed. ``pushed``: per
    output list, items pushed onto it.
    """

    moved: int = 0
    recovered: int = 0
    pushed: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {"moved": self.moved, "recovered": self.recovered, "pushed": dict(self.pushed)}


def _list_name(value: Any, argument: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{argument} must be a non-empty string, got {value!r}")
    return value


class ListFanOut(RedisComponent):
    """Pop items from ``in_list`` and push each onto every list of ``out_lists``.

    ``pending``: the list holding items between the pop and the push
    (default ``<in_list>:pending``; one per running bridge). ``pop_timeout``:
    seconds a pop blocks, which bounds a graceful shutdown. ``batch_size``:
    most items moved per step. ``registry``: register the bridge
    (service type ``fanout``) while it runs, renewed every
    ``heartbeat_interval`` seconds; deleting the registration stops it
    gracefully. ``name``: part of the service id (default host, pid and a
    random suffix). Build it with :meth:`FanOut.from_lists
    <redisaq_core.fanout.FanOut.from_lists>` or directly.
    """

    def __init__(
        self,
        in_list: str,
        out_lists: Sequence[str],
        *,
        pending: str | None = None,
        pop_timeout: float = 5.0,
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
        batch_size: int = 100,
        registry: ServiceRegistry | None = None,
        heartbeat_interval: float = 3.0,
        name: str | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self.in_list = _list_name(in_list, "in_list")
        if isinstance(out_lists, (str, bytes)) or not isinstance(out_lists, Sequence):
            raise ConfigurationError(f"out_lists must be a list of list names, got {out_lists!r}")
        if not out_lists:
            raise ConfigurationError("out_lists must name at least one list, got none")
        self.out_lists = [_list_name(o, "out_lists") for o in out_lists]
        self.pending = _list_name(f"{in_list}:pending" if pending is None else pending, "pending")
        if len(set(self.out_lists)) < len(self.out_lists):
            raise ConfigurationError(f"out_lists names a list twice: {self.out_lists!r}")
        if self.in_list in self.out_lists:
            raise ConfigurationError(f"out_lists must not include in_list {in_list!r}")
        if self.pending == self.in_list or self.pending in self.out_lists:
            raise ConfigurationError(
                f"pending must differ from in_list and out_lists, got {self.pending!r}"
            )
        number(pop_timeout, "pop_timeout", above=0, seconds=True)
        integer(batch_size, "batch_size", maximum=5000)  # one script moves a batch: bounded
        number(heartbeat_interval, "heartbeat_interval", above=0, seconds=True)
        if registry is not None:
            from ..registry import ServiceRegistry

            if not isinstance(registry, ServiceRegistry):
                raise ConfigurationError(f"registry must be a ServiceRegistry, got {registry!r}")
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if any(c.isspace() for c in self.name):
            raise ConfigurationError(f"name must not contain whitespace, got {name!r}")
        self.pop_timeout = float(pop_timeout)
        self._longest_block = self.pop_timeout
        self.batch_size = batch_size
        self.registry = registry
        self.heartbeat_interval = float(heartbeat_interval)
        self.stats = ListFanOutStats(pushed=dict.fromkeys(self.out_lists, 0))
        self._legacy = False  # BRPOPLPUSH / RPOPLPUSH instead of BLMOVE / LMOVE (Redis < 6.2)
        self._want = 0
        self._stopping = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[Any] | None = None
        self._loop_task: asyncio.Future[None] | None = None
        self._finished = asyncio.Event()
        self._finished.set()
        self._registration: Keepalive | None = None

    @property
    def service_id(self) -> str:
        """The id under which the bridge registers itself: ``fanout/list/<name>``."""
        return f"fanout/list/{self.name}"

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is running."""
        return self._running

    async def _on_connect(self, client: AnyRedis) -> None:
        names = (self.in_list, self.pending, *self.out_lists)
        if is_cluster(client) and len({key_slot(k.encode()) for k in names}) > 1:
            raise ConfigurationError(
                "on Redis Cluster in_list, pending and out_lists must share one hash slot "
                "(give them a common hash tag, e.g. {mpush}:in and {mpush}:out0)"
            )
        # Refused at the start; one made later is waited for (see _loop).
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.type(name)
        for name, kind in zip(names, await pipe.execute(), strict=True):
            text = kind.decode() if isinstance(kind, bytes) else str(kind)
            if text not in ("list", "none"):
                raise ConfigurationError(f"{name!r} holds a {text}, not a list")

    async def _on_close(self) -> None:
        await self.stop()

    async def run(self) -> None:
        """Move items until :meth:`stop` (or a remote shutdown through the registry)."""
        if self._running:
            raise AlreadyRunningError(f"list fan-out {self.name} is already running")
        self._running = True
        self._task = asyncio.current_task()
        self._finished.clear()
        try:
            redis = await self._ensure()
            if self.registry is not None:
                self._registration = self.registry.keepalive(
                    self._service_info(), interval=self.heartbeat_interval, on_shutdown=self.stop
                )
                await self._registration.start()
            log.info(
                "list fan-out %s: %s -> %s (pending %s)",
                self.name, self.in_list, ", ".join(self.out_lists), self.pending,
            )  # fmt: skip
            self._loop_task = asyncio.ensure_future(self._loop(redis))
            try:
                await asyncio.shield(self._loop_task)
            except asyncio.CancelledError:
                if not self._loop_task.cancelled():  # this task itself is being cancelled
                    self._loop_task.cancel()
                    raise
                # stop() ran out of time and cancelled the loop: a stop, not an error
        finally:
            if self._registration is not None:
                await asyncio.shield(self._registration.stop())
                self._registration = None
            self._running = False
            self._stopping.clear()  # that stop() is spent: run() again runs
            self._task = self._loop_task = None
            self._finished.set()

    async def _loop(self, redis: AnyRedis) -> None:
        recover = True
        failing = False
        while not self._stopping.is_set():
            try:
                if recover:
                    await self._recover(redis)
                    recover = False
                items = await self._pop(redis)
                if items:
                    await self._push(redis, items)
                if failing:
                    log.info("list fan-out %s: Redis reachable again", self.name)
                failing = False
            except REDIS_FAILURES as exc:
                foreign = foreign_type(exc)
                if not foreign and recovery_for(exc) is Recovery.STOP:
                    raise
                if not failing:
                    log.warning(
                        "list fan-out %s: %s (%s); retrying", self.name,
                        "a key of another type in place of one of its lists, items wait until "
                        "it is a list again" if foreign else "Redis unreachable", exc,
                    )  # fmt: skip
                failing = True
                recover = True  # a pop whose reply was lost left its item in the pending list
                await wait_event(self._stopping, 0.5)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop after the pop in progress (at most ``pop_timeout``) and its push.

        After ``timeout`` seconds (default ``pop_timeout`` plus 5) the loop is
        cancelled; an item it had moved stays in the pending list and is
        pushed when a bridge starts with that pending list. Idempotent.
        """
        self._stopping.set()
        task = self._task
        if task is None or task is asyncio.current_task() or task.done():
            return
        deadline = self.pop_timeout + 5.0 if timeout is None else timeout
        try:
            await asyncio.wait_for(asyncio.shield(self._finished.wait()), deadline)
        except asyncio.TimeoutError:
            log.warning("list fan-out %s: still busy after %.1fs, cancelling", self.name, deadline)
            if self._loop_task is not None:
                self._loop_task.cancel()
            else:
                task.cancel()
            await self._finished.wait()

    def _service_info(self) -> ServiceInfo:
        from ..registry import ServiceInfo

        return ServiceInfo(
            service_id=self.service_id,
            host=socket.gethostname() or "localhost",
            port=0,
            service_type="fanout",
            metadata={
                "mode": "list",
                "in": self.in_list,
                "out": list(self.out_lists),
                "pending": self.pending,
                "pid": os.getpid(),
            },
        )

    async def _recover(self, redis: AnyRedis) -> None:
        """Push what a killed bridge left in the pending list, oldest first."""
        found: Any = await redis.lrange(self.pending, 0, -1)
        left: list[bytes] = list(found)
        if not left:
            return
        left.reverse()  # items enter the pending list on the left: the oldest is last
        for i in range(0, len(left), self.batch_size):
            chunk = left[i : i + self.batch_size]
            await self._push(redis, chunk, lrem_from_tail=True)
            self.stats.recovered += len(chunk)
        # Logged once pushed: a push that fails is tried again every half second.
        log.warning(
            "list fan-out %s: pushed %d item(s) left in %s by an earlier run",
            self.name, len(left), self.pending,
        )  # fmt: skip

    async def _pop(self, redis: AnyRedis) -> list[bytes]:
        """Move the oldest items of the input list to the pending list (blocking for the first)."""
        first = await self._blocking_move(redis)
        if first is None:
            return []
        items = [first]
        want = self._want
        if want:
            pipe = redis.pipeline(transaction=False)
            for _ in range(want):
                if self._legacy:
                    pipe.execute_command("RPOPLPUSH", self.in_list, self.pending)
                else:
                    pipe.execute_command("LMOVE", self.in_list, self.pending, "RIGHT", "LEFT")
            more = [item for item in await pipe.execute() if item is not None]
            items += more
            got = len(more)
        else:
            got = 0
        # Ask for twice as many next time while the input keeps up, as many as it had if not.
        self._want = min(self.batch_size - 1, max(1, 2 * want) if got == want else got)
        self.stats.moved += len(items)
        return items

    async def _blocking_move(self, redis: AnyRedis) -> bytes | None:
        if not self._legacy:
            try:
                item: bytes | None = await redis.execute_command(
                    "BLMOVE", self.in_list, self.pending, "RIGHT", "LEFT", self.pop_timeout
                )
                return item
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                log.info("list fan-out %s: no BLMOVE (Redis < 6.2), using BRPOPLPUSH", self.name)
                self._legacy = True
        seconds = max(1, math.ceil(self.pop_timeout))  # whole seconds before Redis 6.0
        legacy: bytes | None = await redis.execute_command(
            "BRPOPLPUSH", self.in_list, self.pending, seconds
        )
        return legacy

    async def _push(
        self, redis: AnyRedis, items: list[bytes], *, lrem_from_tail: bool = False
    ) -> None:
        """One step: the items onto every output list, and out of the pending list."""
        count = -1 if lrem_from_tail else 1
        await LIST_PUSH(redis, [self.pending, *self.out_lists], [count, *items])
        for out in self.out_lists:
            self.stats.pushed[out] += len(items)
