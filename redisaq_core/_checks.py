"""Argument checks shared by the components; each error names the argument and what it takes."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError

__all__ = ["integer", "number"]


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        unit = " of seconds" if seconds else ""
        raise ConfigurationError(f"{argument} must be a finite number{unit}, got {value!r}")
    if (
        (minimum is not None and value < minimum)
        or (above is not None and value <= above)
        or (maximum is not None and value > maximum)
    ):
        raise ConfigurationError(
            f"{argument} must be{_bounds(minimum, above, maximum)}, got {value!r}"
        )
    return float(value)


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
