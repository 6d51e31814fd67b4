"""Settling handled messages: acknowledge, retry later, or dead-letter; and job status.

Every write that ends a message's delivery checks the partition's lease in
the same Lua script (fencing): a member that lost its lease can't
acknowledge or dead-letter for that partition any more. For jobs, the status
record changes in the same script as the acknowledgement (``completed``) or
the dead-lettering (``dead``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from ._cancellation import CANCELLED, JOBS_CANCELLED, cancelled_calls, cancelled_ids
from ._codec import F_BYTES, Serializer, encode_payload, optional_text
from ._delivery import (
    ConsumerStats,
    OwnedPartition,
    ReadAfterError,
    Reader,
    Runs,
    Undecodable,
    run_key,
)
from ._failures import REDIS_FAILURES
from ._give_back import GiveBack
from ._job_index import IndexSweep
from ._retry import backoff_delay
from ._scripts import (
    ACK,
    DEAD_LETTER,
    DELETE_ACKED,
    JOB_UPDATE,
    JOBS_COMPLETE,
    JOBS_STARTED,
    ScriptCall,
    ack_call,
    ack_count,
    run_pipelined,
)
from .connection import AnyRedis
from .dlq import dead_letter_fields
from .errors import SerializationError
from .keys import TopicKeys
from .message import Received

__all__ = ["Failure", "Settler"]

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """A message whose handler failed, and the messages of its partition held behind it.

    ``rest``: the others of its batch, handed to the handler with it. ``isolate``:
    the failure belongs to a whole batch, so which message caused it is unknown;
    the retry runs the first message alone, then the rest. ``waiting``: those
    behind it never handed to a handler. ``final``: dead-lettered whatever its
    delivery count (another run could not end otherwise).
    """

    message: Received
    error: BaseException | str
    rest: list[Received] = field(default_factory=list)
    isolate: bool = False
    waiting: list[Received] = field(default_factory=list)
    final: bool = False


def _error_text(error: BaseException | str) -> tuple[str, str]:
    if isinstance(error, BaseException):
        return str(error)[:4000] or type(error).__name__, type(error).__name__
    return error, "Error"


class Settler:
    """The write side of one consumer once its handlers have run."""

    def __init__(
        self,
        keys: TopicKeys,
        group: str,
        name: str,
        token: str,
        *,
        serializer: Serializer,
        max_deliveries: int,
        dead_letter: bool,
        dead_letter_maxlen: int,
        retry_backoff: float,
        retry_backoff_max: float,
        stats: ConsumerStats,
    ) -> None:
        self.keys = keys
        self.group = group
        self.name = name
        self.token = token
        self.serializer = serializer
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter
        self.dead_letter_maxlen = dead_letter_maxlen
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.stats = stats
        self.delete_acked = False
        """Delete entries once every group acknowledged them (the topic's ``delete-acked``)."""
        self.deferrable = False
        """Plain acknowledgements may wait for the consumer's next read (see :meth:`settle`)."""
        self._deferred: list[ScriptCall] = []
        self._deferred_for: dict[Any, OwnedPartition] = {}  # lease key -> partition, as held
        self.give_back = GiveBack(keys, group, name, token, stats)
        """What this consumer was delivered and never handed to a handler (to give back)."""
        self.runs: Runs = {}
        """The handler runs of the messages delivered again that are under way or retried."""
        self.index = IndexSweep(keys)
        """Where this consumer settled jobs: their index entries are swept (``_job_index.py``)."""
        self.refused: set[tuple[int, str]] = set()
        """(partition, id) of messages whose dead letter could not be written: still pending,
        their runs stay counted (the next claim dead-letters them without a run)."""
        self._channel = self.keys.job_channel.encode()
        self._name = name.encode()

    def _job_keys(self, message: Received) -> list[str]:
        job = message.job_id or ""
        partition = message.partition  # a job's record lives in its entry's partition
        return [self.keys.job(partition, job), self.keys.jobs(partition)]

    async def started(self, redis: AnyRedis, messages: list[Received]) -> tuple[set[str], set[int]]:
        """Mark the jobs among ``messages`` active: one script call per partition.

        A job's ``attempts`` is its entry's delivery count, so marking a job
        again before it ran (it waited behind a failed message) counts nothing.
        Returns the ids of the jobs found cancelled (not marked; not to be run), and
        the partitions whose lease was found gone (nothing marked; none of their
        messages to be run). A failed call raises its error (see ``cancelled_ids``).
        """
        by_partition: dict[int, list[Received]] = {}
        for m in messages:
            if m.job_id:  # a job's record lives in the partition its entry is on
                by_partition.setdefault(m.partition, []).append(m)
        calls: list[ScriptCall] = []
        for partition, jobs in by_partition.items():
            # Arguments as bytes: redis-py packs them as they are.
            lease = self.keys.lease(partition, self.group)
            keys = [self.keys.jobs(partition).encode(), lease.encode()]
            prefix = self.keys.job(partition, "")
            args: list[Any] = [self._channel, self._name, len(prefix), self.token]
            for m in jobs:
                keys.append(f"{prefix}{m.job_id}".encode())
                args.append(b"%d" % m.deliveries)
            calls.append((JOBS_STARTED, keys, args))
        if not calls:
            return set(), set()
        replies = await run_pipelined(redis, calls)
        lost = {p for p, r in zip(by_partition, replies, strict=True) if r == -1}
        return cancelled_ids(replies), lost

    async def settle(
        self,
        redis: AnyRedis,
        owned: dict[int, OwnedPartition],
        done: list[tuple[Received, Any]],
        failures: list[Failure],
        now: float,
        on_lost: Callable[[OwnedPartition, int], None],
        *,
        defer: bool = False,
    ) -> None:
        """Acknowledge ``done`` (message, handler result) and deal with ``failures``.

        Plain messages are acknowledged in one script call per (partition,
        level); jobs one by one, each with its result. Failures are held for a
        retry after a backoff or, past ``max_deliveries``, dead-lettered.

        ``defer`` (and :attr:`deferrable`): when everything to send is acknowledgements
        (of plain messages, or of jobs with their results), they are kept for the
        consumer to send in the same round trip as its next read (:meth:`take_deferred`,
        then :meth:`record`), which the consumer does before anything else reaches Redis
        for these partitions.
        """
        unstored: list[Failure] = []
        calls, settled = self._done_calls(owned, done, unstored)
        failures[:0] = unstored
        dead: list[Failure] = []
        # Final ones first: at most one failure per partition is retried, and it heads what
        # that partition holds.
        for failure in sorted(failures, key=lambda f: not self.final(f, owned)):
            self._schedule(owned, failure, now, dead, calls)
        if dead:
            calls += self._dead_letter_calls(owned, dead)
        if self.delete_acked:
            calls += _deletions(calls)
        if not calls:
            return
        if defer and self.deferrable and not dead and all(c[0] in _DEFERRABLE for c in calls):
            for p in settled:
                self._defer_for(owned[p])
            self._deferred += calls
            return
        numbers = {m.partition for m, _ in done} | {f.message.partition for f in failures}
        holds = {owned[n].lease: owned[n] for n in numbers if n in owned}  # made for these
        try:
            results = await run_pipelined(redis, calls)
        except BaseException:  # Redis failed, or a forced stop: they go with the next round trip
            self.keep_back(calls, holds, owned)
            raise
        await self.record(redis, calls, results, owned, on_lost, holds=holds)

    def _done_calls(
        self,
        owned: dict[int, OwnedPartition],
        done: list[tuple[Received, Any]],
        unstored: list[Failure],
    ) -> tuple[list[ScriptCall], set[int]]:
        """The calls that settle ``done``, and the partitions of their acknowledgements.

        A job whose result can't be serialized goes to ``unstored`` instead.
        """
        acks: dict[tuple[int, int], list[str]] = {}
        jobs: dict[tuple[int, int], list[tuple[Received, bytes]]] = {}  # result: kind + data
        cancelled: dict[tuple[int, int], list[Received]] = {}
        ids: list[str] = []
        at: tuple[int, int] = (-1, -1)  # the (partition, level) ``ids`` collects for
        for message, result in done:
            if not message.job_id:
                if message.partition != at[0] or message.priority != at[1]:
                    at = (message.partition, message.priority)
                    ids = acks.setdefault(at, [])
                ids.append(message.msg_id)
                continue
            part = owned.get(message.partition)
            if part is None:
                continue
            key = (part.number, message.priority)
            if result is CANCELLED:
                cancelled.setdefault(key, []).append(message)
                continue
            try:
                kind, data = encode_payload(self.serializer, result)
            except SerializationError as exc:
                # Its handler ran to the end: another run would repeat its work for a
                # result of the same kind. Ahead of the others: it came first in its partition.
                unstored.append(Failure(message, exc, [], final=True))
                continue
            jobs.setdefault(key, []).append((message, (b"b" if kind == F_BYTES else b"s") + data))
        delete = self.delete_acked
        calls: list[ScriptCall] = [
            ack_call(
                owned[p].streams[level], owned[p].lease, self.group, self.token, ids, delete=delete
            )
            for (p, level), ids in acks.items()
            if p in owned  # a partition dropped meanwhile: its new owner handles them again
        ]
        for (p, level), done_jobs in jobs.items():
            part = owned[p]
            keys: list[Any] = [part.streams[level], part.lease, self.keys.jobs(p)]
            prefix = self.keys.job(p, "")
            args: list[Any] = [self.group, self.token, self._channel, self._name, len(prefix)]
            for message, result in done_jobs:
                keys.append(f"{prefix}{message.job_id}".encode())
                args += [message.msg_id.encode(), result]
            calls.append((JOBS_COMPLETE, keys, args))
            self.index.note(p, len(done_jobs))
        if cancelled:
            calls += cancelled_calls(self.keys, owned, self.group, self.token, cancelled)
        return calls, {p for p, _ in (*acks, *jobs) if p in owned}

    def keep_done(self, owned: dict[int, OwnedPartition], done: list[tuple[Received, Any]]) -> None:
        """Keep back the calls that settle ``done`` (a forced stop cut their dispatch short).

        The consumer sends them as it leaves, before releasing its leases: those
        handlers ran to the end, and their messages are not run again (a job whose result
        can't be serialized is dead-lettered, as in :meth:`settle`).
        """
        unstored: list[Failure] = []
        calls, _ = self._done_calls(owned, done, unstored)
        calls += self._dead_letter_calls(owned, unstored)
        self.keep_back(calls, {part.lease: part for part in owned.values()}, owned)

    def ack_gone(
        self, gone: dict[tuple[OwnedPartition, int], list[str]], owned: dict[int, OwnedPartition]
    ) -> None:
        """Acknowledge pending entries whose data was trimmed: there is nothing to handle.

        Kept back for the next round trip: the messages claimed with them are in hand, and
        nothing may come between their claim and their handlers. Only for partitions still
        held as they were (``owned``): a new hold claims them again.
        """
        for (part, level), ids in gone.items():
            if owned.get(part.number) is not part:
                continue
            self._defer_for(part)
            self.keep([ack_call(part.streams[level], part.lease, self.group, self.token, ids)])

    def _defer_for(self, part: OwnedPartition) -> None:
        """Note that calls kept back for ``part``'s lease are made for ``part``.

        Calls still kept back for an earlier hold of that partition are dropped (see
        :meth:`take_deferred`).
        """
        earlier = self._deferred_for.get(part.lease)
        if earlier is not None and earlier is not part:
            stale = [c for c in self._deferred if c[1][1] == part.lease]
            if stale:
                self._deferred = [c for c in self._deferred if c[1][1] != part.lease]
                self.stats.fenced += sum(_count(c) for c in stale)
        self._deferred_for[part.lease] = part

    def take_deferred(self, owned: dict[int, OwnedPartition]) -> list[ScriptCall]:
        """The acknowledgements :meth:`settle` kept back (the caller now sends them).

        Only those of partitions still held as they were (``owned``): the lease token
        stays the consumer's, so a call kept while a partition went to another member
        and came back would pass its fence, over what that member did meanwhile. Their
        entries are claimed back and handled again, as a new owner's would be.
        """
        calls, self._deferred = self._deferred, []
        held = [
            c for c in calls
            if (part := self._deferred_for.get(c[1][1])) is not None
            and owned.get(part.number) is part
        ]  # fmt: skip
        if len(held) < len(calls):
            gone = [c for c in calls if c not in held]
            self.stats.fenced += sum(_count(c) for c in gone)
        return held

    def keep_back(
        self,
        calls: list[ScriptCall],
        holds: dict[Any, OwnedPartition],
        owned: dict[int, OwnedPartition],
    ) -> None:
        """Keep back what of ``calls`` a failed round trip may not have carried out.

        Only the calls that settle for good (acknowledgements, job results, cancelled
        jobs, dead letters): sent again first, they spare their messages another run.
        Each is fenced and does nothing twice (a dead letter is written only for an
        entry still pending). ``holds``: the partitions, by lease key, the calls were
        made for; a call for one not held as it was any more is dropped (as in
        :meth:`take_deferred`).
        """
        kept: list[ScriptCall] = []
        for call in calls:
            hold = holds.get(call[1][1]) if call[0] in _KEPT else None
            if hold is None:
                continue
            if owned.get(hold.number) is hold:
                self._defer_for(hold)
                kept.append(call)
            else:
                self.stats.fenced += _count(call)
        self.keep(kept)

    def keep(self, calls: list[ScriptCall]) -> None:
        """Keep back again acknowledgements that failed: they go first in the next round trip.

        Each is fenced by its partition's lease and idempotent, so one that did reach
        Redis (its reply was lost) does no harm sent again; one whose lease is gone
        meanwhile is refused, and its entries are handled again by the new owner.
        """
        self._deferred[:0] = calls

    async def flush(
        self,
        redis: AnyRedis,
        owned: dict[int, OwnedPartition],
        on_lost: Callable[[OwnedPartition, int], None],
        reader: Reader | None = None,
        parts: list[OwnedPartition] | None = None,
        *,
        last: bool = False,
    ) -> list[Received]:
        """Send the acknowledgements :meth:`settle` kept back.

        With a ``reader`` and ``parts`` (one server only), in the same round trip as a read
        of new entries of ``parts`` that does not block; returns what it read. Otherwise
        in a round trip of their own. ``last``: the consumer leaves; what fails is not
        kept back (a later run of the same consumer holds its leases under the same token,
        and its handlers may have settled those messages otherwise by then).
        """
        try:
            return await self._flush(redis, owned, on_lost, reader, parts)
        except REDIS_FAILURES:
            if last:
                self._deferred = []
            raise

    async def _flush(
        self,
        redis: AnyRedis,
        owned: dict[int, OwnedPartition],
        on_lost: Callable[[OwnedPartition, int], None],
        reader: Reader | None,
        parts: list[OwnedPartition] | None,
    ) -> list[Received]:
        calls = self.take_deferred(owned)
        if not calls:
            return []
        holds = self.holds_of(calls)
        if reader is None or not parts or not isinstance(redis, Redis):
            try:
                results = await run_pipelined(redis, calls)
            except BaseException:  # Redis failed, or a forced stop: kept for the next
                self.keep_back(calls, holds, owned)
                raise
            await self.record(redis, calls, results, owned, on_lost, holds=holds)
            return []
        return await self.record_read(
            redis, calls, holds, reader.read_after(redis, parts, calls), owned, on_lost
        )

    def holds_of(self, calls: list[ScriptCall]) -> dict[Any, OwnedPartition]:
        """The partitions, by lease key, that ``calls`` (just taken back) were made for."""
        return {c[1][1]: self._deferred_for[c[1][1]] for c in calls}

    async def record_read(
        self,
        redis: AnyRedis,
        calls: list[ScriptCall],
        holds: dict[Any, OwnedPartition],
        read: Awaitable[tuple[list[Received], list[Any]]],
        owned: dict[int, OwnedPartition],
        on_lost: Callable[[OwnedPartition, int], None],
    ) -> list[Received]:
        """Await ``read`` (``calls`` sent with a read), record the calls; return what it read.

        ``calls`` (made for ``holds``, see :meth:`holds_of`) that failed, or whose replies
        were lost, are kept back again (:meth:`keep_back`).
        """
        try:
            messages, results = await read
        except ReadAfterError as failed:
            await self.record(redis, calls, failed.replies, owned, on_lost, holds=holds)
            raise failed.error from None
        except BaseException:  # Redis failed, or cancelled: kept for the next round trip
            self.keep_back(calls, holds, owned)
            raise
        try:
            await self.record(redis, calls, results, owned, on_lost, holds=holds)
        except REDIS_FAILURES:
            # What the read brought is not handled now: owed a give-back, claimed after it.
            for number, part in owned.items():
                mine = [m for m in messages if m.partition == number]
                if mine:
                    part.reclaim()
                    self.give_back.owe(number, mine)
            raise
        return messages

    async def record(
        self,
        redis: AnyRedis,
        calls: list[ScriptCall],
        results: list[Any],
        owned: dict[int, OwnedPartition],
        on_lost: Callable[[OwnedPartition, int], None],
        *,
        holds: dict[Any, OwnedPartition] | None = None,
    ) -> None:
        """Count the outcome of ``calls`` (their ``results``, in order).

        A call that found no script (sent in another command's round trip) is sent again
        on its own, loading the script. A failed call raises its error once the others
        are counted; with ``holds`` (the partitions the calls were made for, by lease key),
        the failed ones that settle for good are kept back first (:meth:`keep_back`).
        """
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            try:
                again = await run_pipelined(redis, [calls[i] for i in missing])
            except REDIS_FAILURES as exc:
                again = [exc] * len(missing)
            except BaseException:  # cancelled: kept back, with those that failed otherwise
                if holds is not None:
                    errors = [
                        c for c, r in zip(calls, results, strict=True) if isinstance(r, Exception)
                    ]
                    self.keep_back(errors, holds, owned)
                raise
            results = list(results)
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        failed = [(c, r) for c, r in zip(calls, results, strict=True) if isinstance(r, Exception)]
        for (script, call_keys, call_args), result in zip(calls, results, strict=True):
            if isinstance(result, Exception):
                continue
            if script is JOB_UPDATE or script is DELETE_ACKED:
                continue
            # The hold the call was made for: a refusal of one the partition had before it
            # was taken back must not drop the one it has now.
            part = holds.get(call_keys[1]) if holds is not None else None
            if part is None:
                part = next((s for s in owned.values() if s.lease == call_keys[1]), None)
            count = _count((script, call_keys, call_args))
            if not isinstance(result, bytes) and int(result) == -1:
                if part is not None:
                    on_lost(part, count)
                continue
            if script is JOBS_CANCELLED:
                continue  # settled, not handled
            if script is DEAD_LETTER and not isinstance(result, bytes) and int(result) == -2:
                log.info(
                    "consumer %s: job %s, cancelled, settled as such instead of dead-lettered",
                    self.name, optional_text(call_args[4]),
                )  # fmt: skip
                continue
            if script is DEAD_LETTER and not isinstance(result, bytes) and int(result) == -3:
                log.error(
                    "consumer %s: message %s of %s stays pending, not dead-lettered: %s takes "
                    "no more entries (another client added one of the largest id)",
                    self.name, optional_text(call_args[2]), optional_text(call_keys[0]),
                    optional_text(call_keys[2]),
                )  # fmt: skip
                if part is not None:
                    self.refused.add((part.number, optional_text(call_args[2]) or ""))
                continue
            if script is DEAD_LETTER:
                self.stats.add_dead_lettered(part.number if part is not None else 0)
                log.warning(
                    "consumer %s: message %s of %s dead-lettered after %s deliveries: %s",
                    self.name, call_args[2], call_keys[0], _field(call_args, "deliveries"),
                    call_args[7],
                    extra={"partition": part.number if part is not None else None,
                           "msg_id": optional_text(call_args[2]),
                           "job_id": optional_text(call_args[4]) or None},
                )  # fmt: skip
            else:
                self.stats.handled += count
                if part is not None:
                    pp = self.stats.per_partition
                    pp[part.number] = pp.get(part.number, 0) + count
        if failed:
            if holds is not None:
                self.keep_back([call for call, _ in failed], holds, owned)
            raise failed[0][1]

    def runs_of(self, m: Received) -> int | None:
        """The handler runs counted for ``m``, if any.

        Also a count made under an earlier hold of its partition (the lease lapsed and was
        taken again while the handler ran): runs another holder counted meanwhile are not
        in it, so it is never more than the runs made.
        """
        entry = self.runs.get(run_key(m))
        return entry[1] if entry is not None else None

    def final(self, failure: Failure, owned: dict[int, OwnedPartition]) -> bool:
        """Whether settling ``failure`` dead-letters its message (no retry).

        Past ``max_deliveries`` handler runs: for a message delivered again, those counted
        in its partition's ``runs`` hash (its delivery count is raised by every claim of
        the backlog it waits in), else its delivery count.
        """
        m = failure.message
        runs = self.runs_of(m) or m.deliveries
        return (
            failure.final
            or isinstance(m, Undecodable)
            or (self.dead_letter and runs >= self.max_deliveries)
        )

    def _schedule(
        self,
        owned: dict[int, OwnedPartition],
        failure: Failure,
        now: float,
        dead: list[Failure],
        calls: list[ScriptCall],
    ) -> None:
        m = failure.message
        self.stats.add_failed(m.partition)
        part = owned.get(m.partition)
        if part is None:
            return
        final = self.final(failure, owned)
        part.unrun.difference_update((x.priority, x.msg_id) for x in (m, *failure.rest))
        part.unrun.update((x.priority, x.msg_id) for x in failure.waiting)
        if final:
            dead.append(failure)
            if failure.rest or failure.waiting or part.held:
                part.held = [*failure.rest, *failure.waiting, *part.held]
                part.head_failed, part.isolate, part.retry_at = False, False, now
            return
        error, error_type = _error_text(failure.error)
        log.info(
            "consumer %s: message %s of partition %d failed (delivery %d): %s: %s",
            self.name, m.msg_id, part.number, m.deliveries, error_type, error,
            extra={"partition": part.number, "msg_id": m.msg_id, "job_id": m.job_id},
        )  # fmt: skip
        # Anything still held in the partition (the rest of an isolated batch) comes after.
        part.held, part.head_failed = [m, *failure.rest, *failure.waiting, *part.held], True
        part.isolate = failure.isolate
        part.retry_at = now + backoff_delay(
            m.deliveries, self.retry_backoff, self.retry_backoff_max
        )
        if m.job_id:  # fenced: a member that lost the lease leaves the new owner's record
            calls.append((
                JOB_UPDATE, [*self._job_keys(m), part.lease],
                [m.job_id, self.keys.job_channel, "failed", self.name, error, error_type, 0,
                 self.token],
            ))  # fmt: skip

    def _dead_letter_calls(
        self, owned: dict[int, OwnedPartition], failures: list[Failure]
    ) -> list[ScriptCall]:
        calls: list[ScriptCall] = []
        for f in failures:
            m = f.message
            part = owned.get(m.partition)
            if part is None:  # found lost meanwhile (a fenced acknowledgement): its owner's now
                continue
            stream = part.streams[m.priority]
            fields = dead_letter_fields(
                topic=self.keys.topic, partition=part.number, group=self.group,
                msg_id=m.msg_id, deliveries=m.deliveries, error=f.error,
                consumer=self.name, original=None, priority=m.priority,
            )  # fmt: skip
            # The script adds the entry's own fields; those read already (an undecodable
            # entry's) stand in if the entry is trimmed meanwhile.
            read = m.fields if isinstance(m, Undecodable) and len(m.fields) < 3000 else {}
            error, error_type = _error_text(f.error)
            keys = [stream, part.lease, self.keys.dead_letters(part.number)]
            if m.job_id:
                keys += self._job_keys(m)
                self.index.note(part.number, 1)
            args = [self.group, self.token, m.msg_id, self.dead_letter_maxlen, m.job_id or "",
                    self.keys.job_channel, self.name, error, error_type,
                    "1" if self.delete_acked else "", len(fields), *fields,
                    *(x for pair in read.items() for x in pair)]  # fmt: skip
            calls.append((DEAD_LETTER, keys, args))
        return calls


_DEFERRABLE = (ACK, JOBS_COMPLETE)
"""What may wait for the next read: acknowledgements, with or without a job's result."""

_KEPT = (*_DEFERRABLE, DEAD_LETTER, JOBS_CANCELLED)
"""What a failed round trip keeps back for the next (see ``Settler.keep_back``)."""


def _field(dead_letter_args: Sequence[Any], name: str) -> Any:
    """A field of the origin record a dead-letter call writes (see ``dead_letter.lua``)."""
    pairs = dead_letter_args[11 : 11 + int(dead_letter_args[10])]
    return next((v for k, v in zip(pairs[::2], pairs[1::2], strict=False) if k == name), None)


def _deletions(calls: list[ScriptCall]) -> list[ScriptCall]:
    """XDELEX ACKED for the entries that job completions and cancellations acknowledged.

    A dead letter deletes its entry itself (``dead_letter.lua``): only when it holds the
    entry's fields.
    """
    ids: dict[Any, list[Any]] = {}
    for script, keys, args in calls:
        if script is JOBS_COMPLETE:
            ids.setdefault(keys[0], []).extend(args[5::2])
        elif script is JOBS_CANCELLED:
            ids.setdefault(keys[0], []).extend(args[3::2])
    return [(DELETE_ACKED, [stream], found) for stream, found in ids.items()]


def _count(call: ScriptCall) -> int:
    """How many messages a settling call settles."""
    script, keys, args = call
    if script is ACK:
        return ack_count(args)
    return len(keys) - 3 if script is JOBS_COMPLETE or script is JOBS_CANCELLED else 1


def batch_failures(chunk: list[Received], exc: BaseException) -> list[Failure]:
    """A failed batch: per partition, retried one message at a time to find the culprit.

    The first message is counted as failed (delivery + 1 on its retry) and runs
    alone; the rest follow. So only a message that fails on its own reaches
    ``max_deliveries``, and the others of its batch are not dead-lettered with it.
    """
    by_part: dict[int, list[Received]] = {}
    for m in chunk:
        by_part.setdefault(m.partition, []).append(m)
    return [Failure(msgs[0], exc, msgs[1:], isolate=True) for msgs in by_part.values()]
