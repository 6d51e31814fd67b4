"""Running a consumer's handler over what it read, then handing the outcome to settlement.

:class:`Dispatcher` is the part of a :class:`~redisaq_core.consumer.Consumer` that
calls handlers: one message at a time per partition (partitions side by side,
up to ``concurrency``) for ``process``, batches for ``process_batch``; each call
bounded by ``max_processing_time`` (or ``Message.timeout``).

Entries delivered before and never settled (a consumer died, or a reply was
lost) go one at a time, each settled before the next, so that a handler that
ends its process leaves exactly its own message unsettled. Such an entry's
handler runs are counted in the partition's ``runs`` hash just before each
run, and so are a member's own retries (``Reader.retries``): the stream's
delivery count can't tell them, since every claim raises the count of every
pending entry, also of those waiting behind a message that kills its process.
A redelivered entry that already ran ``max_deliveries`` times (its first
delivery counted as a run) is dead-lettered, not run again, and a failure is
held against those runs (``Settler.runs``). A run counted for an entry that
then never ran is given back with it; the field of one settled for good is
removed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import operator
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from itertools import groupby
from typing import Any, TypeVar

from ._cancellation import CANCELLED, RunningJobs, skip_cancelled
from ._delivery import (
    ConsumerStats,
    OwnedPartition,
    Undecodable,
    count_run,
    run_key,
)
from ._settlement import Failure, Settler, batch_failures
from ._tasks import raised_by_the_call, uncancel
from ._tracing import ProcessSpans, process_spans
from .connection import AnyRedis
from .errors import ConsumerError
from .keys import TopicKeys
from .message import Received

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)


_T = TypeVar("_T")
_IN_HANDLER: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "redisaq_in_handler", default=None
)
_job_id = operator.attrgetter("job_id")
_partition = operator.attrgetter("partition")

if sys.version_info >= (3, 11):

    async def _bounded(call: Awaitable[_T], limit: float | None) -> _T:
        """``await call``, cancelled after ``limit`` seconds, in this task (no task per call)."""
        async with asyncio.timeout(limit):
            return await call

else:  # pragma: no cover - Python 3.10

    async def _bounded(call: Awaitable[_T], limit: float | None) -> _T:
        """``await call``, cancelled after ``limit`` seconds."""
        return await asyncio.wait_for(call, limit)


class Dispatcher:
    """Calls a consumer's handler and settles the results (see the module's text)."""

    def __init__(
        self,
        *,
        keys: TopicKeys,
        group: str,
        settler: Settler,
        stats: ConsumerStats,
        owned: dict[int, OwnedPartition],
        fenced: Callable[[OwnedPartition, int], None],
        batch_size: int,
        concurrency: int,
        dead_letter: bool,
        max_deliveries: int,
        max_processing_time: float | None,
    ) -> None:
        self.keys = keys
        self.group = group
        self.settler = settler
        self.stats = stats
        self.owned = owned
        self.fenced = fenced
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.dead_letter = dead_letter
        self.max_deliveries = max_deliveries
        self.max_processing_time = max_processing_time
        self._calls: set[_Call] = set()
        self.jobs = RunningJobs(keys, group, settler.token)
        """Job handlers under way: cancelled on request (each heartbeat), their progress."""

    def in_handler(self) -> bool:
        """Whether the current task runs one of this dispatcher's handler calls."""
        return _IN_HANDLER.get() is self

    def cut_off_hung(self, now: float) -> None:
        """Cancel handler calls running past ``max_processing_time`` (on every heartbeat)."""
        limit = self.max_processing_time
        if limit is None:
            return
        for call in list(self._calls):
            if not call.cut_off and now - call.started > limit:
                call.cut_off = True
                call.task.cancel()

    async def _call(
        self, handler: Callable[[Any], Awaitable[Any]], arg: Any, started: float,
        timeout: float | None,
    ) -> Any:  # fmt: skip
        """One handler call; ``asyncio.TimeoutError`` once it has run too long.

        ``timeout`` (a message's own) gets a timer; ``max_processing_time`` costs no timer
        per call: :meth:`cut_off_hung` looks at the calls under way on each heartbeat.
        While a call is in ``_calls`` this task is suspended inside the handler, so the
        cancellation can only land there.
        """
        if timeout:
            return await _bounded(handler(arg), timeout)
        task = asyncio.current_task()
        if self.max_processing_time is None or task is None:
            return await handler(arg)
        call = _Call(task, started)
        self._calls.add(call)
        try:
            return await handler(arg)
        except asyncio.CancelledError:
            if not call.cut_off:
                raise
            uncancel()
            raise asyncio.TimeoutError from None
        finally:
            self._calls.discard(call)

    async def dispatch(
        self,
        redis: AnyRedis,
        handler: Callable[[Any], Awaitable[Any]],
        messages: list[Received],
        batch: bool,
        *,
        reclaimed: bool,
    ) -> None:
        """Run ``handler`` over ``messages`` (read together), then settle them.

        ``reclaimed``: they were claimed from a pending list (see the consumer).
        """
        self.jobs.attach(redis)
        if reclaimed and any(m.deliveries > 1 for m in messages):
            waiting: list[Received] = []  # behind a failure: given back, claimed after it
            behind: set[int] = set()
            loop = asyncio.get_running_loop()
            for i, m in enumerate(messages):  # one at a time, each settled before the next
                part = self.owned.get(m.partition)
                # Lost meanwhile, or past its local deadline: no run is counted for what
                # never runs here (its count would dead-letter it unrun at its next owner).
                if (
                    m.partition in behind or part is None or part.held
                    or part.valid_until <= loop.time()
                ):  # fmt: skip
                    behind.add(m.partition)
                    waiting.append(m)
                    continue
                try:
                    await self._dispatch_one(redis, handler, m, batch)
                except BaseException:  # a forced stop, Redis gone: the rest never ran
                    self._never_ran([*waiting, *messages[i + 1 :]])
                    raise
            self._never_ran(waiting)
            return
        await self._dispatch_now(redis, handler, messages, batch, defer=True)

    async def _dispatch_one(
        self, redis: AnyRedis, handler: Callable[[Any], Awaitable[Any]], m: Received, batch: bool
    ) -> None:
        """Run the handler over one redelivered message and settle it (module text)."""
        if m.deliveries == 1 or not self.dead_letter:
            await self._dispatch_now(redis, handler, [m], batch)
            return
        try:
            count = await count_run(redis, self.keys, self.group, self.settler.token, m)
        except BaseException:  # it never ran; its count, if made, is taken back with it
            self.settler.give_back.owe_run(m, None)
            self._never_ran([m])
            raise
        part = self.owned.get(m.partition)
        if count < 0:  # the lease moved on: nothing counted, it never runs; left to the heartbeat
            if part is not None:
                part.valid_until = 0.0
            self._never_ran([m])
            return
        if part is None:  # lost meanwhile: it never runs
            self.settler.give_back.owe_run(m, count - 1)
            return
        self.settler.runs[run_key(m)] = (part, count + 1, m)
        await self._dispatch_now(redis, handler, [m], batch, ran=count)

    def _never_ran(self, messages: list[Received]) -> None:
        """Owe a give-back of ``messages`` (never handed to the handler); claim them later.

        A run counted for one of them in the ``runs`` hash is taken back with it: the one
        counted for this delivery of it (not one a delivery before it really ran), under
        the partition's hold of then, whether still held or found lost since.
        """
        give_back, runs = self.settler.give_back, self.settler.runs
        for number, msgs in _by_partition(messages).items():
            if (part := self.owned.get(number)) is not None:
                if part.held and not part.head_failed:
                    # Held to go after them (the rest of a batch whose first message was
                    # retried alone): handed out first, they would pass them. The claim
                    # brings them all again, in stream order.
                    give_back.owe_held([part])
                    part.held = []
                part.reclaim()
            give_back.owe(number, msgs)
            for m in msgs if runs else ():
                entry = runs.pop(run_key(m), None)
                if entry is not None and entry[2] is m:
                    give_back.owe_run(m, entry[1] - 2)  # runs before this one (the first uncounted)

    def _not_ours(self, messages: list[Received], lost: set[int]) -> list[Received]:
        """``messages`` but those of the partitions ``lost`` (their leases found gone).

        Those never run here: they are given back, with any run counted for them.
        """
        for number, msgs in _by_partition(messages).items():
            if number in lost and (part := self.owned.get(number)) is not None:
                self.fenced(part, len(msgs))
        self._never_ran([m for m in messages if m.partition in lost])
        return [m for m in messages if m.partition not in lost]

    def _retrying(self, m: Received) -> bool:
        """Whether ``m`` failed and waits for its retry (heading its partition's held)."""
        part = self.owned.get(m.partition)
        return part is not None and part.head_failed and bool(part.held) and part.held[0] is m

    async def _forget_runs(self, redis: AnyRedis, messages: Iterable[Received]) -> None:
        """Forget the runs counted for those of ``messages`` settled for good (not retried)."""
        runs, owned = self.settler.runs, self.owned
        settled: dict[int, list[str]] = {}
        refused = self.settler.refused
        for m in messages:
            entry = runs.get(key := run_key(m))
            if entry is not None and not self._retrying(m):
                del runs[key]
                if (m.partition, m.msg_id) in refused:  # still pending: its runs stay counted
                    refused.discard((m.partition, m.msg_id))
                elif owned.get(m.partition) is entry[0]:  # else not settled here: its owner's
                    settled.setdefault(m.partition, []).append(m.msg_id)
        for key in [k for k, (hold, _, _) in runs.items() if owned.get(k[0]) is not hold]:
            del runs[key]
        if settled:
            pipe = redis.pipeline(transaction=False)
            for number, ids in settled.items():
                pipe.hdel(self.keys.runs(number, self.group), *ids, *("@" + i for i in ids))
            await pipe.execute(raise_on_error=False)  # a key another client spoilt: it expires

    async def _dispatch_now(
        self,
        redis: AnyRedis,
        handler: Callable[[Any], Awaitable[Any]],
        messages: list[Received],
        batch: bool,
        *,
        ran: int = 0,
        defer: bool = False,
    ) -> None:
        """Run the handler over ``messages`` and settle them.

        ``ran``: handler runs counted for a redelivered message (``messages`` is that one
        message), this run included. ``defer``: plain acknowledgements may go out with the
        next read (never for redelivered entries: each is settled before the next).
        """
        failures: list[Failure] = []
        if Undecodable in map(type, messages):
            failures += [Failure(m, m.error, []) for m in messages if isinstance(m, Undecodable)]
            messages = [m for m in messages if not isinstance(m, Undecodable)]
        if ran and messages and ran + 1 > self.max_deliveries:
            # Its handler ran as often as allowed without a result: those runs may have
            # ended their process. It is not handed to the handler again.
            m = messages.pop(0)
            failures.append(Failure(m, ConsumerError(
                f"delivered {m.deliveries} times; {ran} handler runs ended without a result "
                f"(the handler may have ended its process), max_deliveries="
                f"{self.max_deliveries}"
            ), [], final=True))  # fmt: skip
        done: list[tuple[Received, Any]] = []
        loop = asyncio.get_running_loop()
        if self.settler.runs and any(run_key(m) in self.settler.runs for m in messages):
            defer = False  # acknowledged before their runs are forgotten
        if messages and self._has_jobs(messages):
            if not batch:  # a cancellation noticed from here on keeps a handler from running
                self.jobs.wait(messages)
            try:
                cancelled, lost = await self.settler.started(redis, messages)
            except BaseException:  # a forced stop, Redis gone: none of them ran
                self.jobs.stop_waiting()
                self._never_ran(messages)
                raise
            if lost:  # their new owners claim them
                messages = self._not_ours(messages, lost)
            if cancelled:
                messages = skip_cancelled(messages, cancelled, done)
        token = _IN_HANDLER.set(self)  # copied into the partitions' tasks
        groups = _by_partition(messages)
        flight = self._in_flight({p: len(msgs) for p, msgs in groups.items()}, +1)
        spans = process_spans(self.keys.topic, self.group, self.settler.name)
        try:
            if batch:
                await self._run_batches(handler, messages, spans, done, failures)
            else:
                await self._run_partitions(handler, groups, spans, done, failures)
        except asyncio.CancelledError:
            # A forced stop: what ran to the end is settled as the consumer leaves (not run
            # again); what waited behind a failure never ran.
            self._never_ran([m for f in failures for m in f.waiting])
            self.settler.keep_done(self.owned, done)
            raise
        finally:
            self.jobs.stop_waiting()
            _IN_HANDLER.reset(token)
        self._in_flight(flight, -1)
        try:
            await self.settler.settle(
                redis, self.owned, done, failures, loop.time(), self.fenced, defer=defer
            )
        finally:
            if spans is not None:
                final, owned = self.settler.final, self.owned
                spans.end((f.message, f.error, final(f, owned)) for f in failures)
        if self.settler.runs:
            await self._forget_runs(redis, [*(m for m, _ in done), *(f.message for f in failures)])

    async def _run_batches(
        self, handler: Callable[[Any], Awaitable[Any]], messages: list[Received],
        spans: ProcessSpans | None, done: list[tuple[Received, Any]], failures: list[Failure],
    ) -> None:  # fmt: skip
        """``messages`` in batches of ``batch_size``; a partition that fails holds back the rest."""
        loop = asyncio.get_running_loop()
        failed: dict[int, Failure] = {}  # by partition: the rest of it waits behind
        cut: set[int] = set()  # past the lease's local deadline: the rest is left pending
        for k, chunk in enumerate(chunks := self._chunks(messages)):
            if failed:
                chunk = _held_back(chunk, failed)
                if not chunk:
                    continue
            started = loop.time()
            for m in chunk:  # as _run_partition does before each message
                part = self.owned.get(m.partition)
                if part is None or part.valid_until <= started:
                    cut.add(m.partition)
            if cut:
                self._never_ran([m for m in chunk if m.partition in cut])
                chunk = [m for m in chunk if m.partition not in cut]
                if not chunk:
                    continue
            try:
                call = self._call(handler, chunk, started, None)
                result = await (call if spans is None else spans.run(chunk, call))
            except asyncio.CancelledError as exc:
                if raised_by_the_call():  # the handler's own: a failure like any other
                    failures += _note(batch_failures(chunk, exc), failed)
                    continue
                self._never_ran([m for later in chunks[k + 1 :] for m in later])
                raise
            except asyncio.TimeoutError as exc:
                for m in chunk:
                    self.stats.add_timed_out(m.partition)
                error = TimeoutError(
                    f"batch handler did not finish within {self.max_processing_time}s "
                    "(max_processing_time)"
                )
                error.__cause__ = exc
                failures += _note(batch_failures(chunk, error), failed)
                continue
            except Exception as exc:
                failures += _note(batch_failures(chunk, exc), failed)
                continue
            if self.stats.recorder is not None:
                self._count_batch(chunk, loop.time() - started)
            if isinstance(result, (list, tuple)) and len(result) == len(chunk):
                done += list(zip(chunk, result, strict=True))
            else:
                done += [(m, None) for m in chunk]

    def _chunks(self, messages: list[Received]) -> list[list[Received]]:
        """``messages`` in batches of ``batch_size``; a retry that runs alone in a batch of its own.

        Such a retry (of the first message of a failed batch) finds whether that message
        fails by itself: sharing a batch with another partition's failing message, it
        would fail with it, and be held against ``max_deliveries`` for a failure not its own.
        """
        size = self.batch_size
        if not any(part.alone for part in self.owned.values()):
            return [messages[i : i + size] for i in range(0, len(messages), size)]
        alone: list[list[Received]] = []
        rest: list[Received] = []
        for m in messages:
            part = self.owned.get(m.partition)
            if part is not None and part.alone == (m.priority, m.msg_id):
                part.alone = None
                alone.append([m])
            else:
                rest.append(m)
        return alone + [rest[i : i + size] for i in range(0, len(rest), size)]

    async def _run_partitions(
        self, handler: Callable[[Any], Awaitable[Any]], groups: dict[int, list[Received]],
        spans: ProcessSpans | None, done: list[tuple[Received, Any]], failures: list[Failure],
    ) -> None:  # fmt: skip
        """Each partition's messages in order, partitions side by side (``concurrency``)."""
        if len(groups) == 1:
            (msgs,) = groups.values()
            if (failure := await self._run_partition(handler, msgs, done, spans)) is not None:
                failures.append(failure)
            return
        gate = asyncio.Semaphore(self.concurrency)
        waiting = dict(groups)  # a task cancelled before its first step runs no code

        async def run(msgs: list[Received]) -> None:
            del waiting[msgs[0].partition]
            try:
                await gate.acquire()
            except asyncio.CancelledError:
                self._never_ran(msgs)  # a forced stop before the partition's turn
                raise
            try:
                failure = await self._run_partition(handler, msgs, done, spans)
            finally:
                gate.release()
            if failure is not None:
                failures.append(failure)

        try:
            await asyncio.gather(*(run(msgs) for msgs in groups.values()))
        except asyncio.CancelledError:
            self._never_ran([m for msgs in waiting.values() for m in msgs])
            raise

    def _count_batch(self, chunk: list[Received], took: float) -> None:
        recorder = self.stats.recorder
        assert recorder is not None
        now = time.time()
        for partition, msgs in _by_partition(chunk).items():
            recorder.handled_many(partition, took, [now - m.enqueued_at for m in msgs])

    def _in_flight(self, counts: dict[int, int], sign: int) -> dict[int, int]:
        """Add (or, with ``sign=-1``, remove) messages to the in-flight gauge per partition."""
        if self.stats.recorder is None:
            return {}
        for partition, n in counts.items():
            self.stats.recorder.in_flight(partition, sign * n)
        return counts

    @staticmethod
    def _has_jobs(messages: list[Received]) -> bool:
        return any(map(_job_id, messages))

    async def _run_partition(
        self, handler: Callable[[Any], Awaitable[Any]], msgs: list[Received],
        done: list[tuple[Received, Any]], spans: ProcessSpans | None = None,
    ) -> Failure | None:  # fmt: skip
        """One partition's messages in order, one handler call each (the hot path).

        Each one that ran to the end goes to ``done`` (message, result) at once; returns
        the failure that ended the run, if one did.

        One :class:`_Call` serves the whole run: the calls follow each other in this task,
        and nothing between two of them awaits, so :meth:`cut_off_hung` only ever finds
        this task inside a handler.
        """
        loop = asyncio.get_running_loop()
        # asyncio's own loop reads time.monotonic(): called directly, a Python call less.
        clock = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        owned, number = self.owned, msgs[0].partition
        task = asyncio.current_task()
        call = None
        if self.max_processing_time is not None and task is not None:
            call = _Call(task, math.inf)
            self._calls.add(call)
        took: list[float] = []  # handler seconds and end-to-end ages of those handled
        ages: list[float] = []
        started = clock()
        wall = time.time() - started  # loop time to wall-clock time
        try:
            for i, m in enumerate(msgs):
                part = owned.get(number)
                if part is None or part.valid_until <= started:
                    # The lease may have passed to another member (this process was paused
                    # or cut off): leave the rest pending. If the next heartbeat finds the
                    # lease still ours, they are claimed back from our pending list, before
                    # anything newer is read; if not, the new owner claims them.
                    self._never_ran(msgs[i:])  # given back (if still ours) before they are claimed
                    return None
                job = self.jobs.enter(m) if m.job_id else None
                if job is not None and job.cancelled:  # while it waited its turn
                    done.append((m, CANCELLED))
                    continue
                try:
                    if m.timeout:
                        if call is not None:
                            call.started = math.inf  # its own timeout bounds it
                        running: Awaitable[Any] = _bounded(handler(m), m.timeout)
                    else:
                        if call is not None:
                            call.started = started
                        running = handler(m)
                    result = await (running if spans is None else spans.run([m], running))
                except asyncio.CancelledError as exc:
                    if job is None or not job.cancelled:
                        if call is None or not call.cut_off:
                            if raised_by_the_call():  # the handler's own: a failure
                                return Failure(m, exc, waiting=msgs[i + 1 :])
                            self._never_ran(msgs[i + 1 :])  # a forced stop: they never ran
                            raise
                        uncancel()
                        return self._timed_out(m, msgs[i + 1 :], None)
                except asyncio.TimeoutError as exc:
                    return self._timed_out(m, msgs[i + 1 :], exc)
                except Exception as exc:
                    if job is None or not job.cancelled:
                        return Failure(m, exc, waiting=msgs[i + 1 :])
                finally:
                    if job is not None:
                        self.jobs.leave(job)
                ended = clock()
                if job is not None and job.cancelled:
                    # Its job was cancelled (RunningJobs.check): settled so, however it ended.
                    done.append((m, CANCELLED))
                else:
                    done.append((m, result))
                    took.append(ended - started)
                    ages.append(ended + wall - m.enqueued_at)
                started = ended
            return None
        finally:
            if call is not None:
                self._calls.discard(call)
            if self.stats.recorder is not None and took:
                self.stats.recorder.handled_each(number, took, ages)

    def _timed_out(self, m: Received, rest: list[Received], cause: BaseException | None) -> Failure:
        self.stats.add_timed_out(m.partition)
        error = TimeoutError(
            f"handler did not finish within {m.timeout or self.max_processing_time}s"
        )
        error.__cause__ = cause
        return Failure(m, error, waiting=rest)


def _note(failures: list[Failure], failed: dict[int, Failure]) -> list[Failure]:
    """Note ``failures`` (of a batch) by partition in ``failed``; return them."""
    for f in failures:
        failed[f.message.partition] = f
    return failures


def _held_back(chunk: list[Received], failed: dict[int, Failure]) -> list[Received]:
    """The messages of ``chunk`` to run: those of a partition that failed wait behind it."""
    run: list[Received] = []
    for m in chunk:
        failure = failed.get(m.partition)
        if failure is None:
            run.append(m)
        else:
            failure.waiting.append(m)
    return run


def _by_partition(messages: list[Received]) -> dict[int, list[Received]]:
    """``messages`` by partition, in order (a read brings each partition's entries together)."""
    groups: dict[int, list[Received]] = {}
    for partition, run in groupby(messages, _partition):
        found = groups.get(partition)
        if found is None:
            groups[partition] = list(run)
        else:
            found += run
    return groups


class _Call:
    """A handler call under way: its task and when it started (loop time)."""

    __slots__ = ("cut_off", "started", "task")

    def __init__(self, task: asyncio.Task[Any], started: float) -> None:
        self.task = task
        self.started = started
        self.cut_off = False
