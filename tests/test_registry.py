"""ServiceRegistry against a real Redis: every method, indexes, time, malformed records, races."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from redisaq_core import (
    ConfigurationError,
    ConnectionFailedError,
    MalformedServiceError,
    ServiceInfo,
    ServiceNotFoundError,
    ServiceRegistry,
    ServiceStatus,
)
from redisaq_core.embedded import free_port
from redisaq_core.keys import RegistryKeys
from tests.helpers import eventually


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def registry(redis_url: str, prefix: str) -> AsyncIterator[ServiceRegistry]:
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as reg:
        yield reg
        await reg.clear_all()


def _info(sid: str = "svc-1", stype: str = "inference", **kw: Any) -> ServiceInfo:
    return ServiceInfo(sid, kw.pop("host", "10.0.0.1"), kw.pop("port", 8000), stype, **kw)


async def _server_now(redis: Redis) -> float:
    sec, usec = await redis.time()
    return sec + usec / 1e6


async def _past(registry: ServiceRegistry, ts: float, seconds: float) -> None:
    """Wait until the server clock is more than ``seconds`` past ``ts``."""
    await eventually(
        lambda: _later(registry, ts + seconds), timeout=10, message=f"server time > ts+{seconds}"
    )


async def _later(registry: ServiceRegistry, ts: float) -> bool:
    return await registry.server_time() > ts


# ---- the seed's Python example ----------------------------------------------------------


@pytest.mark.single_node
async def test_seed_python_example(redis_url: str, prefix: str) -> None:
    url = urlsplit(redis_url)
    registry = ServiceRegistry(redis_host=url.hostname or "", redis_port=url.port or 6379,
                               key_prefix=prefix)  # fmt: skip
    try:
        service = ServiceInfo(
            service_id="vllm-node-001",
            host="10.0.0.1",
            port=8000,
            service_type="inference",
            metadata={"model": "llama-3", "gpu": "A100"},
        )
        assert await registry.register_service(service) is True
        assert await registry.heartbeat("vllm-node-001") is True
        assert await registry.update_health("vllm-node-001", ServiceStatus.HEALTHY) is True
        got = await registry.get_service("vllm-node-001")
        assert got is not None
        assert f"Service at {got.host}:{got.port} is {got.status}" == (
            "Service at 10.0.0.1:8000 is healthy"
        )
        services = await registry.list_services()
        assert [f"{s.service_id}: {s.host}:{s.port} ({s.service_type})" for s in services] == [
            "vllm-node-001: 10.0.0.1:8000 (inference)"
        ]
        healthy = await registry.get_healthy_services(timeout_seconds=30)
        assert [s.service_id for s in healthy] == ["vllm-node-001"]
        assert await registry.cleanup_stale_services(timeout_seconds=300) == 0
        assert await registry.get_service_count(service_type="inference") == 1
        assert await registry.get_service_types() == ["inference"]
        assert await registry.clear_all() is True
        assert await registry.get_service_count() == 0
    finally:
        await registry.aclose()


# ---- writes ------------------------------------------------------------------------------


async def test_register_stores_every_field_with_server_time(
    registry: ServiceRegistry, redis: Redis
) -> None:
    before = await _server_now(redis)
    info = _info(status=ServiceStatus.STARTING, metadata={"model": "llama-3", "n": [1, 2]})
    assert await registry.register_service(info)
    after = await _server_now(redis)
    got = await registry.get_service("svc-1")
    assert got is not None and got.last_seen is not None
    assert before <= got.last_seen <= after
    assert got == ServiceInfo("svc-1", "10.0.0.1", 8000, "inference", "starting",
                              got.last_seen, {"model": "llama-3", "n": [1, 2]})  # fmt: skip
    assert got.status == ServiceStatus.STARTING
    k = registry.keys
    assert await redis.zscore(k.active, "svc-1") == pytest.approx(got.last_seen)
    assert await redis.smembers(k.service_type("inference")) == {b"svc-1"}
    assert await redis.exists(k.alive("svc-1")) == 0


async def test_register_ignores_given_last_seen_and_leaves_the_argument_alone(
    registry: ServiceRegistry,
) -> None:
    info = _info(last_seen=1.0)
    await registry.register_service(info)
    got = await registry.get_service("svc-1")
    assert got is not None and got.last_seen is not None and got.last_seen > 1e9
    assert info.last_seen == 1.0


async def test_reregistering_replaces_fields_and_moves_the_type_index(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info(metadata={"a": 1}))
    await registry.register_service(_info("svc-2"))
    await registry.register_service(_info(stype="worker", host="h2", port=9, metadata={"b": 2}))
    got = await registry.get_service("svc-1")
    assert got is not None
    assert (got.host, got.port, got.service_type, got.metadata) == ("h2", 9, "worker", {"b": 2})
    assert await registry.get_service_types() == ["inference", "worker"]
    assert await registry.get_service_count("inference") == 1
    assert await registry.get_service_count("worker") == 1
    assert await registry.get_service_count() == 2
    assert await registry.deregister_service("svc-2")
    assert await registry.get_service_types() == ["worker"]


async def test_deregister_removes_record_and_indexes(
    registry: ServiceRegistry, redis: Redis
) -> None:
    await registry.register_service(_info())
    assert await registry.deregister_service("svc-1") is True
    assert await registry.deregister_service("svc-1") is False
    assert await registry.get_service("svc-1") is None
    k = registry.keys
    keys = (k.service("svc-1"), k.active, k.types, k.service_type("inference"))
    assert await redis.exists(*keys) == 0
    assert await registry.get_service_types() == []
    assert await registry.get_service_count() == 0


async def test_update_health_sets_status_merges_metadata_and_refreshes_last_seen(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info(metadata={"model": "llama-3", "gpu": "A100"}))
    first = await registry.get_service("svc-1")
    assert first is not None and first.last_seen is not None
    await _past(registry, first.last_seen, 0.001)
    assert await registry.update_health("svc-1", ServiceStatus.UNHEALTHY, {"gpu": "H100", "x": 1})
    got = await registry.get_service("svc-1")
    assert got is not None and got.last_seen is not None
    assert got.status == "unhealthy"
    assert got.metadata == {"model": "llama-3", "gpu": "H100", "x": 1}
    assert got.last_seen > first.last_seen
    assert await registry.update_health("svc-1", "healthy")  # the value works too
    got = await registry.get_service("svc-1")
    assert got is not None and got.status == "healthy" and got.metadata["x"] == 1
    assert await registry.update_health("nope", ServiceStatus.HEALTHY) is False
    assert await registry.update_health("nope", ServiceStatus.HEALTHY, {"a": 1}) is False
    with pytest.raises(ConfigurationError, match="status must be one of"):
        await registry.update_health("svc-1", "fine")


@pytest.mark.parametrize("stored", ["[1, 2]", "not json", "[" * 5000])
async def test_metadata_another_client_spoilt_is_replaced_by_a_merge(
    registry: ServiceRegistry, redis: Any, stored: str
) -> None:
    # Metadata nested past the JSON decoder's depth raised RecursionError at every update.
    await registry.register_service(_info())
    await redis.hset(registry.keys.service("svc-1"), "metadata", stored)
    assert await registry.update_health("svc-1", ServiceStatus.HEALTHY, {"a": 1})
    got = await registry.get_service("svc-1")
    assert got is not None and got.metadata == {"a": 1}


async def test_concurrent_metadata_merges_lose_nothing(redis_url: str, prefix: str) -> None:
    regs = [ServiceRegistry(redis_url=redis_url, key_prefix=prefix) for _ in range(4)]
    try:
        await regs[0].register_service(_info())
        await asyncio.gather(
            *(
                regs[i % 4].update_health("svc-1", ServiceStatus.HEALTHY, {f"k{i}": i})
                for i in range(40)
            )
        )
        got = await regs[0].get_service("svc-1")
        assert got is not None
        assert got.metadata == {f"k{i}": i for i in range(40)}
    finally:
        await regs[0].clear_all()
        for r in regs:
            await r.aclose()


async def test_update_health_replaces_junk_metadata(
    registry: ServiceRegistry, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await registry.register_service(_info(metadata={"a": 1}))
    await redis.hset(registry.keys.service("svc-1"), "metadata", "not json")
    with caplog.at_level(logging.WARNING, logger="redisaq_core.registry"):
        assert await registry.update_health("svc-1", "healthy", {"b": 2})
    assert "svc-1" in caplog.text
    got = await registry.get_service("svc-1")
    assert got is not None and got.metadata == {"b": 2}


async def test_heartbeat_advances_last_seen_and_reports_unknown(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info())
    first = await registry.get_service("svc-1")
    assert first is not None and first.last_seen is not None
    await _past(registry, first.last_seen, 0.001)
    assert await registry.heartbeat("svc-1") is True
    second = await registry.get_service("svc-1")
    assert second is not None and second.last_seen is not None
    assert second.last_seen > first.last_seen
    assert await registry.heartbeat("not-registered") is False
    assert await registry.get_service("not-registered") is None


# ---- reads -------------------------------------------------------------------------------


async def test_list_services_filters_and_sorts(registry: ServiceRegistry) -> None:
    await registry.register_service(_info("b", "inference"))
    await registry.register_service(_info("a", "inference", status="unhealthy"))
    await registry.register_service(_info("c", "worker"))
    assert [s.service_id for s in await registry.list_services()] == ["a", "b", "c"]
    assert [s.service_id for s in await registry.list_services(service_type="inference")] == [
        "a",
        "b",
    ]
    assert [s.service_id for s in await registry.list_services(status_filter="healthy")] == [
        "b",
        "c",
    ]
    assert [
        s.service_id
        for s in await registry.list_services("inference", status_filter=ServiceStatus.UNHEALTHY)
    ] == ["a"]
    assert await registry.list_services(service_type="nothing") == []
    with pytest.raises(ConfigurationError, match="status_filter"):
        await registry.list_services(status_filter="bad")


async def test_get_healthy_services_needs_status_and_a_recent_heartbeat(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info("old", "inference"))
    await registry.register_service(_info("sick", "inference", status="unhealthy"))
    await registry.register_service(_info("other", "worker"))
    old, other = await registry.get_service("old"), await registry.get_service("other")
    assert old is not None and old.last_seen is not None
    assert other is not None and other.last_seen is not None
    await _past(registry, max(old.last_seen, other.last_seen), 0.5)  # the last one registered
    await registry.register_service(_info("fresh", "inference"))
    healthy = await registry.get_healthy_services(timeout_seconds=0.5)
    assert [s.service_id for s in healthy] == ["fresh"]
    assert [s.service_id for s in await registry.get_healthy_services("inference", 3600)] == [
        "fresh",
        "old",
    ]
    assert [s.service_id for s in await registry.get_healthy_services()] == [
        "fresh",
        "old",
        "other",
    ]
    with pytest.raises(ConfigurationError, match="timeout_seconds"):
        await registry.get_healthy_services(timeout_seconds=-1)


async def test_counts_types_and_server_time(registry: ServiceRegistry, redis: Redis) -> None:
    assert await registry.get_service_count() == 0
    assert await registry.get_service_types() == []
    for i in range(3):
        await registry.register_service(_info(f"w{i}", "worker"))
    await registry.register_service(_info("i0", "inference"))
    assert await registry.get_service_count() == 4
    assert await registry.get_service_count(service_type="worker") == 3
    assert await registry.get_service_count(service_type="none") == 0
    assert await registry.get_service_types() == ["inference", "worker"]
    assert abs(await registry.server_time() - await _server_now(redis)) < 5


async def test_require_service(registry: ServiceRegistry) -> None:
    await registry.register_service(_info())
    assert (await registry.require_service("svc-1")).service_id == "svc-1"
    with pytest.raises(ServiceNotFoundError, match="'gone'"):
        await registry.require_service("gone")


# ---- cleanup and clear -------------------------------------------------------------------


async def test_cleanup_removes_only_stale_services(registry: ServiceRegistry, redis: Redis) -> None:
    await registry.register_service(_info("stale", "batch"))
    await registry.register_service(_info("kept", "inference"))
    stale = await registry.get_service("stale")
    assert stale is not None and stale.last_seen is not None
    await _past(registry, stale.last_seen, 0.4)
    assert await registry.heartbeat("kept")
    assert await registry.cleanup_stale_services(timeout_seconds=0.4) == 1
    assert await registry.get_service("stale") is None
    assert [s.service_id for s in await registry.list_services()] == ["kept"]
    assert await registry.get_service_types() == ["inference"]
    assert not await redis.exists(registry.keys.service_type("batch"))
    assert await registry.cleanup_stale_services() == 0
    with pytest.raises(ConfigurationError):
        await registry.cleanup_stale_services(timeout_seconds=float("nan"))


async def test_cleanup_never_removes_a_service_that_keeps_heartbeating(
    registry: ServiceRegistry,
) -> None:
    await registry.register_service(_info("beating"))
    await registry.register_service(_info("silent"))
    stop = asyncio.Event()
    missed: list[bool] = []

    async def beat() -> None:
        while not stop.is_set():
            if not await registry.heartbeat("beating"):
                missed.append(True)
            await asyncio.sleep(0.01)

    async def clean() -> int:
        removed = 0
        while not stop.is_set():
            removed += await registry.cleanup_stale_services(timeout_seconds=0.5)
            await asyncio.sleep(0)
        return removed

    beater = asyncio.create_task(beat())
    cleaner = asyncio.create_task(clean())
    try:
        await eventually(
            lambda: _gone(registry, "silent"), timeout=10, message="silent service removed"
        )
    finally:
        stop.set()
        await beater
        removed = await cleaner
    assert removed == 1
    assert not missed
    assert await registry.get_service("beating") is not None


async def _gone(registry: ServiceRegistry, sid: str) -> bool:
    return await registry.get_service(sid) is None


async def test_clear_all_touches_only_its_prefix(
    redis_url: str, registry: ServiceRegistry, redis: Redis
) -> None:
    other_prefix = f"other-{uuid.uuid4().hex[:8]}:"
    async with ServiceRegistry(redis_url=redis_url, key_prefix=other_prefix) as other:
        try:
            await other.register_service(_info("neighbour"))
            unrelated = f"unrelated-{uuid.uuid4().hex}"
            await redis.set(unrelated, "x")
            for i in range(5):
                await registry.register_service(_info(f"s{i}", f"t{i % 2}"))
            async with registry.keepalive(_info("ka"), interval=5):
                assert await registry.clear_all() is True
            assert await registry.list_services() == []
            assert await registry.get_service_types() == []
            k = registry.keys
            keys = [k.active, k.types, k.worker_status, k.service_type("t0"), k.alive("ka")]
            keys += [k.service(f"s{i}") for i in range(5)]
            assert await redis.exists(*keys) == 0
            assert await redis.get(unrelated) == b"x"
            assert [s.service_id for s in await other.list_services()] == ["neighbour"]
        finally:
            await other.clear_all()
            await redis.delete(unrelated)


async def test_clear_during_heartbeats_leaves_nothing_behind(
    registry: ServiceRegistry, redis: Redis
) -> None:
    await registry.register_service(_info())
    results: list[bool] = []

    async def beat() -> None:
        while len(results) < 2000 and (not results or results[-1] or len(results) < 40):
            results.append(await registry.heartbeat("svc-1"))

    beater = asyncio.create_task(beat())
    await eventually(lambda: len(results) >= 20, timeout=10)
    assert await registry.clear_all() is True
    await beater
    first_false = results.index(False)
    assert all(results[:first_false]) and not any(results[first_false:])
    k = registry.keys
    keys = [k.service("svc-1"), k.alive("svc-1"), k.active, k.types, k.service_type("inference")]
    assert await redis.exists(*keys) == 0
    assert await registry.get_service("svc-1") is None


# ---- malformed records -------------------------------------------------------------------


JUNK: dict[str, dict[str, Any]] = {
    "bad-port": {"port": "eighty"},
    "no-host": {"host": None},
    "bad-json": {"metadata": "{nope"},
    "list-json": {"metadata": "[1, 2]"},
    "bad-status": {"status": "groovy"},
    "bad-seen": {"last_seen": "yesterday"},
    "not-utf8": {"host": b"\xff\xfe"},
}


async def _write_junk(registry: ServiceRegistry, redis: Redis) -> None:
    for sid, changes in JUNK.items():
        await registry.register_service(_info(sid))
        key = registry.keys.service(sid)
        for name, value in changes.items():
            if value is None:
                await redis.hdel(key, name)
            else:
                await redis.hset(key, name, value)
    await redis.hset(registry.keys.service("raw-junk"), "hello", "world")
    await redis.zadd(registry.keys.active, {"raw-junk": 1.0})


async def test_malformed_records_are_skipped_with_a_warning(
    registry: ServiceRegistry, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await registry.register_service(_info("good"))
    await _write_junk(registry, redis)
    with caplog.at_level(logging.WARNING, logger="redisaq_core.registry"):
        services = await registry.list_services()
        healthy = await registry.get_healthy_services(timeout_seconds=3600)
        typed = await registry.list_services(service_type="inference")
    assert [s.service_id for s in services] == ["good"]
    assert [s.service_id for s in healthy] == ["good"]
    assert [s.service_id for s in typed] == ["good"]
    for sid in [*JUNK, "raw-junk"]:
        assert sid in caplog.text
    snap = await registry.snapshot()
    assert snap.malformed == sorted([*JUNK, "raw-junk"])


@pytest.mark.parametrize("sid", [*JUNK, "raw-junk"])
async def test_get_service_names_the_malformed_id(
    registry: ServiceRegistry, redis: Redis, sid: str
) -> None:
    await _write_junk(registry, redis)
    with pytest.raises(MalformedServiceError, match=f"service '{sid}' has a malformed record"):
        await registry.get_service(sid)


async def test_malformed_records_can_be_removed(registry: ServiceRegistry, redis: Redis) -> None:
    await _write_junk(registry, redis)
    assert await registry.deregister_service("bad-port")
    assert await registry.cleanup_stale_services(timeout_seconds=60) == 1  # raw-junk, seen at 1.0
    assert await redis.exists(registry.keys.service("raw-junk")) == 0
    assert await registry.get_service_count() == len(JUNK) - 1


async def test_a_record_deleted_behind_the_registry_is_left_out(
    registry: ServiceRegistry, redis: Redis
) -> None:
    await registry.register_service(_info("a"))
    await registry.register_service(_info("b"))
    await redis.delete(registry.keys.service("a"))
    assert [s.service_id for s in await registry.list_services()] == ["b"]
    assert await registry.heartbeat("a") is False
    assert await registry.deregister_service("a") is True  # its index entries go too
    assert await registry.get_service_count() == 1


# ---- keys, validation, connection ---------------------------------------------------------


@pytest.mark.parametrize("prefix_value", ["", "prod:", "staging:", "a b:c"])
def test_every_registry_key_is_in_one_slot_and_starts_with_the_prefix(prefix_value: str) -> None:
    k = RegistryKeys(prefix_value)
    keys = [k.active, k.types, k.worker_status, k.service("x"), k.service("{y}"),
            k.service_type("inference"), k.alive("x")]  # fmt: skip
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert all(key.startswith(prefix_value) for key in keys)
    assert key_slot(k.active.encode()) == key_slot(f"{{{prefix_value}registry}}".encode())


def test_prefixes_with_braces_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="key_prefix"):
        RegistryKeys("a{b}")
    with pytest.raises(ConfigurationError, match="key_prefix"):
        ServiceRegistry(key_prefix="x}")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"service_id": ""}, "service_id"),
        ({"service_id": "a b"}, "service_id"),
        ({"host": ""}, "host"),
        ({"port": 70000}, "port"),
        ({"port": "80"}, "port"),
        ({"port": True}, "port"),
        ({"service_type": "a\tb"}, "service_type"),
        ({"status": "fine"}, "status must be one of"),
        ({"metadata": {"x": object()}}, "JSON"),
        ({"metadata": {1: "x"}}, "string keys"),
        ({"last_seen": "now"}, "last_seen"),
    ],
)
def test_service_info_validates(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"service_id": "s", "host": "h", "port": 1, "service_type": "t"}
    with pytest.raises(ConfigurationError, match=match):
        ServiceInfo(**{**base, **kwargs})


def test_service_info_round_trips_and_defaults() -> None:
    info = ServiceInfo("s", "h", 1, "t", metadata=None)  # type: ignore[arg-type]
    assert info.metadata == {} and info.status == "healthy" and info.last_seen is None
    info2 = ServiceInfo("s", "h", 1, "t", ServiceStatus.STOPPING, 5, {"a": [1]})
    assert info2.status == "stopping" and isinstance(info2.status, str)
    assert ServiceInfo.from_dict({**info2.as_dict(), "extra": 1}) == info2
    assert str(ServiceStatus.UNKNOWN) == "unknown"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"redis_port": 0}, "redis_port"),
        ({"redis_db": -1}, "redis_db"),
        ({"redis_host": ""}, "redis_host"),
        ({"redis_url": "redis://x", "redis": object()}, "either redis or redis_url"),
        ({"redis_url": "http://x"}, None),
    ],
)
async def test_constructor_validates(kwargs: dict[str, Any], match: str | None) -> None:
    with pytest.raises(ConfigurationError, match=match):
        reg = ServiceRegistry(**kwargs)
        await reg.connect()


async def test_unreachable_redis_error_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    for reg in (
        ServiceRegistry(redis_host="127.0.0.1", redis_port=port, redis_password="s3cr3t-pw"),
        ServiceRegistry(redis_url=f"redis://:s3cr3t-pw@127.0.0.1:{port}/0"),
    ):
        with caplog.at_level(logging.DEBUG), pytest.raises(ConnectionFailedError) as err:
            await reg.list_services()
        assert "s3cr3t-pw" not in str(err.value)
        assert "***" in str(err.value)
        await reg.aclose()
    assert "s3cr3t-pw" not in caplog.text


@pytest.mark.single_node
async def test_wrong_password_error_never_shows_it(redis_url: str, redis: Redis) -> None:
    user = f"reg-{uuid.uuid4().hex[:8]}"
    await redis.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", user, "on", ">right-pw", "~*", "+@all"
    )
    try:
        url = urlsplit(redis_url)
        reg = ServiceRegistry(redis_url=f"redis://{user}:wr0ng-pw@{url.netloc}/0")
        with pytest.raises(ConnectionFailedError) as err:
            await reg.connect()
        assert "wr0ng-pw" not in str(err.value)
        await reg.aclose()
    finally:
        await redis.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


async def test_given_client_is_shared_and_not_closed(redis: Redis, prefix: str) -> None:
    async with ServiceRegistry(redis=redis, key_prefix=prefix) as reg:
        await reg.register_service(_info())
        assert reg.url == "<given client>"
    assert await redis.ping()
    async with ServiceRegistry(redis=redis, key_prefix=prefix) as reg:
        assert await reg.get_service_count() == 1
        await reg.clear_all()


async def test_used_before_connect_connects_and_close_is_idempotent(
    redis_url: str, prefix: str
) -> None:
    reg = ServiceRegistry(redis_url=redis_url, key_prefix=prefix)
    assert await reg.get_service_count() == 0
    await reg.close()
    await reg.aclose()
    with pytest.raises(Exception, match="closed"):
        await reg.get_service_count()


async def test_a_record_another_client_replaced_is_gone_for_updates_and_reads(
    registry: ServiceRegistry, redis: Redis
) -> None:
    # An update with metadata and get_service raised WRONGTYPE on it, where a heartbeat and
    # an update without metadata found the service gone, as documented.
    await registry.register_service(_info("svc-1"))
    key = registry.keys.service("svc-1")
    await redis.delete(key)
    await redis.set(key, "another client's")
    assert await registry.update_health("svc-1", ServiceStatus.HEALTHY, {"a": 1}) is False
    assert await registry.get_service("svc-1") is None
    assert await registry.heartbeat("svc-1") is False
