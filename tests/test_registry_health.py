"""Keepalive self-registration, remote shutdown, and the HealthMonitor, against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from redisaq_core import (
    ConfigurationError,
    HealthMonitor,
    Keepalive,
    ServiceInfo,
    ServiceRegistry,
    ServiceStatus,
    StatusChange,
    WorkerStatus,
)
from redisaq_core.connection import is_cluster
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import RegistryKeys
from redisaq_core.registry import CONSUMER_SERVICE_TYPE, classify, consumer_service_info
from tests.helpers import eventually


@pytest.fixture
async def registry(redis_url: str) -> AsyncIterator[ServiceRegistry]:
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as reg:
        yield reg
        await reg.clear_all()


def _info(sid: str = "svc-1", stype: str = "worker", **kw: Any) -> ServiceInfo:
    return ServiceInfo(sid, "10.0.0.2", 8001, stype, **kw)


async def _last_seen(registry: ServiceRegistry, sid: str) -> float:
    got = await registry.get_service(sid)
    assert got is not None and got.last_seen is not None
    return got.last_seen


# ---- keepalive ---------------------------------------------------------------------------


async def test_keepalive_registers_renews_and_deregisters(
    registry: ServiceRegistry, redis: Redis
) -> None:
    k = registry.keys
    async with registry.keepalive(_info(metadata={"a": 1}), interval=0.05) as ka:
        assert isinstance(ka, Keepalive) and ka.running
        first = await _last_seen(registry, "svc-1")
        ttl_ms = await redis.pttl(k.alive("svc-1"))
        assert 0 < ttl_ms <= 150
        await eventually(lambda: _advanced(registry, "svc-1", first), timeout=5, message="renewal")
        assert await redis.pttl(k.alive("svc-1")) > 0
        assert await ka.update(status=ServiceStatus.UNHEALTHY, metadata={"b": 2})
        got = await registry.get_service("svc-1")
        assert got is not None and got.status == "unhealthy" and got.metadata == {"a": 1, "b": 2}
        assert not ka.shutdown_requested
    assert not ka.running
    assert await registry.get_service("svc-1") is None
    assert await redis.exists(k.alive("svc-1")) == 0
    await ka.stop()  # idempotent


async def _advanced(registry: ServiceRegistry, sid: str, first: float) -> bool:
    try:
        return await _last_seen(registry, sid) > first
    except RedisConnectionError:  # a pooled connection from before a server restart
        return False


@pytest.mark.parametrize("how", ["deregister", "del"])
async def test_remote_shutdown_is_noticed_within_one_interval(
    registry: ServiceRegistry, redis: Redis, how: str
) -> None:
    calls: list[str] = []
    async with registry.keepalive(
        _info(), interval=0.1, on_shutdown=lambda: calls.append("sync")
    ) as ka:
        if how == "deregister":
            assert await registry.deregister_service("svc-1")
        else:  # seed 003: `redis-cli del demo:mpush:9`
            await redis.delete(registry.keys.service("svc-1"))
        await asyncio.wait_for(ka.wait_shutdown(), timeout=0.1 * 2 + 2)
        assert ka.shutdown_requested and calls == ["sync"]
        await eventually(lambda: not ka.running, timeout=5, message="renewing stops")
        assert await registry.get_service("svc-1") is None  # never re-registered
    k = registry.keys
    assert await redis.zscore(k.active, "svc-1") is None
    assert await redis.sismember(k.service_type("worker"), "svc-1") == 0
    assert await redis.exists(k.alive("svc-1")) == 0


async def test_a_newer_instance_of_the_same_id_is_left_alone_by_the_one_it_replaced(
    registry: ServiceRegistry,
) -> None:
    # A restart that overlaps: the new instance registers the same id, then the old one
    # stops. The old one's stop deregistered the new one's record, and the new one took
    # that for a remote shutdown (a consumer stopped).
    old_calls: list[str] = []
    old = registry.keepalive(_info(), interval=0.05, on_shutdown=lambda: old_calls.append("old"))
    await old.start()
    new_calls: list[str] = []
    async with registry.keepalive(
        _info(), interval=0.05, on_shutdown=lambda: new_calls.append("new")
    ) as new:
        await asyncio.wait_for(old.wait_shutdown(), timeout=5)  # replaced: the old one stops
        await old.stop()
        seen = await eventually(lambda: _seen_or_none(registry, "svc-1"), timeout=5)
        await eventually(lambda: _advanced(registry, "svc-1", seen), timeout=5)
        assert new.running and not new.shutdown_requested
    assert old_calls == ["old"] and new_calls == []
    assert await registry.get_service("svc-1") is None  # the new one deregistered its own


async def test_async_on_shutdown_runs_as_a_task_and_may_stop_the_keepalive(
    registry: ServiceRegistry,
) -> None:
    stopped = asyncio.Event()

    async def on_shutdown() -> None:
        await ka.stop()
        stopped.set()

    ka = registry.keepalive(_info(), interval=0.05, on_shutdown=on_shutdown)
    await ka.start()
    await ka.start()  # idempotent
    await registry.deregister_service("svc-1")
    await asyncio.wait_for(stopped.wait(), 5)
    assert not ka.running
    with pytest.raises(Exception, match="stopped"):
        await ka.start()


async def test_keepalive_update_after_remote_removal_requests_shutdown(
    registry: ServiceRegistry,
) -> None:
    async with registry.keepalive(_info(), interval=30) as ka:
        await registry.deregister_service("svc-1")
        assert await ka.update(status="stopping") is False
        assert ka.shutdown_requested


async def test_failing_on_shutdown_is_logged_not_raised(
    registry: ServiceRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="redisaq_core"):
        async with registry.keepalive(_info(), interval=0.05, on_shutdown=boom) as ka:
            await registry.deregister_service("svc-1")
            await asyncio.wait_for(ka.wait_shutdown(), 5)
    assert "on_shutdown failed" in caplog.text


def test_keepalive_validates(redis_url: str) -> None:
    reg = ServiceRegistry(redis_url=redis_url)
    with pytest.raises(ConfigurationError, match="interval"):
        reg.keepalive(_info(), interval=0)
    with pytest.raises(ConfigurationError, match="ttl"):
        reg.keepalive(_info(), interval=2, ttl=1)
    with pytest.raises(ConfigurationError, match="on_shutdown"):
        reg.keepalive(_info(), on_shutdown="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="service_info"):
        reg.keepalive("svc")  # type: ignore[arg-type]


async def test_consumer_registration(registry: ServiceRegistry) -> None:
    ka = await registry.register_consumer(
        topic="orders", group="billing", consumer_name="c1", partitions=[2, 0], interval=0.05
    )
    try:
        services = await registry.list_services(service_type=CONSUMER_SERVICE_TYPE)
        assert [s.service_id for s in services] == ["orders/billing/c1"]
        meta = services[0].metadata
        assert (meta["topic"], meta["group"], meta["consumer"], meta["partitions"]) == (
            "orders", "billing", "c1", [0, 2],
        )  # fmt: skip
        assert await ka.set_partitions({3, 1})
        got = await registry.get_service("orders/billing/c1")
        assert got is not None and got.metadata["partitions"] == [1, 3]
    finally:
        await ka.stop()
    assert await registry.get_service_count(CONSUMER_SERVICE_TYPE) == 0
    with pytest.raises(ConfigurationError, match="topic"):
        consumer_service_info(topic="", group="g", consumer_name="c")


# ---- classification (pure) -----------------------------------------------------------------


@given(
    age=st.floats(0, 1000),
    heartbeated=st.booleans(),
    connected=st.booleans(),
    timeout=st.floats(0.001, 100),
    extra=st.floats(0.001, 100),
)
def test_classify_is_ordered_by_age(
    age: float, heartbeated: bool, connected: bool, timeout: float, extra: float
) -> None:
    status = classify(age=age, heartbeated=heartbeated, connected=connected,
                      timeout=timeout, disconnect_timeout=timeout + extra)  # fmt: skip
    if age > timeout + extra:
        assert status is WorkerStatus.DISCONNECTED
    elif age > timeout:
        assert status is WorkerStatus.NOT_RESPONDING
    elif heartbeated:
        assert status is WorkerStatus.ALIVE
    else:
        assert status is (WorkerStatus.CONNECTED if connected else WorkerStatus.REGISTERED)
    older = classify(age=age + timeout + extra + 1, heartbeated=heartbeated, connected=connected,
                     timeout=timeout, disconnect_timeout=timeout + extra)  # fmt: skip
    assert older is WorkerStatus.DISCONNECTED


def test_worker_status_values() -> None:
    assert [s.value for s in WorkerStatus] == [
        "registered", "connected", "alive", "not_responding", "disconnected",
    ]  # fmt: skip
    assert str(WorkerStatus.NOT_RESPONDING) == "not_responding"


# ---- the monitor ----------------------------------------------------------------------------


async def test_monitor_walks_a_worker_through_every_status(registry: ServiceRegistry) -> None:
    events: list[StatusChange] = []
    monitor = HealthMonitor(registry, timeout=0.3, disconnect_timeout=0.6, on_change=events.append)

    await registry.register_service(_info("plain"))
    changes = await monitor.check()
    assert [(c.service_id, c.old, c.new) for c in changes] == [
        ("plain", None, WorkerStatus.REGISTERED)
    ]
    assert await monitor.check() == []  # nothing changed, nothing emitted

    await registry.heartbeat("plain")
    assert [c.new for c in await monitor.check()] == [WorkerStatus.ALIVE]
    assert await registry.get_worker_statuses() == {"plain": WorkerStatus.ALIVE}

    await eventually(lambda: _status_is(monitor, "plain", WorkerStatus.NOT_RESPONDING), timeout=5)
    await eventually(lambda: _status_is(monitor, "plain", WorkerStatus.DISCONNECTED), timeout=5)
    assert await registry.get_worker_statuses() == {"plain": WorkerStatus.DISCONNECTED}
    await registry.heartbeat("plain")
    assert [c.new for c in await monitor.check()] == [WorkerStatus.ALIVE]

    await registry.deregister_service("plain")
    (gone,) = await monitor.check()
    assert (gone.old, gone.new, gone.service, gone.age) == (
        WorkerStatus.ALIVE, WorkerStatus.DISCONNECTED, None, None,
    )  # fmt: skip
    assert "plain" not in monitor.statuses
    assert await registry.get_worker_statuses() == {}
    assert [e.new for e in events] == [
        WorkerStatus.REGISTERED, WorkerStatus.ALIVE, WorkerStatus.NOT_RESPONDING,
        WorkerStatus.DISCONNECTED, WorkerStatus.ALIVE, WorkerStatus.DISCONNECTED,
    ]  # fmt: skip
    assert events[1].as_dict()["service"]["service_id"] == "plain"


async def _status_is(monitor: HealthMonitor, sid: str, status: WorkerStatus) -> bool:
    await monitor.check()
    return monitor.statuses.get(sid) == status


async def test_monitor_sees_a_keepalive_connect_then_come_alive(registry: ServiceRegistry) -> None:
    monitor = HealthMonitor(registry, timeout=5)
    async with registry.keepalive(_info("ka"), interval=0.2):
        assert [c.new for c in await monitor.check()] == [WorkerStatus.CONNECTED]
        await eventually(lambda: _status_is(monitor, "ka", WorkerStatus.ALIVE), timeout=5)
    assert [c.new for c in await monitor.check()] == [WorkerStatus.DISCONNECTED]


async def test_a_restarted_monitor_continues_from_the_stored_statuses(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info("a"))
    await registry.heartbeat("a")
    first = HealthMonitor(registry, timeout=5)
    assert [c.new for c in await first.check()] == [WorkerStatus.ALIVE]
    second = HealthMonitor(registry, timeout=5)
    assert await second.check() == []
    assert second.statuses == {"a": WorkerStatus.ALIVE}


async def test_monitor_loop_emits_async_events_and_survives_bad_callbacks_and_records(
    registry: ServiceRegistry, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, WorkerStatus]] = []

    async def on_change(change: StatusChange) -> None:
        seen.append((change.service_id, change.new))
        if change.service_id == "explodes":
            raise RuntimeError("callback bug")

    await registry.register_service(_info("explodes"))
    await registry.register_service(_info("quiet", "inference"))
    await redis.hset(registry.keys.service("junk"), "port", "x")
    await redis.zadd(registry.keys.active, {"junk": 1e10})
    # An id that is no UTF-8, and metadata nested past the JSON decoder's depth: they
    # ended the monitor's loop.
    await redis.hset(registry.keys.service("").encode() + b"w\xff", "status", "x")
    await redis.zadd(registry.keys.active, {b"w\xff": 1e10})
    await registry.register_service(_info("deep"))
    await redis.hset(registry.keys.service("deep"), "metadata", "[" * 100_000)
    with caplog.at_level(logging.ERROR, logger="redisaq_core"):
        async with HealthMonitor(
            registry, timeout=0.2, disconnect_timeout=30, interval=0.05, on_change=on_change
        ) as monitor:
            assert monitor.running
            await eventually(lambda: ("quiet", WorkerStatus.NOT_RESPONDING) in seen, timeout=5)
            assert ("explodes", WorkerStatus.NOT_RESPONDING) in seen
        assert not monitor.running
    assert "callback bug" in caplog.text
    assert all(sid not in ("junk", "deep") for sid, _ in seen)
    assert (await registry.snapshot()).malformed == ["deep", "junk", "w\ufffd"]
    await monitor.stop()  # idempotent


async def test_registry_keys_another_client_made_of_another_type_stop_nothing(
    registry: ServiceRegistry, redis: Redis
) -> None:
    # A service record and a type index replaced by keys of another type. Before, the first
    # failed every snapshot (every listing, and the health monitor for good), the second
    # every registration, heartbeat and deregistration that touched the type.
    keys = registry.keys
    await registry.register_service(_info("bad", "worker"))
    await registry.register_service(_info("other", "other"))
    await redis.delete(keys.service("bad"), keys.service_type("other"))
    await redis.set(keys.service("bad"), "another client's")
    await redis.set(keys.service_type("other"), "another client's")
    assert [s.service_id for s in await registry.list_services()] == ["other"]
    assert await registry.list_services("other") == []
    assert [c.service_id for c in await HealthMonitor(registry, timeout=5).check()] == ["other"]
    await registry.register_service(_info("svc", "worker"))
    await registry.register_service(_info("other", "worker"))  # leaves the type "other"
    await registry.register_service(_info("again", "other"))
    assert await registry.heartbeat("again") and not await registry.heartbeat("bad")
    assert await registry.get_service_count("other") == 1
    assert await registry.deregister_service("again")
    assert await registry.cleanup_stale_services(timeout_seconds=0) >= 2
    await redis.set(keys.service_type("other"), "another client's")
    await redis.sadd(keys.types, "other")
    assert await registry.clear_all()


@pytest.mark.parametrize("step", ["check", "register", "deregister", "cleanup", "mark", "clear"])
async def test_a_worker_status_key_of_another_type_is_taken_as_absent(
    registry: ServiceRegistry, redis: Redis, step: str
) -> None:
    # Before, each of these failed on it (WRONGTYPE), the health monitor's check for good.
    keys = registry.keys
    await registry.register_service(_info("w"))
    await redis.set(keys.worker_status, "another client's")
    if step == "check":
        assert [c.service_id for c in await HealthMonitor(registry, timeout=5).check()] == ["w"]
        assert list(await registry.get_worker_statuses()) == ["w"]  # stored in its place
    elif step == "register":
        await registry.register_service(_info("x"))
    elif step == "deregister":
        assert await registry.deregister_service("w")
    elif step == "cleanup":
        assert await registry.cleanup_stale_services(timeout_seconds=0) == 1
    elif step == "mark":
        assert await registry.store_worker_statuses({"w": WorkerStatus.ALIVE}) == 1
        assert await registry.get_worker_statuses() == {"w": WorkerStatus.ALIVE}
    else:
        assert await registry.clear_all()
    assert await redis.type(keys.worker_status) in (b"hash", b"none")


async def test_out_of_memory_replaces_no_worker_status_key(
    registry: ServiceRegistry, redis: Redis
) -> None:
    # The server's own refusal is raised; the other client's key stays as it was.
    if is_cluster(redis):
        pytest.skip("CONFIG SET reaches one node of a cluster, not the one holding the keys")
    await registry.register_service(_info("w"))
    await redis.set(registry.keys.worker_status, "another client's")
    policy = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(Exception, match="maxmemory"):
            await registry.store_worker_statuses({"w": WorkerStatus.ALIVE})
    finally:
        await redis.config_set("maxmemory", 0)
        await redis.config_set("maxmemory-policy", policy)
    assert await redis.get(registry.keys.worker_status) == b"another client's"


async def test_monitor_of_one_type(registry: ServiceRegistry) -> None:
    await registry.register_service(_info("w", "worker"))
    await registry.register_service(_info("i", "inference"))
    monitor = HealthMonitor(registry, timeout=5, service_type="inference")
    assert [c.service_id for c in await monitor.check()] == ["i"]


async def test_worker_status_is_not_left_behind_for_a_removed_service(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info("a"))
    assert await registry.store_worker_statuses({"a": WorkerStatus.ALIVE, "b": "alive"}) == 1
    assert await registry.get_worker_statuses() == {"a": WorkerStatus.ALIVE}
    await registry.deregister_service("a")
    assert await registry.get_worker_statuses() == {}


def test_monitor_validates(redis_url: str) -> None:
    reg = ServiceRegistry(redis_url=redis_url)
    with pytest.raises(ConfigurationError, match="timeout"):
        HealthMonitor(reg, timeout=0)
    with pytest.raises(ConfigurationError, match="disconnect_timeout"):
        HealthMonitor(reg, timeout=5, disconnect_timeout=5)
    with pytest.raises(ConfigurationError, match="registry"):
        HealthMonitor(RegistryKeys(), timeout=5)  # type: ignore[arg-type]
    monitor = HealthMonitor(reg)
    assert (monitor.timeout, monitor.disconnect_timeout, monitor.interval) == (15, 60, 5)


# ---- a Redis restart -------------------------------------------------------------------------


async def test_keepalive_and_monitor_ride_out_a_redis_restart() -> None:
    server = EmbeddedRedis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    await asyncio.to_thread(server.start)
    try:
        async with ServiceRegistry(redis_url=server.url, key_prefix="r:") as reg:
            monitor = HealthMonitor(reg, timeout=30, interval=0.05)
            async with monitor, reg.keepalive(_info("survivor"), interval=0.05) as ka:
                await eventually(
                    lambda: monitor.statuses.get("survivor") == WorkerStatus.ALIVE, timeout=10
                )
                await asyncio.to_thread(server.restart)
                # Renewals go on after the restart: the restored record's last_seen moves.
                restored = await eventually(lambda: _seen_or_none(reg, "survivor"), timeout=20)
                await eventually(lambda: _advanced(reg, "survivor", restored), timeout=20)
                assert not ka.shutdown_requested and ka.running and monitor.running
                assert monitor.statuses.get("survivor") == WorkerStatus.ALIVE
            assert await reg.get_service("survivor") is None
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_keepalive_registers_again_what_redis_lost_or_a_cleanup_removed() -> None:
    # A Redis restarted without its data (here FLUSHALL), or a cleanup that took the service
    # for stale: no trace of a removal is left, and the keepalive took it for a remote
    # shutdown (a consumer given registry= stopped for good). A deregistration still stops it.
    async with (
        EmbeddedRedis() as server,
        ServiceRegistry(redis_url=server.url) as reg,
        reg.keepalive(_info("lost"), interval=0.05) as ka,
    ):
        client = Redis.from_url(server.url)
        try:
            await client.flushall()
            await eventually(lambda: reg.get_service("lost"), timeout=5)
            assert await reg.cleanup_stale_services(0) == 1
            await eventually(lambda: reg.get_service("lost"), timeout=5)
            assert not ka.shutdown_requested and ka.running
            assert await reg.deregister_service("lost")
            await asyncio.wait_for(ka.wait_shutdown(), timeout=5)
        finally:
            await client.aclose()


async def _seen_or_none(registry: ServiceRegistry, sid: str) -> float | None:
    try:
        got = await registry.get_service(sid)
    except RedisConnectionError:  # a pooled connection from before a server restart
        return None
    return got.last_seen if got is not None else None


async def test_a_worker_marked_disconnected_stays_so_until_it_heartbeats(
    registry: ServiceRegistry,
) -> None:
    monitor = HealthMonitor(registry, timeout=0.3, disconnect_timeout=30)
    await registry.register_service(_info("w"))
    await registry.heartbeat("w")
    assert [c.new for c in await monitor.check()] == [WorkerStatus.ALIVE]
    # Another process (a gateway whose socket closed) marks it disconnected.
    await registry.store_worker_statuses({"w": WorkerStatus.DISCONNECTED})
    await eventually(lambda: _silent_for(registry, "w", 0.4), timeout=5)
    changes = await monitor.check()
    assert [(c.old, c.new) for c in changes] == [(WorkerStatus.ALIVE, WorkerStatus.DISCONNECTED)]
    assert await monitor.check() == []  # not turned into not_responding
    assert await registry.get_worker_statuses() == {"w": WorkerStatus.DISCONNECTED}
    await registry.heartbeat("w")
    assert [c.new for c in await monitor.check()] == [WorkerStatus.ALIVE]


async def _silent_for(registry: ServiceRegistry, service_id: str, seconds: float) -> bool:
    info = await registry.get_service(service_id)
    now = await registry.server_time()
    return info is not None and info.last_seen is not None and now - info.last_seen > seconds


@pytest.mark.parametrize("index", ["active", "types"])
@pytest.mark.parametrize(
    "step", ["check", "register", "heartbeat", "update", "deregister", "cleanup", "clear"]
)
async def test_an_index_key_of_another_type_is_taken_as_absent(
    registry: ServiceRegistry, redis: Redis, index: str, step: str
) -> None:
    # The index of every service (a zset) or of the types (a set) replaced by another
    # client's key. Before, each of these failed on it (WRONGTYPE) for good: every
    # heartbeat, registration, health check and cleanup.
    keys = registry.keys
    await registry.register_service(_info("w"))
    key = keys.active if index == "active" else keys.types
    await redis.delete(key)
    await redis.set(key, "another client's")
    if step == "check":
        await HealthMonitor(registry, timeout=5).check()
    elif step == "register":
        await registry.register_service(_info("x"))
        assert "x" in [s.service_id for s in await registry.list_services()]
    elif step == "heartbeat":
        assert await registry.heartbeat("w", liveness_ttl=5)
        assert [s.service_id for s in await registry.list_services()] == ["w"]
        assert await registry.get_service_types() == ["worker"]
    elif step == "update":
        assert await registry.update_health("w", ServiceStatus.HEALTHY)
        assert [s.service_id for s in await registry.list_services()] == ["w"]
    elif step == "deregister":
        assert await registry.deregister_service("w")
        assert await registry.get_service("w") is None
    elif step == "cleanup":
        await registry.cleanup_stale_services(timeout_seconds=0)
    else:
        assert await registry.clear_all()
    if step in ("register", "heartbeat", "clear") or (step, index) == ("update", "active"):
        # written over by the step (a read, or a step that adds nothing to it, leaves it)
        assert await redis.type(key) in ((b"zset", b"set", b"none"))
