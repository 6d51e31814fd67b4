"""The fan-out bridge on a real 3-master Redis Cluster: idempotent writes across slots."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from redisaq_core import ConfigurationError, FanOut, Producer
from redisaq_core._scripts import ACK
from redisaq_core.connection import create_client
from redisaq_core.fanout import _writer as writer_module
from redisaq_core.keys import TopicKeys
from tests.cluster_helpers import crossslot_errors, node_of_key
from tests.fanout_support import (
    Bridges,
    assert_exactly_once,
    assert_key_order,
    assert_routed,
    create_topic,
    pending,
    produce,
    rows,
    total_length,
)
from tests.helpers import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.alone]

FAST: dict[str, Any] = {"heartbeat_interval": 0.2, "poll_interval": 0.1, "retry_backoff": 0.05}


@pytest.fixture(autouse=True)
def _no_crossslot_here(cluster_url: str) -> Iterator[None]:
    before = crossslot_errors(cluster_url)
    yield
    assert crossslot_errors(cluster_url) == before, "a command failed with CROSSSLOT"


@pytest.fixture
async def client(cluster_url: str) -> AsyncIterator[Any]:
    c = create_client(cluster_url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[Bridges]:
    b = Bridges(tmp_path)
    try:
        yield b
    finally:
        b.stop_all()


async def _run_until(bridge: FanOut, condition: Any, timeout: float = 30) -> None:
    async with bridge:
        task = asyncio.create_task(bridge.run())
        try:
            await eventually(condition, timeout=timeout)
        finally:
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)


async def test_every_target_gets_everything_once_across_nodes(
    cluster_url: str, client: Any, topic: str
) -> None:
    targets = [f"{topic}-a", f"{topic}-b"]
    await create_topic(cluster_url, targets[0], 6)
    await produce(
        cluster_url, topic, [{"n": i, "k": i % 23} for i in range(3000)], partitions=6, key="k"
    )
    bridge = FanOut(topic, targets, redis_url=cluster_url, batch_size=100, **FAST)
    await _run_until(bridge, lambda: bridge.stats.fanned_out == 3000)
    nodes = {node_of_key(cluster_url, TopicKeys(targets[0]).stream(p)) for p in range(6)}
    assert len(nodes) == 3
    for target, count in zip(targets, (6, 6), strict=True):
        found = await rows(client, target)
        assert_exactly_once(found, set(range(3000)), target)
        assert_key_order(found)
        assert_routed(found, count)
    assert await pending(client, topic, "fanout") == 0
    # The idempotency records of acknowledged entries were shortened to dedupe_grace.
    ttls = await _record_ttls(client, topic, targets[0], 6, 6)
    assert ttls and all(0 < ttl <= 60_000 for ttl in ttls)


async def _record_ttls(
    client: Any, source: str, target: str, source_partitions: int, target_partitions: int
) -> list[int]:
    """PTTL of the record of each of the first five entries of each source partition.

    -2 for an entry whose record is in no partition of ``target``.
    """
    ttls = []
    for p in range(source_partitions):
        for source_id, _ in await client.xrange(TopicKeys(source).stream(p), count=5):
            found = -2
            for tp in range(target_partitions):
                record = TopicKeys(target).fanout_record(tp, source, "fanout", p, 0)
                ttl = await client.pttl(record + source_id.decode())
                if ttl != -2:
                    found = ttl
            ttls.append(found)
    return ttls


async def test_a_crash_between_the_writes_and_the_ack_duplicates_nothing(
    cluster_url: str, client: Any, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [f"{topic}-a", f"{topic}-b"]
    await produce(
        cluster_url, topic, [{"n": i, "k": i % 7} for i in range(500)], partitions=3, key="k"
    )
    real = writer_module._run
    crashes = 0

    async def flaky(redis: Any, calls: Any) -> Any:
        nonlocal crashes
        if calls and calls[0][0] is ACK and crashes < 3:
            crashes += 1  # the targets were written; the acknowledgement never arrives
            raise ConnectionError("connection lost before the acknowledgement")
        return await real(redis, calls)

    monkeypatch.setattr(writer_module, "_run", flaky)
    bridge = FanOut(topic, targets, redis_url=cluster_url, batch_size=50, dedupe_grace=30, **FAST)
    await _run_until(bridge, lambda: bridge.stats.fanned_out == 500)
    assert crashes == 3
    for target in targets:
        found = await rows(client, target)
        assert_exactly_once(found, set(range(500)), target)
        assert_key_order(found)
    assert bridge.stats.written == dict.fromkeys(targets, 500)
    # A record outlives its acknowledgement by dedupe_grace, not dedupe_ttl.
    ttls = await _record_ttls(client, topic, targets[0], 3, 3)
    assert ttls and all(0 < ttl <= 30_000 for ttl in ttls)


async def test_kills_of_a_bridge_process_lose_and_duplicate_nothing(
    cluster_url: str, client: Any, topic: str, bridges: Bridges
) -> None:
    n, kills = 10_000, 4
    targets = [f"{topic}-a", f"{topic}-b"]
    await create_topic(cluster_url, topic, 6)
    await create_topic(cluster_url, targets[0], 4)
    await create_topic(cluster_url, targets[1], 4)
    args = ["--from", topic, "--to", targets[0], "--to", targets[1], "--name", "bridge",
            "--static", "--batch-size", "100", "--no-register", "--heartbeat-interval", "0.2",
            "--heartbeat-ttl", "0.8", "--poll-interval", "0.2"]  # fmt: skip
    rng = random.Random()

    async def produce_all() -> None:
        async with Producer(topic, redis_url=cluster_url) as producer:
            for i in range(0, n, 250):
                batch = [{"n": j, "k": f"k{j % 31}"} for j in range(i, i + 250)]
                await producer.batch_enqueue(batch, partition_key="k")
                await asyncio.sleep(0.05)

    producing = asyncio.create_task(produce_all())
    for _ in range(kills):
        proc = bridges.start(cluster_url, *args)
        before = await total_length(client, targets)
        await eventually(lambda b=before: _grew(client, targets, b), timeout=20, message="progress")
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
    proc = bridges.start(cluster_url, *args)
    await producing
    await eventually(lambda: _grew(client, targets, 2 * n - 1), timeout=60, message="all written")
    # The killed bridges may have written everything: SIGTERM only once this one runs (its
    # signal handlers in place), not while it still starts.
    await eventually(lambda: " -> " in bridges.log(), timeout=20, message="the last bridge runs")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 15) == 0, bridges.log()
    for target in targets:
        found = await rows(client, target)
        assert_exactly_once(found, set(range(n)), target)
        assert_key_order(found)
        assert_routed(found, 4)


async def _grew(client: Any, targets: list[str], than: int) -> bool:
    return await total_length(client, targets) > than


async def test_list_mode_on_a_cluster_needs_one_slot(cluster_url: str, client: Any) -> None:
    tag = f"{{mp-{uuid.uuid4().hex[:8]}}}"
    bridge = FanOut.from_lists(
        f"{tag}:in", [f"{tag}:out0", f"{tag}:out1"], redis_url=cluster_url, pop_timeout=0.2
    )
    async with bridge:
        task = asyncio.create_task(bridge.run())
        await client.lpush(f"{tag}:in", *[str(i) for i in range(100)])
        await eventually(lambda: bridge.stats.moved == 100, timeout=10)
        await bridge.stop()
        await task
    assert await client.llen(f"{tag}:out1") == 100
    untagged = FanOut.from_lists(
        f"in-{uuid.uuid4().hex}", [f"out-{uuid.uuid4().hex}"], redis_url=cluster_url
    )
    with pytest.raises(ConfigurationError, match="hash slot"):
        await untagged.connect()
    await untagged.close()
