"""Argument checks shared by the components; each error names the argument and what it takes."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError

__all__ = ["check_number", "finite_number"]


def check_number(value: Any, argument: str, *, minimum: float, integer: bool = False) -> None:
    """A number (an integer with ``integer=True``), not a bool, at least ``minimum``."""
    kinds: tuple[type[int] | type[float], ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{argument} must be {kind} >= {minimum}, got {value!r}")


def finite_number(value: Any, argument: str) -> float:
    """A finite real number (not a bool), as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{argument} must be a finite number, got {value!r}")
    return float(value)
