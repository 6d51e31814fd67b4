"""A task cancelled while the event it waits for is set in the same loop iteration.

``asyncio.wait_for(event.wait(), t)`` returns normally then on Python 3.11 (the
cancellation is lost) and a loop built on it runs on: a worker hung on SIGTERM in the
delayed mover's sleep that way.
"""

from __future__ import annotations

import asyncio

import pytest

from redisaq_core._delayed import DelayedMover
from redisaq_core._tasks import cancel_and_wait, wait_event
from redisaq_core.keys import TopicKeys


async def _set_and_cancel(event: asyncio.Event, task: asyncio.Task[object]) -> None:
    await asyncio.sleep(0.01)  # the task is waiting now
    event.set()
    task.cancel()


async def test_wait_event_never_loses_a_cancellation() -> None:
    for _ in range(20):
        event = asyncio.Event()
        task = asyncio.create_task(wait_event(event, 10))
        await _set_and_cancel(event, task)
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_wait_event_returns_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 10) is True


async def test_the_delayed_movers_sleep_ends_on_cancel_even_when_woken_at_once() -> None:
    mover = DelayedMover(TopicKeys("t"), "g", "c", "token", {}, check_interval=30)
    for _ in range(20):
        task = asyncio.create_task(mover._sleep(10))
        await _set_and_cancel(mover._event, task)
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_it() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # taken back once, as a lost cancellation would be
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(cancel_and_wait(task), 5)
    assert swallowed.is_set() and task.cancelled()
