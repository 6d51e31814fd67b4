"""Watching the liveness of a registry's services: :class:`HealthMonitor`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .._checks import number
from .._failures import CALL_FAILURES
from .._tasks import cancel_and_wait, wait_event
from ..errors import ConfigurationError, NotConnectedError
from ._model import ServiceInfo, WorkerStatus
from ._registry import ServiceRegistry

__all__ = ["ChangeCallback", "HealthMonitor", "StatusChange", "classify"]

log = logging.getLogger(__name__)


ChangeCallback = Callable[["StatusChange"], "Awaitable[Any] | None"]
"""``on_change`` of a monitor: called with each :class:`StatusChange` (may be async)."""


@dataclass(frozen=True)
class StatusChange:
    """A service's worker status changed from ``old`` (``None``: first seen) to ``new``."""

    service_id: str
    old: WorkerStatus | None
    new: WorkerStatus
    age: float | None
    """Seconds since the last heartbeat (server clock), ``None`` when the record is gone."""
    service: ServiceInfo | None
    """The record as read, ``None`` when it is gone."""

    def as_dict(self) -> dict[str, Any]:
        """The change as a JSON-ready dict."""
        return {
            "service_id": self.service_id,
            "old": None if self.old is None else self.old.value,
            "new": self.new.value,
            "age": self.age,
            "service": None if self.service is None else self.service.as_dict(),
        }


def classify(
    *,
    age: float,
    heartbeated: bool,
    connected: bool,
    timeout: float,
    disconnect_timeout: float,
) -> WorkerStatus:
    """The worker status of a service whose last heartbeat is ``age`` seconds old.

    ``heartbeated``: a heartbeat arrived after the registration. ``connected``:
    a keepalive session holds the service's liveness key.
    """
    if age > disconnect_timeout:
        return WorkerStatus.DISCONNECTED
    if age > timeout:
        return WorkerStatus.NOT_RESPONDING
    if heartbeated:
        return WorkerStatus.ALIVE
    if connected:
        return WorkerStatus.CONNECTED
    return WorkerStatus.REGISTERED


class HealthMonitor:
    """Tracks the liveness of a registry's services (the worker manager), by heartbeat age.

    ``timeout``: seconds without a heartbeat before ``not_responding``
    (default 15). ``disconnect_timeout``: before ``disconnected`` (default
    four times ``timeout``). ``interval``: seconds between checks (default
    ``timeout / 3``). ``service_type``: watch only that type. ``on_change``:
    called with every :class:`StatusChange`; a coroutine function is awaited.
    Run it with ``async with`` / ``start()`` and ``stop()``, or call
    :meth:`check` yourself.
    """

    def __init__(
        self,
        registry: ServiceRegistry,
        *,
        timeout: float = 15.0,
        disconnect_timeout: float | None = None,
        interval: float | None = None,
        service_type: str | None = None,
        on_change: ChangeCallback | None = None,
    ) -> None:
        if not isinstance(registry, ServiceRegistry):
            raise ConfigurationError(f"registry must be a ServiceRegistry, got {registry!r}")
        self.timeout = number(timeout, "timeout", above=0, seconds=True)
        self.disconnect_timeout = (
            4 * self.timeout
            if disconnect_timeout is None
            else number(disconnect_timeout, "disconnect_timeout", above=0, seconds=True)
        )
        if self.disconnect_timeout <= self.timeout:
            raise ConfigurationError(
                f"disconnect_timeout must be greater than timeout ({self.timeout}), "
                f"got {disconnect_timeout!r}"
            )
        self.interval = (
            self.timeout / 3
            if interval is None
            else number(interval, "interval", above=0, seconds=True)
        )
        if on_change is not None and not callable(on_change):
            raise ConfigurationError(f"on_change must be callable, got {on_change!r}")
        self.registry = registry
        self.service_type = service_type
        self.on_change = on_change
        self._known: dict[str, WorkerStatus] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def statuses(self) -> dict[str, WorkerStatus]:
        """The status of each watched service as of the last check (a copy)."""
        return dict(self._known or {})

    @property
    def running(self) -> bool:
        """Whether the background loop runs."""
        return self._task is not None and not self._task.done()

    async def check(self) -> list[StatusChange]:
        """Read the registry once, store changed statuses, call ``on_change``; return changes."""
        snap = await self.registry.snapshot(self.service_type)
        current: dict[str, tuple[WorkerStatus, float, ServiceInfo]] = {}
        for record in snap.records:
            info = record.info
            assert info.last_seen is not None
            age = max(0.0, snap.now - info.last_seen)
            status = classify(
                age=age,
                heartbeated=info.last_seen > record.registered_at,
                connected=record.alive,
                timeout=self.timeout,
                disconnect_timeout=self.disconnect_timeout,
            )
            current[info.service_id] = (status, age, info)
        # Read every time: another process (a web gateway whose socket closed) may have
        # marked a worker disconnected.
        stored = await self.registry.get_worker_statuses()
        if self._known is None:
            self._known = {i: stored[i] for i in current if i in stored}
        known = self._known
        changes: list[StatusChange] = []
        for service_id, (status, age, info) in current.items():
            if (
                stored.get(service_id) == WorkerStatus.DISCONNECTED
                and status == WorkerStatus.NOT_RESPONDING
            ):
                status = WorkerStatus.DISCONNECTED  # until the worker heartbeats again
            old = known.get(service_id)
            if old != status:
                changes.append(StatusChange(service_id, old, status, age, info))
        skipped = set(snap.malformed)
        for service_id, old in list(known.items()):
            if service_id not in current and service_id not in skipped:
                del known[service_id]
                if old != WorkerStatus.DISCONNECTED:
                    changes.append(
                        StatusChange(service_id, old, WorkerStatus.DISCONNECTED, None, None)
                    )
        writes = [c for c in changes if c.service is not None]
        if writes:
            await self.registry.store_worker_statuses({c.service_id: c.new for c in writes})
        for c in writes:
            known[c.service_id] = c.new
        for c in changes:
            log.info("service %s: %s -> %s", c.service_id, c.old, c.new)
            await self._emit(c)
        return changes

    async def _emit(self, change: StatusChange) -> None:
        if self.on_change is None:
            return
        try:
            result = self.on_change(change)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_change failed for %s", change.service_id)

    async def run(self) -> None:
        """Check every ``interval`` until :meth:`stop`; Redis errors are logged and retried."""
        failing = False
        while not self._stopping.is_set():
            try:
                await self.check()
                if failing:
                    log.info("health monitor: registry reachable again")
                failing = False
            except NotConnectedError:
                return
            except Exception as exc:  # Redis failed, or records of other clients spoilt a read
                if not failing:
                    unknown = not isinstance(exc, CALL_FAILURES)
                    log.warning("health monitor: check failed: %r", exc, exc_info=unknown)
                failing = True
            await wait_event(self._stopping, self.interval)

    async def start(self) -> None:
        """Start checking in a background task (idempotent)."""
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name="redisaq-health-monitor")

    async def stop(self) -> None:
        """Stop the background task and wait for it (idempotent)."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def __aenter__(self) -> HealthMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
