"""Every error the library raises, under one base class.

The hierarchy::

    RedisaqError
    ├── ConfigurationError      an argument or setting is invalid
    │   └── PartitionKeyError   partition_key names a field the payload lacks
    ├── SerializationError      a payload can't be encoded or decoded
    ├── NotConnectedError       a component is used before connect() or after close()
    ├── AlreadyRunningError     a consumer or bridge is started while it runs
    ├── ConnectionFailedError   the Redis server can't be reached
    ├── ServerOutOfMemoryError  Redis refused a write: it is at its maxmemory
    ├── PartitionError          a partition count change that isn't allowed
    ├── ConsumerError
    │   └── DuplicateConsumerError  another live member of the group has this name
    ├── JobError                a job's record or result can't be had
    │   ├── JobNotFoundError        no record under this job id (never written, or expired)
    │   ├── JobTimeoutError         waiting for a job to finish ran out of time
    │   ├── JobFailedError          the job is dead (retries exhausted); carries its error
    │   ├── JobCancelledError       the job was cancelled: it has no result
    │   ├── JobFinishedError        a finished job can't be cancelled
    │   └── InvalidProgressError    a progress value that is no number or small JSON object
    ├── RegistryError           a service registry operation failed
    │   ├── ServiceNotFoundError    no service is registered under this id
    │   └── MalformedServiceError   a stored service record can't be read
    ├── EmbeddedRedisError      an embedded redis-server can't be found or started
    └── GatewayError            the web gateway refused a request (bad token, invalid fields)
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunningError",
    "ConfigurationError",
    "ConnectionFailedError",
    "ConsumerError",
    "DuplicateConsumerError",
    "EmbeddedRedisError",
    "GatewayError",
    "InvalidProgressError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobFinishedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "MalformedServiceError",
    "NotConnectedError",
    "PartitionError",
    "PartitionKeyError",
    "RedisaqError",
    "RegistryError",
    "SerializationError",
    "ServerOutOfMemoryError",
    "ServiceNotFoundError",
]


class RedisaqError(Exception):
    """Base class of every error raised by redisaq-core."""


class ConfigurationError(RedisaqError, ValueError):
    """An argument or setting is invalid; the message names it and what it accepts."""


class PartitionKeyError(ConfigurationError):
    """``partition_key`` names a field that the payload does not have (or it is no mapping)."""


class SerializationError(RedisaqError, ValueError):
    """A payload could not be serialized, or stored data could not be decoded."""


class NotConnectedError(RedisaqError, RuntimeError):
    """A component was used before ``connect()`` or after ``close()``."""


class AlreadyRunningError(RedisaqError, RuntimeError):
    """A consumer's ``process()`` or a bridge's ``run()`` was called while it was running."""


class ConnectionFailedError(RedisaqError, ConnectionError):
    """The Redis server could not be reached; the message names the URL, never a password."""


class ServerOutOfMemoryError(RedisaqError):
    """Redis refused a write because it is at its ``maxmemory`` (its OOM reply).

    The message says what was not written. Free memory (trim, consume, raise
    ``maxmemory``) and call again.
    """


class PartitionError(RedisaqError, ValueError):
    """A partition count change that is not allowed (partitions are never removed)."""


class ConsumerError(RedisaqError):
    """A consumer could not join or keep its place in its group."""


class DuplicateConsumerError(ConsumerError):
    """Another live member of the same group already uses this consumer name."""


class JobError(RedisaqError):
    """A job's record or result could not be had."""


class JobNotFoundError(JobError, LookupError):
    """No record exists under the job id: it was never written, or it expired after result_ttl."""


class JobTimeoutError(JobError, TimeoutError):
    """Waiting for a job (or jobs) to finish took longer than the timeout."""


class JobFailedError(JobError):
    """The job is dead: every attempt failed. ``error`` and ``error_type`` are its last failure.

    ``job_id`` names the job and ``record`` is its
    :class:`~redisaq_core.results.JobRecord` when one was read.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        error: str = "",
        error_type: str = "",
        record: object = None,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.error = error
        self.error_type = error_type
        self.record = record


class JobCancelledError(JobError):
    """The job was cancelled (``redisaq jobs cancel``, ``JobHandle.cancel``): it has no result."""

    def __init__(self, message: str, *, job_id: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFinishedError(JobError):
    """The job already finished (``completed``, ``dead`` or ``cancelled``): it can't be cancelled.

    ``status`` is the status it finished with.
    """

    def __init__(self, message: str, *, job_id: str = "", status: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class InvalidProgressError(JobError, ValueError):
    """A progress value that is not a finite number or a small JSON object; nothing was stored."""


class RegistryError(RedisaqError):
    """A service registry operation failed."""


class ServiceNotFoundError(RegistryError, LookupError):
    """No service is registered under the given id; the message names it."""


class MalformedServiceError(RegistryError, ValueError):
    """A stored service record is malformed (junk written into it); the message names the id."""


class EmbeddedRedisError(RedisaqError, RuntimeError):
    """An embedded redis-server could not be found, started or stopped."""


class GatewayError(RedisaqError):
    """The web gateway refused a request (a wrong token, invalid fields); the message says why."""
