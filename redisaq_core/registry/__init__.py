"""Service registry with health tracking: registration, heartbeats, discovery, cleanup.

::

    async with ServiceRegistry(redis_url=url, key_prefix="prod:") as registry:
        await registry.register_service(
            ServiceInfo("vllm-node-001", "10.0.0.1", 8000, "inference", metadata={"gpu": "A100"})
        )
        await registry.heartbeat("vllm-node-001")
        nodes = await registry.get_healthy_services(service_type="inference")

Storage (key names in :class:`~redisaq_core.keys.RegistryKeys`): one hash per
service holding the fields of :class:`ServiceInfo` (``metadata`` as a JSON
string, plus ``registered_at``), a sorted set of the registered ids scored by
``last_seen``, one set of ids per service type and a set of the type names.
Every write that touches a record and its indexes is one Lua script, so the
indexes never disagree with the records, and every key of one registry shares
one hash tag, so the scripts run unchanged on Redis Cluster. Nothing is found
by ``SCAN`` or ``KEYS``.

Time is the Redis server's: ``last_seen`` is stamped inside the scripts with
``TIME``, and ages (``get_healthy_services``, ``cleanup_stale_services``) are
measured against the same clock, so hosts with skewed clocks agree.

A record that is not what this module writes (someone put junk into the hash)
is skipped with a warning by the listings and makes :meth:`ServiceRegistry.get_service`
raise :class:`~redisaq_core.errors.MalformedServiceError` naming the id.

Self-registration: ``async with registry.keepalive(info, interval=5):``
registers the service, renews it (a heartbeat plus an expiring liveness key)
every ``interval``, and deregisters it on exit. When the record is deleted from
outside (``redisaq registry deregister ID``), the keepalive notices at its next
renewal, sets :attr:`Keepalive.shutdown` and calls ``on_shutdown``, so the
owner can stop gracefully. Worker liveness tracking (``not_responding``,
``disconnected``) is :class:`~redisaq_core.registry.HealthMonitor`.

Keeping a service registered while it runs, and watching the liveness of services.

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

from ._health import ChangeCallback, HealthMonitor, StatusChange, classify
from ._keepalive import CONSUMER_SERVICE_TYPE, Keepalive, consumer_service_info
from ._model import (
    RegistrySnapshot,
    ServiceInfo,
    ServiceRecord,
    ServiceStatus,
    ShutdownCallback,
    WorkerStatus,
)
from ._registry import ServiceRegistry

__all__ = [
    "CONSUMER_SERVICE_TYPE",
    "ChangeCallback",
    "HealthMonitor",
    "Keepalive",
    "RegistrySnapshot",
    "ServiceInfo",
    "ServiceRecord",
    "ServiceRegistry",
    "ServiceStatus",
    "ShutdownCallback",
    "StatusChange",
    "WorkerStatus",
    "classify",
    "consumer_service_info",
]
