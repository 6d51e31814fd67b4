"""Prometheus text exposition (format 0.0.4) of :func:`~redisaq_core.metrics.topic_metrics`.

Plain text, no dependency: ``redisaq monitor serve-metrics`` serves it, and a
web gateway can serve :func:`render_prometheus` the same way. Families, by
their labels:

* ``topic``: ``redisaq_topic_partitions``;
* ``topic, partition``: ``redisaq_stream_length``, ``redisaq_dead_letters``,
  ``redisaq_messages_produced_total``, ``redisaq_stream_over_maxlen``,
  ``redisaq_messages_scheduled``;
* ``topic, group``: ``redisaq_group_members``;
* ``topic, group, partition``:
  ``redisaq_messages_{handled,failed,retried,dead_lettered,timed_out,trimmed}_total``
  (counters), ``redisaq_messages_{pending,lag,in_flight}`` (gauges), the
  histograms ``redisaq_handler_duration_seconds`` and
  ``redisaq_end_to_end_duration_seconds`` (``_bucket``, ``_sum``, ``_count``)
  with their ``redisaq_handler_duration_max_seconds`` and
  ``redisaq_end_to_end_duration_max_seconds`` gauges, and
  ``redisaq_partition_owner_info`` (value 1, label ``owner``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ._recorder import COUNTERS

__all__ = ["CONTENT_TYPE", "render_prometheus"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The HTTP ``Content-Type`` of :func:`render_prometheus`'s output."""

_FAMILIES: dict[str, tuple[str, str]] = {
    "redisaq_topic_partitions": ("gauge", "Partitions of the topic."),
    "redisaq_stream_length": ("gauge", "Entries in the partition's streams (all priorities)."),
    "redisaq_dead_letters": ("gauge", "Entries in the partition's dead-letter stream."),
    "redisaq_stream_over_maxlen": (
        "gauge",
        "Entries a trim='acked' partition keeps past maxlen because a group has not acked them.",
    ),
    "redisaq_messages_produced_total": ("counter", "Messages added to the partition."),
    "redisaq_messages_scheduled": ("gauge", "Delayed messages waiting to be due (all priorities)."),
    "redisaq_group_members": ("gauge", "Members in the consumer group's membership set."),
    "redisaq_messages_handled_total": ("counter", "Handler calls that returned."),
    "redisaq_messages_failed_total": ("counter", "Handler calls that raised or timed out."),
    "redisaq_messages_retried_total": (
        "counter",
        "Failed messages scheduled for another delivery.",
    ),
    "redisaq_messages_dead_lettered_total": (
        "counter",
        "Messages moved to the dead-letter stream.",
    ),
    "redisaq_messages_timed_out_total": (
        "counter",
        "Handler calls cancelled at the message's timeout.",
    ),
    "redisaq_messages_trimmed_total": (
        "counter",
        "Pending entries found trimmed from the stream before being handled.",
    ),
    "redisaq_messages_pending": (
        "gauge",
        "Entries delivered to the group and not yet acknowledged.",
    ),
    "redisaq_messages_lag": ("gauge", "Entries not yet delivered to the group."),
    "redisaq_messages_in_flight": ("gauge", "Messages whose handler is running."),
    "redisaq_partition_owner_info": ("gauge", "The group member that owns the partition."),
    "redisaq_handler_duration_seconds": ("histogram", "Handler duration of handled messages."),
    "redisaq_handler_duration_max_seconds": ("gauge", "Longest handler duration seen."),
    "redisaq_end_to_end_duration_seconds": (
        "histogram",
        "Time from enqueue to the end of a successful handler call.",
    ),
    "redisaq_end_to_end_duration_max_seconds": ("gauge", "Longest end-to-end time seen."),
}
_HISTOGRAMS = {
    "handler_seconds": "redisaq_handler_duration",
    "end_to_end_seconds": "redisaq_end_to_end_duration",
}


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = {}

    def add(self, family: str, labels: Mapping[str, Any], value: Any, suffix: str = "") -> None:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        line = f"{family}{suffix}{{{text}}} {_number(value)}"
        self.samples.setdefault(family, []).append(line)

    def text(self) -> str:
        lines = []
        for family, (kind, help_text) in _FAMILIES.items():
            samples = self.samples.get(family)
            if samples:
                lines += [f"# HELP {family} {help_text}", f"# TYPE {family} {kind}", *samples]
        return "".join(line + "\n" for line in lines)


def render_prometheus(view: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> str:
    """The exposition of one :func:`~redisaq_core.metrics.topic_metrics` view, or of several."""
    views = [view] if isinstance(view, Mapping) else list(view)
    out = _Exposition()
    for v in views:
        topic = v["topic"]
        out.add("redisaq_topic_partitions", {"topic": topic}, v["partitions"])
        for s in v["partition_stats"]:
            labels = {"topic": topic, "partition": s["partition"]}
            out.add("redisaq_stream_length", labels, s["length"])
            out.add("redisaq_dead_letters", labels, s["dead_letters"])
            out.add("redisaq_messages_produced_total", labels, s["produced"])
            out.add("redisaq_stream_over_maxlen", labels, s.get("over_maxlen", 0))
            out.add("redisaq_messages_scheduled", labels, s.get("scheduled", 0))
        for g in v["groups"]:
            group = g["group"]
            out.add("redisaq_group_members", {"topic": topic, "group": group}, len(g["members"]))
            for row in g["partitions"]:
                labels = {"topic": topic, "group": group, "partition": row["partition"]}
                for name in COUNTERS:
                    out.add(f"redisaq_messages_{name}_total", labels, row[name])
                for name in ("pending", "lag", "in_flight"):
                    out.add(f"redisaq_messages_{name}", labels, row[name])
                if row["owner"] is not None:
                    out.add("redisaq_partition_owner_info", {**labels, "owner": row["owner"]}, 1)
                for key, base in _HISTOGRAMS.items():
                    h = row[key]
                    family = f"{base}_seconds"
                    for bound, n in h["buckets"]:
                        out.add(family, {**labels, "le": bound}, n, "_bucket")
                    out.add(family, labels, h["sum"], "_sum")
                    out.add(family, labels, h["count"], "_count")
                    out.add(f"{base}_max_seconds", labels, h["max"])
    return out.text()
