"""What code written for redisaq 0.1.5 passes and calls, kept working.

The README's "Coming from redisaq" section lists it. Each spelling that has a
better one here warns with a ``DeprecationWarning`` naming it.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

from .keys import partition_count

if TYPE_CHECKING:
    from .connection import AnyRedis
    from .keys import TopicKeys

__all__ = ["UNSET", "legacy_logger", "renamed", "stored_partitions", "zero_is_none"]

UNSET: Any = object()
"""Default of an argument that has an older spelling: tells "not given" from ``None``."""


def legacy_logger(
    component: str, debug: bool | None, logger: logging.Logger | None, default: logging.Logger
) -> logging.Logger:
    """The logger a component writes to; ``debug=True`` turns the package's on at DEBUG."""
    if debug is not None:
        warnings.warn(
            f"{component}(debug=...) is deprecated: set the level of the 'redisaq_core' logger",
            DeprecationWarning,
            stacklevel=3,
        )
        if debug:
            logging.getLogger("redisaq_core").setLevel(logging.DEBUG)
    return default if logger is None else logger


def renamed(old: str, new: str, value: Any, given: Any) -> Any:
    """``value`` of an argument passed under its old name ``old`` (with a warning)."""
    if value is UNSET:
        return given
    if given is not UNSET and given is not None:
        raise TypeError(f"pass {new}= or {old}=, not both")
    warnings.warn(f"{old}= is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    return value


def zero_is_none(value: Any) -> Any:
    """``None`` for the 0 and ``""`` that redisaq 0.1.5 passed to mean "none"."""
    if isinstance(value, bool):
        return value
    return None if value == 0 or value == "" else value


async def stored_partitions(redis: AnyRedis, keys: TopicKeys) -> int:
    """The partition count stored for a topic (redisaq 0.1.5's ``get_num_partitions``)."""
    return partition_count(await redis.hget(keys.meta, "partitions"))
