"""Appending a batch of entries: one script call per stream instead of one XADD per entry.

In a pipeline of XADDs, redis-py packs a command and parses a reply, under a
timeout of its own, for every entry: most of the client's time in a
``batch_enqueue``. ``lua/append.lua`` takes a stream's entries in one call and
returns their ids, so the client packs one command per stream (per
:data:`CHUNK` entries) and parses one reply, for a little more work on the
server (each XADD made from Lua).

What a failure leaves is what a pipeline would leave: a call that fails (the
server out of memory) keeps the entries it wrote before, and other streams'
calls go on, so a batch may be written in part; the producer says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._scripts import APPEND, ScriptCall, run_pipelined
from .connection import AnyRedis

__all__ = ["CHUNK", "CHUNK_BYTES", "append"]

CHUNK = 1000
"""Most entries one script call appends: a longer call would hold the server up for others."""

CHUNK_BYTES = 4 << 20
"""About the most payload bytes one call carries: the server bounds one command's size
(``client-query-buffer-limit``, 1 GiB by default), where a pipeline's entries each count
alone."""

_COUNTS = [b"%d" % n for n in range(16)]


async def append(
    redis: AnyRedis, entries: Sequence[tuple[str, list[Any]]], options: Sequence[Any]
) -> list[bytes]:
    """Append ``entries`` ((stream, fields)) in input order; return their ids in that order.

    ``options``: the XADD options every entry gets (trimming). Raises the first error
    a call met (after every call has run).
    """
    head = [len(options), *options]
    calls: list[ScriptCall] = []
    where: list[tuple[int, int]] = []  # each entry's (call, position in its reply)
    # stream -> its call filling up: (index, entries in it, payload bytes in it)
    open_calls: dict[str, tuple[int, int, int]] = {}
    arguments: list[list[Any]] = []  # each call's
    for stream, fields in entries:
        size = len(fields[1])  # the payload; the other fields are short
        at = open_calls.get(stream)
        if at is None or at[1] == CHUNK or (at[1] and at[2] + size > CHUNK_BYTES):
            arguments.append([*head])
            calls.append((APPEND, [stream], arguments[-1]))
            at = (len(calls) - 1, 0, 0)
        index, count, held = at
        args = arguments[index]
        n = len(fields)
        args.append(_COUNTS[n] if n < len(_COUNTS) else n)
        args += fields
        where.append((index, count))
        open_calls[stream] = (index, count + 1, held + size)
    replies = await run_pipelined(redis, calls)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [replies[index][position] for index, position in where]
