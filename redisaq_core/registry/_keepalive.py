"""Keeping a service registered while it runs: :class:`Keepalive`.

Also what a consumer registers as (:func:`consumer_service_info`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._checks import number
from .._failures import CALL_FAILURES
from .._tasks import cancel_and_wait
from ..errors import ConfigurationError, NotConnectedError, RegistryError
from ..keys import validate_name
from ._model import ServiceInfo, ServiceStatus, ShutdownCallback

if TYPE_CHECKING:  # the registry makes keepalives (ServiceRegistry.keepalive)
    from ._registry import ServiceRegistry

__all__ = ["CONSUMER_SERVICE_TYPE", "Keepalive", "consumer_service_info"]

log = logging.getLogger(__name__)


CONSUMER_SERVICE_TYPE = "consumer"
"""The service type consumers register themselves with."""


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
    Removed by a deregistration or such a ``DEL``, that is; a record lost with
    no trace of a removal (Redis restarted without its data, or a cleanup took
    the service for stale while it was cut off) is registered again.
    A newer registration of the same id (an instance that restarted while this
    one still ran) counts as a removal for this one, and this one's stop leaves
    the newer record alone.
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
        self._registered_at = ""  # of this one's registration, as stored

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
        # Renewed and removed only as this registration: a newer instance of the same id
        # (a restart that overlaps this one) replaces it, and this one then stops.
        self._registered_at = await self.registry._register(self.info, self.ttl)
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
                found = await self.registry._beat(self.service_id, self.ttl, self._registered_at)
                if found == 0:  # no trace left of a removal: the data was lost
                    log.warning(
                        "keepalive of %s: its record is gone (Redis lost its data, or a "
                        "cleanup took it for stale); registering again",
                        self.service_id,
                    )
                    self._registered_at = await self.registry._register(self.info, self.ttl)
                    found = self._registered_at
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
            await cancel_and_wait(task)
        if not (self._started and deregister):
            return
        try:
            await asyncio.shield(
                self.registry.deregister_service(self.service_id, registered_at=self._registered_at)
            )
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
