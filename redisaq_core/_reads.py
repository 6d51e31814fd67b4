"""Running on Redis Cluster: reading the streams of several hash slots.

On Redis Cluster one command or script may only touch keys of one hash slot.
Every key name carries a hash tag (see :mod:`redisaq_core.keys`), so nearly
every command of the library has one key, or keys sharing one tag, and
redis-py's ``RedisCluster`` routes it; a pipeline becomes one pipeline per
node. The exception is a consumer's read of the partitions it owns: each
partition has its own tag, hence its own slot, and one XREADGROUP cannot
span them. :func:`read_streams` reads them with one XREADGROUP per slot, sent
concurrently.

Blocking on several slots needs care. A first pass reads every slot without
blocking; under load it finds entries and returns them. Only when all slots
are empty does it block on every slot at once (and a consumer whose last
blocking read found nothing goes straight to that). As soon as one read
returns entries, the others get a millisecond to return theirs, then are
cancelled (redis-py drops their connections), and entries the server may
already have handed to a cancelled read, which are now in this consumer's
pending list, are read back from that list (``lua/read_back.lua``: like
XREADGROUP with id ``0``, but without counting a second delivery). This
happens only when a consumer goes from idle to busy; reads that time out
empty end together and are not cut. A read back waits for its node: should
that node stall, a stop or a rebalance may cancel the whole read meanwhile,
and what the other nodes brought is then the caller's to give back
(``served``), as it is pending with the consumer.

On a single Redis server (``redis.asyncio.Redis``), :func:`read_streams` is
one plain XREADGROUP over all streams, as before.

The single-server read is sent with its name as bytes (:data:`XREADGROUP`).
redis-py looks up its reply converters by the name as text, so this reply
comes back as the server sent it: per entry, a flat list of fields and
values, which the consumer reads as it is instead of having redis-py build a
dict per entry first (a third of the client's cost per message in a busy
read). Callers accept either shape, so a redis-py that converts it anyway
costs only that time.

:func:`send_ahead` (one server) writes a pipeline at once and leaves reading
its replies to a task, so that Python can go on with other work while Redis
serves it (a consumer's read ahead, see :mod:`redisaq_core._read_ahead`).
redis-py's own pipeline starts writing only once its task runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from ._scripts import READ_BACK, node_of
from .connection import AnyRedis

__all__ = [
    "XREADGROUP",
    "create_groups",
    "read_streams",
    "send_ahead",
    "slot_groups",
    "xreadgroup_args",
]

log = logging.getLogger(__name__)

_GRACE = 0.001
"""Seconds the other blocked reads get to finish once one has returned, before cancelling."""

_Pairs = list[tuple[Any, list[Any]]]

XREADGROUP = b"XREADGROUP"
"""The command's name as bytes: its reply skips redis-py's converters (see the module text)."""

_idle: WeakKeyDictionary[RedisCluster, set[tuple[str, str]]] = WeakKeyDictionary()
"""(group, consumer) pairs per client whose last blocking read found nothing.

Such a consumer is idle: its next read blocks at once, without the
non-blocking pass first, which halves its idle traffic.
"""


def slot_groups(keys: Iterable[str]) -> dict[int, list[str]]:
    """Group ``keys`` by hash slot, keeping their order within each group."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return groups


def xreadgroup_args(
    group: str, consumer: str, streams: Mapping[Any, Any], count: int, block_ms: int | None
) -> list[Any]:
    """The arguments of XREADGROUP after its name: group, consumer, COUNT, BLOCK, STREAMS."""
    args: list[Any] = ["GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *streams.keys(), *streams.values()]
    return args


def _pairs(response: Any) -> _Pairs:
    """The ``(stream, entries)`` pairs of an XREADGROUP reply (RESP2 list or RESP3 map).

    redis-py's RESP3 conversion wraps each stream's entries in one more list; unwrapped.
    """
    if not response:
        return []
    if not isinstance(response, dict):
        return list(response)
    return [(name, _unwrapped(entries)) for name, entries in response.items()]


def _unwrapped(entries: list[Any]) -> list[Any]:
    """``entries``, or the one list of entries it holds (an entry starts with its id)."""
    if len(entries) == 1 and isinstance(entries[0], list):
        inner = entries[0]
        if not inner or isinstance(inner[0], (list, tuple)):
            return inner
    return entries


async def _read_slot(
    redis: RedisCluster,
    group: str,
    consumer: str,
    streams: Mapping[str, str],
    count: int,
    block_ms: int | None,
    served: _Pairs,
) -> _Pairs:
    """One XREADGROUP over streams of one slot, sent straight to the node serving it.

    Naming the node spares redis-py a COMMAND GETKEYS round trip (XREADGROUP's
    keys are not at fixed positions); a MOVED reply is still followed. What it
    brings is added to ``served`` too, as soon as it comes.
    """
    args = ["XREADGROUP", *xreadgroup_args(group, consumer, streams, count, block_ms)]
    node = node_of(redis, next(iter(streams)))
    if node is None:  # no slot table yet: let redis-py find the node
        pairs = _pairs(await redis.execute_command(*args))
    else:
        pairs = _pairs(await redis.execute_command(*args, target_nodes=node))
    for name, entries in pairs:
        if entries := [e for e in entries if e[1] is not None]:
            served.append((name, entries))
    return pairs


async def _gather(
    redis: RedisCluster,
    group: str,
    consumer: str,
    batches: list[dict[str, str]],
    count: int,
    served: _Pairs,
    *,
    back: bool = False,
) -> tuple[_Pairs, BaseException | None]:
    """Non-blocking reads of ``batches`` (one per slot), concurrently; ``back``: read backs.

    Returns the entries found and the first error. Entries are returned even
    when another slot's read failed: they are already in this consumer's
    pending list, so dropping them would strand them there.
    """
    results = await asyncio.gather(
        *(
            _read_back(redis, group, consumer, b, count, served)
            if back
            else _read_slot(redis, group, consumer, b, count, None, served)
            for b in batches
        ),
        return_exceptions=True,
    )
    found: _Pairs = []
    error: BaseException | None = None
    for result in results:
        if isinstance(result, BaseException):
            error = error or result
        else:
            found += result
    return found, error


async def _block(
    redis: RedisCluster,
    group: str,
    consumer: str,
    batches: list[dict[str, str]],
    count: int,
    block_ms: int,
    served: _Pairs,
) -> _Pairs:
    """Block on every slot at once; return what the first reads that bring entries bring.

    Reads that end empty (their BLOCK timed out) or failed do not end the wait:
    the others time out about as soon, so they are let run rather than cut.
    """
    tasks = {
        asyncio.ensure_future(_read_slot(redis, group, consumer, b, count, block_ms, served)): b
        for b in batches
    }
    pending: set[asyncio.Future[_Pairs]] = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(_brought(task) for task in done):
                if pending:
                    # Entries often land on several slots at once: let those replies in too.
                    _, pending = await asyncio.wait(pending, timeout=_GRACE)
                break
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    for late in pending:
        late.cancel()
    if pending:
        await asyncio.wait(pending)
    found: _Pairs = []
    error: BaseException | None = None
    cut: list[dict[str, str]] = []
    for task, batch in tasks.items():
        if task.cancelled():
            cut.append(batch)
        elif task.exception() is not None:
            error = error or task.exception()
        else:
            found += task.result()
    if cut:
        # A cancelled read may have been served just before it was dropped: its entries
        # are in our pending list. Read them back.
        back, back_error = await _gather(redis, group, consumer, cut, count, served, back=True)
        found = [(name, entries) for name, entries in found + back if entries]
        error = error or back_error
    if not found and error is not None:
        raise error
    return found


async def _read_back(
    redis: RedisCluster,
    group: str,
    consumer: str,
    streams: Mapping[str, str],
    count: int,
    served: _Pairs,
) -> _Pairs:
    """The entries of ``streams`` (one slot) pending with ``consumer``, added to ``served`` too.

    Read by ``lua/read_back.lua``: unlike XREADGROUP with id ``0``, it leaves their
    delivery counts as they are.
    """
    pairs: _Pairs = [
        (n, e) for n, e in await READ_BACK(redis, list(streams), [group, consumer, count])
    ]
    served += pairs
    return pairs


def _brought(task: asyncio.Future[_Pairs]) -> bool:
    """Whether a finished read returned entries."""
    if task.cancelled() or task.exception() is not None:
        return False
    return any(entries for _, entries in task.result())


async def read_streams(
    redis: AnyRedis,
    group: str,
    consumer: str,
    streams: Mapping[str, str],
    *,
    count: int,
    block_ms: int | None,
    served: list[Any] | None = None,
) -> Any:
    """XREADGROUP ``streams`` (stream -> id) for ``consumer`` of ``group``.

    On a single server this is one XREADGROUP (COUNT ``count``, BLOCK
    ``block_ms`` unless ``None``) and returns the server's reply as it came
    (each entry's fields a flat list; see the module text). On a cluster
    the streams are grouped by hash slot and read with one XREADGROUP per
    slot, concurrently (see the module docstring); the reply is a list of
    ``(stream, entries)`` pairs, the shape of a RESP2 reply. An error is
    raised only when no read brought entries.

    For ``>`` reads the caller must hold no other pending entries of these
    streams (a consumer acknowledges, or holds back, what it read before it
    reads again): after a cut-off blocked read, every entry of those streams
    pending for ``consumer`` is read back, and old ones would come again.

    ``served``, on a cluster: a list that gets each slot's ``(stream, entries)`` as
    they come. A read cancelled midway (a stop, a rebalance) may already have been
    handed entries by some nodes, now pending with ``consumer``: they are there, for
    the caller to give back.
    """
    into: _Pairs = [] if served is None else served
    if not isinstance(redis, RedisCluster):
        args = xreadgroup_args(group, consumer, streams, count, block_ms)
        return await redis.execute_command(XREADGROUP, *args)  # type: ignore[no-untyped-call]
    groups = slot_groups(streams)
    batches = [{key: streams[key] for key in keys} for keys in groups.values()]
    if len(batches) == 1:
        return await _read_slot(redis, group, consumer, batches[0], count, block_ms, into)
    if not batches:
        return []
    idle = _idle.setdefault(redis, set())
    if block_ms is None or (group, consumer) not in idle:
        found, error = await _gather(redis, group, consumer, batches, count, into)
        if found:
            if error is not None:
                log.debug("read of one slot failed, others brought entries: %s", error)
            idle.discard((group, consumer))
            return [(name, entries) for name, entries in found if entries]
        if error is not None:
            raise error
        if block_ms is None:
            return []
    found = await _block(redis, group, consumer, batches, count, block_ms, into)
    if found:
        idle.discard((group, consumer))
    else:
        idle.add((group, consumer))
    return found


async def create_groups(
    redis: AnyRedis, streams: Iterable[str], groups: Iterable[str | bytes], start: str
) -> None:
    """Create each of ``groups`` on each of ``streams`` at ``start``, in one round trip.

    MKSTREAM: a stream not there yet is made. A group a stream has already is kept.
    """
    pipe: Any = redis.pipeline(transaction=False)
    for stream in streams:
        for group in groups:
            pipe.xgroup_create(stream, group, id=start, mkstream=True)
    for result in await pipe.execute(raise_on_error=False):
        if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
            raise result


async def send_ahead(redis: Redis, commands: list[tuple[Any, ...]]) -> asyncio.Task[list[Any]]:
    """Write ``commands`` to Redis now, in one write; a task reads their replies.

    The task's result has the replies in order, an exception object in place of
    each error reply (as ``pipeline.execute(raise_on_error=False)``). The
    connection goes back to the pool once every reply is read; a connection
    failure, or the task cancelled (midway or before it ran), closes it first.
    """
    pool: Any = redis.connection_pool  # get_connection is untyped
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
    except BaseException:
        await conn.disconnect()
        await pool.release(conn)
        raise
    reading = _Replies(pool, conn)
    task = asyncio.ensure_future(reading.read(len(commands)))
    task.add_done_callback(reading.never_ran)
    return task


class _Replies:
    """Reads the replies to what :func:`send_ahead` wrote, then gives the connection back."""

    def __init__(self, pool: Any, conn: Any) -> None:
        self._pool, self._conn = pool, conn
        self._started = False

    async def read(self, count: int) -> list[Any]:
        self._started = True
        replies: list[Any] = []
        try:
            for _ in range(count):
                try:
                    replies.append(await self._conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await self._conn.disconnect()
            raise
        finally:
            await self._pool.release(self._conn)
        return replies

    def never_ran(self, task: asyncio.Task[list[Any]]) -> None:
        """A task cancelled before it ran never reached :meth:`read`'s ``finally``."""
        if not self._started:
            _closing.add(close := asyncio.ensure_future(self._close()))
            close.add_done_callback(_closing.discard)

    async def _close(self) -> None:
        await self._conn.disconnect()
        await self._pool.release(self._conn)


_closing: set[asyncio.Future[None]] = set()
"""Connections being closed after a cancelled read (kept here until done, as asyncio asks)."""
