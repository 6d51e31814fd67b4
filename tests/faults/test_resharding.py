"""A Redis Cluster resharded while worker processes run: nothing lost, order kept.

Slots are moved one key at a time, so for a while the keys of one hash tag sit
on two primaries: clients meet ASK redirections, and scripts over the keys of
one partition (the acknowledgement checks the lease beside the stream) are
answered TRYAGAIN until the last key has moved; then MOVED. The slots moved
hold the topic's group membership and two of its partitions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from redisaq_core import Producer
from redisaq_core.embedded import EmbeddedCluster
from redisaq_core.keys import TopicKeys
from tests.cluster_helpers import move_slot, node_of_key
from tests.faults.checker import check, load
from tests.faults.conftest import Workers
from tests.helpers import eventually

pytestmark = [pytest.mark.alone, pytest.mark.cluster, pytest.mark.slow]

PARTITIONS = 4


@pytest.fixture(scope="module")
def resharded() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(masters=3) as cluster:
        yield cluster


def _done(workers: Workers) -> set[int]:
    return {e.n for e in load(workers.record_file) if e.kind == "end"}


async def test_resharding_during_a_run_loses_nothing(
    resharded: EmbeddedCluster, workers: Workers
) -> None:
    url = resharded.url
    topic = f"rs-{uuid.uuid4().hex[:8]}"
    keys = TopicKeys(topic)
    n = 3000
    async with Producer(topic, redis_url=url, init_partitions=PARTITIONS) as producer:
        await producer.batch_enqueue([{"n": i, "k": i % 31} for i in range(n // 2)], "k")
        procs = [workers.start(url, topic, "--batch-size", "20", delay=0.001) for _ in range(2)]
        await eventually(lambda: len(_done(workers)) > 200, timeout=30, message="handling")
        ports = [node.port for node in resharded.masters]
        moved = {  # slot -> (a key in it, the primary it moves to)
            key_slot(key.encode()): (key, next(p for p in ports if p != node_of_key(url, key)))
            for key in (keys.members("default"), keys.stream(0), keys.stream(1))
        }
        writer = asyncio.create_task(
            producer.batch_enqueue([{"n": i, "k": i % 31} for i in range(n // 2, n)], "k")
        )
        for slot, (key, there) in moved.items():
            await move_slot(url, slot, there, step=0.05)
            assert node_of_key(url, key) == there
        await writer
        await eventually(lambda: len(_done(workers)) == n, timeout=90, message="all handled")
    report = check(load(workers.record_file), set(range(n)))
    assert not report.lost, sorted(report.lost)[:20]
    assert not report.order_violations, report.order_violations[:5]
    assert not report.overlaps, report.overlaps[:5]
    for proc in procs:
        assert proc.poll() is None, "a worker stopped during the resharding"
