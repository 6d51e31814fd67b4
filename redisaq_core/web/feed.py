"""Job status changes fanned out to WebSocket clients, from one subscription per process.

Every status change of a job is announced on its topic's job channel as
``"<job_id> <status>"`` (see :mod:`redisaq_core.results`), by whichever
process made the change. :class:`JobFeed` is the gateway's one pub/sub
connection (the reconnecting listener of :class:`~redisaq_core._job_events.JobEvents`,
which it extends): it subscribes to the channel of each topic whose jobs a
client follows and hands each announcement to the followers of that job.
For ``completed``, ``failed`` and ``dead`` the record is read once per
announcement (not once per follower) so that the push can carry the result
or the error.

Following a job is race-free the same way waiting for one is: register the
follower, make sure the channel is subscribed (confirmed by the server),
then read the record. A change made after that read is announced on a
channel already listened to. When the pub/sub connection is lost and
restored, every followed job's record is read again and pushed if it
changed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from .._failures import CALL_FAILURES
from .._job_events import GONE, JobEvents
from ..connection import AnyRedis
from ..keys import TopicKeys, parse_job_id
from ..results import JobRecord, ResultStore

__all__ = ["RECORD_STATUSES", "Follower", "JobFeed"]

log = logging.getLogger(__name__)

RECORD_STATUSES = frozenset({"completed", "failed", "dead", "progress"})
"""Announcements whose push carries something from the record (result, error, progress)."""


class Follower(Protocol):
    """Something that follows jobs: a client's socket session."""

    def push(
        self,
        job_id: str,
        status: str | None,
        record: asyncio.Future[JobRecord | None] | None,
    ) -> None:
        """Queue a status change of ``job_id`` (``status=None``: take it from ``record``)."""


class JobFeed(JobEvents):
    """The gateway's pub/sub connection: job announcements to the sockets that follow them."""

    def __init__(self, client: AnyRedis, store: ResultStore) -> None:
        super().__init__(client)
        self._store = store
        self._followers: dict[str, set[Follower]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.announcements = 0
        """Job announcements received (all topics subscribed, followed or not)."""

    @property
    def followed(self) -> int:
        """How many jobs have at least one follower."""
        return len(self._followers)

    async def follow(self, job_id: str, follower: Follower) -> JobRecord | None:
        """Start handing ``job_id``'s changes to ``follower``; return its record as read now.

        The record is read after the subscription was confirmed, so no change
        after it can be missed. ``None``: the job has no record (the follower
        is dropped again).
        """
        topic, _ = parse_job_id(job_id)
        self._followers.setdefault(job_id, set()).add(follower)
        try:
            await self.subscribed(TopicKeys(topic).job_channel)
            record = await self._store.get(job_id)
        except BaseException:
            self.unfollow(job_id, follower)
            raise
        if record is None:
            self.unfollow(job_id, follower)
        return record

    def unfollow(self, job_id: str, follower: Follower) -> None:
        """Stop handing ``job_id``'s changes to ``follower``."""
        followers = self._followers.get(job_id)
        if followers is not None:
            followers.discard(follower)
            if not followers:
                del self._followers[job_id]

    def read(self, job_id: str) -> asyncio.Future[JobRecord | None]:
        """Read a record in the background (``None`` when it can't be read)."""
        task = asyncio.ensure_future(self._read_record(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read_record(self, job_id: str) -> JobRecord | None:
        try:
            return await self._store.get(job_id)
        except CALL_FAILURES as exc:
            log.warning("job feed: cannot read job %s: %s", job_id, exc)
            return None

    def _dispatch(self, message: dict[str, Any]) -> None:
        super()._dispatch(message)
        if message.get("type") != "message":
            return
        self.announcements += 1
        data = message.get("data")
        text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        job_id, _, status = text.rpartition(" ")
        followers = self._followers.get(job_id)
        if not followers or status == GONE:
            return
        record = self.read(job_id) if status in RECORD_STATUSES else None
        for follower in list(followers):
            follower.push(job_id, status, record)

    def _wake_all(self) -> None:
        super()._wake_all()
        if not self._followers:
            return
        task = asyncio.ensure_future(self._resync())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self) -> None:
        """After a reconnection: once re-subscribed, push each followed job's current status."""
        topics = {parse_job_id(job_id)[0] for job_id in self._followers}
        try:
            for topic in topics:
                await self.subscribed(TopicKeys(topic).job_channel)
        except CALL_FAILURES as exc:
            log.warning("job feed: re-subscribing failed: %s", exc)
            return
        log.info("job feed: resubscribed; re-reading %d followed job(s)", len(self._followers))
        for job_id, followers in list(self._followers.items()):
            record = self.read(job_id)
            for follower in list(followers):
                follower.push(job_id, None, record)

    async def aclose(self) -> None:
        """Close the connection and stop background reads."""
        await super().aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._followers.clear()
