"""Metrics: counted in memory on the hot path, kept in Redis, read back as one view.

:class:`MetricsRecorder` counts in plain dicts (a few dict operations per
call) and adds its counts to the topic's metrics hash once per
``flush_interval`` with one script call (one round trip, applied atomically).
:func:`topic_metrics` reads that hash together with the live figures of the
streams (length, pending, lag, dead letters, owners), so that any process can
see the whole system; :func:`redisaq_core.metrics.prometheus.render_prometheus`
turns such views into the Prometheus text format.

Layout of the hash ``TopicKeys(topic).metrics``. Field names are tokens
separated by single spaces (topic, group and consumer names never contain
whitespace); ``P`` is a partition number, ``G`` a group name::

    "P produced"                       messages added to partition P (by producers)
    "P G handled"                      handler calls that returned
    "P G failed"                       handler calls that raised (or timed out)
    "P G retried"                      failed messages scheduled for another delivery
    "P G dead_lettered"                messages moved to the dead-letter stream
    "P G timed_out"                    handler calls cancelled at the message's timeout
    "P G trimmed"                      pending entries found trimmed from the stream
    "P G handler_seconds count|sum|max"     handler duration of handled messages
    "P G handler_seconds le=B"              how many of them took <= B seconds and more
                                            than the next smaller bound ("le=+Inf": the rest)
    "P G end_to_end_seconds ..."       the same for enqueue-to-handled time
    "P G in_flight C"                  gauge of consumer C: "<n> <server ms> <interval ms>"

Bucket fields hold per-bucket (not cumulative) counts; readers add them up.
In-flight gauges are per consumer and carry the server time of their last
write and the writer's flush interval: a reader counts a gauge only while it
is fresh (written within three intervals plus two seconds), so the in-flight
count of a consumer that died does not stay in the sum. A recorder rewrites
its non-zero gauges on every flush and deletes them when it stops; gauges
stale for more than an hour are deleted by :func:`topic_metrics`.

Lag (entries of a partition not yet delivered to a group) comes from
``XINFO GROUPS`` on Redis 7 and later. Redis 6.2 has no such figure, so it is
counted by a script that walks the entries after the group's
last-delivered-id, at most :data:`LAG_SCAN_LIMIT` of them: a larger lag is
exact only when none of the stream was delivered yet (then it is the stream
length); otherwise the view reports :data:`LAG_SCAN_LIMIT` with ``lag_exact``
false, a lower bound.

The last 15 minutes of each topic (produced and handled per second, lag,
handler time p50/p99) are kept in a second hash, ``TopicKeys(topic).series``,
a ring of 5-second buckets written by the same flush: :func:`topic_series`
reads it (the layout is in :mod:`redisaq_core.metrics._series`).
"""

from __future__ import annotations

from ._otel import read_views_with
from ._reader import LAG_SCAN_LIMIT, topic_metrics
from ._recorder import COUNTERS, DEFAULT_BUCKETS, HISTOGRAMS, MetricsRecorder, bucket_label
from ._series import STEP as SERIES_STEP
from ._series import WINDOW as SERIES_WINDOW
from ._series import record_lag, topic_series

read_views_with(topic_metrics)  # the OpenTelemetry gauges (_otel can't import the reader)

__all__ = [
    "COUNTERS",
    "DEFAULT_BUCKETS",
    "HISTOGRAMS",
    "LAG_SCAN_LIMIT",
    "SERIES_STEP",
    "SERIES_WINDOW",
    "MetricsRecorder",
    "bucket_label",
    "record_lag",
    "topic_metrics",
    "topic_series",
]
