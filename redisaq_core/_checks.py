"""Argument checks shared by the components; each error names the argument and what it takes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ConfigurationError

__all__ = ["Due", "due_time", "integer", "number", "payload_list"]


def _bounds(minimum: float | None, above: float | None, maximum: float | None) -> str:
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if above is not None:
        parts.append(f"> {above:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " " + " and ".join(parts) if parts else ""


def number(
    value: Any,
    argument: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    seconds: bool = False,
) -> float:
    """A finite real number (not a bool) within the bounds given, as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        unit = " of seconds" if seconds else ""
        raise ConfigurationError(f"{argument} must be a finite number{unit}, got {_short(value)}")
    if (
        (minimum is not None and value < minimum)
        or (above is not None and value <= above)
        or (maximum is not None and value > maximum)
    ):
        raise ConfigurationError(
            f"{argument} must be{_bounds(minimum, above, maximum)}, got {_short(value)}"
        )
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past any float
        return False


def _short(value: Any) -> str:
    shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a larger int"
    return shown if len(shown) <= 80 else shown[:77] + "..."


def integer(value: Any, argument: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer (not a bool) from ``minimum`` to ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        raise ConfigurationError(
            f"{argument} must be an integer{_bounds(minimum, None, maximum)}, got {value!r}"
        )
    return value


def payload_list(value: Any) -> Iterable[Any]:
    """``value`` as the payloads of a batch: a str, bytes or mapping is one payload, refused."""
    if isinstance(value, (str, bytes, bytearray, memoryview, Mapping)) or not isinstance(
        value, Iterable
    ):
        raise ConfigurationError(
            f"payloads must be an iterable of payloads (a list, say), got a "
            f"{type(value).__name__}; enqueue() takes a single payload"
        )
    return value


Due = tuple[str, int]
"""When a delayed entry is due: ``("in", ms from the server's now)`` or ``("at", Unix ms)``."""

_LONGEST_DELAY = 10 * 366 * 86_400.0
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def due_time(delay: Any, at: Any) -> Due | None:
    """The due time of ``delay=`` (seconds) or ``at=`` (an aware datetime); ``None`` for neither.

    Both given, a delay that is negative, NaN, infinite or over ten years, or an ``at``
    that is no timezone-aware ``datetime`` raise ``ConfigurationError``.
    """
    if delay is None and at is None:
        return None
    if delay is not None and at is not None:
        raise ConfigurationError(f"give delay or at, not both (got delay={delay!r}, at={at!r})")
    if delay is not None:
        seconds = number(delay, "delay", minimum=0, maximum=_LONGEST_DELAY, seconds=True)
        return "in", math.ceil(seconds * 1000)
    if not isinstance(at, datetime):
        raise ConfigurationError(f"at must be a timezone-aware datetime, got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ConfigurationError(
            f"at must be timezone-aware (e.g. datetime.now(timezone.utc)), got naive {at!r}"
        )
    return "at", math.ceil((at - _EPOCH) / timedelta(milliseconds=1))
