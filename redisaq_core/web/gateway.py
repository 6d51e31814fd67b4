"""What a gateway process holds: one Redis client and the library components built on it.

:class:`Gateway` is the part of the web gateway that talks to the library;
the routes in :mod:`redisaq_core.web.app` only translate HTTP and WebSocket
to its methods. Everything it knows is read from Redis when asked for (job
records, the service registry and the worker statuses stored there, topic
views): two gateways behind one load balancer give the same answers. What it
keeps in memory is connections (one producer per topic, the job feed's
pub/sub connection, open sockets), never state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from typing import Any

import orjson
from redis.exceptions import ResponseError

from .._codec import default_deserializer
from .._failures import REDIS_FAILURES, Recovery, recovery_for, unless_foreign
from ..connection import AnyRedis, create_client, redact_url
from ..dlq import DeadLetters, parse_dead_letter
from ..errors import (
    ConfigurationError,
    ConnectionFailedError,
    NotConnectedError,
    PartitionKeyError,
    SerializationError,
)
from ..keys import TopicKeys, partition_count, validate_name
from ..monitor import Monitor
from ..producer import Producer
from ..registry import (
    HealthMonitor,
    ServiceInfo,
    ServiceRecord,
    ServiceRegistry,
    StatusChange,
    WorkerStatus,
    classify,
)
from ..results import JobRecord, JobStatus, ResultStore
from ..schedule import Schedule, Scheduler
from .feed import JobFeed
from .models import (
    RESERVED_WORKER_IDS,
    ReplayRequest,
    SchedulePut,
    SubmitJob,
    WorkerRegistration,
)

__all__ = ["WORKER_SERVICE_TYPE", "Gateway", "InvalidField", "job_dict", "redis_unavailable"]

log = logging.getLogger(__name__)

WORKER_SERVICE_TYPE = "worker"
"""The service type of workers registered through ``POST /register``."""
DASHBOARD_TOPICS = 50
"""Most topics a dashboard snapshot shows (in name order)."""
DASHBOARD_DEAD_LETTERS = 20
"""Most dead letters per topic a dashboard snapshot shows."""
DASHBOARD_DEAD_LETTER_BYTES = 65_536
"""Most bytes of dead letters (as JSON) per topic a dashboard snapshot shows."""
DASHBOARD_JOBS = 15
"""Recent jobs a dashboard snapshot shows."""
DASHBOARD_SCHEDULES = 50
"""Most schedules a dashboard snapshot shows (in name order)."""
_CURSOR = re.compile(r"^(\d{1,6}):(\d{1,20}-\d{1,20})$")
_MAX_ID_PART = 2**64 - 1
"""The largest milliseconds or sequence number of a stream entry id."""
_INTERNAL_METADATA = ("name", "connection_id")


class InvalidField(Exception):
    """A request field was well-formed but refused: answered with 422 naming the field."""

    def __init__(self, location: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


_SUBMIT_FIELDS = ("priority", "partition_key", "timeout", "delay", "idempotency_key", "topic")
_SCHEDULE_FIELDS = tuple(f for f in SchedulePut.model_fields if f != "payload")


def _field_of(exc: Exception, fields: tuple[str, ...], default: str) -> str:
    """The request field a library error is about: its message starts with the argument name."""
    first = str(exc).split(" ", 1)[0]
    return first if first in fields else default


def redis_unavailable(exc: BaseException) -> bool:
    """Whether a failed call means Redis can't serve now, rather than that it refused the call.

    A lost connection, a server loading its data or out of memory, a failover:
    unavailable. An error reply such as WRONGTYPE or NOPERM is an answer.
    """
    if isinstance(exc, ResponseError):
        return recovery_for(exc) is Recovery.RETRY
    return isinstance(exc, (*REDIS_FAILURES, ConnectionFailedError, NotConnectedError))


def job_dict(record: JobRecord) -> dict[str, Any]:
    """A job record as the gateway shows it: :meth:`JobRecord.as_dict` plus ``job_id``."""
    return {"job_id": record.id, **shown(record).as_dict()}


def shown(record: JobRecord) -> JobRecord:
    """``record`` as the gateway can send it as JSON.

    A result or progress that no JSON encoder here takes (nested past its depth, an
    integer past 64 bits: another client's, or a handler's) is left out, and
    ``result_error`` says so; before, it failed every response that held the job.
    """
    result, progress = _encodes(record.result), _encodes(record.progress)
    if result and progress:
        return record
    return dataclasses.replace(
        record,
        result=record.result if result else None,
        result_error=record.result_error if result else _UNSHOWN,
        progress=record.progress if progress else None,
    )


_UNSHOWN = "the result can't be shown as JSON (nested too deep, or an integer past 64 bits)"


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps([[[value]]], default=str)  # the levels of a snapshot around it
    except TypeError:
        return False
    return True


class Gateway:
    """The library side of one gateway process (see the module docstring).

    ``redis``: a client to use (never closed here); otherwise one is made from
    ``redis_url`` in :meth:`start` and closed in :meth:`stop`. ``key_prefix``
    is the service registry's. ``heartbeat_timeout``: seconds of silence
    after which a worker is ``not_responding``. ``heartbeat_min_interval``:
    seconds between two heartbeats of one worker written to Redis (default
    a quarter of the timeout, at most 1 s); frames in between are answered
    but not written.
    """

    def __init__(
        self,
        *,
        redis_url: str | None,
        redis: AnyRedis | None,
        key_prefix: str,
        heartbeat_timeout: float,
        heartbeat_min_interval: float | None = None,
        max_producers: int = 256,
    ) -> None:
        self._url = redis_url
        self._given = redis
        self.key_prefix = key_prefix
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_min_interval = (
            min(1.0, heartbeat_timeout / 4)
            if heartbeat_min_interval is None
            else heartbeat_min_interval
        )
        self._beats: dict[str, float] = {}
        self.max_producers = max_producers
        self._client: AnyRedis | None = None
        self._producers: OrderedDict[str, Producer] = OrderedDict()
        self._making: dict[str, asyncio.Future[Producer]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._listeners: list[Any] = []
        self.store: ResultStore | None = None
        self.registry: ServiceRegistry | None = None
        self.monitor: Monitor | None = None
        self.scheduler: Scheduler | None = None
        self.health: HealthMonitor | None = None
        self.feed: JobFeed | None = None

    @property
    def url(self) -> str:
        """The Redis URL in use, with any password hidden."""
        if self._given is not None:
            return "<given client>"
        return redact_url(self._url or "redis://localhost:6379/0")

    @property
    def client(self) -> AnyRedis:
        """The shared Redis client (after :meth:`start`)."""
        if self._client is None:
            raise ConnectionFailedError("the gateway is not started")
        return self._client

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and start the job feed and the health monitor."""
        client = self._given or create_client(self._url or "redis://localhost:6379/0")
        self._client = client
        try:
            self.store = ResultStore(redis=client)
            self.registry = ServiceRegistry(redis=client, key_prefix=self.key_prefix)
            self.monitor = Monitor(
                redis=client, key_prefix=self.key_prefix, stale_after=self.heartbeat_timeout
            )
            await self.store.connect()
            await self.registry.connect()
            await self.monitor.connect()
            self.scheduler = Scheduler(redis=client)
            await self.scheduler.connect()
            self.feed = JobFeed(client, self.store)
            self.health = HealthMonitor(
                self.registry, timeout=self.heartbeat_timeout, on_change=self._status_changed
            )
            await self.health.start()
        except BaseException:
            await self.stop()
            raise
        log.info("gateway connected to %s", self.url)

    async def stop(self) -> None:
        """Stop everything started here and close the client if it was made here."""
        if self.health is not None:
            await self.health.stop()
        if self.feed is not None:
            await self.feed.aclose()
        producers = list(self._producers.values())
        self._producers.clear()
        for producer in producers:
            await producer.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for component in (self.scheduler, self.monitor, self.registry, self.store):
            if component is not None:
                await component.close()
        client, self._client = self._client, None
        if client is not None and self._given is None:
            await client.aclose()

    # ---- change notifications (to this process's dashboards) -----------------------------

    def listen(self, callback: Any) -> None:
        """Call ``callback()`` whenever a worker's status may have changed."""
        self._listeners.append(callback)

    def changed(self) -> None:
        """Tell the listeners that something they show changed."""
        for callback in self._listeners:
            callback()

    def _status_changed(self, change: StatusChange) -> None:
        log.info("worker %s: %s -> %s", change.service_id, change.old, change.new)
        self.changed()

    # ---- jobs ----------------------------------------------------------------------------

    async def producer(self, topic: str) -> Producer:
        """The producer of ``topic`` (made and connected on first use; the least used closed)."""
        producer = self._producers.get(topic)
        if producer is not None:
            self._producers.move_to_end(topic)
            return producer
        making = self._making.get(topic)
        if making is not None:
            return await asyncio.shield(making)
        future: asyncio.Future[Producer] = asyncio.get_running_loop().create_future()
        self._making[topic] = future
        try:
            producer = Producer(topic, redis=self.client)
            await producer.connect()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._making[topic]
        future.set_result(producer)
        self._producers[topic] = producer
        while len(self._producers) > self.max_producers:
            _, old = self._producers.popitem(last=False)
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return producer

    async def submit(self, job: SubmitJob) -> dict[str, Any]:
        """Queue a job; return the ``JobAccepted`` fields. :class:`InvalidField` when refused."""
        try:
            validate_name(job.topic, "topic")
        except ConfigurationError as exc:
            raise InvalidField(("topic",), str(exc)) from None
        producer = await self.producer(job.topic)
        try:
            handle = await producer.submit(
                job.payload,
                priority=job.priority,
                partition_key=job.partition_key,
                timeout=job.timeout,
                delay=job.delay or None,
                idempotency_key=job.idempotency_key,
            )
        except PartitionKeyError as exc:
            raise InvalidField(("partition_key",), str(exc)) from None
        except (ConfigurationError, SerializationError) as exc:
            raise InvalidField((_field_of(exc, _SUBMIT_FIELDS, "payload"),), str(exc)) from None
        return {
            "job_id": handle.id,
            "status": (JobStatus.SCHEDULED if job.delay else JobStatus.QUEUED).value,
            "topic": job.topic,
            "partition": handle.partition,
            "job_type": job.job_type,
            "client_id": job.client_id,
        }

    async def job(self, job_id: str) -> JobRecord | None:
        """A job's record, or ``None``; :class:`InvalidField` for a malformed id."""
        assert self.store is not None
        try:
            return await self.store.get(job_id)
        except ConfigurationError as exc:
            raise InvalidField(("job_id",), str(exc)) from None

    async def cancel(self, job_id: str) -> str:
        """Cancel a job; its new status. ``JobNotFoundError``, ``JobFinishedError`` as the library.

        :class:`InvalidField` for a malformed id.
        """
        assert self.store is not None
        try:
            return (await self.store.cancel(job_id)).value
        except ConfigurationError as exc:
            raise InvalidField(("path", "job_id"), str(exc)) from None

    async def jobs(
        self, *, status: JobStatus | None, topic: str | None, limit: int
    ) -> list[JobRecord]:
        """Jobs, most recently changed first."""
        assert self.store is not None
        try:
            return await self.store.list_jobs(topic=topic, status=status, limit=limit)
        except ConfigurationError as exc:
            raise InvalidField(("topic",), str(exc)) from None

    # ---- workers -------------------------------------------------------------------------

    async def register(self, request: WorkerRegistration) -> str:
        """Register (or register again) a worker; return its id."""
        assert self.registry is not None
        worker_id = request.worker_id or uuid.uuid4().hex
        if worker_id in RESERVED_WORKER_IDS:
            raise InvalidField(("worker_id",), f"worker_id {worker_id!r} is reserved")
        metadata = {k: v for k, v in request.metadata.items() if k not in _INTERNAL_METADATA}
        try:
            info = ServiceInfo(
                service_id=worker_id,
                host=request.host,
                port=request.port,
                service_type=WORKER_SERVICE_TYPE,
                metadata={**metadata, "name": request.name},
            )
        except ConfigurationError as exc:
            field = _field_of(exc, ("host", "port", "metadata"), "worker_id")
            raise InvalidField((field,), str(exc)) from None
        await self.registry.register_service(info)
        self.changed()
        log.info("registered worker %s (%s) at %s:%s",
                 worker_id, request.name, info.host, info.port)  # fmt: skip
        return worker_id

    def _worker(
        self, record: ServiceRecord, now: float, stored: dict[str, WorkerStatus]
    ) -> dict[str, Any]:
        assert self.health is not None
        info = record.info
        last = info.last_seen
        age = None if last is None else max(0.0, now - last)
        status = stored.get(info.service_id)
        if status is None:
            status = classify(
                age=age or 0.0,
                heartbeated=last is not None and last > record.registered_at,
                connected=record.alive,
                timeout=self.health.timeout,
                disconnect_timeout=self.health.disconnect_timeout,
            )
        meta = info.metadata
        name = meta.get("name") or meta.get("consumer") or info.service_id
        return {
            "worker_id": info.service_id,
            "name": str(name),
            "host": info.host,
            "port": info.port,
            "status": status.value,
            "last_heartbeat": last,
            "registered_at": record.registered_at,
            "age": age,
            "service_type": info.service_type,
            "health": info.status,
            "connected": record.alive,
            "metadata": {k: v for k, v in meta.items() if k not in _INTERNAL_METADATA},
        }

    async def workers(
        self, *, status: WorkerStatus | None = None, service_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Every registered service (of ``service_type``) with its worker status, sorted by id."""
        assert self.registry is not None
        if service_type is not None:
            try:
                snap = await self.registry.snapshot(service_type)
            except ConfigurationError as exc:
                raise InvalidField(("service_type",), str(exc)) from None
        else:
            snap = await self.registry.snapshot()
        stored = await self.registry.get_worker_statuses()
        out = [self._worker(r, snap.now, stored) for r in snap.records]
        return [w for w in out if status is None or w["status"] == status.value]

    async def worker(self, worker_id: str) -> dict[str, Any] | None:
        """One registered service with its worker status, or ``None``."""
        for worker in await self.workers():
            if worker["worker_id"] == worker_id:
                return worker
        return None

    async def worker_connected(self, worker_id: str) -> str | None:
        """A heartbeat socket opened: mark the worker ``connected``; ``None`` if unknown.

        Returns the connection's id (kept in the worker's record, so that a
        socket that closes after a newer one opened does not mark it
        disconnected).
        """
        assert self.registry is not None
        info = await self.registry.get_service(worker_id)
        if info is None:
            return None
        connection = uuid.uuid4().hex
        info.metadata["connection_id"] = connection
        await self.registry.register_service(info, liveness_ttl=self.heartbeat_timeout)
        await self.registry.store_worker_statuses({worker_id: WorkerStatus.CONNECTED})
        self.changed()
        return connection

    def heartbeat_due(self, worker_id: str) -> bool:
        """Whether a heartbeat frame of ``worker_id`` is to be written to Redis now.

        At most one per ``heartbeat_min_interval`` seconds per worker (in this
        process); the frames in between only tell the socket is open.
        """
        now = time.monotonic()
        last = self._beats.get(worker_id)
        if last is not None and now - last < self.heartbeat_min_interval:
            return False
        self._beats[worker_id] = now
        if len(self._beats) > 10_000:
            horizon = now - self.heartbeat_timeout
            self._beats = {w: t for w, t in self._beats.items() if t >= horizon}
        return True

    async def worker_heartbeat(self, worker_id: str) -> bool:
        """A heartbeat (Redis server time): mark the worker ``alive``; ``False`` if it is gone."""
        assert self.registry is not None
        if not await self.registry.heartbeat(worker_id, liveness_ttl=self.heartbeat_timeout):
            return False
        await self.registry.store_worker_statuses({worker_id: WorkerStatus.ALIVE})
        return True

    async def worker_disconnected(self, worker_id: str, connection: str) -> None:
        """The heartbeat socket ``connection`` closed: mark the worker ``disconnected``."""
        assert self.registry is not None
        self._beats.pop(worker_id, None)
        info = await self.registry.get_service(worker_id)
        if info is None or info.metadata.get("connection_id") != connection:
            return
        await self.registry.store_worker_statuses({worker_id: WorkerStatus.DISCONNECTED})
        self.changed()

    # ---- topics, dead letters, metrics ---------------------------------------------------

    def _check_topic(self, name: str, location: tuple[str, ...]) -> None:
        try:
            validate_name(name, "topic")
        except ConfigurationError as exc:
            raise InvalidField(location, str(exc)) from None

    async def topics(self) -> list[dict[str, Any]]:
        """Every topic with its figures summed over its groups."""
        assert self.monitor is not None
        return await self.monitor.topics()

    async def topic(self, name: str) -> dict[str, Any] | None:
        """A topic's whole view, or ``None`` if there is no such topic."""
        assert self.monitor is not None
        self._check_topic(name, ("path", "name"))
        return await self.monitor.topic(name)

    async def topic_series(self, name: str) -> dict[str, Any] | None:
        """A topic's last 15 minutes (its groups' lag sampled first), or ``None`` if unknown."""
        assert self.monitor is not None
        self._check_topic(name, ("path", "name"))
        return await self.monitor.topic_series(name)

    async def known_topic(self, name: str) -> bool:
        """Whether ``name`` is a known topic."""
        assert self.monitor is not None
        self._check_topic(name, ("path", "topic"))
        return name in await self.monitor.topic_names()

    async def dead_letters(
        self, topic: str, *, limit: int, max_bytes: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a topic's dead letters as dicts, and the cursor of the next page.

        At most ``limit`` letters, and no more than ``max_bytes`` of them as
        JSON (but always one, so that a page moves on). Letters are read from
        Redis a few at a time, so a page never holds much more than its
        budget. ``cursor`` (``"<partition>:<entry id>"``, from the previous
        page) starts after that letter. The next cursor is ``None`` when the
        listing is complete.
        """
        partition, after = 0, None
        if cursor is not None:
            found = _CURSOR.match(cursor)
            if found is None or any(int(p) > _MAX_ID_PART for p in found.group(2).split("-")):
                raise InvalidField(
                    ("query", "cursor"), "cursor must be the X-Next-Cursor of a previous page"
                )
            partition, after = int(found.group(1)), found.group(2)
        keys = TopicKeys(topic)
        client = self.client
        # Another client's key of another type (the metadata, a dead-letter stream) reads empty.
        stored = await unless_foreign(client.hget(keys.meta, "partitions"))
        partitions = partition_count(stored)
        items: list[dict[str, Any]] = []
        used, batch = 0, min(limit, 10)
        while partition < partitions:
            low = f"({after}" if after is not None else "-"
            entries: Any = await unless_foreign(
                client.xrange(keys.dead_letters(partition), low, "+", count=batch)
            )
            if not entries:
                partition, after = partition + 1, None
                continue
            for entry_id, fields in entries:
                item = parse_dead_letter(
                    partition, entry_id, fields, default_deserializer
                ).as_dict()
                size = len(orjson.dumps(item, default=str)) + 1
                if items and used + size > max_bytes:
                    return items, f"{partition}:{after or '0-0'}"
                items.append(item)
                used += size
                after = entry_id.decode()
                if len(items) >= limit:
                    return items, f"{partition}:{after}"
            average = max(1, used // len(items))
            batch = max(1, min(limit - len(items), 100, (max_bytes - used) // average))
        return items, None

    async def replay(self, topic: str, request: ReplayRequest) -> int:
        """Replay the dead letters ``request`` names (or all); return how many went back."""
        if request.ids is None and not request.all:
            raise InvalidField(("ids",), "give the ids to replay, or all: true")
        ids = None if request.all else request.ids
        try:
            count = await DeadLetters(topic, redis=self.client).replay(ids)
        except ConfigurationError as exc:
            raise InvalidField(("ids",), str(exc)) from None
        if count:
            log.info("replayed %d dead letter(s) of %s", count, topic)
            self.changed()
        return count

    async def metrics(self) -> str:
        """The Prometheus exposition of every topic."""
        assert self.monitor is not None
        return await self.monitor.prometheus()

    async def ping(self) -> bool:
        """Whether Redis answers."""
        return bool(await self.client.ping())

    # ---- schedules -----------------------------------------------------------------------

    async def schedules(self, name: str | None = None) -> list[dict[str, Any]]:
        """The stored schedules (only ``name``'s if given) with their last and next tick."""
        assert self.scheduler is not None
        found = await self.scheduler.list()
        if name is not None:
            found = [s for s in found if s.name == name]
        if not found:
            return []
        # A last tick is a time unless another client wrote something else (inf, say).
        last = {n: t for n, t in (await self.scheduler.last_ticks()).items() if math.isfinite(t)}
        seconds, micros = await self.client.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        return [
            {**s.to_dict(), "last_tick": last.get(s.name), "next_tick": _next_tick(s, now)}
            for s in found
        ]

    async def put_schedule(self, name: str, request: SchedulePut) -> dict[str, Any]:
        """Store (or replace) the schedule ``name``; :class:`InvalidField` when refused."""
        assert self.scheduler is not None
        try:
            schedule = Schedule(name, **request.model_dump())
        except ConfigurationError as exc:
            if str(exc).startswith("schedule name"):
                raise InvalidField(("path", "name"), str(exc)) from None
            raise InvalidField((_field_of(exc, _SCHEDULE_FIELDS, "cron"),), str(exc)) from None
        await self.scheduler.add(schedule, replace=True)
        log.info("stored schedule %s (topic %s)", name, schedule.topic)
        self.changed()
        stored = await self.schedules(name)
        return stored[0] if stored else {**schedule.to_dict(), "last_tick": None, "next_tick": None}

    async def remove_schedule(self, name: str) -> bool:
        """Delete the schedule ``name``; whether there was one."""
        assert self.scheduler is not None
        removed = await self.scheduler.remove(name)
        if removed:
            log.info("removed schedule %s", name)
            self.changed()
        return removed

    # ---- the dashboard -------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """What the dashboard shows, read in one go."""
        assert self.monitor is not None and self.store is not None
        names = await self.monitor.topic_names()
        views = await self.monitor.topic_views(names[:DASHBOARD_TOPICS])
        topics = []
        letters: list[dict[str, Any]] = []
        for view in views:
            summary = Monitor.topic_summary(view)
            stats = {s["partition"]: s for s in view["partition_stats"]}
            rows = []
            for group in view["groups"]:
                for row in group["partitions"]:
                    stat = stats.get(row["partition"], {})
                    rows.append(
                        {
                            "partition": row["partition"],
                            "group": group["group"],
                            "owner": row["owner"],
                            "lag": row["lag"],
                            "lag_exact": row["lag_exact"],
                            "pending": row["pending"],
                            "in_flight": row["in_flight"],
                            "length": stat.get("length", 0),
                            "dead_letters": stat.get("dead_letters", 0),
                        }
                    )
            if not view["groups"]:
                rows = [
                    {"partition": p, "group": None, "owner": None, "lag": None,
                     "lag_exact": True, "pending": 0, "in_flight": 0,
                     "length": s["length"], "dead_letters": s["dead_letters"]}
                    for p, s in stats.items()
                ]  # fmt: skip
            topics.append({**summary, "rows": rows})
            if view["dead_letters"]:
                items, _ = await self.dead_letters(
                    view["topic"],
                    limit=DASHBOARD_DEAD_LETTERS,
                    max_bytes=DASHBOARD_DEAD_LETTER_BYTES,
                )
                letters.append(
                    {"topic": view["topic"], "count": view["dead_letters"], "items": items}
                )
        jobs = await self.store.list_jobs(limit=DASHBOARD_JOBS)
        schedules = await self.schedules()
        return {
            "type": "snapshot",
            "topics": topics,
            "topics_total": len(names),
            "workers": await self.workers(),
            "dead_letters": letters,
            "jobs": [job_dict(r) for r in jobs],
            "schedules": schedules[:DASHBOARD_SCHEDULES],
            "schedules_total": len(schedules),
            "heartbeat_timeout": self.heartbeat_timeout,
        }


def _next_tick(schedule: Schedule, now_ms: int) -> float | None:
    """The schedule's first tick after ``now_ms``, in seconds; ``None`` if there is none."""
    try:
        return schedule.after(now_ms) / 1000
    except (ValueError, OverflowError):  # a cron expression whose dates ran out
        return None
