"""redisaq-core: partitioned topics, consumer groups and dead letters on Redis Streams.

::

    async with Producer("orders", redis_url=url, init_partitions=6) as producer:
        await producer.enqueue({"order": 1, "user": "u1"}, partition_key="user")

    consumer = Consumer("orders", group_name="billing", redis_url=url)
    await consumer.process(handle)          # until `await consumer.stop()`
"""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ._assignment import partition_for_key
from .consumer import BatchCallback, Callback, Consumer, ConsumerStats, SingleCallback
from .dlq import DeadLetter, DeadLetters
from .embedded import EmbeddedCluster, EmbeddedRedis
from .errors import (
    AlreadyRunningError,
    ConfigurationError,
    ConnectionFailedError,
    ConsumerError,
    DuplicateConsumerError,
    EmbeddedRedisError,
    GatewayError,
    InvalidProgressError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobFinishedError,
    JobNotFoundError,
    JobTimeoutError,
    MalformedServiceError,
    NotConnectedError,
    PartitionError,
    PartitionKeyError,
    RedisaqError,
    RegistryError,
    SerializationError,
    ServerOutOfMemoryError,
    ServiceNotFoundError,
)
from .fanout import FanOut, FanOutStats, ListFanOut, ListFanOutStats
from .logs import JsonFormatter
from .message import Message, Received
from .monitor import Monitor
from .producer import Producer
from .registry import (
    HealthMonitor,
    Keepalive,
    ServiceInfo,
    ServiceRegistry,
    ServiceStatus,
    StatusChange,
    WorkerStatus,
)
from .results import JobHandle, JobRecord, JobStatus, ResultStore
from .schedule import Schedule, Scheduler
from .signals import install_signal_handlers

__all__ = [
    "AlreadyRunningError",
    "BatchCallback",
    "Callback",
    "ConfigurationError",
    "ConnectionFailedError",
    "Consumer",
    "ConsumerError",
    "ConsumerStats",
    "DeadLetter",
    "DeadLetters",
    "DuplicateConsumerError",
    "EmbeddedCluster",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "FanOut",
    "FanOutStats",
    "GatewayError",
    "HealthMonitor",
    "InvalidProgressError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobFinishedError",
    "JobHandle",
    "JobNotFoundError",
    "JobRecord",
    "JobStatus",
    "JobTimeoutError",
    "JsonFormatter",
    "Keepalive",
    "ListFanOut",
    "ListFanOutStats",
    "MalformedServiceError",
    "Message",
    "Monitor",
    "NotConnectedError",
    "PartitionError",
    "PartitionKeyError",
    "Producer",
    "Received",
    "RedisaqError",
    "RegistryError",
    "ResultStore",
    "Schedule",
    "Scheduler",
    "SerializationError",
    "ServerOutOfMemoryError",
    "ServiceInfo",
    "ServiceNotFoundError",
    "ServiceRegistry",
    "ServiceStatus",
    "SingleCallback",
    "StatusChange",
    "WorkerStatus",
    "__version__",
    "install_signal_handlers",
    "partition_for_key",
]

try:
    __version__ = version("redisaq-core")
except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
    __version__ = "0.0.0"


def __getattr__(name: str) -> Any:
    """``assign`` (the group protocol's assignment function) is internal now; it still imports."""
    if name == "assign":
        warnings.warn(
            "redisaq_core.assign is internal and will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        from ._assignment import assign

        return assign
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


logging.getLogger(__name__).addHandler(logging.NullHandler())
