"""A read-only view of the whole system: what ``redisaq monitor`` shows, as a library.

::

    async with Monitor(redis_url=url) as monitor:
        summary = await monitor.summary()
        workers = await monitor.workers()
        text = await monitor.prometheus()

Every figure comes from the indexes the library keeps (the topic set, each
topic's metadata, groups, membership sets, assignments, job indexes and
metrics hash) and from the streams themselves; nothing is discovered with
``SCAN`` or ``KEYS``. Its one write is the lag sample that
:meth:`Monitor.topic_series` adds to a topic's series. The dicts returned
are JSON-ready and their shapes are documented on each method; the CLI
prints them as they are with ``--format json``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from ._codec import Deserializer, shown_text
from ._failures import unless_foreign
from .connection import AnyRedis, RedisComponent
from .errors import ConfigurationError
from .keys import TopicKeys, is_name, partition_count
from .metrics import COUNTERS, record_lag, topic_metrics, topic_series
from .metrics.prometheus import render_prometheus
from .registry import CONSUMER_SERVICE_TYPE, ServiceInfo, ServiceRegistry
from .results import JobRecord, JobStatus, ResultStore

__all__ = ["Monitor"]

log = logging.getLogger(__name__)

_TOPIC_FIGURES = ("pending", "lag", "in_flight", *COUNTERS)
_CONCURRENT_TOPICS = 8
_OWNED = ("partition", "pending", "lag", "lag_exact", "in_flight")


class Monitor(RedisComponent):
    """Topics, consumer groups, workers and jobs, read from Redis.

    ``key_prefix`` is the service registry's prefix (its ``consumer``
    services are listed among the workers). A worker is *alive* when its
    last heartbeat is at most ``stale_after`` seconds old. ``deserializer``
    decodes job results (default: orjson).
    """

    def __init__(
        self,
        *,
        redis: AnyRedis | None = None,
        redis_url: str | None = None,
        key_prefix: str = "",
        stale_after: float = 15.0,
        deserializer: Deserializer | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        if (
            isinstance(stale_after, bool)
            or not isinstance(stale_after, (int, float))
            or not 0 < stale_after < math.inf
        ):
            raise ConfigurationError(f"stale_after must be a number > 0, got {stale_after!r}")
        self.key_prefix = key_prefix
        self.stale_after = float(stale_after)
        self._deserializer = deserializer
        self._results: ResultStore | None = None
        self._registry: ServiceRegistry | None = None

    async def _on_connect(self, client: AnyRedis) -> None:
        self._results = ResultStore(redis=client, deserializer=self._deserializer)
        self._registry = ServiceRegistry(redis=client, key_prefix=self.key_prefix)

    async def _on_close(self) -> None:
        if self._results is not None:
            await self._results.close()
        if self._registry is not None:
            await self._registry.close()

    async def _parts(self) -> tuple[AnyRedis, ResultStore, ServiceRegistry]:
        redis = await self._ensure()
        assert self._results is not None and self._registry is not None
        return redis, self._results, self._registry

    # ---- topics ------------------------------------------------------------------------

    async def topic_names(self) -> list[str]:
        """Every known topic, sorted (members of the index that are no topic name skipped)."""
        redis, _, _ = await self._parts()
        indexed = await unless_foreign(redis.smembers(TopicKeys.topic_index())) or ()
        return sorted(n for n in (shown_text(t) for t in indexed) if is_name(n))

    async def topic(self, name: str) -> dict[str, Any] | None:
        """The full :func:`~redisaq_core.metrics.topic_metrics` view, or ``None`` if unknown."""
        TopicKeys(name)
        redis, _, _ = await self._parts()
        view = await topic_metrics(redis, name)
        if not view["exists"] and name not in await self.topic_names():
            return None
        return view

    async def topic_series(
        self, name: str, view: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The topic's last 15 minutes (:func:`~redisaq_core.metrics.topic_series`), or ``None``.

        Each group's lag, read now (or taken from ``view``, a :meth:`topic`
        view read just before), is first written into the current bucket, so
        that every reader of the series draws the same lag line.
        """
        view = view if view is not None else await self.topic(name)
        if view is None:
            return None
        redis, _, _ = await self._parts()
        lags = {g["group"]: int(g["totals"]["lag"]) for g in view["groups"]}
        try:
            await record_lag(redis, name, lags)
        except ResponseError as exc:  # a read-only user or replica: the series without it
            log.debug("series of %s: lag not recorded: %s", name, exc)
        return await topic_series(redis, name)

    async def topic_views(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The full views of ``names`` (default: every topic), a few read at a time."""
        redis, _, _ = await self._parts()
        names = await self.topic_names() if names is None else list(names)
        limit = asyncio.Semaphore(_CONCURRENT_TOPICS)

        async def view(name: str) -> dict[str, Any]:
            async with limit:
                return await topic_metrics(redis, name)

        return list(await asyncio.gather(*(view(n) for n in names)))

    @staticmethod
    def topic_summary(view: dict[str, Any]) -> dict[str, Any]:
        """One line's worth of a topic view.

        ``{"topic", "partitions", "priorities", "groups": [names], "members",
        "produced", "length", "dead_letters", "scheduled", "over_maxlen", "pending", "lag",
        "in_flight", "handled", "failed", "retried", "dead_lettered", "timed_out",
        "trimmed"}`` (the group figures summed over the groups).
        """
        out: dict[str, Any] = {
            "topic": view["topic"],
            "partitions": view["partitions"],
            "priorities": view["priorities"],
            "groups": [g["group"] for g in view["groups"]],
            "members": sum(len(g["members"]) for g in view["groups"]),
            "produced": view["produced"],
            "length": view["length"],
            "dead_letters": view["dead_letters"],
            "scheduled": view.get("scheduled", 0),
            "over_maxlen": view.get("over_maxlen", 0),
        }
        for key in _TOPIC_FIGURES:
            out[key] = sum(g["totals"][key] for g in view["groups"])
        return out

    async def topics(self) -> list[dict[str, Any]]:
        """:meth:`topic_summary` of every topic."""
        return [self.topic_summary(v) for v in await self.topic_views()]

    # ---- workers -----------------------------------------------------------------------

    async def workers(
        self, views: list[dict[str, Any]] | None = None, *, include_stale: bool = False
    ) -> list[dict[str, Any]]:
        """Live group members of every topic, and registered ``consumer`` services.

        Only workers whose last heartbeat is at most ``stale_after`` seconds
        old, unless ``include_stale``. ``views`` are topic views already read.

        Each worker: ``{"id": "topic/group/name", "name", "topic", "group",
        "last_heartbeat", "age", "alive", "partitions", "pending",
        "in_flight", "owned": [{"partition", "pending", "lag", "lag_exact", "in_flight"}],
        "member", "service"}``. ``member`` says whether it is in the group's
        membership set; ``service`` is its registry record (``host``,
        ``port``, ``status``, ``last_seen``, ``metadata``) or ``None``. A
        registered consumer that is no member has the figures of its record.
        """
        _, _, registry = await self._parts()
        if views is None:
            views = await self.topic_views()
        services = {s.service_id: s for s in await registry.list_services(CONSUMER_SERVICE_TYPE)}
        now = max([v["time"] for v in views] or [await registry.server_time()])
        out: dict[str, dict[str, Any]] = {}
        for view in views:
            for group in view["groups"]:
                rows = {r["partition"]: r for r in group["partitions"]}
                for m in group["members"]:
                    wid = f"{view['topic']}/{group['group']}/{m['name']}"
                    out[wid] = {
                        "id": wid,
                        "name": m["name"],
                        "topic": view["topic"],
                        "group": group["group"],
                        "last_heartbeat": m["last_heartbeat"],
                        "age": m["age"],
                        "alive": m["age"] <= self.stale_after,
                        "partitions": m["partitions"],
                        "pending": m["pending"],
                        "in_flight": m["in_flight"],
                        "owned": [
                            {k: rows[p][k] for k in _OWNED} for p in m["partitions"] if p in rows
                        ],
                        "member": True,
                        "service": None,
                    }
        for sid, info in services.items():
            if sid in out:
                out[sid]["service"] = _service(info)
            else:
                out[sid] = _registered_only(sid, info, now, self.stale_after)
        return [out[k] for k in sorted(out) if include_stale or out[k]["alive"]]

    async def worker(self, worker_id: str) -> dict[str, Any] | None:
        """The worker with this id (``topic/group/name``), or whose name is this; else ``None``.

        A bare name that several workers share raises ``ConfigurationError``
        naming their ids.
        """
        workers = await self.workers(include_stale=True)
        for w in workers:
            if w["id"] == worker_id:
                return w
        named = [w for w in workers if w["name"] == worker_id]
        if len(named) > 1:
            ids = ", ".join(w["id"] for w in named)
            raise ConfigurationError(f"{worker_id!r} names several workers: {ids}; give the id")
        return named[0] if named else None

    # ---- jobs --------------------------------------------------------------------------

    async def jobs(
        self, topic: str | None = None, status: JobStatus | str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Jobs, most recently changed first (see :meth:`ResultStore.list_jobs`)."""
        _, results, _ = await self._parts()
        return await results.list_jobs(topic=topic, status=status, limit=limit)

    async def job(self, job_id: str) -> JobRecord | None:
        """One job's record, or ``None``."""
        _, results, _ = await self._parts()
        return await results.get(job_id)

    async def jobs_tracked(self, names: Sequence[str]) -> int:
        """How many entries the job indexes of these topics hold (expired ones included)."""
        redis, _, _ = await self._parts()
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(TopicKeys(name).meta, "partitions")
        # A key another client made of another type holds none (its error reply counts 0).
        replies = await pipe.execute(raise_on_error=False)
        counts = [0 if isinstance(c, Exception) else partition_count(c) for c in replies]
        pipe = redis.pipeline(transaction=False)
        for name, n in zip(names, counts, strict=True):
            for p in range(n):
                pipe.zcard(TopicKeys(name).jobs(p))
        return sum(int(x) for x in await pipe.execute(raise_on_error=False) if isinstance(x, int))

    # ---- everything --------------------------------------------------------------------

    async def summary(self) -> dict[str, Any]:
        """The system at a glance.

        ``{"time", "topics", "partitions", "groups", "workers": {"alive", "stale"},
        "messages": {"produced", "length", "dead_letters", "scheduled", "pending", "lag",
        "in_flight", "handled", "failed", "retried", "dead_lettered",
        "timed_out", "trimmed"}, "jobs": {"tracked"}}``: counts summed over
        every topic and group; ``jobs.tracked`` counts job index entries.
        """
        views = await self.topic_views()
        workers = await self.workers(views, include_stale=True)
        topics = [self.topic_summary(v) for v in views]
        redis, _, _ = await self._parts()
        sec, usec = await redis.time()
        messages = {
            key: sum(t[key] for t in topics)
            for key in ("produced", "length", "dead_letters", "scheduled", *_TOPIC_FIGURES)
        }
        alive = sum(1 for w in workers if w["alive"])
        return {
            "time": int(sec) + int(usec) / 1e6,
            "topics": len(views),
            "partitions": sum(v["partitions"] for v in views),
            "groups": sum(len(v["groups"]) for v in views),
            "workers": {"alive": alive, "stale": len(workers) - alive},
            "messages": messages,
            "jobs": {"tracked": await self.jobs_tracked([v["topic"] for v in views])},
        }

    async def prometheus(self, names: Sequence[str] | None = None) -> str:
        """The Prometheus exposition of ``names`` (default: every topic)."""
        return render_prometheus(await self.topic_views(names))


def _service(info: ServiceInfo) -> dict[str, Any]:
    return {
        "host": info.host,
        "port": info.port,
        "status": info.status,
        "last_seen": info.last_seen,
        "metadata": dict(info.metadata),
    }


def _registered_only(sid: str, info: ServiceInfo, now: float, stale: float) -> dict[str, Any]:
    meta = info.metadata
    topic = str(meta.get("topic", ""))
    group = str(meta.get("group", ""))
    name = str(meta.get("consumer", sid.rsplit("/", 1)[-1]))
    age = None if info.last_seen is None else max(0.0, now - info.last_seen)
    partitions = meta.get("partitions")
    return {
        "id": sid,
        "name": name,
        "topic": topic,
        "group": group,
        "last_heartbeat": info.last_seen,
        "age": age,
        "alive": age is not None and age <= stale,
        # Another client's metadata may hold anything there: only whole numbers are partitions.
        "partitions": sorted(p for p in partitions if type(p) is int)
        if isinstance(partitions, list)
        else [],
        "pending": 0,
        "in_flight": 0,
        "owned": [],
        "member": False,
        "service": _service(info),
    }
