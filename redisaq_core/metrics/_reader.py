"""Reading a topic's metrics back: the hash together with the streams' live figures."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Any

from .._codec import shown_text
from .._failures import foreign_type
from .._scripts import Script, run_pipelined
from ..connection import AnyRedis
from ..keys import TopicKeys, partition_count, priority_levels
from ._recorder import (
    _GAUGE_FORGET_MS,
    _GAUGE_GRACE_MS,
    COUNTERS,
    DEFAULT_BUCKETS,
    HISTOGRAMS,
    bucket_label,
)

__all__ = ["LAG_SCAN_LIMIT", "STREAM_LAG", "topic_metrics"]

log = logging.getLogger(__name__)


STREAM_LAG = Script("stream_lag")


LAG_SCAN_LIMIT = 10_000
"""Most entries counted one by one to find a group's lag on Redis < 7."""


def _number(value: Any) -> float:
    """A stored number; what another client wrote that is no finite number reads as 0."""
    try:
        number = float(shown_text(value))
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _empty_histogram() -> dict[str, Any]:
    return {"count": 0, "sum": 0.0, "max": 0.0, "le": {}}


def _empty_partition(partition: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "partition": partition, "owner": None, "pending": 0, "lag": 0, "lag_exact": True,
        "in_flight": 0, "trimmed_unread": 0,
    }  # fmt: skip
    out.update(dict.fromkeys(COUNTERS, 0))
    out.update({name: _empty_histogram() for name in HISTOGRAMS})
    return out


def _merge_histogram(into: dict[str, Any], other: dict[str, Any]) -> None:
    into["count"] += other["count"]
    into["sum"] += other["sum"]
    into["max"] = max(into["max"], other["max"])
    for bound, n in other["le"].items():
        into["le"][bound] = into["le"].get(bound, 0) + n


def _finish_histogram(h: dict[str, Any]) -> dict[str, Any]:
    """Replace the per-bucket counts by cumulative ``buckets`` ``[[bound, count], ...]``."""
    per_bucket: dict[float, int] = {b: 0 for b in (*DEFAULT_BUCKETS, math.inf)}
    for bound, n in h.pop("le").items():
        per_bucket[bound] = per_bucket.get(bound, 0) + n
    total, buckets = 0, []
    for bound in sorted(per_bucket):
        total += per_bucket[bound]
        buckets.append([bucket_label(bound), total])
    h["buckets"] = buckets
    h["count"] = max(h["count"], total)
    return h


class _Metrics:
    """The metrics hash of a topic, parsed."""

    def __init__(self, raw: Mapping[Any, Any], now_ms: int) -> None:
        self.produced: dict[int, int] = {}
        self.groups: dict[str, dict[int, dict[str, Any]]] = {}
        self.gauges: dict[str, dict[int, dict[str, int]]] = {}
        self.forget: list[str] = []
        for key, value in raw.items():
            tokens = shown_text(key).split(" ")
            try:
                self._add(tokens, value, now_ms)
                if len(tokens) == 4 and tokens[2] == "in_flight":
                    written = int(shown_text(value).split(" ")[1])
                    if now_ms - written > _GAUGE_FORGET_MS:
                        self.forget.append(shown_text(key))
            except (ValueError, IndexError):
                log.debug("ignoring metrics field %r", key)

    def partition(self, group: str, partition: int) -> dict[str, Any]:
        parts = self.groups.setdefault(group, {})
        if partition not in parts:
            parts[partition] = _empty_partition(partition)
        return parts[partition]

    def _add(self, tokens: list[str], value: Any, now_ms: int) -> None:
        partition = int(tokens[0])
        if len(tokens) == 2 and tokens[1] == "produced":
            self.produced[partition] = int(_number(value))
            return
        group = tokens[1]
        if len(tokens) == 3 and tokens[2] in COUNTERS:
            self.partition(group, partition)[tokens[2]] = int(_number(value))
        elif len(tokens) == 4 and tokens[2] in HISTOGRAMS:
            h = self.partition(group, partition)[tokens[2]]
            part = tokens[3]
            if part.startswith("le="):
                bound = math.inf if part == "le=+Inf" else float(part[3:])
                h["le"][bound] = h["le"].get(bound, 0) + int(_number(value))
            elif part in ("count", "sum", "max"):
                h[part] = int(_number(value)) if part == "count" else _number(value)
        elif len(tokens) == 4 and tokens[2] == "in_flight":
            n, written, interval = (int(x) for x in shown_text(value).split(" "))
            if now_ms - written <= 3 * interval + _GAUGE_GRACE_MS:
                self.gauges.setdefault(group, {}).setdefault(partition, {})[tokens[3]] = n


def _summary_pending(value: Any) -> tuple[int, dict[str, int]]:
    if not isinstance(value, dict):
        return 0, {}
    consumers = {
        shown_text(c["name"]): int(c["pending"]) for c in value.get("consumers") or () if c
    }
    return int(value.get("pending") or 0), consumers


async def topic_metrics(redis: AnyRedis, topic: str) -> dict[str, Any]:
    """The whole view of one topic: stored counters and live figures, JSON-ready.

    Shape (times in Unix seconds of the server's clock)::

        {"topic", "time", "exists", "partitions", "priorities", "groups_count",
         "produced", "length", "dead_letters", "scheduled",  # topic totals
         "maxlen", "trim", "over_maxlen",                 # retention (Producer(maxlen, trim))
         "partition_stats": [{"partition", "produced", "length", "dead_letters",
                              "scheduled", "over_maxlen"}],
         "groups": [{"group",
                     "members": [{"name", "last_heartbeat", "age", "partitions",
                                  "pending", "in_flight"}],
                     "partitions": [{"partition", "owner", "pending", "lag", "lag_exact",
                                     "in_flight", "handled", "failed", "retried",
                                     "dead_lettered", "timed_out", "trimmed",
                                     "trimmed_unread", "handler_seconds",
                                     "end_to_end_seconds"}],
                     "totals": {the same figures summed over the partitions}}]}

    A histogram is ``{"count", "sum", "max", "buckets": [[bound, cumulative count],
    ..., ["+Inf", count]]}``. ``length``, ``pending`` and ``lag`` add up every
    priority level of a partition. ``exists`` is false for a topic with no
    metadata (all figures are then zero). Three pipelined round trips (two on
    Redis 7 when every lag is known). ``over_maxlen``: entries a ``trim="acked"``
    topic keeps past ``maxlen`` because a group has not acknowledged them.
    ``scheduled``: delayed entries not moved into their stream yet (every level).
    ``trimmed_unread``: entries trimmed before the group read them (from the
    stream's entries-added and the group's entries-read; on Redis 6.2, which
    keeps neither, only for a group that has read nothing, from the producers'
    count, else ``None``).
    """
    return await _TopicReader(redis, TopicKeys(topic)).read()


class _TopicReader:
    """The steps of :func:`topic_metrics`."""

    def __init__(self, redis: AnyRedis, keys: TopicKeys) -> None:
        self.redis = redis
        self.keys = keys
        self.now_ms = 0
        self.partitions = 0
        self.priorities = 1
        self.exists = False
        self.stored = _Metrics({}, 0)
        self.names: set[str] = set()
        self.streams: list[tuple[int, int]] = []
        self.infos: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        self.length: dict[int, int] = {}
        self.dlq: list[int] = []
        self.scheduled: dict[int, int] = {}
        self.maxlen: int | None = None
        self.trim = "maxlen"
        self.added: dict[tuple[int, int], tuple[int, int | None]] = {}
        self.members: dict[tuple[str, str], dict[str, Any]] = {}

    async def read(self) -> dict[str, Any]:
        await self._meta()
        await self._streams()
        groups = sorted(self.names)
        views = await self._groups(groups)
        stored = self.stored
        return {
            "topic": self.keys.topic,
            "time": self.now_ms / 1000.0,
            "exists": self.exists,
            "partitions": self.partitions,
            "priorities": self.priorities,
            "groups_count": len(groups),
            "produced": sum(stored.produced.values()),
            "length": sum(self.length.values()),
            "dead_letters": sum(self.dlq),
            "scheduled": sum(self.scheduled.values()),
            "maxlen": self.maxlen,
            "trim": self.trim,
            "over_maxlen": sum(self._over(p) for p in range(self.partitions)),
            "partition_stats": [
                {
                    "partition": p,
                    "produced": stored.produced.get(p, 0),
                    "length": self.length[p],
                    "dead_letters": self.dlq[p],
                    "scheduled": self.scheduled[p],
                    "over_maxlen": self._over(p),
                }
                for p in range(self.partitions)
            ],
            "groups": views,
        }

    def _over(self, partition: int) -> int:
        if self.maxlen is None or self.trim != "acked":
            return 0
        return max(0, self.length[partition] - self.maxlen * self.priorities)

    async def _meta(self) -> None:
        keys = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.meta)
        pipe.smembers(keys.groups)
        pipe.hgetall(keys.metrics)
        # TIME on its own: a cluster pipeline refuses commands without a key.
        replies, (sec, usec) = await asyncio.gather(
            pipe.execute(raise_on_error=False), self.redis.time()
        )
        # A key another client made of another type reads as empty.
        for reply in replies:
            if isinstance(reply, Exception) and not foreign_type(reply):
                raise reply
        meta, group_set, raw_metrics = (None if isinstance(r, Exception) else r for r in replies)
        meta, group_set, raw_metrics = meta or {}, group_set or set(), raw_metrics or {}
        self.now_ms = int(sec) * 1000 + int(usec) // 1000
        self.exists = bool(meta)
        self.partitions = partition_count(meta.get(b"partitions", 0))
        self.priorities = priority_levels(meta.get(b"priorities", 1))
        if b"maxlen" in meta:
            self.maxlen = int(_number(meta[b"maxlen"]))
            self.trim = shown_text(meta.get(b"trim", b"maxlen"))
        self.stored = _Metrics(raw_metrics, self.now_ms)
        self.names = {shown_text(g) for g in group_set} | set(self.stored.groups)
        self.names |= set(self.stored.gauges)

    async def _streams(self) -> None:
        keys = self.keys
        self.streams = [(p, lv) for p in range(self.partitions) for lv in range(self.priorities)]
        pipe = self.redis.pipeline(transaction=False)
        for p, level in self.streams:
            pipe.xlen(keys.stream(p, level))
            pipe.xinfo_groups(keys.stream(p, level))
        for p in range(self.partitions):
            pipe.xlen(keys.dead_letters(p))
        for p, level in self.streams:
            pipe.xinfo_stream(keys.stream(p, level))
        for p, level in self.streams:
            pipe.zcard(keys.delayed(p, level))
        results = await pipe.execute(raise_on_error=False)
        counted = results[len(results) - len(self.streams) :]
        results = results[: len(results) - len(self.streams)]
        self.scheduled = dict.fromkeys(range(self.partitions), 0)
        for (p, _), n in zip(self.streams, counted, strict=True):
            self.scheduled[p] += n if isinstance(n, int) else 0
        described = results[2 * len(self.streams) + self.partitions :]
        for (p, level), info in zip(self.streams, described, strict=True):
            if isinstance(info, dict):
                added = info.get("entries-added")
                self.added[(p, level)] = (
                    int(info.get("length") or 0),
                    None if added is None else int(added),
                )
        self.length = dict.fromkeys(range(self.partitions), 0)
        for i, (p, level) in enumerate(self.streams):
            n, info = results[2 * i], results[2 * i + 1]
            self.length[p] += n if isinstance(n, int) else 0
            if isinstance(info, list):
                self.infos[(p, level)] = {shown_text(g["name"]): g for g in info}
                self.names |= set(self.infos[(p, level)])
        self.dlq = [
            n if isinstance(n, int) else 0
            for n in results[2 * len(self.streams) : 2 * len(self.streams) + self.partitions]
        ]

    async def _groups(self, groups: list[str]) -> list[dict[str, Any]]:
        keys, stored = self.keys, self.stored
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.zrange(keys.members(g), 0, -1, withscores=True)
            pipe.hgetall(keys.assignment(g))
        pending = [(g, p, lv) for g in groups for p, lv in self.streams
                   if g in self.infos.get((p, lv), {})]  # fmt: skip
        for g, p, level in pending:
            pipe.xpending(keys.stream(p, level), g)
        if stored.forget:
            pipe.hdel(keys.metrics, *stored.forget)
        results = await pipe.execute(raise_on_error=False)
        views = [self._group(g, results[2 * i], results[2 * i + 1]) for i, g in enumerate(groups)]
        for i, (g, p, level) in enumerate(pending):
            count, consumers = _summary_pending(results[2 * len(groups) + i])
            stored.partition(g, p)["pending"] += count
            self._trimmed_unread(stored.partition(g, p), g, p, level)
            for name, n in consumers.items():
                if (g, name) in self.members:
                    self.members[(g, name)]["pending"] += n
        await self._lags(groups)
        for g, by_partition in stored.gauges.items():
            for p, consumers in by_partition.items():
                stored.partition(g, p)["in_flight"] = sum(consumers.values())
                for name, n in consumers.items():
                    if (g, name) in self.members:
                        self.members[(g, name)]["in_flight"] += n
        for view in views:
            self._totals(view)
        return views

    def _trimmed_unread(self, row: dict[str, Any], group: str, p: int, level: int) -> None:
        """Entries removed from the stream that the group had not read (7.0+; else None)."""
        length, added = self.added.get((p, level), (0, None))
        info = self.infos[(p, level)][group]
        read = info.get("entries-read")
        if read is None and shown_text(info.get("last-delivered-id") or "") == "0-0":
            read = 0  # a group that has read nothing yet
        if added is None and read == 0 and self.priorities == 1:
            # Redis 6.2 keeps no entries-added: for a group that has read nothing, the
            # producers' own count of the partition stands in for it.
            added = self.stored.produced.get(p)
        if added is None or read is None or row["trimmed_unread"] is None:
            row["trimmed_unread"] = None
            return
        row["trimmed_unread"] += max(0, added - length - int(read))

    def _group(self, group: str, members_raw: Any, assignment_raw: Any) -> dict[str, Any]:
        assignment: dict[int, str] = {}
        if isinstance(assignment_raw, dict):
            for k, v in assignment_raw.items():
                if shown_text(k).isdigit():
                    assignment[int(shown_text(k))] = shown_text(v)
        for p in range(self.partitions):
            self.stored.partition(group, p)["owner"] = assignment.get(p)
        members: list[dict[str, Any]] = []
        for name, score in members_raw if isinstance(members_raw, list) else ():
            if not math.isfinite(score):  # another client's score: no heartbeat time
                continue
            member = {
                "name": shown_text(name),
                "last_heartbeat": score / 1000.0,
                "age": max(0.0, (self.now_ms - score) / 1000.0),
                "partitions": sorted(p for p, m in assignment.items() if m == shown_text(name)),
                "pending": 0,
                "in_flight": 0,
            }
            members.append(member)
            self.members[(group, member["name"])] = member
        return {"group": group, "members": members}

    async def _lags(self, groups: list[str]) -> None:
        """Take the lag from XINFO where the server gives it; count it with a script elsewhere."""
        targets: list[dict[str, Any]] = []
        calls: list[Any] = []
        for g in groups:
            for p, level in self.streams:
                info = self.infos.get((p, level), {}).get(g)
                if info is None:
                    continue
                row = self.stored.partition(g, p)
                if info.get("lag") is not None:
                    row["lag"] += int(info["lag"])
                    continue
                last = shown_text(info.get("last-delivered-id") or "0-0")
                targets.append(row)
                calls.append((STREAM_LAG, [self.keys.stream(p, level)], [last, LAG_SCAN_LIMIT]))
        for row, result in zip(targets, await run_pipelined(self.redis, calls), strict=True):
            if isinstance(result, list):
                row["lag"] += int(result[0])
                row["lag_exact"] = row["lag_exact"] and bool(int(result[1]))
            else:
                row["lag_exact"] = False

    def _totals(self, view: dict[str, Any]) -> None:
        by_partition = self.stored.groups.get(view["group"], {})
        rows = [by_partition[p] for p in sorted(by_partition)]
        totals = _empty_partition(0)
        del totals["partition"], totals["owner"]
        for row in rows:
            for key in ("pending", "lag", "in_flight", *COUNTERS):
                totals[key] += row[key]
            totals["lag_exact"] = totals["lag_exact"] and row["lag_exact"]
            if totals["trimmed_unread"] is not None:
                unread = row["trimmed_unread"]
                totals["trimmed_unread"] = (
                    None if unread is None else totals["trimmed_unread"] + unread
                )
            for name in HISTOGRAMS:
                _merge_histogram(totals[name], row[name])
                _finish_histogram(row[name])
        for name in HISTOGRAMS:
            _finish_histogram(totals[name])
        view["partitions"] = rows
        view["totals"] = totals
