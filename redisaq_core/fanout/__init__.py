"""Fan-out: every message of a source to every target, exactly once.

:class:`FanOut` copies one topic to several topics; :class:`ListFanOut` one
Redis list to several lists.

:mod:`redisaq_core.fanout._streams` has the stream bridge and its exactly-once
argument, :mod:`redisaq_core.fanout._writer` its write side, and
:mod:`redisaq_core.fanout._lists` the list mode.
"""

from __future__ import annotations

from ._lists import ListFanOut, ListFanOutStats
from ._streams import FANOUT_SERVICE_TYPE, FanOut, Transform
from ._writer import FanOutStats

__all__ = [
    "FANOUT_SERVICE_TYPE",
    "FanOut",
    "FanOutStats",
    "ListFanOut",
    "ListFanOutStats",
    "Transform",
]
