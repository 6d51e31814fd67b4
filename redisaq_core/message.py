"""``Message``, accepted by ``Producer.enqueue``; ``Received``, the kind handlers are given."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

from .errors import NotConnectedError
from .keys import TopicKeys

__all__ = ["PROGRESS", "Message", "Received"]

PROGRESS: ContextVar[Callable[[Message, Any], Awaitable[bool]] | None] = ContextVar(
    "redisaq_progress", default=None
)
"""Where ``Message.progress`` reports to: set by the consumer that calls the handler."""


@dataclass(slots=True)
class Message:
    """One message of a topic.

    Build one to enqueue it with options (``partition_key``, ``timeout``), or
    receive one in a handler, where every field is filled in:

    * ``msg_id``: the stream entry id (unique within its partition);
    * ``partition``: the partition the message was read from;
    * ``partition_key``: the payload field whose value picked the partition;
    * ``created_at``: when the ``Message`` object was made (seconds since the
      epoch, the producer's clock), or ``enqueued_at`` when the producer was
      given a bare payload;
    * ``enqueued_at``: when Redis stored the entry (the server's clock, from the
      entry id);
    * ``timeout``: seconds a handler may take (enforced with the jobs features);
    * ``deliveries``: how many times this entry has been handed out, this time
      included;
    * ``group``: the consumer group that received it;
    * ``priority``: its priority level (0 unless the topic has several);
    * ``job_id``: set for messages sent with ``Producer.submit``: their status
      and the handler's return value are tracked (see :mod:`redisaq_core.results`).

    ``topic`` and ``payload`` may be given by position, the rest by keyword.
    """

    topic: str
    payload: Any
    _: KW_ONLY
    msg_id: str | None = None
    partition_key: str | None = None
    partition: int | None = None
    created_at: float = field(default_factory=time.time)
    enqueued_at: float | None = None
    timeout: float | None = None
    deliveries: int = 1
    group: str | None = None
    priority: int = 0
    job_id: str | None = None

    @property
    def stream(self) -> str:
        """The key of the stream the message was read from (its partition and priority)."""
        return TopicKeys(self.topic).stream(self.partition or 0, self.priority)

    async def progress(self, value: Any) -> bool:
        """Report how far the handler got with this job: a number, or a small JSON object.

        The value is stored in the job's record (``progress``) and announced
        to the job's followers (``/ws/jobs`` gets a ``job_status`` frame with
        it). Returns ``True`` once stored; ``False``, writing nothing, when the
        message is not a job (it was not sent with ``Producer.submit``), its
        job is no longer running, or its partition's lease moved on to another
        member (the job is that member's now). ``InvalidProgressError`` for a value that is
        not a finite number or a JSON object of at most 4096 bytes (NaN, a set,
        an object too large); ``NotConnectedError`` outside a consumer's handler.
        """
        report = PROGRESS.get()
        if report is None:
            raise NotConnectedError("progress() is only available inside a consumer's handler")
        return await report(self, value)

    def get_partition(self) -> int | None:
        """The partition (``None`` before the message was read): redisaq 0.1.5's spelling."""
        return self.partition

    def to_dict(self) -> dict[str, Any]:
        """Every field as a dict (the payload as it is)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        """A ``Message`` from :meth:`to_dict`'s output; unknown keys are ignored."""
        known = {f.name for f in fields(Message)}
        return Message(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True, kw_only=True)
class Received(Message):
    """A message read from a partition, as a handler gets it.

    The same fields as :class:`Message`, with those that only reading fills in
    always set: ``msg_id``, ``partition``, ``group`` and ``enqueued_at``.
    A handler may annotate its argument as either type.
    """

    msg_id: str = ""
    partition: int = 0
    group: str = ""
    enqueued_at: float = 0.0


new_message = object.__new__
"""A message object with no field set yet: the hot path sets every one itself."""


def received(
    topic: str,
    payload: Any,
    msg_id: str,
    partition: int,
    group: str,
    enqueued_at: float,
    deliveries: int,
    priority: int,
    *,
    partition_key: str | None = None,
    created_at: float | None = None,
    timeout: float | None = None,
    job_id: str | None = None,
    kind: type[Received] = Received,
) -> Received:
    """Build a ``Received`` (or a subclass, ``kind``) without the dataclass ``__init__``.

    The hot path. ``created_at`` defaults to ``enqueued_at``.
    """
    m: Received = new_message(kind)
    m.topic = topic
    m.payload = payload
    m.msg_id = msg_id
    m.partition_key = partition_key
    m.partition = partition
    m.created_at = enqueued_at if created_at is None else created_at
    m.enqueued_at = enqueued_at
    m.timeout = timeout
    m.deliveries = deliveries
    m.group = group
    m.priority = priority
    m.job_id = job_id
    return m
