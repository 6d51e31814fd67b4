"""Idempotency keys: the check of a key, and what a repeated ``submit`` returns.

A key's marker (``once:K``, see :mod:`redisaq_core.keys`) holds the first call's entry id,
followed by its job id for a ``submit`` (``enqueue_once.lua``, ``submit.lua``, ``delay.lua``).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigurationError
from .keys import utf8

__all__ = ["MAX_IDEMPOTENCY_KEY", "check_once", "first_job"]

MAX_IDEMPOTENCY_KEY = 256
"""Bytes of an idempotency key, UTF-8 encoded."""


def check_once(value: Any) -> str:
    """``value`` as an idempotency key; ``ConfigurationError`` naming what is wrong."""
    if isinstance(value, str):
        utf8(value, "idempotency_key")
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_IDEMPOTENCY_KEY:
        shown = repr(value) if not isinstance(value, str) else f"{value[:40]!r}"
        size = f" ({len(value.encode())} bytes)" if isinstance(value, str) and value else ""
        raise ConfigurationError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            f"bytes, got {shown}{size}"
        )
    return value


def first_job(job: str, once: str | None) -> str:
    """The job id a ``submit`` got, or for a repeat its first call's; raises if that was none."""
    if not job:
        raise ConfigurationError(
            f"idempotency key {once!r} was first used by a plain enqueue, not a submit: "
            "it has no job to return"
        )
    return job
