"""What a long-running loop does when Redis answers with an error.

Every loop of the library (a consumer's reads, heartbeats and
acknowledgements, the registry's keepalive, the health monitor, the fan-out
bridge) sorts a failed call into one of three outcomes, by
:func:`recovery_for`:

``Recovery.RECREATE``
    The stream or the consumer group it read is gone: NOGROUP, or Redis 7.0's
    ``UNBLOCKED the stream key no longer exists`` for a blocked read whose
    stream was deleted or flushed. Create the group again and carry on.
``Recovery.RETRY``
    The server can't serve the call now but will: the connection dropped, a
    cluster is failing over (CLUSTERDOWN, TRYAGAIN, MASTERDOWN), the node was
    demoted to a replica (READONLY, ``UNBLOCKED force unblock ... master ->
    replica``), it is loading its data, a script is busy, it is out of memory
    or can't persist (OOM, MISCONF). Back off and try again until a primary
    answers.
``Recovery.STOP``
    Anything else: no permission, a key of the wrong type, an unknown
    command. Retrying would spin; the loop stops with an error that names the
    reply.

docs/design.md has the table with the reasons.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from typing import Any

import redis.exceptions
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisaqError

__all__ = [
    "CALL_FAILURES",
    "CLUSTER_UNAVAILABLE",
    "REDIS_FAILURES",
    "UNREACHABLE",
    "Recovery",
    "foreign_type",
    "out_of_memory",
    "recovery_for",
    "unless_foreign",
]

# redis-py's "no node answers" (its base class also covers client-side usage errors).
_NO_NODE: type[Exception] = getattr(
    redis.exceptions, "RedisClusterUnreachableError", RedisClusterException
)

CLUSTER_UNAVAILABLE: tuple[type[Exception], ...] = (
    ClusterDownError,
    ClusterError,
    _NO_NODE,
    SlotNotCoveredError,
    TryAgainError,
)
"""What a cluster answers while a failover or a slot migration is under way.

CLUSTERDOWN (also MASTERDOWN) while a failed primary has not been replaced,
TRYAGAIN while a slot moves; ``SlotNotCoveredError`` is redis-py's for a slot
no reachable node serves, ``ClusterError`` ("TTL exhausted") its own for a call
redirected or answered TRYAGAIN more often than it follows (a slot whose keys
are still moving), ``RedisClusterUnreachableError`` its own when no node of the
cluster can be reached.
"""

UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ReadOnlyError,
    *CLUSTER_UNAVAILABLE,
)
"""Redis (one server or a cluster) cannot serve requests right now: retry later.

``ReadOnlyError`` is here because a primary demoted in a failover answers
READONLY to writes until clients reach the new primary.
"""

REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, OSError, *CLUSTER_UNAVAILABLE)
"""Any failed Redis call, including redis-py's cluster errors outside ``RedisError``."""

CALL_FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, RedisaqError)
"""A failed Redis call, or a library call that refused (malformed data, a closed component)."""


class Recovery(enum.Enum):
    """What a long-running loop does after a failed call (see the module's text)."""

    RECREATE = "recreate"
    RETRY = "retry"
    STOP = "stop"


_GONE = ("NOGROUP", "UNBLOCKED the stream key no longer exists")
_TRANSIENT = (
    "UNBLOCKED",  # force unblock: the instance changed state (demoted to a replica)
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "BUSY",
    "OOM",
    "MISCONF",
    "NOREPLICAS",
)


_MIGRATING = "Lua script attempted to access a non local key in a cluster node"
"""A script's reply for a key of a slot that moves away while the script runs (retried)."""


def recovery_for(exc: BaseException) -> Recovery:
    """Sort a failed Redis call into recreate, retry or stop."""
    if isinstance(exc, (*UNREACHABLE, OutOfMemoryError)):
        return Recovery.RETRY
    if isinstance(exc, ResponseError):
        text = _reply(str(exc))
        if text.startswith(_GONE):
            return Recovery.RECREATE
        if text.startswith(_TRANSIENT) or _MIGRATING in text:
            return Recovery.RETRY
    return Recovery.STOP


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's OOM reply (also inside a pipeline or a script's error)."""
    if isinstance(exc, OutOfMemoryError):
        return True
    return isinstance(exc, ResponseError) and _reply(str(exc)).startswith("OOM")


def foreign_type(exc: BaseException) -> bool:
    """Whether ``exc`` is WRONGTYPE: another client made the key of another type."""
    return isinstance(exc, ResponseError) and _reply(str(exc)).startswith("WRONGTYPE")


async def unless_foreign(reply: Awaitable[Any]) -> Any:
    """``reply``, or ``None`` where another client made the key of another type."""
    try:
        return await reply
    except ResponseError as exc:
        if foreign_type(exc):
            return None
        raise


def _reply(text: str) -> str:
    """The server's reply inside redis-py's pipeline wrapper or a Lua error, code first."""
    _, found, rest = text.partition(" of pipeline caused error: ")
    if found:
        text = rest
    # A redis.call() error inside a script: "ERR Error running script ... -NOGROUP ..."
    for marker in (": -", " -"):
        head, found, rest = text.rpartition(marker)
        if found and "script" in head and rest.startswith((*_GONE, *_TRANSIENT)):
            return rest
    return text
