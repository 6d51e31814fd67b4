"""Reading the next batch while the current one is handled (one server only).

A consumer that is behind alternates two kinds of work: Python handling a
batch, and Redis serving the acknowledgements of the batch before it with the
read of the next. Done one after the other, each waits for the other. With
:class:`ReadAhead` that round trip (the kept-back acknowledgements, then a read
that does not block) is written before a batch is handed to its handlers, so
Redis serves it while they run, and the consumer takes the replies when they
are done.

What the read brings is only handed on for partitions whose state still allows
it when it is taken (see :meth:`ReadAhead.take`): owned by the same lease, not
being given up, not holding a failed message for its retry, not claiming its
pending entries. The entries of any other partition are given back
(``lua/give_back.lua``): they stay in this member's pending list with their
delivery count set back to 0, so that the claim that brings them again counts
as their first delivery, not as a handler run that ended without a result
(which ``max_deliveries`` would hold against them). A partition still ours
claims them back before anything newer, in stream order; a partition being
given up is given back before its lease goes, and its new owner claims them.
Only a read whose partitions were lost without notice (a lease lapsed, Redis
unreachable) leaves entries counted as delivered, as a member that dies with a
batch read does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from ._delivery import OwnedPartition, Reader
from ._failures import REDIS_FAILURES
from ._reads import send_ahead
from ._scripts import GIVE_BACK, ScriptCall, run_pipelined
from ._settlement import Settler
from .connection import AnyRedis
from .message import Received

__all__ = ["ReadAhead"]

log = logging.getLogger(__name__)

_GIVE_BACK_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, asyncio.TimeoutError)

_DISCARD_WAIT = 5.0
"""Seconds a stopping consumer waits for a read under way (then for giving its entries back)."""


class ReadAhead:
    """At most one read sent ahead for a consumer, and the partitions it read, as they were.

    ``owned``: the consumer's partitions (the same dict, kept up to date by it);
    ``on_lost``: called with a partition whose lease an acknowledgement found gone.
    """

    def __init__(
        self,
        settler: Settler,
        reader: Reader,
        owned: dict[int, OwnedPartition],
        on_lost: Callable[[OwnedPartition, int], None],
    ) -> None:
        self._settler = settler
        self._reader = reader
        self._owned = owned
        self._on_lost = on_lost
        self._task: asyncio.Task[list[Received]] | None = None
        self._parts: dict[int, OwnedPartition] = {}  # read, and not given back yet
        self._back: set[int] = set()  # read, and given back already

    @property
    def pending(self) -> bool:
        """Whether a read was sent ahead and its messages were not taken yet."""
        return self._task is not None

    async def start(self, redis: AnyRedis) -> None:
        """Write the kept-back acknowledgements and a read of the partitions ready for it.

        Only after a read that filled a batch (``Reader.behind``), and not while a retry
        is due or entries are to be claimed anywhere (those come first, and a read
        would pass them). Nothing is sent on a cluster client (its reads are not
        pipelined with scripts). A failed write raises, as a failed
        :meth:`Settler.flush` does.
        """
        assert self._task is None, "one read ahead at a time"
        if not self._reader.behind or not isinstance(redis, Redis):
            return
        now = asyncio.get_running_loop().time()
        parts = [s for s in self._owned.values() if s.ready(now)]
        if not parts or any(s.held or s.claiming for s in parts):
            return
        calls = self._settler.take_deferred()
        commands, where = self._reader.after_commands(parts, calls)
        sent = await send_ahead(redis, commands)

        async def read() -> tuple[list[Received], list[Any]]:
            return self._reader.after_replies(await sent, where)

        self._parts = {part.number: part for part in parts}
        self._task = asyncio.ensure_future(
            self._settler.record_read(redis, calls, read(), self._owned, self._on_lost)
        )

    async def take(self, redis: AnyRedis) -> list[Received]:
        """The messages read ahead that may be handled now (raises what the read raised).

        Those of any other partition are given back; a partition still ours claims
        them again, in order, once it may.
        """
        task, self._task = self._task, None
        assert task is not None
        parts, self._parts = self._parts, {}
        back, self._back = self._back, set()
        messages = await task
        now = asyncio.get_running_loop().time()
        usable = {
            number for number, part in parts.items()
            if self._owned.get(number) is part and part.ready(now) and not part.held
            and not part.claiming
        }  # fmt: skip
        if len(usable) == len(parts) and not back:
            return messages
        unusable = [part for number, part in parts.items() if number not in usable]
        await self._give_back(redis, unusable, messages)
        for part in unusable:
            if self._owned.get(part.number) is part:
                part.reclaim()  # after its retry, or its other pending entries: in order
        return [m for m in messages if m.partition in usable]

    async def give_back(self, redis: AnyRedis, parts: Iterable[OwnedPartition]) -> None:
        """Give back what the read under way brings for ``parts``, which are being given up.

        Waits for the read's reply; called before the partitions' leases are released.
        :meth:`take` leaves those messages out. A failed read gives nothing here (its
        take raises).
        """
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        if task.cancelled() or task.exception() is not None:
            return
        chosen = [part for part in parts if self._parts.get(part.number) is part]
        for part in chosen:
            del self._parts[part.number]
            self._back.add(part.number)
            part.reclaim()  # in case it stays ours after all (assigned back)
        await self._give_back(redis, chosen, task.result())

    async def discard(self, redis: AnyRedis, *, give_back: bool) -> None:
        """Let a read under way end (a consumer leaving early, or failing); give back its entries.

        ``give_back``: Redis is thought reachable, and the entries read are given back
        while the leases are still held (within a bound; a failure is logged). Else
        they stay pending, counted as delivered, for the partitions' next owner.
        """
        task, self._task = self._task, None
        parts, self._parts, self._back = self._parts, {}, set()
        if task is None:
            return
        await asyncio.wait([task], timeout=_DISCARD_WAIT)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if task.cancelled() or task.exception() is not None:
            return  # retrieved: a stopping consumer's failed read is not reported
        ours = [part for number, part in parts.items() if self._owned.get(number) is part]
        if not give_back or not ours:
            return
        try:
            await asyncio.wait_for(self._give_back(redis, ours, task.result()), _DISCARD_WAIT)
        except _GIVE_BACK_FAILURES as exc:
            log.warning(
                "consumer %s: entries read ahead were not given back (%s); they stay pending "
                "as delivered once", self._reader.name, type(exc).__name__,
            )  # fmt: skip

    async def _give_back(
        self, redis: AnyRedis, parts: list[OwnedPartition], messages: list[Received]
    ) -> None:
        """Set the delivery count of ``messages`` of ``parts`` back to 0 where the lease is ours."""
        chosen = {part.number for part in parts}
        ids: dict[tuple[int, int], list[str]] = {}
        for m in messages:
            if m.partition in chosen:
                ids.setdefault((m.partition, m.priority), []).append(m.msg_id)
        keys, group, token = self._reader.keys, self._settler.group, self._settler.token
        calls: list[ScriptCall] = [
            (GIVE_BACK, [keys.stream(p, level), keys.lease(p, group)],
             [group, token, self._reader.name, " ".join(level_ids).encode()])
            for (p, level), level_ids in ids.items()
        ]  # fmt: skip
        for reply in await run_pipelined(redis, calls):
            if isinstance(reply, Exception):
                raise reply
