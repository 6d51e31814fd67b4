"""Small asyncio helpers whose cancellation is never lost.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the event is
set in the same loop iteration as its task is cancelled: the cancellation is swallowed,
and a loop built on it runs on after ``task.cancel()``. :func:`wait_event` waits without
that hazard, and :func:`cancel_and_wait` cancels again until the task really ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel_and_wait", "uncancel", "wait_event"]

log = logging.getLogger("redisaq_core")


def uncancel() -> None:
    """Take back a cancellation of this task that was caught on purpose (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; cancel again if a cancellation got lost on the way."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s failed: %r", task.get_name(), task.exception())


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; return whether it is set.

    A cancellation of the caller always raises here, even if the event is set meanwhile.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter], timeout=max(timeout, 0.0))
    finally:
        waiter.cancel()
    return event.is_set()
