"""Retry delays: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(
    attempt: int, base: float, cap: float, rand: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    The delay is drawn uniformly from ``[d/2, d]`` with ``d = min(cap, base * 2**(attempt-1))``,
    so retries of many failing messages spread out instead of arriving together.
    """
    if attempt < 1 or base <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    r = (rand or random).random()
    return ceiling * (0.5 + 0.5 * r)
