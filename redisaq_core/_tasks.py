"""Small asyncio helpers whose cancellation is never lost.

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the event is
set in the same loop iteration as its task is cancelled: the cancellation is swallowed,
and a loop built on it runs on after ``task.cancel()``. :func:`wait_event` waits without
that hazard, and :func:`cancel_and_wait` cancels again until the task really ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "cancel_and_wait",
    "finish_shielded",
    "raised_by_the_call",
    "uncancel",
    "wait_event",
]

log = logging.getLogger("redisaq_core")


def uncancel() -> None:
    """Take back a cancellation of this task that was caught on purpose (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def raised_by_the_call() -> bool:
    """Whether a ``CancelledError`` just caught came from the awaited call, not this task.

    A call raises it of its own when it awaited a task or future something else cancelled;
    this task was then not cancelled (Python 3.11+; earlier ones can't tell: ``False``).
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() == 0


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it; cancel again if a cancellation got lost on the way."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.05)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s failed: %r", task.get_name(), task.exception())


async def finish_shielded(
    step: Awaitable[Any], limit: float | None, *, forced: Callable[[], bool]
) -> bool:
    """Run ``step`` shielded from the caller's cancellation; return whether it finished.

    ``limit``: the seconds it may take (``None``: no limit); then it is cancelled. A
    cancellation of the caller is passed on, unless ``forced()`` says, when it comes,
    that it was meant to end the wait (the caller goes on): then the step is cancelled
    and the cancellation taken back. A step that fails is logged: the caller goes on.
    """
    job = asyncio.ensure_future(step)
    try:
        await asyncio.wait_for(asyncio.shield(job), limit)
        return True
    except asyncio.TimeoutError:
        job.cancel()
    except Exception as exc:
        log.warning("%s failed: %r", getattr(step, "__qualname__", step), exc)
    except asyncio.CancelledError:
        if not forced():
            raise
        job.cancel()
        uncancel()
    return False


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
