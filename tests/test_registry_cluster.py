"""The registry on a real three-node Redis Cluster on loopback ports.

Every script of the registry touches keys of one hash slot only; a cluster
with the slots spread over three nodes is where a mistake there would show
(CROSSSLOT, MOVED, or a key read on the wrong node). The cluster is the
session's :class:`~redisaq_core.embedded.EmbeddedCluster` (``cluster_url`` in
``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from redisaq_core import HealthMonitor, ServiceInfo, ServiceRegistry, WorkerStatus

pytestmark = pytest.mark.cluster


@pytest.fixture
async def cluster_registry(cluster_url: str) -> AsyncIterator[ServiceRegistry]:
    async with ServiceRegistry(redis_url=cluster_url, key_prefix="c:") as reg:
        assert isinstance(reg.redis, RedisCluster)
        yield reg
        await reg.clear_all()


async def test_every_operation_runs_on_a_cluster(
    cluster_url: str, cluster_registry: ServiceRegistry
) -> None:
    reg = cluster_registry
    for i in range(6):
        await reg.register_service(ServiceInfo(f"s{i}", "h", 1000 + i, f"type{i % 3}"))
    assert await reg.heartbeat("s0")
    assert await reg.update_health("s1", "unhealthy", {"a": 1})
    assert [s.service_id for s in await reg.list_services(service_type="type1")] == ["s1", "s4"]
    assert len(await reg.get_healthy_services(timeout_seconds=60)) == 5
    assert await reg.get_service_count() == 6 and await reg.get_service_count("type0") == 2
    assert await reg.get_service_types() == ["type0", "type1", "type2"]
    assert await reg.cleanup_stale_services(timeout_seconds=3600) == 0
    assert await reg.deregister_service("s5")
    monitor = HealthMonitor(reg, timeout=60)
    changes = await monitor.check()
    assert {c.service_id: c.new for c in changes}["s0"] is WorkerStatus.ALIVE
    async with reg.keepalive(ServiceInfo("ka", "h", 1, "k"), interval=0.05) as ka:
        await reg.deregister_service("ka")
        await asyncio.wait_for(ka.wait_shutdown(), 5)
    assert await reg.cleanup_stale_services(timeout_seconds=0) == 5
    assert await reg.get_service_count() == 0


async def test_prefixes_spread_over_nodes_and_stay_apart(cluster_url: str) -> None:
    prefixes = [f"p{i}:" for i in range(12)]
    regs = [ServiceRegistry(redis_url=cluster_url, key_prefix=p) for p in prefixes]
    try:
        slots = {key_slot(r.keys.active.encode()) for r in regs}
        assert len(slots) > 1
        for reg in regs:
            await reg.register_service(
                ServiceInfo("same-id", "h", 1, "t", metadata={"p": reg.key_prefix})
            )
        await regs[0].clear_all()
        assert await regs[0].get_service_count() == 0
        for reg in regs[1:]:
            got = await reg.get_service("same-id")
            assert got is not None and got.metadata == {"p": reg.key_prefix}
    finally:
        for reg in regs:
            await reg.clear_all()
            await reg.aclose()
