"""Concurrent commands sharing round trips: one pipeline per round trip instead of one each.

Used by producers (``enqueue``, ``submit``) and result stores (record reads).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .connection import AnyRedis

__all__ = ["BATCH", "CommandBatcher"]

BATCH = 1000
"""Most commands sent in one pipeline."""


class CommandBatcher:
    """Concurrent commands share round trips.

    A lone caller sends its command as is; commands issued while one is in
    flight wait in a queue and go out together in the next pipeline (at most
    ``BATCH`` per round trip), each caller getting its own reply or error.
    """

    def __init__(self, client: AnyRedis) -> None:
        self._client = client
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._busy = False
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, *args: Any) -> Any:
        """Run one command (``execute_command`` arguments) and return its reply."""
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((args, future))
            return await future
        self._busy = True
        try:
            return await self._client.execute_command(*args)
        finally:
            if self._queue:
                self._flusher = asyncio.create_task(self._flush())
            else:
                self._busy = False

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                batch = [(args, f) for args, f in batch if not f.done()]
                if not batch:
                    continue
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for args, _ in batch:
                        pipe.execute_command(*args)
                    results = await pipe.execute(raise_on_error=False)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._busy = False
            self._flusher = None

    async def aclose(self) -> None:
        """Wait for the commands in flight."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
