"""What the registry stores: service records, statuses, and their checks."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from .._checks import integer, number
from .._codec import as_str
from ..errors import (
    ConfigurationError,
    MalformedServiceError,
)

if TYPE_CHECKING:  # health imports this module; the registry builds its objects lazily
    pass


__all__ = [
    "RegistrySnapshot",
    "ServiceInfo",
    "ServiceRecord",
    "ServiceStatus",
    "ShutdownCallback",
    "WorkerStatus",
]


_BAD_TOKEN = re.compile(r"[\s\x00-\x1f\x7f]")


_REQUIRED = ("host", "port", "service_type", "status", "last_seen")


ShutdownCallback = Callable[[], "Awaitable[Any] | None"]
"""``on_shutdown`` of a keepalive: a plain function or a coroutine function, no arguments."""


class ServiceStatus(str, Enum):
    """Health status a service reports about itself."""

    HEALTHY = "healthy"
    """The service is healthy and operational."""
    UNHEALTHY = "unhealthy"
    """The service is experiencing issues."""
    STARTING = "starting"
    """The service is starting up."""
    STOPPING = "stopping"
    """The service is shutting down."""
    UNKNOWN = "unknown"
    """The status is unknown."""

    def __str__(self) -> str:
        return self.value


class WorkerStatus(str, Enum):
    """Liveness of a worker as judged by a :class:`~redisaq_core.registry.HealthMonitor`."""

    REGISTERED = "registered"
    """Registered, no heartbeat since."""
    CONNECTED = "connected"
    """A keepalive session holds the service's liveness key; no heartbeat since registering."""
    ALIVE = "alive"
    """Heartbeats arrive within the monitor's timeout."""
    NOT_RESPONDING = "not_responding"
    """No heartbeat for longer than the monitor's timeout."""
    DISCONNECTED = "disconnected"
    """No heartbeat for longer than the disconnect timeout, or the record was removed."""

    def __str__(self) -> str:
        return self.value


def _check_token(value: object, argument: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{argument} must be a non-empty string, got {value!r}")
    if _BAD_TOKEN.search(value):
        raise ConfigurationError(
            f"{argument} must not contain whitespace or control characters, got {value!r}"
        )
    return value


def _status_value(value: object, argument: str = "status") -> str:
    """The string value of a :class:`ServiceStatus` given as the enum or its value."""
    try:
        return ServiceStatus(value).value
    except ValueError:
        allowed = ", ".join(s.value for s in ServiceStatus)
        raise ConfigurationError(f"{argument} must be one of {allowed}; got {value!r}") from None


def _encode_metadata(metadata: Mapping[str, Any], argument: str = "metadata") -> str:
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ConfigurationError(f"{argument} must be a dict with string keys, got {metadata!r}")
    try:
        return json.dumps(
            dict(metadata), sort_keys=True, separators=(",", ":"), allow_nan=False,
            ensure_ascii=False,
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{argument} must be JSON-serializable: {exc}") from None


@dataclass
class ServiceInfo:
    """One service's registration: where it is, what it is, how it is doing.

    ``status`` is a :class:`ServiceStatus` value (the enum or its string, kept
    as the string). ``last_seen`` is the server time (Unix seconds) of the last
    registration, heartbeat or health update; it is set by the registry and
    ignored when registering. ``metadata`` is any JSON object.
    """

    service_id: str
    host: str
    port: int
    service_type: str
    status: str = ServiceStatus.HEALTHY.value
    last_seen: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (normalizing ``status`` and ``metadata``); ``ConfigurationError``."""
        _check_token(self.service_id, "service_id")
        _check_token(self.host, "host")
        integer(self.port, "port", minimum=0, maximum=65535)
        _check_token(self.service_type, "service_type")
        self.status = _status_value(self.status)
        if self.last_seen is not None:
            if isinstance(self.last_seen, bool) or not isinstance(self.last_seen, (int, float)):
                raise ConfigurationError(f"last_seen must be a number, got {self.last_seen!r}")
            self.last_seen = float(self.last_seen)
        if self.metadata is None:  # accepted, as older callers pass None
            self.metadata = {}
        _encode_metadata(self.metadata)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {
            "service_id": self.service_id,
            "host": self.host,
            "port": self.port,
            "service_type": self.service_type,
            "status": self.status,
            "last_seen": self.last_seen,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceInfo:
        """Build from a dict such as :meth:`as_dict` returns (unknown keys are ignored)."""
        names = ("service_id", "host", "port", "service_type", "status", "last_seen", "metadata")
        return cls(**{k: data[k] for k in names if k in data})


@dataclass(frozen=True)
class ServiceRecord:
    """A stored service with what the registry keeps beside its :class:`ServiceInfo`."""

    info: ServiceInfo
    registered_at: float
    """Server time of the registration (``last_seen`` equals it until the first heartbeat)."""
    alive: bool
    """Whether a keepalive session's liveness key exists for the service."""


@dataclass(frozen=True)
class RegistrySnapshot:
    """Services read in one consistent step, with the server's clock at that moment."""

    now: float
    records: list[ServiceRecord]
    malformed: list[str]
    """Ids whose records could not be read (they are logged and left out of ``records``)."""


def _parse_record(service_id: str, raw: Mapping[Any, Any]) -> tuple[ServiceInfo, float]:
    """``(info, registered_at)`` from a service hash; ``MalformedServiceError`` naming the id."""

    def bad(reason: str) -> MalformedServiceError:
        return MalformedServiceError(f"service {service_id!r} has a malformed record: {reason}")

    try:
        fields = {as_str(k): as_str(v) for k, v in raw.items()}
    except UnicodeDecodeError:
        raise bad("a field is not UTF-8 text") from None
    missing = [name for name in _REQUIRED if name not in fields]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    if fields.get("service_id", service_id) != service_id:
        raise bad(f"service_id field is {fields['service_id'][:60]!r}")
    try:
        port = int(fields["port"])
    except ValueError:
        raise bad(f"port is not an integer: {fields['port'][:60]!r}") from None
    try:
        last_seen = float(fields["last_seen"])
        if not math.isfinite(last_seen):
            raise ValueError
    except ValueError:
        raise bad(f"last_seen is not a number: {fields['last_seen'][:60]!r}") from None
    try:
        metadata = json.loads(fields.get("metadata") or "{}")
    except (ValueError, RecursionError):  # too deeply nested for the decoder too
        raise bad(f"metadata is not JSON: {fields['metadata'][:60]!r}") from None
    if not isinstance(metadata, dict):
        raise bad(f"metadata is not a JSON object: {fields['metadata'][:60]!r}")
    try:
        registered_at = float(fields.get("registered_at", last_seen))
    except ValueError:
        registered_at = last_seen
    try:
        info = ServiceInfo(
            service_id=service_id, host=fields["host"], port=port,
            service_type=fields["service_type"], status=fields["status"],
            last_seen=last_seen, metadata=metadata,
        )  # fmt: skip
    except ConfigurationError as exc:
        raise bad(str(exc)) from None
    return info, registered_at


def _ttl_ms(liveness_ttl: float | None) -> int:
    if liveness_ttl is None:
        return 0
    return max(1, math.ceil(number(liveness_ttl, "liveness_ttl", above=0, seconds=True) * 1000))


def _seen(value: Any) -> float | None:
    """A script's ``last_seen`` reply as a float, or ``None`` for "no record"."""
    if value is None or isinstance(value, int):
        return None
    return float(as_str(value))
