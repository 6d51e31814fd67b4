"""``ServiceRegistry``: services and their health, kept in Redis under a key prefix."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .._checks import integer, number
from .._codec import as_str, shown_text
from .._failures import unless_foreign
from .._scripts import (
    REGISTRY_CLEANUP,
    REGISTRY_CLEAR,
    REGISTRY_DEREGISTER,
    REGISTRY_HEARTBEAT,
    REGISTRY_MARK,
    REGISTRY_READ,
    REGISTRY_REGISTER,
    REGISTRY_UPDATE,
)
from ..connection import AnyRedis, RedisComponent
from ..errors import (
    ConfigurationError,
    MalformedServiceError,
    RegistryError,
    ServiceNotFoundError,
)
from ..keys import RegistryKeys

if TYPE_CHECKING:  # health imports this module; the registry builds its objects lazily
    from ._keepalive import Keepalive
from ._model import (
    RegistrySnapshot,
    ServiceInfo,
    ServiceRecord,
    ServiceStatus,
    ShutdownCallback,
    WorkerStatus,
    _check_token,
    _encode_metadata,
    _parse_record,
    _seen,
    _status_value,
    _ttl_ms,
)

__all__ = ["ServiceRegistry"]

log = logging.getLogger(__name__)


_MERGE_ATTEMPTS = 100


class ServiceRegistry(RedisComponent):
    """Registry of services and their health, kept in Redis under ``key_prefix``.

    Connect with ``redis=`` (a client shared with producers and consumers,
    never closed here), ``redis_url=``, or ``redis_host``,
    ``redis_port``, ``redis_db`` and ``redis_password`` (used only when neither
    of the first two is given). ``key_prefix`` isolates registries, e.g.
    ``"prod:"`` and ``"staging:"``; no method touches another prefix's keys.
    The registry connects on first use, or with ``connect()`` / ``async with``.
    """

    def __init__(
        self,
        *,
        redis_host: str = "localhost",
        redis_port: int = 6379,
        redis_db: int = 0,
        redis_password: str | None = None,
        key_prefix: str = "",
        redis_url: str | None = None,
        redis: AnyRedis | None = None,
    ) -> None:
        if redis is None and redis_url is None:
            _check_token(redis_host, "redis_host")
            integer(redis_port, "redis_port", maximum=65535)
            if isinstance(redis_db, bool) or not isinstance(redis_db, int) or redis_db < 0:
                raise ConfigurationError(f"redis_db must be an integer >= 0, got {redis_db!r}")
            if redis_password is not None and not isinstance(redis_password, str):
                raise ConfigurationError("redis_password must be a string or None")
            auth = f":{quote(redis_password, safe='')}@" if redis_password else ""
            host = f"[{redis_host}]" if ":" in redis_host else redis_host
            redis_url = f"redis://{auth}{host}:{redis_port}/{redis_db}"
        super().__init__(redis=redis, redis_url=redis_url)
        self.keys = RegistryKeys(key_prefix)
        self.key_prefix = key_prefix
        self._warned: set[str] = set()

    # ---- writes --------------------------------------------------------------------

    async def register_service(
        self, service_info: ServiceInfo, *, liveness_ttl: float | None = None
    ) -> bool:
        """Register a new service or replace an existing registration; returns ``True``.

        All fields are replaced (metadata too); ``last_seen`` is the server
        time. ``liveness_ttl`` (seconds) also sets the service's liveness key,
        which expires unless renewed by ``heartbeat(..., liveness_ttl=...)``;
        :class:`~redisaq_core.registry.Keepalive` does both.
        """
        await self._register(service_info, liveness_ttl)
        return True

    async def _register(self, info: ServiceInfo, liveness_ttl: float | None) -> str:
        """Register ``info``; return its ``registered_at`` as stored (``seconds.micros``)."""
        if not isinstance(info, ServiceInfo):
            raise ConfigurationError(f"service_info must be a ServiceInfo, got {info!r}")
        info.validate()  # fields may have been changed since construction
        redis = await self._ensure()
        k = self.keys
        seen = await REGISTRY_REGISTER(
            redis,
            [k.active, k.types, k.worker_status],
            [k.base, info.service_id, info.service_type, info.host, info.port,
             info.status, _encode_metadata(info.metadata), _ttl_ms(liveness_ttl)],
        )  # fmt: skip
        log.debug("registered service %s (%s) at %s", info.service_id, info.service_type, seen)
        return as_str(seen)

    async def deregister_service(self, service_id: str, *, registered_at: str = "") -> bool:
        """Remove a service and its index entries; ``False`` if it was not registered.

        ``registered_at`` (a :class:`~redisaq_core.registry.Keepalive`'s own): only that
        registration is removed, not a newer one of the same id.
        """
        _check_token(service_id, "service_id")
        redis = await self._ensure()
        k = self.keys
        found = await REGISTRY_DEREGISTER(
            redis, [k.active, k.types, k.worker_status], [k.base, service_id, registered_at]
        )
        if found:
            log.debug("deregistered service %s", service_id)
        return bool(found)

    async def update_health(
        self,
        service_id: str,
        status: ServiceStatus | str,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Set a service's status, merge ``metadata`` into its metadata, refresh ``last_seen``.

        The merge is shallow (top-level keys of ``metadata`` replace the stored
        ones) and atomic against concurrent updates. Returns ``False`` when the
        service is not registered.
        """
        _check_token(service_id, "service_id")
        value = _status_value(status)
        redis = await self._ensure()
        k = self.keys
        if metadata is None:
            result = await REGISTRY_UPDATE(
                redis, [k.active], [k.base, service_id, value, "", "", "0"]
            )
            return _seen(result) is not None
        _encode_metadata(metadata)
        for _ in range(_MERGE_ATTEMPTS):
            # A record another client replaced by another type reads as gone (the script too).
            current: bytes | str | None = await unless_foreign(
                redis.hget(k.service(service_id), "metadata")
            )
            merged = self._stored_metadata(service_id, current)
            merged.update(metadata)
            result = await REGISTRY_UPDATE(
                redis,
                [k.active],
                [k.base, service_id, value, current or b"", _encode_metadata(merged), "1"],
            )
            if result != -1:
                return _seen(result) is not None
        raise RegistryError(
            f"could not merge the metadata of service {service_id!r}: it kept changing"
        )

    @staticmethod
    def _stored_metadata(service_id: str, raw: bytes | str | None) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past the decoder's depth
            value = None
        if isinstance(value, dict):
            return value
        log.warning("service %s: stored metadata is not a JSON object; replacing it", service_id)
        return {}

    async def heartbeat(self, service_id: str, *, liveness_ttl: float | None = None) -> bool:
        """Set ``last_seen`` to the server time; ``False`` if the service is not registered.

        ``liveness_ttl`` (seconds) also renews the service's liveness key. A
        service without a record loses its liveness key.
        """
        return _seen(await self._beat(service_id, liveness_ttl, "")) is not None

    async def _beat(self, service_id: str, liveness_ttl: float | None, registered_at: str) -> Any:
        """The heartbeat script's reply: ``last_seen``; nil, the record removed; 0, lost.

        ``registered_at`` (a keepalive's own, or ""): nil, and nothing changed, when the
        record is a newer registration of the same id.
        """
        _check_token(service_id, "service_id")
        redis = await self._ensure()
        k = self.keys
        return await REGISTRY_HEARTBEAT(
            redis, [k.active, k.types], [k.base, service_id, _ttl_ms(liveness_ttl), registered_at]
        )

    async def cleanup_stale_services(self, timeout_seconds: float = 300) -> int:
        """Remove services without a heartbeat for over ``timeout_seconds``; return how many.

        One atomic step on the server: a service that heartbeats concurrently
        is either fresh when the cleanup runs or finds itself removed, never
        half-removed.
        """
        timeout = number(timeout_seconds, "timeout_seconds", minimum=0, seconds=True)
        redis = await self._ensure()
        k = self.keys
        removed = int(
            await REGISTRY_CLEANUP(
                redis, [k.active, k.types, k.worker_status], [k.base, repr(timeout)]
            )
        )
        if removed:
            log.info("removed %d stale service(s) from registry %r", removed, self.key_prefix)
        return removed

    async def clear_all(self) -> bool:
        """Delete every service and index of this ``key_prefix`` (only); returns ``True``."""
        redis = await self._ensure()
        k = self.keys
        n = await REGISTRY_CLEAR(redis, [k.active, k.types, k.worker_status], [k.base])
        log.info("cleared registry %r (%d service(s))", self.key_prefix, n)
        return True

    # ---- reads ---------------------------------------------------------------------

    async def get_service(self, service_id: str) -> ServiceInfo | None:
        """The service's record, or ``None`` if it is not registered.

        Raises :class:`~redisaq_core.errors.MalformedServiceError` naming the id
        when the stored record is malformed.
        """
        _check_token(service_id, "service_id")
        redis = await self._ensure()
        raw: dict[Any, Any] | None = await unless_foreign(
            redis.hgetall(self.keys.service(service_id))
        )  # a record another client replaced by another type reads as gone
        if not raw:
            return None
        return _parse_record(service_id, raw)[0]

    async def require_service(self, service_id: str) -> ServiceInfo:
        """Like :meth:`get_service`, but raises ``ServiceNotFoundError`` instead of ``None``."""
        info = await self.get_service(service_id)
        if info is None:
            raise ServiceNotFoundError(f"service {service_id!r} is not registered")
        return info

    async def snapshot(
        self, service_type: str | None = None, *, max_age: float | None = None
    ) -> RegistrySnapshot:
        """Every registered service (of one type, or seen within ``max_age`` s) in one read.

        Malformed records are logged (a warning the first time for each id)
        and listed by id in ``malformed``.
        """
        if service_type is not None:
            _check_token(service_type, "service_type")
        age = "" if max_age is None else repr(number(max_age, "max_age", minimum=0, seconds=True))
        redis = await self._ensure()
        k = self.keys
        index = k.active if service_type is None else k.service_type(service_type)
        reply = await REGISTRY_READ(redis, [k.active, index], [k.base, age])
        now = int(reply[0]) + int(reply[1]) / 1_000_000
        records: list[ServiceRecord] = []
        malformed: list[str] = []
        for i in range(2, len(reply), 4):
            try:
                service_id = as_str(reply[i])
            except UnicodeDecodeError:  # an id another client wrote: no service of ours
                malformed.append(shown_text(reply[i]))
                continue
            fields = reply[i + 3]
            raw = dict(zip(fields[::2], fields[1::2], strict=True))
            try:
                info, registered_at = _parse_record(service_id, raw)
            except MalformedServiceError as exc:
                malformed.append(service_id)
                if service_id in self._warned:
                    log.debug("skipping %s", exc)
                else:
                    self._warned.add(service_id)
                    log.warning("skipping %s", exc)
                continue
            if service_type is not None and info.service_type != service_type:
                continue
            records.append(ServiceRecord(info, registered_at, bool(reply[i + 2])))
        records.sort(key=lambda r: r.info.service_id)
        return RegistrySnapshot(now=now, records=records, malformed=sorted(malformed))

    async def list_services(
        self,
        service_type: str | None = None,
        status_filter: ServiceStatus | str | None = None,
    ) -> list[ServiceInfo]:
        """Registered services, optionally of one type and/or status, sorted by id.

        Malformed records are skipped with a warning.
        """
        wanted = None if status_filter is None else _status_value(status_filter, "status_filter")
        snap = await self.snapshot(service_type)
        return [r.info for r in snap.records if wanted is None or r.info.status == wanted]

    async def get_healthy_services(
        self, service_type: str | None = None, timeout_seconds: float = 30
    ) -> list[ServiceInfo]:
        """Services with status ``healthy`` and a heartbeat within ``timeout_seconds``."""
        timeout = number(timeout_seconds, "timeout_seconds", minimum=0, seconds=True)
        snap = await self.snapshot(service_type, max_age=timeout)
        return [r.info for r in snap.records if r.info.status == ServiceStatus.HEALTHY.value]

    async def get_service_count(self, service_type: str | None = None) -> int:
        """How many services are registered (of ``service_type``, if given).

        An index another client made of another type counts none.
        """
        redis = await self._ensure()
        if service_type is None:
            return int(await unless_foreign(redis.zcard(self.keys.active)) or 0)
        _check_token(service_type, "service_type")
        return int(await unless_foreign(redis.scard(self.keys.service_type(service_type))) or 0)

    async def get_service_types(self) -> list[str]:
        """The types that have at least one registered service, sorted.

        A member that is no UTF-8 (another client's: no type of a service) is skipped, and
        so is a key of another type in the index's place.
        """
        redis = await self._ensure()
        types: list[str] = []
        for member in await unless_foreign(redis.smembers(self.keys.types)) or ():
            try:
                types.append(as_str(member))
            except UnicodeDecodeError:
                log.debug("skipping type %s: no UTF-8", shown_text(member))
        return sorted(types)

    async def get_worker_statuses(self) -> dict[str, WorkerStatus]:
        """The worker status a :class:`~redisaq_core.registry.HealthMonitor` last stored, by id."""
        redis = await self._ensure()
        # a key of another type (another client's) holds none; the next write replaces it
        raw: dict[Any, Any] = await unless_foreign(redis.hgetall(self.keys.worker_status)) or {}
        out: dict[str, WorkerStatus] = {}
        for key, value in raw.items():
            try:
                out[as_str(key)] = WorkerStatus(as_str(value))
            except ValueError:
                log.warning("ignoring unknown worker status %r of %r", value, key)
        return out

    async def store_worker_statuses(self, statuses: Mapping[str, WorkerStatus | str]) -> int:
        """Store worker statuses of services that are still registered; return how many."""
        if not statuses:
            return 0
        args: list[str] = [self.keys.base]
        for service_id, status in statuses.items():
            args += [_check_token(service_id, "service_id"), WorkerStatus(status).value]
        redis = await self._ensure()
        return int(await REGISTRY_MARK(redis, [self.keys.worker_status], args))

    async def server_time(self) -> float:
        """The Redis server's clock (Unix seconds), the one ``last_seen`` is measured by."""
        redis = await self._ensure()
        sec, usec = await redis.time()
        return int(sec) + int(usec) / 1_000_000

    # ---- self-registration ---------------------------------------------------------

    def keepalive(
        self,
        service_info: ServiceInfo,
        *,
        interval: float = 10.0,
        ttl: float | None = None,
        on_shutdown: ShutdownCallback | None = None,
    ) -> Keepalive:
        """A :class:`~redisaq_core.registry.Keepalive` for ``service_info``; use ``async with``.

        It registers the service, renews it every ``interval`` seconds with a
        liveness key expiring after ``ttl`` (default three intervals), notices
        a remote deregistration within one interval (``shutdown`` event and
        ``on_shutdown``), and deregisters the service on exit.
        """
        from ._keepalive import Keepalive

        return Keepalive(self, service_info, interval=interval, ttl=ttl, on_shutdown=on_shutdown)

    async def register_consumer(
        self,
        *,
        topic: str,
        group: str,
        consumer_name: str,
        partitions: Iterable[int] = (),
        interval: float = 3.0,
        ttl: float | None = None,
        on_shutdown: ShutdownCallback | None = None,
    ) -> Keepalive:
        """Register a consumer (service type ``consumer``) and keep it alive; returns it started.

        The service id is ``topic/group/consumer_name``. Call
        :meth:`Keepalive.set_partitions` when the owned partitions change and
        :meth:`Keepalive.stop` when the consumer stops.
        """
        from ._keepalive import consumer_service_info

        info = consumer_service_info(
            topic=topic, group=group, consumer_name=consumer_name, partitions=partitions
        )
        ka = self.keepalive(info, interval=interval, ttl=ttl, on_shutdown=on_shutdown)
        await ka.start()
        return ka
