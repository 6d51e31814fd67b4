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
pending entries. The entries of any other partition stay in this member's
pending list; a partition still ours claims them back before anything newer,
in stream order; a partition given up is claimed by its new owner (on taking
it, or by the stray sweep that follows a change of members).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from ._delivery import OwnedPartition, Reader
from ._reads import send_ahead
from ._settlement import Settler
from .connection import AnyRedis
from .message import Received

__all__ = ["ReadAhead"]

_DISCARD_WAIT = 5.0
"""Seconds a stopping consumer waits for a read under way before it cancels it."""


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
        self._parts: dict[int, OwnedPartition] = {}

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

    async def wait(self) -> None:
        """Return once the read sent ahead (if any) has its reply; its result stays to take."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def take(self) -> list[Received]:
        """The messages read ahead that may be handled now (raises what the read raised)."""
        task, self._task = self._task, None
        assert task is not None
        parts, self._parts = self._parts, {}
        messages = await task
        now = asyncio.get_running_loop().time()
        usable = {
            number for number, part in parts.items()
            if self._owned.get(number) is part and part.ready(now) and not part.held
            and not part.claiming
        }  # fmt: skip
        if len(usable) == len(parts):
            return messages
        for number, part in parts.items():
            if number not in usable and self._owned.get(number) is part:
                part.reclaim()  # after its retry, or its other pending entries: in order
        return [m for m in messages if m.partition in usable]

    async def discard(self) -> None:
        """Let a read under way end (a stopping or failed consumer); drop what it read.

        Its entries stay pending, for the partitions' next owner to claim.
        """
        task, self._task = self._task, None
        self._parts = {}
        if task is None:
            return
        await asyncio.wait([task], timeout=_DISCARD_WAIT)
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: a stopping consumer's failed read is not reported
