"""Job status records and results: read them, and wait for jobs to finish.

A job sent with ``Producer.submit`` has a status record, a hash in its
partition's hash slot (see :mod:`redisaq_core.keys`), that the consumer
updates atomically with each step of the job's life::

    (scheduled ->) queued -> active -> completed
                     -> failed -> active -> ... -> completed
                                                 -> dead
    queued, failed -> cancelled          (JobHandle.cancel before it runs)
    active -> cancelling -> cancelled    (cancelled while it runs)

``scheduled`` is a job submitted with ``delay`` or ``at`` that is not due yet
(``due_at`` says when it is); it becomes ``queued`` when it is moved into its
partition's stream. ``failed`` means an attempt failed and the job will be
retried; ``completed``, ``dead`` and ``cancelled`` are final. A running handler
may report its ``progress`` (``Message.progress``), kept in the record. Each
status reached has its server-side timestamp (``<status>_at``, milliseconds),
beside ``attempts`` (handler starts so far), ``worker`` (consumer name of the
latest attempt) and the latest ``error``. A completed job holds ``result``, the
handler's return value serialized with the topic's serializer (``result_kind``
``b`` for bytes, ``s`` for text, which the deserializer gets back as ``str``).
A finished record expires ``result_ttl`` seconds after it finished. Each
partition keeps an index of its job ids scored by their last change, and every
change is announced on the topic's job channel as ``"<job_id> <status>"``.

:class:`ResultStore` reads records (:meth:`~ResultStore.get`,
:meth:`~ResultStore.list_jobs`) and waits for jobs (:meth:`~ResultStore.wait`,
:meth:`~ResultStore.wait_many`). :class:`JobHandle` is what ``submit`` returns.

How waiting works: each store holds **one** pub/sub connection, subscribed
to the job channel of every topic it has waited on. A waiter registers its
interest in the job id, makes sure the topic's channel is subscribed (the
server has confirmed the subscription), and only then reads the record: a
change made after that read is announced on a channel already listened to,
so it cannot be missed. If the record is not final, the waiter sleeps until
the job's final status is announced, then reads the record again. Record
reads made at the same time share round trips (one pipeline), so 10,000
concurrent waits cost one subscription and a few pipelined reads, not 10,000
connections or polling loops. When the pub/sub connection is lost, it is
opened again, every channel subscribed again, and every waiter reads its
record again, so announcements made while it was down are not lost.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from ._batching import BATCH, CommandBatcher
from ._cancellation import cancel_job, parse_progress
from ._checks import number
from ._codec import Deserializer, default_deserializer, optional_text
from ._failures import REDIS_FAILURES, foreign_type, unless_foreign
from ._job_events import JobEvents
from ._job_index import clean_calls
from ._scripts import run_pipelined
from .connection import AnyRedis, RedisComponent
from .errors import (
    ConfigurationError,
    JobCancelledError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    SerializationError,
)
from .keys import TopicKeys, is_name, parse_job_id, partition_count

__all__ = ["JobHandle", "JobRecord", "JobStatus", "ResultStore"]

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    """Where a job is in its life."""

    SCHEDULED = "scheduled"
    """Submitted with ``delay`` or ``at``; waiting until it is due."""
    QUEUED = "queued"
    """Submitted (and due); waiting for a consumer."""
    ACTIVE = "active"
    """A handler is running it."""
    COMPLETED = "completed"
    """The handler returned; the record holds the result (final)."""
    FAILED = "failed"
    """The latest attempt failed; the job will be retried."""
    DEAD = "dead"
    """Every attempt failed; the job went to the dead-letter stream (final)."""
    CANCELLING = "cancelling"
    """Cancelled while its handler runs; its worker is stopping the handler."""
    CANCELLED = "cancelled"
    """Cancelled; its handler never ran, or was stopped (final)."""

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Whether the status is final (``completed``, ``dead`` or ``cancelled``)."""
        return self in (JobStatus.COMPLETED, JobStatus.DEAD, JobStatus.CANCELLED)


_STATUSES = ", ".join(s.value for s in JobStatus)


def _job_status(value: Any, argument: str = "status") -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise ConfigurationError(f"{argument} must be one of {_STATUSES}; got {value!r}") from None


@dataclass(frozen=True)
class JobRecord:
    """A job's status record as read from Redis.

    Times are Unix seconds of the Redis server's clock (``None`` for a status
    not reached). ``result`` is the deserialized return value of a completed
    job (``None`` otherwise); ``result_error`` says why it could not be
    deserialized, if it could not. ``progress`` is what the handler last
    reported with ``Message.progress`` (``None`` if nothing). ``due_at``: when a
    job submitted with ``delay`` or ``at`` is (or was) due.
    """

    id: str
    topic: str
    partition: int
    status: JobStatus
    msg_id: str | None = None
    priority: int = 0
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    error_type: str | None = None
    scheduled_at: float | None = None
    queued_at: float | None = None
    active_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    dead_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    updated_at: float | None = None
    result_ttl: int | None = None
    has_result: bool = False
    result: Any = None
    result_error: str | None = None
    progress: Any = None
    due_at: float | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is ``completed``, ``dead`` or ``cancelled``."""
        return self.status.finished

    @property
    def timestamps(self) -> dict[str, float]:
        """Status name to the time it was (last) reached, for each status reached."""
        out = {}
        for status in JobStatus:
            value = getattr(self, f"{status.value}_at")
            if value is not None:
                out[status.value] = value
        return out

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, times in Unix seconds, ``status`` as its string."""
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "status": self.status.value,
            "msg_id": self.msg_id,
            "priority": self.priority,
            "attempts": self.attempts,
            "worker": self.worker,
            "error": self.error,
            "error_type": self.error_type,
            "scheduled_at": self.scheduled_at,
            "due_at": self.due_at,
            "queued_at": self.queued_at,
            "active_at": self.active_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "dead_at": self.dead_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "updated_at": self.updated_at,
            "result_ttl": self.result_ttl,
            "has_result": self.has_result,
            "result": self.result,
            "result_error": self.result_error,
            "progress": self.progress,
        }


_T = TypeVar("_T")


def _deadline(seconds: float | None) -> float | None:
    return None if seconds is None else asyncio.get_running_loop().time() + seconds


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())


async def _within(call: Awaitable[_T], seconds: float | None) -> _T:
    return await (call if seconds is None else asyncio.wait_for(call, seconds))


_ONE_LOOK = 0.5
"""Seconds the one look of a wait with ``timeout=0`` may take (Redis stalled: it times out)."""


def _first_look(seconds: float | None) -> float | None:
    """The bound of a wait's first look at the records: its timeout, one look's for 0."""
    return None if seconds is None else seconds or _ONE_LOOK


def _resolved(record: JobRecord) -> asyncio.Future[JobRecord]:
    future: asyncio.Future[JobRecord] = asyncio.get_running_loop().create_future()
    future.set_result(record)
    return future


def _int(value: bytes | None, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        return int(float(value))
    except (ValueError, OverflowError):  # not a number, or infinite (another client's)
        return default


def _seconds(value: bytes | None) -> float | None:
    ms = _int(value)
    return None if ms is None else ms / 1000.0


def parse_record(
    job_id: str, raw: dict[bytes, bytes], deserializer: Deserializer = default_deserializer
) -> JobRecord:
    """Build a :class:`JobRecord` from a record hash; ``SerializationError`` if it has no status."""
    status_text = optional_text(raw.get(b"status"))
    try:
        status = JobStatus(status_text)
    except ValueError:
        raise SerializationError(
            f"job {job_id!r}: record has no valid status (got {status_text!r})"
        ) from None
    id_topic, id_partition = parse_job_id(job_id)
    result: Any = None
    result_error = None
    data = raw.get(b"result")
    if data is not None:
        try:
            result = deserializer(data.decode() if raw.get(b"result_kind") == b"s" else data)
        except Exception as exc:
            result_error = f"cannot deserialize result: {type(exc).__name__}: {exc}"
    return JobRecord(
        id=job_id,
        topic=optional_text(raw.get(b"topic")) or id_topic,
        partition=_int(raw.get(b"partition"), id_partition) or 0,
        status=status,
        msg_id=optional_text(raw.get(b"msg_id")),
        priority=_int(raw.get(b"priority"), 0) or 0,
        attempts=_int(raw.get(b"attempts"), 0) or 0,
        worker=optional_text(raw.get(b"worker")) or None,
        error=optional_text(raw.get(b"error")),
        error_type=optional_text(raw.get(b"error_type")),
        scheduled_at=_seconds(raw.get(b"scheduled_at")),
        due_at=_seconds(raw.get(b"due_at")),
        queued_at=_seconds(raw.get(b"queued_at")),
        active_at=_seconds(raw.get(b"active_at")),
        completed_at=_seconds(raw.get(b"completed_at")),
        failed_at=_seconds(raw.get(b"failed_at")),
        dead_at=_seconds(raw.get(b"dead_at")),
        cancelling_at=_seconds(raw.get(b"cancelling_at")),
        cancelled_at=_seconds(raw.get(b"cancelled_at")),
        updated_at=_seconds(raw.get(b"updated_at")),
        result_ttl=_int(raw.get(b"result_ttl")),
        has_result=data is not None,
        result=result,
        result_error=result_error,
        progress=parse_progress(raw.get(b"progress")),
    )


class ResultStore(RedisComponent):
    """Read job records and wait for jobs to finish.

    ``deserializer`` turns a stored result back into a value (default:
    orjson, matching the producer's default serializer); give it the
    counterpart of the topic's serializer. Use ``async with`` or
    ``connect()`` / ``close()``; closing fails pending waits with
    ``NotConnectedError``.
    """

    def __init__(
        self,
        *,
        redis: AnyRedis | None = None,
        redis_url: str | None = None,
        deserializer: Deserializer | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        if deserializer is not None and not callable(deserializer):
            raise ConfigurationError(f"deserializer must be callable, got {deserializer!r}")
        self.deserializer: Deserializer = deserializer or default_deserializer
        self._batcher: CommandBatcher | None = None
        self._listener: JobEvents | None = None

    async def _on_connect(self, client: AnyRedis) -> None:
        self._batcher = CommandBatcher(client)
        self._listener = JobEvents(client)

    async def _on_close(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
        if self._batcher is not None:
            await self._batcher.aclose()

    async def _parts(self) -> tuple[CommandBatcher, JobEvents]:
        await self._ensure()
        assert self._batcher is not None and self._listener is not None
        return self._batcher, self._listener

    async def _read(self, job_id: str, key: str) -> JobRecord | None:
        batcher, _ = await self._parts()
        raw = await unless_foreign(batcher.call("HGETALL", key))
        if not raw:
            return None
        return parse_record(job_id, raw, self.deserializer)

    @staticmethod
    def _key(job_id: str) -> str:
        topic, partition = parse_job_id(job_id)
        return TopicKeys(topic).job(partition, job_id)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` if there is none (never submitted, or expired)."""
        return await self._read(job_id, self._key(job_id))

    async def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or ``None`` if it has no record."""
        key = self._key(job_id)
        batcher, _ = await self._parts()
        raw = await unless_foreign(batcher.call("HGET", key, "status"))
        if raw is None:
            return None
        try:
            return JobStatus(optional_text(raw))
        except ValueError:
            raise SerializationError(f"job {job_id!r}: unknown status {raw!r}") from None

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel a job; return ``CANCELLED``, or ``CANCELLING`` for a running job.

        A job not started yet is never started: it is ``cancelled`` at once and
        its consumer acknowledges it without calling the handler. A running
        job's handler is cancelled by its worker on the worker's next heartbeat,
        then the job is ``cancelled`` (not retried, not dead-lettered); wait for
        that with :meth:`wait`. Cancelling a ``cancelling`` job again is fine.
        ``JobFinishedError`` for a ``completed``, ``dead`` or ``cancelled`` job
        and ``JobNotFoundError`` for an id without a record: neither changes
        anything.
        """
        redis = await self._ensure()
        return JobStatus(await cancel_job(redis, job_id))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until the job is ``completed``, ``dead`` or ``cancelled``; return its record.

        A dead job is returned like a completed one (look at ``status``;
        :meth:`JobHandle.result` raises ``JobFailedError`` for it). Raises
        ``JobTimeoutError`` after ``timeout`` seconds (``None``: no limit; ``0``:
        one look at the record, itself given up after half a second) and
        ``JobNotFoundError`` when the job has no record.
        """
        seconds = None if timeout is None else number(timeout, "timeout", minimum=0, seconds=True)
        key = self._key(job_id)
        deadline = _deadline(seconds)
        try:
            # A job finished before the call is returned whatever the timeout, 0 included.
            record = await _within(self._finished(job_id, key), _first_look(seconds))
            if record is not None:
                return record
            return await _within(self._wait(job_id, key, deadline), _left(deadline))
        except asyncio.TimeoutError:
            raise JobTimeoutError(f"job {job_id} did not finish within {timeout} s") from None

    async def _finished(self, job_id: str, key: str) -> JobRecord | None:
        """The job's record if it is finished now (``JobNotFoundError`` if it has none)."""
        record = await self._read(job_id, key)
        if record is None:
            raise JobNotFoundError(f"job {job_id} has no record (unknown, or expired)")
        return record if record.finished else None

    async def _wait(self, job_id: str, key: str, deadline: float | None) -> JobRecord:
        _, listener = await self._parts()
        channel = TopicKeys(parse_job_id(job_id)[0]).job_channel
        while True:
            future = listener.watch(job_id)
            try:
                await listener.subscribed(channel)
                record = await self._read(job_id, key)
                if record is None:
                    raise JobNotFoundError(f"job {job_id} has no record (unknown, or expired)")
                if record.finished:
                    return record
                # Bounded by the deadline itself, not only by the caller's cancellation: a
                # cancellation that lands mid-read can be swallowed by the client.
                await asyncio.wait({future}, timeout=_left(deadline))
                if not future.done():
                    raise asyncio.TimeoutError
            finally:
                listener.unwatch(job_id, future)

    async def wait_many(
        self, job_ids: Iterable[str], timeout: float | None = None
    ) -> list[JobRecord]:
        """Wait for every job to finish; return their records in the order of ``job_ids``.

        ``timeout`` bounds the whole wait; past it ``JobTimeoutError`` says how
        many jobs had not finished. The first other error (such as
        ``JobNotFoundError``) is raised as soon as it happens.
        """
        seconds = None if timeout is None else number(timeout, "timeout", minimum=0, seconds=True)
        pairs = [(job_id, self._key(job_id)) for job_id in job_ids]
        if not pairs:
            return []
        await self._parts()
        deadline = _deadline(seconds)
        reads = asyncio.gather(*(self._finished(job_id, key) for job_id, key in pairs))
        try:
            finished = await _within(reads, _first_look(seconds))  # 0: one look, as wait()
        except asyncio.TimeoutError:
            raise JobTimeoutError(
                f"{len(pairs)} of {len(pairs)} jobs did not finish within {timeout} s"
            ) from None
        tasks = [
            _resolved(done) if done else asyncio.ensure_future(self._wait(job_id, key, deadline))
            for (job_id, key), done in zip(pairs, finished, strict=True)
        ]
        try:
            await asyncio.wait(tasks, timeout=_left(deadline), return_when=asyncio.FIRST_EXCEPTION)
            late = 0
            for task in tasks:
                error = task.exception() if task.done() else asyncio.TimeoutError()
                if isinstance(error, asyncio.TimeoutError):  # not done, or done at the deadline
                    late += 1
                elif error is not None:
                    raise error
            if late:
                raise JobTimeoutError(
                    f"{late} of {len(tasks)} jobs did not finish within {timeout} s"
                )
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def list_jobs(
        self,
        topic: str | None = None,
        status: JobStatus | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs, most recently changed first, of one topic or of every topic.

        Reads the partitions' job indexes newest first and merges them; index
        entries whose records expired are skipped and removed. With
        ``status``, only jobs in that status are returned (the indexes are
        read until ``limit`` such jobs are found or they end). Members of the
        topic index that are no topic name, and topics whose metadata key
        another client made of another type, are skipped.
        """
        wanted = None if status is None else _job_status(status)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be an integer >= 1, got {limit!r}")
        redis = await self._ensure()
        if topic is None:
            indexed = await unless_foreign(redis.smembers(TopicKeys.topic_index())) or ()
            names = sorted(n for n in (optional_text(t) or "" for t in indexed) if is_name(n))
        else:
            TopicKeys(topic)
            names = [topic]
        if not names:
            return []
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(TopicKeys(name).meta, "partitions")
        counts = await pipe.execute(raise_on_error=False)
        for reply in counts:
            if isinstance(reply, Exception) and not foreign_type(reply):
                raise reply
        # Another client's metadata key of another type: the topic has no partitions to read.
        sources = [
            (TopicKeys(name), p) for name, n in zip(names, counts, strict=True)
            if not isinstance(n, Exception) for p in range(partition_count(n))
        ]  # fmt: skip
        return await _IndexMerge(self, redis, sources, wanted, limit).run()


class _IndexMerge:
    """Read several job indexes newest first, merged by score, and fetch their records."""

    def __init__(
        self,
        store: ResultStore,
        redis: AnyRedis,
        sources: list[tuple[TopicKeys, int]],
        wanted: JobStatus | None,
        limit: int,
    ) -> None:
        self.store = store
        self.redis = redis
        self.sources = sources
        self.wanted = wanted
        self.limit = limit
        self.page = limit if wanted is None else min(max(limit, 100), BATCH)
        self.buffers: list[deque[tuple[float, str]]] = [deque() for _ in sources]
        self.offsets = [0] * len(sources)
        self.exhausted = [False] * len(sources)
        self.seen: set[str] = set()
        self.missing: dict[int, list[tuple[str, float]]] = {}

    def _page(self, pipe: Any, i: int) -> None:
        keys, p = self.sources[i]
        start = self.offsets[i]
        pipe.zrevrange(keys.jobs(p), start, start + self.page - 1, withscores=True)

    def _take(self, i: int, entries: list[tuple[bytes, float]]) -> None:
        self.offsets[i] += len(entries)
        if len(entries) < self.page:
            self.exhausted[i] = True
        self.buffers[i].extend(
            (float(score), optional_text(member) or "") for member, score in entries
        )

    async def _refill(self, indexes: list[int]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for i in indexes:
            self._page(pipe, i)
        for i, entries in zip(indexes, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(entries, ResponseError):  # another client's key of another type
                keys, p = self.sources[i]
                log.warning("skipping the jobs index %s: %s", keys.jobs(p), entries)
                self.exhausted[i] = True
                continue
            self._take(i, entries)

    async def run(self) -> list[JobRecord]:
        await self._refill(list(range(len(self.sources))))
        heap: list[tuple[float, str, int]] = []
        for i, buffer in enumerate(self.buffers):
            if buffer:
                score, job_id = buffer.popleft()
                heapq.heappush(heap, (-score, job_id, i))
        out: list[JobRecord] = []
        while heap and len(out) < self.limit:
            need = self.limit - len(out) if self.wanted is None else self.page
            batch: list[tuple[int, str, float]] = []
            while heap and len(batch) < need:
                negative, job_id, i = heapq.heappop(heap)
                if job_id not in self.seen:
                    self.seen.add(job_id)
                    batch.append((i, job_id, -negative))
                if not self.buffers[i] and not self.exhausted[i]:
                    await self._refill([i])
                if self.buffers[i]:
                    score, next_id = self.buffers[i].popleft()
                    heapq.heappush(heap, (-score, next_id, i))
            out += await self._records(batch)
        await self._clean()
        return out[: self.limit]

    async def _records(self, batch: list[tuple[int, str, float]]) -> list[JobRecord]:
        if not batch:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i, job_id, _ in batch:
            keys, p = self.sources[i]
            pipe.hgetall(keys.job(p, job_id))
        out = []
        replies = await pipe.execute(raise_on_error=False)
        for (i, job_id, score), raw in zip(batch, replies, strict=True):
            if isinstance(raw, ResponseError):  # another client's key of another type
                log.warning("skipping job %s: %s", job_id, raw)
                continue
            if not raw:
                self.missing.setdefault(i, []).append((job_id, score))
                continue
            try:
                record = parse_record(job_id, raw, self.store.deserializer)
            except (SerializationError, ConfigurationError) as exc:
                log.warning("skipping job %s: %s", job_id, exc)
                continue
            if self.wanted is None or record.status is self.wanted:
                out.append(record)
        return out

    async def _clean(self) -> None:
        calls = []
        for i, gone in self.missing.items():
            keys, p = self.sources[i]
            calls += clean_calls(keys, p, gone)
        if not calls:
            return
        try:
            results = await run_pipelined(self.redis, calls)
        except REDIS_FAILURES as exc:
            log.warning("could not clean the job indexes: %s", exc)
            return
        removed = sum(r for r in results if isinstance(r, int))
        if removed:
            log.debug("removed %d expired job(s) from the job indexes", removed)


class JobHandle:
    """A submitted job: its id, and ways to follow it to its result.

    ``Producer.submit`` returns one; ``JobHandle(job_id, store)`` makes one
    for any job id (for instance one received from another process).
    """

    def __init__(self, job_id: str, store: ResultStore) -> None:
        self.topic, self.partition = parse_job_id(job_id)
        self.id = job_id
        self.store = store

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def status(self) -> JobStatus | None:
        """The job's current status (``None`` once its record expired)."""
        return await self.store.status(self.id)

    async def record(self) -> JobRecord | None:
        """The job's current record (``None`` once it expired)."""
        return await self.store.get(self.id)

    async def wait(self, timeout: float | None = None) -> JobRecord:
        """Wait until the job is ``completed``, ``dead`` or ``cancelled``; return its record."""
        return await self.store.wait(self.id, timeout)

    async def cancel(self) -> JobStatus:
        """Cancel the job (see :meth:`ResultStore.cancel`); ``CANCELLED`` or ``CANCELLING``."""
        return await self.store.cancel(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return the handler's (deserialized) return value.

        Raises ``JobFailedError`` (with the last error) if the job is dead,
        ``JobCancelledError`` if it was cancelled,
        ``JobTimeoutError`` after ``timeout`` seconds, ``JobNotFoundError`` if
        the record is gone, ``SerializationError`` if the result can't be
        deserialized.
        """
        record = await self.wait(timeout)
        if record.status is JobStatus.CANCELLED:
            raise JobCancelledError(f"job {self.id} was cancelled", job_id=self.id)
        if record.status is JobStatus.DEAD:
            kind = record.error_type or "Error"
            raise JobFailedError(
                f"job {self.id} failed after {record.attempts} attempt(s): "
                f"{kind}: {record.error or ''}",
                job_id=self.id,
                error=record.error or "",
                error_type=record.error_type or "",
                record=record,
            )
        if record.result_error is not None:
            raise SerializationError(f"job {self.id}: {record.result_error}")
        return record.result
