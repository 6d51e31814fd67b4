"""Request and response bodies of the web gateway, and the WebSocket close codes.

These pydantic models are the gateway's OpenAPI schema (``GET /openapi.json``);
the WebSocket frames are documented in :mod:`redisaq_core.web`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    create_model,
)

from ..registry import WorkerStatus
from ..results import JobRecord

__all__ = [
    "CLOSE_DEREGISTERED",
    "CLOSE_FORBIDDEN_HOST",
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_TOO_MANY_SOCKETS",
    "CLOSE_TOO_SLOW",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_UNKNOWN_WORKER",
    "MAX_SCHEDULE_EVERY",
    "NAME_PATTERN",
    "RESERVED_WORKER_IDS",
    "WORKER_ID_PATTERN",
    "DeadLetterModel",
    "ErrorModel",
    "GroupMemberModel",
    "GroupModel",
    "HealthModel",
    "JobAccepted",
    "JobCancelModel",
    "JobModel",
    "PartitionRowModel",
    "PartitionStatsModel",
    "ReplayRequest",
    "ReplayResult",
    "ScheduleModel",
    "SchedulePut",
    "SubmitJob",
    "TopicSummaryModel",
    "TopicViewModel",
    "WorkerModel",
    "WorkerRegistered",
    "WorkerRegistration",
]

CLOSE_UNAUTHORIZED = 4401
"""WebSocket close code: the gateway has a token and the socket did not give it."""
CLOSE_FORBIDDEN_ORIGIN = 4403
"""WebSocket close code: a browser opened the socket from a page of another origin."""
CLOSE_UNKNOWN_WORKER = 4404
"""WebSocket close code of ``/ws/{worker_id}``: no worker is registered under that id."""
CLOSE_DEREGISTERED = 4410
"""WebSocket close code of ``/ws/{worker_id}``: the worker's registration was removed."""
CLOSE_TOO_SLOW = 4408
"""WebSocket close code: the client did not read its frames fast enough."""
CLOSE_FORBIDDEN_HOST = 4421
"""WebSocket close code: the ``Host`` header names a host not in ``allowed_hosts``."""
CLOSE_TOO_MANY_SOCKETS = 1013
"""WebSocket close code ("try again later"): the gateway serves ``max_sockets`` already."""

NAME_PATTERN = r"^[^\s{}]+$"
"""Topic names: no whitespace, no braces (they would break the hash tags)."""
WORKER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
"""Worker ids: one URL path segment of letters, digits and ``._:@-``."""
RESERVED_WORKER_IDS = frozenset({"jobs", "dashboard"})
"""Worker ids that would collide with the gateway's other sockets (``/ws/jobs``, ...)."""

TopicName = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)]


def _plain_json(value: Any) -> Any:
    """``value`` if each of its numbers is one JSON (and orjson) carries; else ``ValueError``.

    Python's JSON parser takes ``NaN``, ``Infinity`` and ``1e400`` (read as
    infinity), which orjson would store as ``null``, and integers of any size,
    which orjson can't write at all.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite: NaN, Infinity and 1e400 have no JSON value")
        elif isinstance(item, int) and not -(2**63) <= item < 2**64:
            raise ValueError("integers must fit in 64 bits")
    return value


JsonValue = Annotated[Any, AfterValidator(_plain_json)]
"""Any JSON value whose numbers are finite and fit in 64 bits."""
MAX_SCHEDULE_EVERY = 10 * 366 * 86_400
"""The longest ``every`` interval the gateway takes, in seconds (ten years)."""


class ErrorModel(BaseModel):
    """An error answer: what went wrong, in words."""

    detail: str


class HealthModel(BaseModel):
    """``GET /health``: the gateway answers and its Redis does."""

    status: Literal["ok"]
    redis: bool


class SubmitJob(BaseModel):
    """``POST /jobs`` (and the ``submit_job`` frame): a job for a topic's consumers.

    ``priority`` (0 to 15) maps onto the topic's priority levels: one above the
    highest level goes to the highest, so a topic created here (one level) takes
    every priority and queues them all at level 0. ``partition_key`` names a payload
    field whose value picks the partition. ``delay``: seconds the job waits before
    it is queued (status ``scheduled`` until then). ``idempotency_key``: a client
    retrying after a lost reply sends the same key, and gets the first job back
    (``Producer.submit``'s). ``job_type`` and ``client_id`` are echoed back; the
    job record does not keep them. Unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    topic: TopicName
    payload: JsonValue = Field(description="Any JSON value; the handler receives it as it is.")
    priority: StrictInt = Field(0, ge=0, le=15)
    partition_key: str | None = Field(None, min_length=1, max_length=200)
    timeout: float | None = Field(None, gt=0, le=86_400, description="Seconds a handler may run.")
    delay: float | None = Field(
        None, ge=0, le=10 * 366 * 86_400, description="Seconds before the job is queued."
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A retry with the same key within 24 h returns the first job, writing nothing.",
    )
    job_type: str | None = Field(None, max_length=200)
    client_id: str | None = Field(None, max_length=200)


class JobAccepted(BaseModel):
    """A job was queued (or, with a delay, scheduled)."""

    job_id: str
    status: Literal["queued", "scheduled"]
    topic: str
    partition: int
    job_type: str | None = None
    client_id: str | None = None


class JobCancelModel(BaseModel):
    """``POST /jobs/{job_id}/cancel``: the job's status after the request.

    ``cancelled``: it had not started and never will; ``cancelling``: it runs,
    and its worker stops the handler on its next heartbeat.
    """

    job_id: str
    status: Literal["cancelled", "cancelling"]


def _record_model() -> type[BaseModel]:
    """``JobModel``: :class:`~redisaq_core.results.JobRecord`'s fields, plus ``job_id``.

    Built from the record's own fields, so that the two can't drift apart.
    """
    hints = get_type_hints(JobRecord)
    fields: dict[str, Any] = {"job_id": (str, ...)}
    for f in dataclasses.fields(JobRecord):
        default = ... if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name], default)
    model: type[BaseModel] = create_model("JobModel", **fields)
    model.__doc__ = (
        "A job's status record (``JobRecord.as_dict()`` plus ``job_id``).\n\n"
        "Times are Unix seconds of the Redis server's clock; ``result`` is the\n"
        "handler's return value once the job is ``completed``."
    )
    return model


JobModel = _record_model()


class WorkerRegistration(BaseModel):
    """``POST /register``: a worker announcing itself.

    ``worker_id`` is generated if not given; registering an id again replaces
    its registration. Unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid")

    worker_id: str | None = Field(None, pattern=WORKER_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    host: str = Field(min_length=1, max_length=255, pattern=r"^[^\s\x00-\x1f\x7f]+$")
    port: StrictInt = Field(ge=0, le=65535)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)


class WorkerRegistered(BaseModel):
    """A worker was registered; connect its heartbeat socket to ``/ws/{worker_id}``."""

    worker_id: str
    status: Literal["registered"]


class WorkerModel(BaseModel):
    """A registered worker (any service of the registry) and its liveness.

    ``status`` is the :class:`~redisaq_core.registry.WorkerStatus`;
    ``last_heartbeat`` and ``registered_at`` are Unix seconds of the Redis
    server's clock, ``age`` the seconds since the last heartbeat. ``health``
    is the status the service reports about itself; ``connected`` says whether
    its liveness key is held (a heartbeat socket or keepalive is renewing it).
    """

    worker_id: str
    name: str
    host: str
    port: int
    status: WorkerStatus
    last_heartbeat: float | None
    registered_at: float | None = None
    age: float | None = None
    service_type: str
    health: str
    connected: bool
    metadata: dict[str, Any] = Field(default_factory=dict)


class TopicSummaryModel(BaseModel):
    """One topic with its figures summed over its consumer groups."""

    model_config = ConfigDict(extra="allow")

    topic: str
    partitions: int
    priorities: int
    groups: list[str]
    members: int
    produced: int
    length: int
    dead_letters: int
    scheduled: int = 0
    over_maxlen: int = 0
    pending: int
    lag: int
    in_flight: int
    handled: int
    failed: int
    retried: int
    dead_lettered: int
    timed_out: int
    trimmed: int


class PartitionStatsModel(BaseModel):
    """A partition's stream figures."""

    partition: int
    produced: int
    length: int
    dead_letters: int
    scheduled: int = 0


class GroupMemberModel(BaseModel):
    """A live member of a consumer group."""

    model_config = ConfigDict(extra="allow")

    name: str
    last_heartbeat: float
    age: float
    partitions: list[int]
    pending: int
    in_flight: int


class PartitionRowModel(BaseModel):
    """One partition as one consumer group sees it: owner, lag, pending and counters.

    ``handler_seconds`` and ``end_to_end_seconds`` are histograms
    (``{"count", "sum", "max", "buckets": [[bound, cumulative count], ...]}``).
    """

    model_config = ConfigDict(extra="allow")

    partition: int
    owner: str | None
    pending: int
    lag: int
    lag_exact: bool
    in_flight: int
    handled: int
    failed: int
    retried: int
    dead_lettered: int
    timed_out: int
    trimmed: int
    handler_seconds: dict[str, Any]
    end_to_end_seconds: dict[str, Any]


class GroupModel(BaseModel):
    """A consumer group of a topic."""

    model_config = ConfigDict(extra="allow")

    group: str
    members: list[GroupMemberModel]
    partitions: list[PartitionRowModel]
    totals: dict[str, Any]


class TopicViewModel(BaseModel):
    """The whole view of a topic (:func:`redisaq_core.metrics.topic_metrics`)."""

    model_config = ConfigDict(extra="allow")

    topic: str
    time: float
    exists: bool
    partitions: int
    priorities: int
    groups_count: int
    produced: int
    length: int
    dead_letters: int
    partition_stats: list[PartitionStatsModel]
    groups: list[GroupModel]


class SeriesGroupModel(BaseModel):
    """A consumer group's series: one value per bucket, oldest first."""

    group: str
    handled: list[float] = Field(description="messages handled per second")
    lag: list[int | None] = Field(description="largest lag seen in the bucket (null: not sampled)")
    p50: list[float | None] = Field(description="handler time median, s (null: nothing handled)")
    p99: list[float | None] = Field(description="handler time 99th percentile, s")


class TopicSeriesModel(BaseModel):
    """A topic's last 15 minutes (:func:`redisaq_core.metrics.topic_series`), in 5 s buckets."""

    topic: str
    time: float = Field(description="the server's time of the reading, Unix s")
    step: int = Field(description="seconds per bucket")
    window: int = Field(description="seconds covered")
    times: list[int] = Field(description="start of each bucket, Unix s (the last: the current)")
    produced: list[float] = Field(description="messages produced per second")
    groups: list[SeriesGroupModel]
    skipped: int = Field(description="stored records that could not be read")


class DeadLetterModel(BaseModel):
    """A dead letter, where it came from and why it failed.

    Origin: ``topic``, ``partition``, ``priority``, ``msg_id``, ``group``,
    ``consumer``; failure: ``error``, ``error_type``, ``deliveries``.
    """

    id: str
    topic: str
    partition: int
    priority: int
    group: str
    msg_id: str
    deliveries: int
    error: str
    error_type: str
    consumer: str
    failed_at: float
    payload: Any = None
    payload_error: str | None = None


class ReplayRequest(BaseModel):
    """``POST /dlq/{topic}/replay``: the dead letters to put back, by id, or ``all``.

    ``all`` is ``true`` or ``false`` (no other value counts); unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(None, max_length=10_000)
    all: StrictBool = False


class ReplayResult(BaseModel):
    """How many dead letters went back on their partitions."""

    replayed: int


class SchedulePut(BaseModel):
    """``PUT /schedules/{name}``: a periodic job (:class:`~redisaq_core.schedule.Schedule`).

    Exactly one of ``cron`` (read in ``timezone``, an IANA name; a sixth field
    counts seconds) and ``every`` (seconds, at least 0.01) says when it ticks.
    Each tick enqueues ``payload`` on ``topic`` (``job: true``: as a tracked
    job), with ``partition_key`` and ``priority`` as for ``POST /jobs``. A tick
    up to ``grace`` seconds late is on time; older ones were missed while no
    scheduler ran: ``skip`` drops them, ``catch_up`` enqueues the latest
    ``max_catch_up``. Unknown fields are refused.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    topic: TopicName
    cron: str | None = Field(None, min_length=1, max_length=200, examples=["*/5 * * * *"])
    every: float | None = Field(None, ge=0.01, le=MAX_SCHEDULE_EVERY, description="Seconds.")
    timezone: str = Field("UTC", min_length=1, max_length=100)
    payload: JsonValue = Field(None, description="Any JSON value; each tick's message carries it.")
    partition_key: str | None = Field(None, min_length=1, max_length=200)
    priority: StrictInt | None = Field(None, ge=0, le=15)
    job: StrictBool = False
    missed: Literal["skip", "catch_up"] = "skip"
    max_catch_up: StrictInt = Field(10, ge=1, le=1000)
    grace: float = Field(60.0, ge=0, le=86_400, description="Seconds.")


class ScheduleModel(BaseModel):
    """A stored schedule (``Schedule.to_dict()``), its last tick and its next one.

    ``last_tick``: the last tick handled (``null``: none yet), ``next_tick``:
    the first tick after now (``null``: none), both Unix seconds of the Redis
    server's clock.
    """

    name: str
    topic: str
    cron: str | None
    every: float | None
    timezone: str
    payload: Any = None
    partition_key: str | None
    priority: int | None
    job: bool
    missed: Literal["skip", "catch_up"]
    max_catch_up: int
    grace: float
    last_tick: float | None
    next_tick: float | None
