"""The write side of a fan-out bridge: a planned batch becomes target entries and acks.

On one Redis server each source stream's part of a batch is one call of
``lua/fanout.lua`` (lease check, XACK, XADD to the targets, in one step). On
Redis Cluster each target stream's part is one call of ``lua/fanout_write.lua``
(an idempotency record per entry, XADD where the record was new), then the
source entries are acknowledged with ``lua/ack.lua`` (lease check, XACK), and
the records of acknowledged entries are shortened with
``lua/fanout_forget.lua`` along with the next batch's writes. See
:mod:`redisaq_core.fanout` for the guarantees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._failures import foreign_type
from .._growth import grow
from .._scripts import (
    FANOUT,
    FANOUT_FORGET,
    FANOUT_WRITE,
    ScriptCall,
    ack_call,
)
from .._scripts import run_pipelined as _run
from ..connection import AnyRedis
from ..errors import RedisaqError
from ..keys import TopicKeys, partition_count, priority_levels
from ..message import Received
from ..metrics import MetricsRecorder

__all__ = ["Entry", "FanOutStats", "Target", "Writer"]

log = logging.getLogger(__name__)

_STALE_RETRIES = 5

Fields = list[Any]
"""The fields of one stream entry, flat: field, value, field, value, ..."""


@dataclass
class FanOutStats:
    """Counters of one bridge since it started.

    ``fanned_out``: source entries written to their targets and acknowledged
    by this bridge. ``already_done``: entries handled again (after a crash or
    a hand-over) and found already fanned out, so written nowhere.
    ``failed``: transform or routing failures. ``fenced``: entries left for
    the partition's new owner because this bridge had lost the lease.
    ``written`` / ``skipped``: per target, entries written to it and entries
    its transform skipped.
    """

    fanned_out: int = 0
    already_done: int = 0
    failed: int = 0
    fenced: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict."""
        return {
            "fanned_out": self.fanned_out,
            "already_done": self.already_done,
            "failed": self.failed,
            "fenced": self.fenced,
            "written": dict(self.written),
            "skipped": dict(self.skipped),
        }


class Target:
    """One target topic: its transform, partition count, levels and stream names."""

    __slots__ = (
        "index",
        "keys",
        "levels",
        "partitions",
        "recorder",
        "streams",
        "topic",
        "transform",
    )

    def __init__(self, index: int, topic: str, transform: Any) -> None:
        self.index = index
        self.topic = topic
        self.keys = TopicKeys(topic)
        self.transform = transform
        self.partitions = 0
        self.levels = 1
        self.streams: list[list[str]] = []
        self.recorder: MetricsRecorder | None = None

    def set_shape(self, partitions: int, levels: int) -> None:
        """Take a partition count and a number of priority levels read from the metadata."""
        levels = max(1, levels)
        if partitions == self.partitions and levels == self.levels:
            return
        self.partitions, self.levels = partitions, levels
        self.streams = [
            [self.keys.stream(p, lv) for lv in range(levels)] for p in range(partitions)
        ]

    def stream(self, hash_: int, priority: int) -> tuple[int, str]:
        """(partition, stream) of an entry whose routing hash is ``hash_``."""
        partition = hash_ % self.partitions
        return partition, self.streams[partition][min(priority, self.levels - 1)]


class Entry:
    """One source entry of a batch and what to write for it.

    ``hash``: the routing hash (CRC-32 of the partition-key value, or of the
    source entry id); ``outputs``: (entry fields, indices of the targets that
    get them).
    """

    __slots__ = ("hash", "message", "outputs")

    def __init__(
        self, message: Received, hash_: int, outputs: list[tuple[Fields, list[int]]]
    ) -> None:
        self.message = message
        self.hash = hash_
        self.outputs = outputs


class Writer:
    """Writes planned batches of one bridge (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        source: str,
        group: str,
        token: str,
        targets: list[Target],
        stats: FanOutStats,
        trim: list[Any],
        new_partitions: int,
        dedupe_ttl: float,
        dedupe_grace: float,
        refresh_interval: float,
        deleting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.name = name
        self.deleting = deleting
        """Whether acknowledging deletes (the source's trim="delete-acked", as read)."""
        self.source = source
        self.keys = TopicKeys(source)
        self.group = group
        self.token = token
        self.targets = targets
        self.stats = stats
        self.trim = trim
        self.new_partitions = new_partitions
        self.ttl_ms = int(dedupe_ttl * 1000)
        self.grace_ms = int(dedupe_grace * 1000)
        self.refresh_interval = refresh_interval
        self.refreshed = 0.0
        self._streams: dict[tuple[int, int], tuple[str, str]] = {}
        self._forget: list[ScriptCall] = []

    async def refresh(self, redis: AnyRedis) -> None:
        """Read every target's partition count and priority levels (one round trip)."""
        pipe = redis.pipeline(transaction=False)
        for target in self.targets:
            pipe.hmget(target.keys.meta, ["partitions", "priorities"])
        replies = await pipe.execute(raise_on_error=False)
        for target, reply in zip(self.targets, replies, strict=True):
            # A meta key another client made of another type reads as none (then replaced).
            if isinstance(reply, Exception) and not foreign_type(reply):
                raise reply
            partitions, levels = (None, None) if isinstance(reply, Exception) else reply
            count = partition_count(partitions)
            if count < 1:  # the metadata is gone (a flushed Redis): create it again
                count, levels = await grow(redis, target.keys, self.new_partitions, priorities=1)
            target.set_shape(int(count), priority_levels(levels))
        self.refreshed = asyncio.get_running_loop().time()

    def _by_stream(self, entries: list[Entry]) -> dict[tuple[int, int], list[Entry]]:
        groups: dict[tuple[int, int], list[Entry]] = {}
        for e in entries:
            key = (e.message.partition, e.message.priority)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(e)
        return groups

    def _source(self, partition: int, level: int) -> tuple[str, str]:
        """(stream, lease) of a source partition's priority level."""
        found = self._streams.get((partition, level))
        if found is None:
            found = self._streams[(partition, level)] = (
                self.keys.stream(partition, level),
                self.keys.lease(partition, self.group),
            )
        return found

    def _lost(self, group: list[Entry]) -> None:
        self.stats.fenced += len(group)
        log.warning(
            "fan-out %s: partition %s of %s is no longer ours; %d entries left to its new owner",
            self.name, group[0].message.partition, self.source, len(group),
        )  # fmt: skip

    # ---- one Redis server: one script per source stream ----------------------------

    async def write_single(self, redis: AnyRedis, entries: list[Entry]) -> None:
        """Fan ``entries`` out and acknowledge them, one atomic script per source stream."""
        groups = self._by_stream(entries)
        for _ in range(_STALE_RETRIES):
            calls: list[ScriptCall] = []
            counted: list[dict[tuple[int, int], int]] = []
            for (partition, level), group in groups.items():
                call, counts = self._single_call(partition, level, group)
                calls.append(call)
                counted.append(counts)
            results = await _run(redis, calls)
            stale: dict[tuple[int, int], list[Entry]] = {}
            for (where, group), counts, result in zip(
                groups.items(), counted, results, strict=True
            ):
                if isinstance(result, Exception):
                    raise result
                status = int(result[0])
                if status == -2:
                    stale[where] = group
                elif status == -1:
                    self._lost(group)
                else:
                    self._count(group, counts, [int(i) - 1 for i in result[1:]])
            if not stale:
                return
            # A target's partition count changed: route those streams' entries again.
            await self.refresh(redis)
            groups = stale
        raise RedisaqError(f"fan-out {self.name}: target partition counts keep changing")

    def _single_call(
        self, partition: int, level: int, group: list[Entry]
    ) -> tuple[ScriptCall, dict[tuple[int, int], int]]:
        stream, lease = self._source(partition, level)
        targets = self.targets
        keys: list[Any] = [stream, lease, *(t.keys.meta for t in targets)]
        index: dict[str, int] = {}
        args: list[Any] = [self.group, self.token, len(targets)]
        args += [t.partitions for t in targets]
        args += [*self.trim, b"1" if self.deleting() else b"0"]
        counts: dict[tuple[int, int], int] = {}
        for e in group:
            m = e.message
            args += [m.msg_id, len(e.outputs)]
            for fields, which in e.outputs:
                args.append(len(which))
                for i in which:
                    tp, key = targets[i].stream(e.hash, m.priority)
                    j = index.get(key)
                    if j is None:
                        keys.append(key)
                        j = index[key] = len(keys)
                    args.append(j)
                    counts[(i, tp)] = counts.get((i, tp), 0) + 1
                args.append(len(fields))
                args += fields
        return (FANOUT, keys, args), counts

    def _count(
        self, group: list[Entry], counts: dict[tuple[int, int], int], repeated: list[int]
    ) -> None:
        """Count a source stream's written entries, less those found already fanned out."""
        for n in repeated:
            e = group[n]
            for _, which in e.outputs:
                for i in which:
                    counts[(i, e.hash % self.targets[i].partitions)] -= 1
        self.stats.fanned_out += len(group) - len(repeated)
        self.stats.already_done += len(repeated)
        self._produced(counts)

    def _produced(self, counts: dict[tuple[int, int], int]) -> None:
        written = self.stats.written
        for (i, tp), n in counts.items():
            target = self.targets[i]
            written[target.topic] += n
            if target.recorder is not None and n:
                target.recorder.produced(tp, n)

    # ---- Redis Cluster: idempotent writes per target stream, then the acknowledgement -

    async def write_cluster(self, redis: AnyRedis, entries: list[Entry]) -> None:
        """Write ``entries`` where their records are new, then acknowledge them on the source."""
        if asyncio.get_running_loop().time() - self.refreshed >= self.refresh_interval:
            await self.refresh(redis)
        groups = self._by_stream(entries)
        writes: dict[str, tuple[list[Any], list[Any], int, int]] = {}
        records: dict[tuple[int, int], list[str]] = {}
        for (partition, level), group in groups.items():
            mine = records[(partition, level)] = []
            for e in group:
                m = e.message
                for fields, which in e.outputs:
                    for i in which:
                        target = self.targets[i]
                        tp, stream = target.stream(e.hash, m.priority)
                        call = writes.get(stream)
                        if call is None:
                            call = writes[stream] = ([stream], [*self.trim, self.ttl_ms], i, tp)
                        record = (
                            target.keys.fanout_record(tp, self.source, self.group, partition, level)
                            + m.msg_id
                        )
                        call[0].append(record)
                        call[1].append(len(fields))
                        call[1].extend(fields)
                        mine.append(record)
        calls: list[ScriptCall] = [(FANOUT_WRITE, k, a) for k, a, _, _ in writes.values()]
        forget, self._forget = self._forget, []
        results = await _run(redis, [*calls, *forget])
        for result in results:
            if isinstance(result, Exception):
                self._forget = forget + self._forget
                raise result
        counts: dict[tuple[int, int], int] = {}
        for (_, _, i, tp), n in zip(writes.values(), results, strict=False):
            counts[(i, tp)] = counts.get((i, tp), 0) + int(n)
        self._produced(counts)
        acks: list[ScriptCall] = []
        for (partition, level), group in groups.items():
            stream, lease = self._source(partition, level)
            ids = [e.message.msg_id for e in group]
            acks.append(
                ack_call(stream, lease, self.group, self.token, ids, delete=self.deleting())
            )
        done: list[str] = []
        for (where, group), result in zip(groups.items(), await _run(redis, acks), strict=True):
            if isinstance(result, Exception):
                raise result
            if int(result) == -1:
                self._lost(group)  # its records stay: the new owner's writes will skip them
                continue
            self.stats.fanned_out += int(result)
            self.stats.already_done += len(group) - int(result)
            done += records[where]
        self._forget = _forget_calls(done, self.grace_ms)

    async def flush(self, redis: AnyRedis) -> None:
        """Shorten the records of the last acknowledged batch now (on the way out)."""
        forget, self._forget = self._forget, []
        if forget:
            for result in await _run(redis, forget):
                if isinstance(result, Exception):
                    raise result


def _forget_calls(records: list[str], grace_ms: int) -> list[ScriptCall]:
    """FANOUT_FORGET calls for ``records``, one per hash tag (so per slot)."""
    by_tag: dict[str, list[str]] = {}
    for record in records:
        tag = record[: record.index("}") + 1]
        by_tag.setdefault(tag, []).append(record)
    return [(FANOUT_FORGET, keys, [grace_ms]) for keys in by_tag.values()]
