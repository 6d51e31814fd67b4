"""Test helpers: waiting on a condition with a deadline, running and stopping consumers."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redisaq_core.keys import TopicKeys


async def eventually(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> Any:
    """Wait until ``condition()`` (sync or async) returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}")
        await asyncio.sleep(interval)


def wait_sync(condition: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
    """Blocking variant of :func:`eventually` for code outside an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or condition}")
        time.sleep(0.02)


class Running:
    """``async with Running(consumer, handler):`` runs ``consumer.process`` in a task.

    On exit the consumer is stopped and the task awaited, so that an error in
    the consumer fails the test.
    """

    def __init__(self, consumer: Any, handler: Any, *, batch: bool = False) -> None:
        self.consumer = consumer
        self.handler = handler
        self.batch = batch
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Any:
        run = self.consumer.process_batch if self.batch else self.consumer.process
        self.task = asyncio.create_task(run(self.handler))
        await eventually(
            lambda: self.consumer.running or self.task.done(), timeout=5, message="consumer start"
        )
        return self.consumer

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        await self.consumer.stop(timeout=10)
        await asyncio.wait_for(self.task, 15)
        await self.consumer.close()


def redisaq(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the ``redisaq`` command line in a child process, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "redisaq_core.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip


async def died_with(redis: Any, topic: str, members: int = 1) -> list[Any]:
    """Partition 0's entries read by a member of group ``default`` that died, then claimed
    by ``members - 1`` more that died too; returns their ids."""
    from redisaq_core.keys import TopicKeys

    keys = TopicKeys(topic)
    await redis.xgroup_create(keys.stream(0), "default", id="0")
    await redis.sadd(keys.groups, "default")
    got: Any = await redis.xreadgroup("default", "ghost-0", {keys.stream(0): ">"})
    ids = [entry_id for entry_id, _ in got[0][1]]
    for i in range(1, members):
        await redis.xclaim(keys.stream(0), "default", f"ghost-{i}", 0, ids)
    return ids


async def stopped_when(consumer: Any, handler: Any, event: asyncio.Event) -> None:
    """Run ``consumer.process(handler)`` until ``event`` is set, then stop it with a timeout
    that runs out (0.3 s): what is under way is cancelled, as when a process is killed."""
    task = asyncio.create_task(consumer.process(handler))
    await asyncio.wait_for(event.wait(), 10)
    await consumer.stop(timeout=0.3)
    await task
    await consumer.close()


@asynccontextmanager
async def foreign_topic_index(redis: Any) -> AsyncIterator[str]:
    """Another client's string at the index of topics while the block runs; its name.

    The index as it was (the other tests' topics) is put back afterwards.
    """
    index = TopicKeys.topic_index()
    saved = f"{index}:saved"  # the same slot
    had = await redis.exists(index)
    if had:
        await redis.rename(index, saved)
    try:
        await redis.set(index, "another client's")
        yield index
    finally:
        await redis.delete(index)
        if had:
            await redis.rename(saved, index)


def after_first_retry(monkeypatch: Any, action: Callable[[], Awaitable[None]]) -> list[int]:
    """Run ``action`` once, as the replies of the first retry call come back.

    It may raise (the reply lost with the connection). Returns a list that gets the
    number of calls in that round trip.
    """
    from redisaq_core import _delivery
    from redisaq_core._scripts import RETRY

    run_pipelined = _delivery.run_pipelined
    seen: list[int] = []

    async def then_act(redis: Any, calls: Any) -> Any:
        replies = await run_pipelined(redis, calls)
        if not seen and calls[0][0] is RETRY:
            seen.append(len(calls))
            await action()
        return replies

    monkeypatch.setattr(_delivery, "run_pipelined", then_act)
    return seen
