"""Keeping a service registered while it runs, and watching the liveness of services.

:class:`Keepalive` is self-registration::

    async with registry.keepalive(info, interval=5) as ka:
        await ka.wait_shutdown()              # set when someone deregisters us

:class:`HealthMonitor` turns heartbeat ages into :class:`WorkerStatus` changes::

    def changed(change: StatusChange) -> None:
        log.warning("%s is now %s", change.service_id, change.new)

    async with HealthMonitor(registry, timeout=15, on_change=changed) as monitor:
        ...                                   # checks every timeout / 3 seconds

Every ``interval`` the monitor reads the registry in one step (with the
server's clock) and gives each service a status:

* ``disconnected`` after ``disconnect_timeout`` without a heartbeat, or when
  its record disappears (deregistered or cleaned up);
* ``not_responding`` after ``timeout`` without a heartbeat;
* ``alive`` once it has sent a heartbeat since it registered;
* ``connected`` when a keepalive session holds its liveness key but has not
  renewed yet;
* ``registered`` otherwise (registered, nothing since).

A status that differs from the one the monitor knew is a :class:`StatusChange`,
passed to ``on_change`` and returned by :meth:`HealthMonitor.check`; statuses
are stored in the registry (``get_worker_statuses()``), so a restarted monitor
continues where the last one stopped. The service's own health status
(:class:`~redisaq_core.registry.ServiceStatus`) is left alone. Several
monitors can run at once: they compute and store the same statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from .checks import number
from .errors import ConfigurationError, NotConnectedError, RegistryError
from .failures import CALL_FAILURES
from .keys import validate_name
from .registry import ServiceInfo, ServiceRegistry, ServiceStatus, ShutdownCallback, WorkerStatus

__all__ = [
    "CONSUMER_SERVICE_TYPE",
    "ChangeCallback",
    "HealthMonitor",
    "Keepalive",
    "StatusChange",
    "classify",
    "consumer_service_info",
]

log = logging.getLogger(__name__)

CONSUMER_SERVICE_TYPE = "consumer"
"""The service type consumers register themselves with."""

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


def consumer_service_info(
    *,
    topic: str,
    group: str,
    consumer_name: str,
    partitions: Iterable[int] = (),
    host: str | None = None,
) -> ServiceInfo:
    """The :class:`ServiceInfo` a consumer registers itself with.

    Service id ``topic/group/consumer_name``, type ``consumer``, port 0, and
    metadata ``topic``, ``group``, ``consumer``, ``partitions`` and ``pid``.
    """
    for value, argument in ((topic, "topic"), (group, "group"), (consumer_name, "consumer_name")):
        validate_name(value, argument)
    return ServiceInfo(
        service_id=f"{topic}/{group}/{consumer_name}",
        host=host or socket.gethostname() or "localhost",
        port=0,
        service_type=CONSUMER_SERVICE_TYPE,
        metadata={
            "topic": topic,
            "group": group,
            "consumer": consumer_name,
            "partitions": sorted(int(p) for p in partitions),
            "pid": os.getpid(),
        },
    )


class Keepalive:
    """Keeps one service registered while its owner runs (self-registration).

    On start it registers ``service_info`` and sets the service's liveness
    key to expire after ``ttl`` (default three intervals); every ``interval``
    seconds it records a heartbeat and renews the key; on stop it deregisters
    the service. A failed renewal (Redis unreachable) is logged and tried
    again at the next interval.

    If the record is deleted from outside (``redisaq registry deregister ID``
    or ``DEL`` of its key), the next renewal notices: :attr:`shutdown` is set,
    ``on_shutdown`` is called (a coroutine function runs as a task), and
    renewing stops, so the owner can shut down gracefully within one interval.
    A Redis that restarted without its data looks the same: the record is gone.
    """

    def __init__(
        self,
        registry: ServiceRegistry,
        service_info: ServiceInfo,
        *,
        interval: float = 10.0,
        ttl: float | None = None,
        on_shutdown: ShutdownCallback | None = None,
    ) -> None:
        if not isinstance(service_info, ServiceInfo):
            raise ConfigurationError(f"service_info must be a ServiceInfo, got {service_info!r}")
        self.interval = number(interval, "interval", above=0, seconds=True)
        self.ttl = 3 * self.interval if ttl is None else number(ttl, "ttl", above=0, seconds=True)
        if self.ttl <= self.interval:
            raise ConfigurationError(
                f"ttl must be greater than interval ({self.interval}), got {ttl!r}"
            )
        if on_shutdown is not None and not callable(on_shutdown):
            raise ConfigurationError(f"on_shutdown must be callable, got {on_shutdown!r}")
        self.registry = registry
        self.info = replace(service_info, metadata=dict(service_info.metadata))
        self.on_shutdown = on_shutdown
        self.shutdown = asyncio.Event()
        """Set when the registration was removed from outside (a remote shutdown request)."""
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopped = False

    @property
    def service_id(self) -> str:
        """The id of the kept-alive service."""
        return self.info.service_id

    @property
    def shutdown_requested(self) -> bool:
        """Whether the registration was removed from outside."""
        return self.shutdown.is_set()

    @property
    def running(self) -> bool:
        """Whether the renewal loop is running."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Register the service and start renewing it (idempotent)."""
        if self._stopped:
            raise RegistryError(f"keepalive of {self.service_id!r} was stopped; make a new one")
        if self._started:
            return
        await self.registry.register_service(self.info, liveness_ttl=self.ttl)
        self._started = True
        self._task = asyncio.create_task(
            self._renew_loop(), name=f"redisaq-keepalive-{self.service_id}"
        )
        log.info("keepalive of %s started (every %.3gs)", self.service_id, self.interval)

    async def _renew_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                found = await self.registry.heartbeat(self.service_id, liveness_ttl=self.ttl)
            except NotConnectedError:
                return
            except CALL_FAILURES as exc:
                if not failing:
                    log.warning("keepalive of %s: renewal failed: %s", self.service_id, exc)
                failing = True
                continue
            if failing:
                log.info("keepalive of %s: renewal restored", self.service_id)
                failing = False
            if not found:
                self._remote_shutdown()
                return

    def _remote_shutdown(self) -> None:
        if self.shutdown.is_set():
            return
        log.warning(
            "service %s was deregistered from outside: requesting shutdown", self.service_id
        )
        self.shutdown.set()
        if self.on_shutdown is None:
            return
        try:
            result = self.on_shutdown()
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callbacks.add(task)
                task.add_done_callback(self._callback_done)
        except Exception:
            log.exception("keepalive of %s: on_shutdown failed", self.service_id)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callbacks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "keepalive of %s: on_shutdown failed", self.service_id, exc_info=task.exception()
            )

    async def wait_shutdown(self) -> None:
        """Return when the registration has been removed from outside."""
        await self.shutdown.wait()

    async def update(
        self,
        *,
        status: ServiceStatus | str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Change the status and/or merge metadata (also a heartbeat).

        Returns ``False``, and requests shutdown, when the registration was
        removed from outside.
        """
        value = self.info.status if status is None else status
        ok = await self.registry.update_health(self.service_id, value, metadata)
        if ok:
            self.info.status = ServiceStatus(value).value
            if metadata:
                self.info.metadata.update(metadata)
        elif self._started and not self._stopped:
            self._remote_shutdown()
        return ok

    async def set_partitions(self, partitions: Iterable[int]) -> bool:
        """Record the partitions a consumer owns now in its ``partitions`` metadata."""
        return await self.update(metadata={"partitions": sorted(int(p) for p in partitions)})

    async def stop(self, *, deregister: bool = True) -> None:
        """Stop renewing and deregister the service (idempotent; never raises on Redis errors)."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if not (self._started and deregister):
            return
        try:
            await asyncio.shield(self.registry.deregister_service(self.service_id))
            log.info("keepalive of %s stopped; deregistered", self.service_id)
        except CALL_FAILURES as exc:
            log.warning("keepalive of %s: could not deregister: %s", self.service_id, exc)

    async def __aenter__(self) -> Keepalive:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


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
            except CALL_FAILURES as exc:
                if not failing:
                    log.warning("health monitor: check failed: %s", exc)
                failing = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

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
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
