"""Graceful shutdown on SIGTERM / SIGINT for processes that run consumers.

The first signal asks every component to ``stop()``: reading stops, in-flight
handlers finish within their ``shutdown_timeout``, partitions are released and
the group is left, so peers take over at once. A second signal stops them
with no grace period: running handlers are cancelled and their messages stay
pending, to be reclaimed by the next owner.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["Stoppable", "install_signal_handlers"]

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    """Anything with an async ``stop(timeout=None)``, such as a :class:`Consumer`."""

    async def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully, or within ``timeout`` seconds."""


def install_signal_handlers(
    *components: Stoppable,
    signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> Callable[[], None]:
    """Stop ``components`` on the first signal, at once on the second; return an uninstaller.

    Call it from inside the running event loop (Unix only)::

        consumer = Consumer("orders", redis_url=url)
        install_signal_handlers(consumer)
        await consumer.process(handle)   # returns after SIGTERM, once shut down
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    tasks: set[asyncio.Task[None]] = set()
    chosen = list(signals)

    def handle(signum: int) -> None:
        received.append(signum)
        graceful = len(received) == 1
        log.warning(
            "received %s: %s", signal.Signals(signum).name,
            "stopping gracefully" if graceful else "stopping now",
        )  # fmt: skip
        for component in components:
            task = loop.create_task(component.stop(None if graceful else 0.0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    for sig in chosen:
        loop.add_signal_handler(sig, handle, int(sig))

    def uninstall() -> None:
        for sig in chosen:
            loop.remove_signal_handler(sig)

    return uninstall
