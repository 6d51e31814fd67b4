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
pending entries. The entries of any other partition are owed a give-back
(``_give_back.py``), so that the claim that brings them again counts as their
first delivery; a partition still ours then claims them back before anything
newer, in stream order; a partition given up is claimed by its new owner.
Only entries whose read lost its reply stay counted as delivered, as those of
a member that dies with a batch read do.
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
from ._settlement import Settler
from .connection import AnyRedis
from .message import Received

__all__ = ["ReadAhead"]

log = logging.getLogger(__name__)

_GIVE_BACK_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, asyncio.TimeoutError)

_DISCARD_WAIT = 5.0
"""Seconds a stopping consumer waits for a read under way (then for giving its entries back)."""

_DOWN_WAIT = 0.5
"""Seconds it tries to give entries back when its last call found Redis unreachable."""


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
        self._give_back = settler.give_back
        self._reader = reader
        self._owned = owned
        self._on_lost = on_lost
        self._task: asyncio.Task[list[Received]] | None = None
        self._parts: dict[int, OwnedPartition] = {}  # read (those not owed a give-back yet)
        self._width = 0  # how many partitions the read covered

    @property
    def pending(self) -> bool:
        """Whether a read was sent ahead and its messages were not taken yet."""
        return self._task is not None

    async def start(self, redis: AnyRedis, in_hand: list[Received]) -> None:
        """Write the kept-back acknowledgements and a read of the partitions ready for it.

        Only after a read that filled a batch (``Reader.behind``), and not while a retry
        is due or entries are to be claimed anywhere (those come first, and a read
        would pass them). Nothing is sent on a cluster client (its reads are not
        pipelined with scripts). A failed write sends nothing, and raises nothing:
        the acknowledgements are kept back again and the messages in hand are handled.
        Cancelled, it keeps them back too, and owes a give-back of ``in_hand``.
        """
        assert self._task is None, "one read ahead at a time"
        if not self._reader.behind or not isinstance(redis, Redis):
            return
        now = asyncio.get_running_loop().time()
        parts = [s for s in self._owned.values() if s.ready(now)]
        if not parts or any(s.held or s.claiming for s in parts):
            return
        calls = self._settler.take_deferred(self._owned)
        holds = self._settler.holds_of(calls)
        commands, where = self._reader.after_commands(parts, calls)
        try:
            sent = await send_ahead(redis, commands)
        except REDIS_FAILURES:
            # The messages in hand are handled still; the acknowledgements wait for the next
            # round trip, which meets the outage if it lasts. Should the read have reached
            # Redis all the same, what it delivered is claimed before anything newer is read.
            self._settler.keep_back(calls, holds, self._owned)
            for part in parts:
                part.reclaim()
            return
        except BaseException:  # a forced stop: the messages in hand never reach a handler
            self._settler.keep_back(calls, holds, self._owned)
            for part in parts:
                part.reclaim()
            for number in {m.partition for m in in_hand}:
                if (held := self._owned.get(number)) is not None:
                    held.reclaim()
                self._give_back.owe(number, [m for m in in_hand if m.partition == number])
            raise

        async def read() -> tuple[list[Received], list[Any]]:
            return self._reader.after_replies(await sent, where)

        self._parts = {part.number: part for part in parts}
        self._width = len(parts)
        self._task = asyncio.ensure_future(
            self._settler.record_read(redis, calls, holds, read(), self._owned, self._on_lost)
        )

    async def take(self) -> list[Received]:
        """The messages read ahead that may be handled now (raises what the read raised).

        Those of any other partition are owed a give-back (:meth:`give_back`); a
        partition still ours claims them again, in order, once it may.
        """
        task = self._task
        assert task is not None
        # Left in place while waiting: cancelled meanwhile, :meth:`discard` gives it back.
        await asyncio.wait([task])
        self._task = None
        parts, self._parts = self._parts, {}
        messages = task.result()
        now = asyncio.get_running_loop().time()
        usable = {
            number for number, part in parts.items()
            if self._owned.get(number) is part and part.ready(now) and not part.held
            and not part.claiming
        }  # fmt: skip
        if len(usable) == self._width:
            return messages
        self._owe([part for number, part in parts.items() if number not in usable], messages)
        return [m for m in messages if m.partition in usable]

    async def give_back(self, redis: AnyRedis, parts: Iterable[OwnedPartition] = ()) -> None:
        """Give back the entries owed, with those of ``parts`` that never ran.

        ``parts``: partitions being given up: what the read under way brings for
        them (this waits for its reply; :meth:`take` then leaves their messages
        out), and the entries they hold behind a failure that never ran. Called
        before anything is retried or claimed, and before a lease is released.
        Raises what Redis raised; what was not given back stays owed, for the next call.
        """
        parts = list(parts)
        task = self._task
        if task is not None and parts:
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                self._owe([part for part in parts if self._parts.get(part.number) is part],
                          task.result())  # fmt: skip
        self._give_back.owe_held(parts)
        await self._give_back.make(redis)

    async def discard(self, redis: AnyRedis, *, redis_down: bool) -> None:
        """Let a read under way end (a consumer leaving early, or failing); give back its entries.

        With them, the entries the partitions hold behind a failure that never ran.
        They are given back before the leases are released, within a bound (short
        when ``redis_down``: the consumer's last call failed); a failure is logged,
        and they stay pending, counted as delivered, for the partitions' next owner.
        """
        task, self._task = self._task, None
        parts, self._parts = self._parts, {}
        if task is not None:
            await asyncio.wait([task], timeout=_DISCARD_WAIT)
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:  # retrieved: not reported
                self._owe(list(parts.values()), task.result())
        self._give_back.owe_held(self._owned.values())
        if not self._give_back.owed:
            return
        try:
            limit = _DOWN_WAIT if redis_down else _DISCARD_WAIT
            await asyncio.wait_for(self._give_back.make(redis), limit)
        except _GIVE_BACK_FAILURES as exc:
            log.warning(
                "consumer %s: entries delivered but never handled were not given back (%s); "
                "they stay pending as delivered once", self._reader.name, type(exc).__name__,
            )  # fmt: skip
        self._give_back.drop()

    def _owe(self, parts: list[OwnedPartition], messages: list[Received]) -> None:
        """Owe a give-back of the ``messages`` of ``parts``, which then claim their entries."""
        numbers = set()
        for part in parts:
            self._parts.pop(part.number, None)
            if self._owned.get(part.number) is part:
                part.reclaim()  # after its retry, or its other pending entries: in order
            numbers.add(part.number)
        for number in numbers:
            self._give_back.owe(number, [m for m in messages if m.partition == number])
