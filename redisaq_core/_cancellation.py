"""Cancelling jobs, and the progress a running job reports.

Cancelling (:func:`cancel_job`, one script on the job's record):

* a job not started (``queued``, ``scheduled``, or ``failed`` and waiting for
  its retry) becomes ``cancelled`` at once. The script that marks a batch's
  jobs ``active`` (``lua/jobs_started.lua``, already one call per partition
  and batch) returns the ids it found cancelled; the consumer settles those
  without a handler call (``lua/jobs_cancelled.lua``: acknowledged, fenced by
  the lease, the record expiring after its ``result_ttl``). So the hot path
  pays no extra round trip for it;
* a running job (``active``) becomes ``cancelling``, and its id is published
  on the topic's cancel channel. A consumer that has run a job listens there
  (one pub/sub connection, opened with its first job) and cancels the handler
  task at once (:class:`RunningJobs`). Pub/sub drops notices while a
  connection is down, so the state in the record is what counts: each
  heartbeat of a consumer with job handlers under way also reads their
  statuses (one pipelined read, none when no job runs) and cancels the handler
  of each ``cancelling`` one. The handler sees ``asyncio.CancelledError``; the
  job is settled ``cancelled`` however the handler ends after that:
  acknowledged, not retried, not dead-lettered. A job whose handler finished
  before its worker looked ends as the handler ended it; a job that failed
  meanwhile is not retried (its retry finds it ``cancelling`` and settles it
  ``cancelled``, on its last attempt too: ``dead_letter.lua`` settles a
  ``cancelling`` or ``cancelled`` job so instead of dead-lettering it), nor is a
  job whose worker died (whoever takes the partition settles it so);
* a job marked ``active`` with its read but still waiting for its handler
  call (``process`` runs a partition's messages one at a time) is ``active``
  too: it becomes ``cancelling``, and the notice (or the heartbeat's read),
  if it comes before the job's turn, keeps its handler from being called; it
  is settled ``cancelled``;
* a finished job (``completed``, ``dead``, ``cancelled``) is left as it is
  (:class:`~redisaq_core.errors.JobFinishedError`); an id without a record
  raises :class:`~redisaq_core.errors.JobNotFoundError`.

A batch handler (``process_batch``) is not interrupted: jobs cancelled
before the batch starts are left out of it, a job cancelled while its batch
runs ends as the batch ends.

Progress (:meth:`RunningJobs.progress`, behind ``Message.progress``): a
finite number or a JSON object of at most :data:`PROGRESS_MAX_BYTES` bytes,
stored as JSON in the record's ``progress`` field and announced on the job
channel as ``"<job_id> progress"``, only while the job runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

from ._codec import optional_text
from ._delivery import OwnedPartition
from ._failures import CALL_FAILURES
from ._job_events import JobEvents
from ._scripts import Script, ScriptCall
from ._tasks import cancel_and_wait
from .connection import AnyRedis
from .errors import InvalidProgressError, JobFinishedError, JobNotFoundError, NotConnectedError
from .keys import TopicKeys, parse_job_id
from .message import PROGRESS, Message, Received

__all__ = [
    "CANCELLED",
    "JOBS_CANCELLED",
    "PROGRESS_MAX_BYTES",
    "RunningJobs",
    "cancel_job",
    "cancelled_calls",
    "cancelled_ids",
    "parse_progress",
    "progress_text",
    "skip_cancelled",
]

log = logging.getLogger(__name__)

JOB_CANCEL = Script("job_cancel")
JOBS_CANCELLED = Script("jobs_cancelled")
JOB_PROGRESS = Script("job_progress")

PROGRESS_MAX_BYTES = 4096
"""The largest progress value, as JSON text."""


class _Cancelled:
    """The outcome of a job that was cancelled instead of handled (see :data:`CANCELLED`)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CANCELLED"


CANCELLED = _Cancelled()
"""Stands for a handler result in the consumer: the job was cancelled, settle it so."""


async def cancel_job(redis: AnyRedis, job_id: str) -> str:
    """Cancel ``job_id``; return its new status, ``"cancelled"`` or ``"cancelling"``.

    ``JobNotFoundError`` for an id without a record, ``JobFinishedError`` for a
    finished job, ``ConfigurationError`` for a malformed id; none changes anything.
    """
    topic, partition = parse_job_id(job_id)
    keys = TopicKeys(topic)
    found, status = await JOB_CANCEL(
        redis,
        [keys.job(partition, job_id), keys.jobs(partition)],
        [job_id, keys.job_channel, keys.cancel_channel],
    )
    status = optional_text(status) or ""
    if found == 0:
        raise JobNotFoundError(f"job {job_id} has no record (unknown, or expired)")
    if found == 2:
        raise JobFinishedError(
            f"job {job_id} is already {status}: a finished job can't be cancelled",
            job_id=job_id,
            status=status,
        )
    return status


def progress_text(value: Any) -> str:
    """``value`` as the JSON text stored; ``InvalidProgressError`` says what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, dict)):
        raise InvalidProgressError(
            f"progress must be a number or a JSON object (dict), got {type(value).__name__}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidProgressError(f"progress must be a finite number, got {value!r}")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidProgressError(f"progress can't be written as JSON: {exc}") from None
    size = len(text.encode())
    if size > PROGRESS_MAX_BYTES:
        raise InvalidProgressError(
            f"progress is {size} bytes as JSON; at most {PROGRESS_MAX_BYTES} are allowed"
        )
    return text


def parse_progress(raw: bytes | None) -> Any:
    """A stored progress value (``None`` when there is none or it is not JSON)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # another client's: no JSON, or nested too deep
        return None


class _Running:
    """A job handler under way: its task, and whether its job was cancelled."""

    __slots__ = ("cancelled", "job_id", "key", "task")

    def __init__(self, job_id: str, key: str, task: asyncio.Task[Any]) -> None:
        self.job_id = job_id
        self.key = key
        self.task = task
        self.cancelled = False


class _CancelNotices(JobEvents):
    """The pub/sub connection on a topic's cancel channel: hands each job id to ``notify``."""

    def __init__(self, client: AnyRedis, notify: Callable[[str], None]) -> None:
        super().__init__(client)
        self._notify = notify

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "message":
            self._notify(optional_text(message.get("data")) or "")
        else:
            super()._dispatch(message)


class RunningJobs:
    """A consumer's job handlers under way: cancelled on request, and their progress."""

    def __init__(self, keys: TopicKeys, group: str = "", token: str = "") -> None:
        self.keys = keys
        self.group, self.token = group, token  # the member's: its progress is fenced by its lease
        self.redis: AnyRedis | None = None
        self._running: dict[str, _Running] = {}
        self._waiting: dict[str, str] = {}  # marked active, handler not called yet: job -> key
        self._cancelled: set[str] = set()  # of those waiting, the ones found cancelling
        self._progress = self.progress
        self._notices: _CancelNotices | None = None
        self._subscribing: asyncio.Task[None] | None = None

    def attach(self, redis: AnyRedis) -> None:
        """Handlers called from here on (in this context) report progress through ``redis``."""
        self.redis = redis
        PROGRESS.set(self._progress)

    def wait(self, messages: Iterable[Received]) -> None:
        """The jobs among ``messages`` are marked active; their handlers are to run in turn.

        A cancellation of one of them, noticed before its turn, keeps it from running.
        """
        for m in messages:
            if m.job_id:
                self._waiting[m.job_id] = self.keys.job(m.partition, m.job_id)

    def stop_waiting(self) -> None:
        """The handlers of the jobs :meth:`wait` was told about ran, or never will."""
        self._waiting.clear()
        self._cancelled.clear()

    def enter(self, message: Received) -> _Running | None:
        """A job's handler is about to run in the current task.

        The result's ``cancelled`` is already set for a job cancelled while it waited:
        its handler is not to run.
        """
        task = asyncio.current_task()
        if task is None or not message.job_id:
            return None
        running = _Running(message.job_id, self.keys.job(message.partition, message.job_id), task)
        self._waiting.pop(message.job_id, None)
        if message.job_id in self._cancelled:
            self._cancelled.discard(message.job_id)
            running.cancelled = True
            return running
        self._running[message.job_id] = running
        if self._notices is None and self.redis is not None:
            self._notices = _CancelNotices(self.redis, self._notified)
            self._subscribing = asyncio.create_task(
                self._subscribe(self._notices), name="redisaq-job-cancels"
            )
        return running

    async def _subscribe(self, notices: _CancelNotices) -> None:
        try:
            await notices.subscribed(self.keys.cancel_channel)
            if self.redis is not None:
                # A cancellation sent before the subscription took is in the records.
                await self.check(self.redis)
        except CALL_FAILURES as exc:
            log.warning("cannot listen for job cancellations yet (%s); heartbeats look", exc)
            if self._notices is notices:
                self._notices = None  # the next job tries again
            await notices.aclose()

    def _notified(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is not None:
            self._cancel(running)
        elif job_id in self._waiting:
            log.info("job %s cancelled before its turn: its handler won't run", job_id)
            self._cancelled.add(job_id)

    def _cancel(self, running: _Running) -> None:
        if self._running.get(running.job_id) is running and not running.cancelled:
            log.info("job %s cancelled: cancelling its handler", running.job_id)
            running.cancelled = True
            running.task.cancel()

    async def aclose(self) -> None:
        """Stop listening for cancellations (the consumer stopped)."""
        notices, self._notices = self._notices, None
        if self._subscribing is not None:
            await cancel_and_wait(self._subscribing)
            self._subscribing = None
        if notices is not None:
            await notices.aclose()

    def leave(self, running: _Running) -> None:
        """The handler of ``running`` returned (or raised), in the task that ran it.

        A cancellation :meth:`check` made is taken back from the task, however the
        handler ended (it may have caught it), so it can't hit anything after it.
        """
        if self._running.get(running.job_id) is running:
            del self._running[running.job_id]
        if running.cancelled and hasattr(running.task, "uncancel"):
            running.task.uncancel()

    async def check(self, redis: AnyRedis) -> None:
        """Cancel the handlers whose jobs are ``cancelling`` (one pipelined read; none if idle).

        A record another client overwrote with something else (an error reply) is skipped.
        """
        if not self._running and not self._waiting:
            return
        watched = list(self._running.values())
        waiting = list(self._waiting.items())
        pipe = redis.pipeline(transaction=False)
        for key in [r.key for r in watched] + [key for _, key in waiting]:
            pipe.hget(key, "status")
        statuses = await pipe.execute(raise_on_error=False)
        for running, status in zip(watched, statuses, strict=False):
            if status == b"cancelling" or status == "cancelling":
                self._cancel(running)
        for (job_id, _), status in zip(waiting, statuses[len(watched) :], strict=True):
            if (status == b"cancelling" or status == "cancelling") and job_id in self._waiting:
                self._notified(job_id)

    async def progress(self, message: Message, value: Any) -> bool:
        """Store and announce ``value`` as the progress of ``message``'s job.

        Returns whether the record took it: ``False`` for a message that is no
        job, a job that is not running any more, or one whose partition's lease
        moved on to another member (nothing is written).
        """
        text = progress_text(value)
        if not message.job_id:
            return False
        if self.redis is None:
            raise NotConnectedError("progress() is only available inside a consumer's handler")
        topic, partition = parse_job_id(message.job_id)
        tk = TopicKeys(topic)
        keys = [tk.job(partition, message.job_id), tk.jobs(partition)]
        keys.append(tk.lease(partition, self.group))
        args = [message.job_id, tk.job_channel, text, self.token]
        done = await JOB_PROGRESS(self.redis, keys, args)
        return bool(done)


def cancelled_ids(replies: Iterable[Any]) -> set[str]:
    """The job ids that ``jobs_started`` calls found cancelled.

    A failed call raises its error: which of its jobs were cancelled is not known, so
    none of the batch may run.
    """
    found: set[str] = set()
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            found.update(optional_text(r) or "" for r in reply)
    return found


def skip_cancelled(
    messages: list[Received], ids: set[str], done: list[tuple[Received, Any]]
) -> list[Received]:
    """The messages to run: those of a cancelled job go to ``done`` as :data:`CANCELLED`."""
    keep: list[Received] = []
    for m in messages:
        if m.job_id and m.job_id in ids:
            done.append((m, CANCELLED))
        else:
            keep.append(m)
    return keep


def cancelled_calls(
    keys: TopicKeys,
    owned: dict[int, OwnedPartition],
    group: str,
    token: str,
    cancelled: dict[tuple[int, int], list[Received]],
) -> list[ScriptCall]:
    """One ``jobs_cancelled`` call per (partition, level) of ``cancelled`` messages."""
    calls: list[ScriptCall] = []
    channel = keys.job_channel
    for (p, level), messages in cancelled.items():
        part = owned[p]
        call_keys: list[Any] = [part.streams[level], part.lease, keys.jobs(p)]
        args: list[Any] = [group, token, channel]
        for m in messages:
            job = m.job_id or ""
            call_keys.append(keys.job(p, job))
            args += [m.msg_id, job]
        calls.append((JOBS_CANCELLED, call_keys, args))
    return calls
