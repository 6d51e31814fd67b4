"""A topic's last 15 minutes: a ring of 5-second buckets in Redis, read back as series.

Layout of the hash ``TopicKeys(topic).series`` (in the topic's hash tag, like
the metrics hash): a field per slot of the ring, ``"0"`` to ``"179"``, the
slot of a bucket being its number (Unix time of the server // :data:`STEP`)
modulo :data:`SLOTS`. Its value is one JSON record::

    {"t": 1733480000,                 # start of the bucket, Unix s (server clock)
     "p": 120,                        # messages produced in the bucket
     "g": {"G": {"h": 118,            # messages handled by group G
                 "b": {"0.005": 3,    # of them, handler took <= 0.005 s (and > the
                       "+Inf": 1},    #   next smaller bound), as the metrics hash
                 "l": 42}}}           # lag of G: the largest seen in the bucket

The metrics flush (``lua/metrics_flush.lua``) adds each recorder's counts to
the current bucket's record in the same script call as the metrics hash, and
starts the slot afresh when it still holds a bucket of an earlier turn of the
ring: the ring never holds more than :data:`SLOTS` records, and the key
expires one turn after the last write. Lag is not counted by recorders: it
is sampled by whoever reads the series through :meth:`Monitor.topic_series
<redisaq_core.monitor.Monitor.topic_series>` (every open dashboard, every
``redisaq monitor topic T --watch``) and written into the same record, so
every reader draws the same line; where nobody was looking it has gaps.

A record another client wrote that is not of this shape (not JSON, nested
past the decoder's depth, wrong types, a bucket start that is not its slot's,
larger than :data:`MAX_RECORD_BYTES`) is skipped by the reader and replaced by
the next flush that writes its slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._codec import shown_text
from .._scripts import Script
from ..connection import AnyRedis
from ..keys import TopicKeys

__all__ = [
    "MAX_RECORD_BYTES",
    "SLOTS",
    "STEP",
    "WINDOW",
    "lag_args",
    "quantile",
    "record_lag",
    "series_args",
    "topic_series",
]

log = logging.getLogger(__name__)

_FLUSH = Script("metrics_flush")

STEP = 5
"""Seconds per bucket of a topic's series."""
SLOTS = 180
"""Buckets in the ring (15 minutes)."""
WINDOW = STEP * SLOTS
"""Seconds of history kept."""
MAX_RECORD_BYTES = 65_536
"""A record larger than this is skipped (and replaced by the next write to its slot)."""


def _window() -> list[Any]:
    return ["w", STEP, SLOTS]


def series_args(ints: Mapping[str, int]) -> list[Any]:
    """The flush script's series ops for one flush's integer counts (``[]`` if none apply)."""
    produced = 0
    handled: dict[str, int] = {}
    buckets: dict[str, int] = {}
    for field, n in ints.items():
        tokens = field.split(" ")
        if len(tokens) == 2 and tokens[1] == "produced":
            produced += n
        elif len(tokens) == 3 and tokens[2] == "handled":
            handled[tokens[1]] = handled.get(tokens[1], 0) + n
        elif len(tokens) == 4 and tokens[2] == "handler_seconds" and tokens[3][:3] == "le=":
            key = f"{tokens[1]} {tokens[3][3:]}"
            buckets[key] = buckets.get(key, 0) + n
    if not (produced or handled or buckets):
        return []
    out = _window()
    if produced:
        out += ["p", "", produced]
    for group, n in handled.items():
        out += ["h", group, n]
    for key, n in buckets.items():
        out += ["b", key, n]
    return out


def lag_args(lags: Mapping[str, int]) -> list[Any]:
    """The flush script's ops recording each group's lag in the current bucket."""
    out = _window()
    for group, lag in lags.items():
        out += ["l", group, int(lag)]
    return out


async def record_lag(redis: AnyRedis, topic: str, lags: Mapping[str, int]) -> None:
    """Write the lag of each group (as seen now) into the topic's current bucket."""
    if lags:
        keys = TopicKeys(topic)
        await _FLUSH(redis, [keys.metrics, keys.series], [0, *lag_args(lags)])


def quantile(buckets: Iterable[tuple[float, int]], q: float) -> float | None:
    """The ``q`` quantile of a histogram, interpolated within its bucket as Prometheus does.

    ``buckets``: ``(upper bound, count in that bucket alone)``, any order,
    ``math.inf`` for the last. ``None`` when it holds no observation. A
    quantile in the ``+Inf`` bucket is the largest finite bound.
    """
    ordered = sorted(buckets)
    total = sum(n for _, n in ordered)
    if total <= 0:
        return None
    rank, seen, lower = q * total, 0, 0.0
    for bound, n in ordered:
        if n > 0 and seen + n >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * max(0.0, rank - seen) / n
        seen += n
        if not math.isinf(bound):
            lower = bound
    return lower


class _Record:
    """One bucket record, checked."""

    __slots__ = ("groups", "produced", "start")

    def __init__(self, raw: Any, slot: int) -> None:
        if len(raw) > MAX_RECORD_BYTES:
            raise ValueError("record too large")
        data = json.loads(raw)
        start = data["t"]
        if not isinstance(start, int) or start % STEP or (start // STEP) % SLOTS != slot:
            raise ValueError(f"bucket start {start!r} is not of slot {slot}")
        self.start = start
        self.produced = _count(data.get("p", 0))
        self.groups: dict[str, tuple[float, dict[float, float], float | None]] = {}
        groups = data.get("g", {})
        if not isinstance(groups, dict):
            raise ValueError("g is not an object")
        for name, g in groups.items():
            if not isinstance(g, dict) or not isinstance(g.get("b", {}), dict):
                raise ValueError(f"group {name!r} is not an object")
            hist = {_bound(k): _count(v) for k, v in g.get("b", {}).items()}
            lag = g.get("l")
            self.groups[name] = (_count(g.get("h", 0)), hist, None if lag is None else _count(lag))


def _count(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"not a count: {value!r}")
    if math.isinf(value):
        raise ValueError("infinite count")
    return float(value)


def _bound(label: str) -> float:
    bound = math.inf if label == "+Inf" else float(label)
    if not bound > 0:
        raise ValueError(f"not a bucket bound: {label!r}")
    return bound


async def topic_series(redis: AnyRedis, topic: str) -> dict[str, Any]:
    """The topic's series over the last :data:`WINDOW` seconds, oldest bucket first.

    Shape (rates in messages per second, times in Unix seconds of the server's clock)::

        {"topic", "time", "step", "window",
         "times": [start of each bucket],          # SLOTS of them, the last is the current one
         "produced": [rate],
         "groups": [{"group", "handled": [rate], "lag": [n or None],
                     "p50": [s or None], "p99": [s or None]}],
         "skipped": records that could not be read}

    Rates of the current bucket are over the part of it that has passed.
    ``lag`` is ``None`` where nobody sampled it, ``p50``/``p99`` (handler
    time) where nothing was handled. Two commands (``HGETALL``, ``TIME``),
    sent together.
    """
    raw, (sec, usec) = await asyncio.gather(redis.hgetall(TopicKeys(topic).series), redis.time())
    now = int(sec) + int(usec) / 1e6
    current = int(now) // STEP
    times = [(current - SLOTS + 1 + i) * STEP for i in range(SLOTS)]
    first = times[0]
    records: dict[int, _Record] = {}
    skipped = 0
    for field, value in raw.items():
        try:
            slot = int(shown_text(field))
            record = _Record(value, slot)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            log.debug("series of %s: skipping record %r: %s", topic, field, exc)
            skipped += 1
            continue
        if first <= record.start <= times[-1]:
            records[(record.start - first) // STEP] = record
    elapsed = max(1.0, now - times[-1])
    spans = [float(STEP)] * (SLOTS - 1) + [min(float(STEP), elapsed)]
    names = sorted({name for r in records.values() for name in r.groups})
    produced = [0.0] * SLOTS
    groups: dict[str, dict[str, list[Any]]] = {
        n: {"handled": [0.0] * SLOTS, "lag": [None] * SLOTS,
            "p50": [None] * SLOTS, "p99": [None] * SLOTS}
        for n in names
    }  # fmt: skip
    for i, record in records.items():
        produced[i] = record.produced / spans[i]
        for name, (handled, hist, lag) in record.groups.items():
            g = groups[name]
            g["handled"][i] = handled / spans[i]
            g["lag"][i] = None if lag is None else int(lag)
            pairs = [(b, int(n)) for b, n in hist.items()]
            g["p50"][i] = quantile(pairs, 0.5)
            g["p99"][i] = quantile(pairs, 0.99)
    return {
        "topic": topic,
        "time": now,
        "step": STEP,
        "window": WINDOW,
        "times": times,
        "produced": produced,
        "groups": [{"group": n, **groups[n]} for n in names],
        "skipped": skipped,
    }
