"""Test helpers: waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


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
