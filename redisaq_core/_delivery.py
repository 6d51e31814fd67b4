"""Reading a consumer's partitions: partition state, entry decoding, and the read commands.

Each owned partition has one stream per priority level. Before reading new
entries (XREADGROUP ``>``) from a partition it has just taken over, a member
claims the entries still pending in it (XAUTOCLAIM from ``0-0``, following the
cursor to the end), whoever they were delivered to; holding the partition's
lease makes that safe. A failed message is kept in memory with the messages
behind it and claimed again (delivery count + 1) when its retry is due.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis.asyncio import Redis

from ._codec import (
    F_BYTES,
    F_CREATED,
    F_JOB,
    F_KEY,
    F_TIMEOUT,
    F_TRACE,
    Deserializer,
    as_str,
    decode_payload,
    default_deserializer,
)
from ._reads import XREADGROUP, create_groups, read_streams, xreadgroup_args
from ._scripts import COUNT_RUN, RETRY, ScriptCall, run_pipelined
from ._tracing import Traced, mark
from .connection import AnyRedis
from .errors import SerializationError
from .keys import TopicKeys
from .message import Received, new_message, received

if TYPE_CHECKING:
    from .metrics import MetricsRecorder

__all__ = [
    "POLL_INTERVAL", "RUNS_TTL", "ConsumerStats", "OwnedPartition", "ReadAfterError", "Reader",
    "Runs", "Undecodable", "run_key", "sweep_period",
]  # fmt: skip

log = logging.getLogger(__name__)

_PARTITION = "messaging.destination.partition.id"
_BATCH = "messaging.batch.message_count"

POLL_INTERVAL = 10.0
"""A consumer's default ``poll_interval`` (seconds): an idle read mostly ends sooner, at the
local deadline of its leases (0.8 x ``heartbeat_ttl`` after their renewal)."""

SWEEP_SECONDS = 60.0
"""About how often a partition is looked at for strays after its first heartbeat."""


def sweep_period(interval: float) -> int:
    """Heartbeats between two stray sweeps of a settled partition (at least 10)."""
    return max(10, math.ceil(SWEEP_SECONDS / interval))


@dataclass
class ConsumerStats:
    """Counters of one consumer since it started.

    ``handled`` counts acknowledged messages. The ``add_*`` methods also pass
    each event to the consumer's :class:`~redisaq_core.metrics.MetricsRecorder`,
    which keeps the topic-wide figures in Redis.
    """

    handled: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    trimmed: int = 0
    fenced: int = 0
    timed_out: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    recorder: MetricsRecorder | None = field(default=None, repr=False, compare=False)

    def add_trimmed(self, partition: int, n: int = 1) -> None:
        """``n`` pending entries of ``partition`` had been trimmed before being handled."""
        self.trimmed += n
        if self.recorder is not None:
            self.recorder.trimmed(partition, n)

    def add_retried(self, partition: int) -> None:
        """A failed message of ``partition`` was delivered again."""
        self.retried += 1
        if self.recorder is not None:
            self.recorder.retried(partition)

    def add_failed(self, partition: int) -> None:
        """A handler failed on a message of ``partition``."""
        self.failed += 1
        if self.recorder is not None:
            self.recorder.failed(partition)

    def add_dead_lettered(self, partition: int) -> None:
        """A message of ``partition`` moved to the dead-letter stream."""
        self.dead_lettered += 1
        if self.recorder is not None:
            self.recorder.dead_lettered(partition)

    def add_timed_out(self, partition: int) -> None:
        """A handler on ``partition`` ran past the message's timeout."""
        self.timed_out += 1
        if self.recorder is not None:
            self.recorder.timed_out(partition)


RUNS_TTL = 7 * 86_400
"""Seconds a partition's ``runs`` hash outlives its last change (entries trimmed unsettled)."""


@dataclass(eq=False)
class OwnedPartition:
    """A partition whose lease this member holds, and where reading it stands."""

    number: int
    lease: str
    streams: list[str]
    claims: dict[int, str] = field(default_factory=dict)
    revoking: bool = False
    held: list[Received] = field(default_factory=list)
    head_failed: bool = False  # held[0] failed and waits for its retry (else: just held back)
    isolate: bool = False  # retry held[0] alone (it failed as part of a batch)
    alone: tuple[int, str] | None = None  # (level, id) of that retry: a batch of its own
    unrun: set[tuple[int, str]] = field(default_factory=set)  # held, never handed on (level, id)
    retry_sent: tuple[int, str, int, int] | None = None
    """A retry gone out without its reply: (level, id, delivery count, runs; -1: not known)
    before it."""
    retry_at: float = 0.0
    valid_until: float = 0.0
    sweeps: int = 1  # heartbeats left that look for strays (see Reader.strays)
    own_sweeps: int = 0  # of those, how many count this member's own pending entries too

    @property
    def claiming(self) -> bool:
        """Whether pending entries must be claimed before new ones are read."""
        return bool(self.claims)

    def ready(self, now: float) -> bool:
        """Whether it may be read at loop time ``now``: kept, and its lease not due to lapse."""
        return not self.revoking and self.valid_until > now

    def look_again(self) -> None:
        """Look for strays on the next two heartbeats, this member's own entries included.

        The members changed: one back from a pause may have read entries of this
        partition, and so may an earlier instance of this member's own name.
        """
        self.sweeps = max(self.sweeps, 2)
        self.own_sweeps = 2

    def reclaim(self) -> None:
        """Claim every pending entry (from the start of each stream) before reading new ones."""
        self.claims = {level: "0-0" for level in range(len(self.streams))}


Runs = dict[tuple[int, int, str], tuple[OwnedPartition, int, Received]]
"""Handler runs, the current one included, of messages whose runs are counted in their
partition's ``runs`` hash (those delivered again), by (partition, level, id), with the
hold of the partition they were counted under (another hold's count is not current) and
the delivery they were counted for."""


def run_key(m: Received) -> tuple[int, int, str]:
    """``m``'s key in :data:`Runs`."""
    return (m.partition, m.priority, m.msg_id)


async def count_run(redis: AnyRedis, keys: TopicKeys, group: str, token: str, m: Received) -> int:
    """Count a handler run of ``m`` (delivered again) in its partition's ``runs`` hash.

    Returns the count with this run, or -1 (nothing counted) when the partition's lease
    is not ``token``'s. A count another client spoilt is written over with 1
    (``lua/_count_run.lua``). The delivery it is counted for is noted beside it.
    """
    args = [m.msg_id, RUNS_TTL, token, m.deliveries]
    return int(
        await COUNT_RUN(
            redis, [keys.runs(m.partition, group), keys.lease(m.partition, group)], args
        )
    )


class Undecodable(Received):
    """An entry whose payload could not be decoded: it goes to the dead letters at once."""

    __slots__ = ("error", "fields")

    def __init__(self, base: Received, fields: dict[bytes, bytes], error: BaseException) -> None:
        super().__init__(
            topic=base.topic, payload=None, msg_id=base.msg_id, partition=base.partition,
            deliveries=base.deliveries, group=base.group, priority=base.priority,
            job_id=base.job_id, created_at=base.created_at, enqueued_at=base.enqueued_at,
        )  # fmt: skip
        self.fields = fields
        self.error = error


class ReadAfterError(Exception):
    """The read of :meth:`Reader.read_after` failed; ``replies`` are those of the calls."""

    def __init__(self, replies: list[Any], error: BaseException) -> None:
        super().__init__(str(error))
        self.replies = replies
        self.error = error


class Reader:
    """The read side of one consumer: turns Redis replies into ``Message`` objects."""

    def __init__(
        self,
        keys: TopicKeys,
        group: str,
        name: str,
        token: str,
        *,
        batch_size: int,
        deserializer: Deserializer,
        stats: ConsumerStats,
    ) -> None:
        self.keys = keys
        self.topic = keys.topic
        self.group = group
        self.name = name
        self.token = token  # the member's lease token: a retry's claim is fenced by it
        self.batch_size = batch_size
        self.deserializer = orjson.loads if deserializer is default_deserializer else deserializer
        self.stats = stats
        self.behind = False
        """The last read filled a whole batch from a stream: more is likely waiting."""
        self._reading: tuple[list[Any], dict[str, tuple[OwnedPartition, int]]] | None = None
        """What the read under way was handed so far, and where each stream belongs."""

    def partition(self, number: int, levels: int, valid_until: float) -> OwnedPartition:
        """State for a partition just taken: its pending entries are claimed first."""
        part = OwnedPartition(
            number,
            self.keys.lease(number, self.group),
            [self.keys.stream(number, level) for level in range(levels)],
            valid_until=valid_until,
        )
        part.reclaim()
        mark("assign", self.topic, self.group, self.name, **{_PARTITION: str(number)})
        return part

    def widen(self, part: OwnedPartition, levels: int, valid_until: float) -> None:
        """Give ``part`` (held throughout) the streams of ``levels`` priority levels (more now).

        The same hold: what it has kept back or holds behind a failure stays valid. It
        claims its pending entries before reading on.
        """
        part.streams = [self.keys.stream(part.number, level) for level in range(levels)]
        part.valid_until, part.revoking = valid_until, False
        part.reclaim()

    def decode(
        self,
        part: OwnedPartition,
        level: int,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        deliveries: int,
    ) -> Received:
        """The ``Message`` of one entry (an :class:`Undecodable` if its payload is bad)."""
        msg_id = entry_id.decode()
        enqueued = int(msg_id[: msg_id.index("-")]) / 1000.0
        raw = fields.get(F_BYTES)
        if raw is not None and len(fields) == 1:
            # The common entry: a payload and nothing else.
            try:
                payload = self.deserializer(raw)
            except Exception:
                pass
            else:
                return received(
                    self.topic, payload, msg_id, part.number, self.group, enqueued, deliveries,
                    level,
                )  # fmt: skip
        problems: list[str] = []
        created = _number_field(fields, F_CREATED, problems, positive=False)
        timeout = _number_field(fields, F_TIMEOUT, problems, positive=True)
        key = _text_field(fields, F_KEY, problems)
        job = _text_field(fields, F_JOB, problems)
        trace = fields.get(F_TRACE)  # read only by a consumer that traces (see _tracing)
        message = received(
            self.topic, None, msg_id, part.number, self.group, enqueued, deliveries, level,
            partition_key=key, created_at=created, timeout=timeout, job_id=job,
            kind=Received if trace is None else Traced,
        )  # fmt: skip
        if trace is not None:
            cast(Traced, message).trace = trace
        if problems:
            # Another client (or an old writer) put metadata here that can't be read: the
            # entry goes to the dead letters with its raw fields; the partition goes on.
            return Undecodable(
                message, fields, SerializationError(f"bad entry field(s): {'; '.join(problems)}")
            )
        try:
            message.payload = decode_payload(self.deserializer, fields)
        except (SerializationError, ValueError) as exc:
            return Undecodable(message, fields, exc)
        return message

    async def create_groups(
        self, redis: AnyRedis, parts: Iterable[OwnedPartition], start: str
    ) -> None:
        """Create the group on every stream of ``parts`` (MKSTREAM; an existing group is kept)."""
        await create_groups(redis, [s for part in parts for s in part.streams], [self.group], start)

    async def read(
        self, redis: AnyRedis, parts: list[OwnedPartition], block_ms: int
    ) -> list[Received]:
        """New entries of ``parts`` (XREADGROUP ``>``), blocking up to ``block_ms``.

        Should it be cancelled midway, what it was handed is :meth:`cut_off`'s.
        """
        streams, where = self._wanted(parts)
        served: list[Any] = []
        self._reading = (served, where)
        response: Any = await read_streams(
            redis, self.group, self.name, streams, count=self.batch_size, block_ms=block_ms,
            served=served,
        )  # fmt: skip
        self._reading = None
        return self._received(response, where)

    async def wind_down(
        self, read: asyncio.Task[list[Received]], limit: float | None
    ) -> list[Received]:
        """Wait up to ``limit`` s for ``read`` (a cancelled read's task) to end; what it brought.

        Its result, should it have ended with one before it was cancelled, and what it
        had been handed (:meth:`cut_off`): all of it pending with this member, never run.
        """
        await asyncio.wait([read], timeout=limit)
        ended = read.done() and not read.cancelled() and read.exception() is None
        return (read.result() if ended else []) + self.cut_off()

    def cut_off(self) -> list[Received]:
        """The messages a read cancelled midway had been handed (once; none: ``[]``).

        They are pending with this member and were never run. Only a read of a cluster
        can tell them (see :func:`~redisaq_core._reads.read_streams`).
        """
        if self._reading is None:
            return []
        (served, where), self._reading = self._reading, None
        behind, out = self.behind, self._received(served, where)
        self.behind = behind
        return out

    async def read_after(
        self, redis: Redis, parts: list[OwnedPartition], calls: list[ScriptCall]
    ) -> tuple[list[Received], list[Any]]:
        """``calls`` (acknowledgements), then a read of ``parts`` without blocking: one round trip.

        One server only. Returns the messages read and the replies of ``calls``
        (exception objects where one failed). A failed read is raised after the replies
        are returned to :meth:`Settler.record <redisaq_core._settlement.Settler.record>`
        by the caller: see ``Consumer._fetch``.
        """
        commands, where = self.after_commands(parts, calls)
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return self.after_replies(await pipe.execute(raise_on_error=False), where)

    def after_commands(
        self, parts: list[OwnedPartition], calls: list[ScriptCall]
    ) -> tuple[list[tuple[Any, ...]], dict[str, tuple[OwnedPartition, int]]]:
        """The commands of :meth:`read_after`, and where each stream read belongs."""
        streams, where = self._wanted(parts)
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls
        ]
        commands.append(
            (XREADGROUP, *xreadgroup_args(self.group, self.name, streams, self.batch_size, None))
        )
        return commands, where

    def after_replies(
        self, replies: list[Any], where: dict[str, tuple[OwnedPartition, int]]
    ) -> tuple[list[Received], list[Any]]:
        """The messages and the calls' replies of :meth:`after_commands`' ``replies``."""
        response = replies.pop()
        if isinstance(response, Exception):
            raise ReadAfterError(replies, response)
        return self._received(response, where), replies

    @staticmethod
    def _wanted(
        parts: list[OwnedPartition],
    ) -> tuple[dict[Any, Any], dict[str, tuple[OwnedPartition, int]]]:
        streams: dict[Any, Any] = {}
        where: dict[str, tuple[OwnedPartition, int]] = {}
        for part in parts:
            for level in range(len(part.streams) - 1, -1, -1):
                streams[part.streams[level]] = ">"
                where[part.streams[level]] = (part, level)
        return streams, where

    def _received(
        self, response: Any, where: dict[str, tuple[OwnedPartition, int]]
    ) -> list[Received]:
        """The messages of an XREADGROUP reply, highest priority first.

        The reply may come as the server sent it (each entry's fields a flat list, see
        :mod:`redisaq_core._reads`) or converted by redis-py (a dict): both are read.
        """
        self.behind = False
        if not response:
            return []
        items = response.items() if isinstance(response, dict) else response
        out: list[Received] = []
        levels = False
        for name, entries in items:
            part, level = where[as_str(name)]
            if len(entries) >= self.batch_size:
                self.behind = True
            levels = levels or level > 0
            start = len(out)
            if entries and type(entries[0][1]) is list:  # as the server sent it
                try:
                    self._plain(entries, part.number, level, out)
                    continue
                except Exception:
                    del out[start:]
            # Not every entry is the common kind (a payload alone, which decodes), or
            # redis-py made each entry's fields a dict: this stream goes entry by entry.
            for entry_id, fields in entries:
                if type(fields) is list:
                    fields = dict(zip(fields[::2], fields[1::2], strict=True))
                out.append(self.decode(part, level, entry_id, fields, 1))
        return _by_priority(out) if levels else out

    def _plain(self, entries: list[Any], number: int, level: int, out: list[Received]) -> None:
        """Append the messages of ``entries`` of one stream, each a payload and nothing else.

        The hot path, for entries as the server sent them (fields a flat list; a dict of
        two fields would unpack as its two names). Raises (anything) at the first entry of
        another kind, or whose payload does not decode, for the caller to read that stream
        entry by entry instead.
        """
        topic, group, deserializer, append = self.topic, self.group, self.deserializer, out.append
        same: bytes = b"-"  # the id's first 14 bytes, "<13 digits>-", whose time is ``at``
        at = 0.0
        for entry_id, (key, raw) in entries:
            if key != F_BYTES:
                raise ValueError(key)
            m: Received = new_message(Received)
            m.payload = deserializer(raw)
            m.msg_id = msg_id = entry_id.decode()
            if entry_id[:14] != same:
                at = int(msg_id[: msg_id.index("-")]) / 1000.0
                same = entry_id[:14] if entry_id[13:14] == b"-" else b"-"
            m.created_at = m.enqueued_at = at
            m.topic = topic
            m.partition_key = m.timeout = m.job_id = None
            m.partition = number
            m.deliveries = 1
            m.group = group
            m.priority = level
            append(m)

    async def claim(
        self, redis: AnyRedis, parts: list[OwnedPartition]
    ) -> tuple[list[Received], dict[tuple[OwnedPartition, int], list[str]]]:
        """Claim a batch of pending entries from each stream of ``parts`` still being claimed.

        Returns the messages (with their delivery counts) and, per (partition,
        level), the ids of pending entries whose data was trimmed away: the
        caller acknowledges those.
        """
        pipe = redis.pipeline(transaction=False)
        todo = [(part, level, cursor) for part in parts for level, cursor in part.claims.items()]
        for part, level, cursor in todo:
            stream = part.streams[level]
            pipe.xautoclaim(stream, self.group, self.name, 0, cursor, count=self.batch_size)
            pipe.xpending_range(stream, self.group, cursor, "+", self.batch_size)
        results = await pipe.execute()
        out: list[Received] = []
        gone: dict[tuple[OwnedPartition, int], list[str]] = {}
        for i, (part, level, _) in enumerate(todo):
            claimed, pending = results[2 * i], results[2 * i + 1]
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            cursor = as_str(claimed[0])
            alive = set()
            for entry_id, fields in claimed[1]:
                if entry_id is None or fields is None:
                    continue  # Redis 6.2: trimmed while pending, reported without its id
                alive.add(entry_id)
                out.append(self.decode(part, level, entry_id, fields, counts.get(entry_id, 1)))
            if len(alive) < len(claimed[1]):
                # The claimed range is the start of the pending list that XPENDING listed.
                end = None if cursor in ("0-0", "0") else _id(cursor)
                gone[(part, level)] = [
                    as_str(i) for i in counts
                    if i not in alive and (end is None or _id(as_str(i)) < end)
                ]  # fmt: skip
            if len(claimed) > 2 and claimed[2]:  # Redis 7+: already dropped from the PEL
                self.stats.add_trimmed(part.number, len(claimed[2]))
                log.warning(
                    "consumer %s: %d pending entries of partition %d were trimmed before "
                    "being handled", self.name, len(claimed[2]), part.number,
                    extra={"partition": part.number},
                )  # fmt: skip
            if cursor in ("0-0", "0"):
                part.claims.pop(level, None)
            else:
                part.claims[level] = cursor
        self.stats.reclaimed += len(out)
        if out:
            mark("claim", self.topic, self.group, self.name, **{_BATCH: len(out)})
        for (part, _), ids in gone.items():
            self.stats.add_trimmed(part.number, len(ids))
        return _by_priority(out), gone

    async def retries(
        self, redis: AnyRedis, parts: list[OwnedPartition], runs: Runs | None = None
    ) -> tuple[list[Received], dict[tuple[OwnedPartition, int], list[str]]]:
        """Claim again the failed message heading each paused partition (delivery count + 1).

        Returns it followed by the messages held behind it, and the ids of
        failed messages whose data is gone (to acknowledge). With ``runs``, the
        retry is counted in the partition's ``runs`` hash, and its runs (this
        one included) noted in ``runs``. The claim is fenced by the lease
        (``lua/retry.lua``): a partition whose lease is found gone keeps what it
        holds and is not read or retried until a heartbeat renews it. A retry sent
        again after its reply was lost is not claimed or counted twice.
        """
        retried = [p for p in parts if p.head_failed and p.held]
        replies: list[Any] = []
        if retried:  # nothing changes before the claim is made: a failed one leaves them held
            calls: list[ScriptCall] = []
            attempts = []
            for part in retried:
                head = part.held[0]
                counted = runs.get(run_key(head)) if runs is not None else None
                # The runs counted before: none for a first delivery; unknown (-1) for one
                # counted under an earlier hold, which no lost reply is then checked against.
                before = counted[1] - 1 if counted and counted[0] is part else -1
                before = 0 if head.deliveries == 1 and before < 0 else before
                sent = part.retry_sent
                part.retry_sent = (head.priority, head.msg_id, head.deliveries, before)
                attempts.append(part.retry_sent)
                again = sent == part.retry_sent and before >= 0
                keys = [part.streams[head.priority], self.keys.lease(part.number, self.group),
                        self.keys.runs(part.number, self.group)]  # fmt: skip
                args = [self.group, self.token, self.name, head.msg_id or "0",
                        b"0" if runs is None else b"1", RUNS_TTL,
                        *(part.retry_sent[2:] if again else ["", ""])]  # fmt: skip
                if head.job_id:  # settled "dead" should its entry be gone
                    keys += [self.keys.job(part.number, head.job_id), self.keys.jobs(part.number)]
                    args += [self.keys.job_channel, head.job_id]
                calls.append((RETRY, keys, args))
            replies = await run_pipelined(redis, calls)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            kept = []
            for part, reply, attempt in zip(retried, replies, attempts, strict=True):
                if part.retry_sent is not attempt:  # given up meanwhile: its give-back is owed
                    continue
                if reply == -1:  # the lease moved on: left to the heartbeat (retry_sent kept)
                    part.valid_until = 0.0
                else:
                    part.retry_sent = None
                    kept.append((part, reply))
            retried, replies = [p for p, _ in kept], [r for _, r in kept]
            if runs is not None:
                for part, (_, count) in zip(retried, replies, strict=True):
                    runs[run_key(part.held[0])] = (part, int(count) + 1, part.held[0])
        out: list[Received] = []
        for part in [p for p in parts if not p.head_failed]:
            out += part.held  # held behind a message that was dead-lettered: no retry
            part.held = []
            part.unrun.clear()
        gone: dict[tuple[OwnedPartition, int], list[str]] = {}
        for part, (alive, _) in zip(retried, replies, strict=True):
            head, rest, isolate = part.held[0], part.held[1:], part.isolate
            part.head_failed = part.isolate = False
            part.alone = (head.priority, head.msg_id) if isolate else None
            # Isolated: the head runs alone; the rest is handed out on the next round.
            part.held = rest if isolate else []
            if not isolate:
                part.unrun.clear()
            if alive:
                head.deliveries += 1
                out.append(head)
                self.stats.add_retried(part.number)
            else:
                gone.setdefault((part, head.priority), []).append(head.msg_id)
                self.stats.add_trimmed(part.number)
            if not isolate:
                out += rest
        return out, gone

    async def strays(self, redis: AnyRedis, parts: list[OwnedPartition]) -> list[OwnedPartition]:
        """Partitions of ``parts`` where other consumers hold entries pending.

        A previous owner's read that was already under way when it gave a
        partition up can still hand it entries after this member took over;
        they would wait in its pending list for ever. So can a read of an
        earlier instance of this member's own name (a static restart while it
        still ran) into the pending list both share, once it comes back: after
        a change of members (:meth:`OwnedPartition.look_again`) this member's
        own pending entries count too (those it is handling are acknowledged
        before the claim, so the claim brings only what it never had). One
        XPENDING summary per stream finds them; the caller claims them.
        """
        pipe = redis.pipeline(transaction=False)
        todo = [(part, stream) for part in parts for stream in part.streams]
        for _, stream in todo:
            pipe.xpending(stream, self.group)
        found: list[OwnedPartition] = []
        own = {part for part in parts if part.own_sweeps > 0}
        for part in own:
            part.own_sweeps -= 1
        for (part, _), summary in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(summary, Exception) or part in found:
                continue
            names = [as_str(c["name"]) for c in summary.get("consumers") or ()]
            others = [c for c in names if c != self.name]
            if others:
                log.info(
                    "consumer %s: partition %d has entries pending with %s; claiming them",
                    self.name, part.number, ", ".join(others), extra={"partition": part.number},
                )  # fmt: skip
            if others or (names and part in own):
                found.append(part)
        return found


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _by_priority(messages: list[Received]) -> list[Received]:
    if any(m.priority for m in messages):
        messages.sort(key=lambda m: -m.priority)  # stable: stream order within a level
    return messages


def _number_field(
    fields: dict[bytes, bytes], name: bytes, problems: list[str], *, positive: bool
) -> float | None:
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (ValueError, TypeError):
        value = math.nan
    if not math.isfinite(value) or (positive and value <= 0):
        problems.append(
            f"{name.decode()}={raw[:40]!r} is not a {'positive ' if positive else ''}number"
        )
        return None
    return value


def _text_field(fields: dict[bytes, bytes], name: bytes, problems: list[str]) -> str | None:
    raw = fields.get(name)
    if raw is None:
        return None
    try:
        return raw.decode()
    except (UnicodeDecodeError, AttributeError):
        problems.append(f"{name.decode()}={raw[:40]!r} is not UTF-8 text")
        return None
