"""Failover on a real Redis Cluster: a primary is SIGKILLed while consumers run.

Three primaries with one replica each. The primary that holds the topic's
group membership and some of its partitions dies mid-run; its replica takes
over after ``cluster-node-timeout``. The consumers must carry on by
themselves and every message whose enqueue was acknowledged must be handled.

Redis replicates asynchronously, so what a primary acknowledged in the last
moments before dying can be missing on its replica: enqueued entries
(lost), acknowledgements and deliveries (handled again: duplicates, which
at-least-once delivery allows). The test waits until the replicas have
every enqueued entry before the kill, so a loss here is the library's, not
replication's; docs/scaling.md says what to do about the window in
production (``WAIT``, or ``min-replicas-to-write``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from redisaq_core import Consumer, Message, Producer
from redisaq_core._assignment import partition_for_key
from redisaq_core.embedded import EmbeddedCluster
from redisaq_core.keys import TopicKeys
from tests.helpers import Running, eventually

pytestmark = [pytest.mark.alone, pytest.mark.cluster, pytest.mark.slow]

PARTITIONS = 6


@pytest.fixture(scope="module")
def replicated() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


def _topic_on(cluster: EmbeddedCluster) -> tuple[str, int]:
    """A topic whose membership keys share a primary with at least two of its partitions.

    Returns the topic and the index of that primary.
    """
    for _ in range(1000):
        topic = f"fo-{uuid.uuid4().hex[:8]}"
        keys = TopicKeys(topic)
        home = cluster.master_of_slot(key_slot(keys.members("default").encode()))
        shared = [
            p
            for p in range(PARTITIONS)
            if cluster.master_of_slot(key_slot(keys.stream(p).encode())) is home
        ]
        if len(shared) >= 2:
            return topic, cluster.masters.index(home)
    raise AssertionError("no suitable topic name found")


def _home(cluster: EmbeddedCluster, topic: str, partition: int) -> int:
    """Index (in slot order) of the primary holding a partition's stream."""
    slot = key_slot(TopicKeys(topic).stream(partition).encode())
    return cluster.masters.index(cluster.master_of_slot(slot))


async def _enqueue_retrying(producer: Producer, batch: list[dict[str, Any]]) -> None:
    """Enqueue ``batch`` until Redis acknowledges it (a retry may duplicate: allowed)."""
    for _ in range(200):
        try:
            await producer.batch_enqueue(batch, partition_key="k")
            return
        except (RedisError, RedisClusterException, OSError):
            await asyncio.sleep(0.1)
    raise AssertionError("the cluster never accepted the batch again")


async def test_consumers_carry_on_after_a_primary_dies(replicated: EmbeddedCluster) -> None:
    cluster = replicated
    assert len(cluster.masters) == len(cluster.replicas) == 3 and len(cluster.pids) == 6
    topic, victim = _topic_on(cluster)
    url = cluster.url if victim else cluster.urls[1]  # connect through a survivor
    handled: dict[int, int] = {}
    after_failover: set[int] = set()
    failed_over = asyncio.Event()

    async def handle(m: Message) -> None:
        n = m.payload["n"]
        handled[n] = handled.get(n, 0) + 1
        if failed_over.is_set():
            after_failover.add(m.partition or 0)
        await asyncio.sleep(0.0005)

    options: dict[str, Any] = {"heartbeat_interval": 0.3, "poll_interval": 0.2}
    options |= {"retry_backoff": 0.05, "batch_size": 20}
    consumers = [Consumer(topic, consumer_name=f"c{i}", redis_url=url, **options) for i in range(2)]
    first, second = 3000, 2000
    async with (
        Producer(topic, redis_url=url, init_partitions=PARTITIONS) as producer,
        Running(consumers[0], handle),
        Running(consumers[1], handle),
    ):
        for start in range(0, first, 100):
            batch = [{"k": i % 60, "n": i} for i in range(start, start + 100)]
            await producer.batch_enqueue(batch, partition_key="k")
        await eventually(lambda: len(handled) >= 300, timeout=20)
        # Every acknowledged enqueue is on a replica now; the kill cannot lose it.
        await asyncio.to_thread(cluster.wait_replicated, 10)
        on_dead = {p for p in range(PARTITIONS) if _home(cluster, topic, p) == victim}
        dead = cluster.kill_master(victim)
        sending = asyncio.create_task(_send_during_failover(producer, first, second, failed_over))
        await cluster.wait_ok_async(30)
        assert dead not in cluster.masters and len(cluster.masters) == 3
        failed_over.set()
        await asyncio.wait_for(sending, 60)
        await eventually(lambda: len(handled) == first + second, timeout=60)
        assert all(c.running for c in consumers)
    lost = set(range(first + second)) - set(handled)
    assert not lost, f"{len(lost)} acknowledged message(s) never handled: {sorted(lost)[:20]}"
    # The partitions of the dead primary were handled again once its replica took over.
    assert on_dead and on_dead <= after_failover, (on_dead, after_failover)


async def _send_during_failover(
    producer: Producer, first: int, count: int, failed_over: asyncio.Event
) -> None:
    for start in range(first, first + count, 100):
        await _enqueue_retrying(
            producer, [{"k": i % 60, "n": i} for i in range(start, start + 100)]
        )
        if not failed_over.is_set():
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def durable() -> Iterator[EmbeddedCluster]:
    """Primaries without replicas, each with an AOF fsynced on every write."""
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with EmbeddedCluster(masters=3, node_timeout_ms=1000, extra_args=aof) as cluster:
        yield cluster


async def test_consumers_ride_out_a_cluster_down_and_a_restarted_primary(
    durable: EmbeddedCluster,
) -> None:
    """With no replica, the cluster answers CLUSTERDOWN until the primary comes back.

    The topic lives on the two other primaries: every command the consumers send
    reaches a live node, which answers CLUSTERDOWN while the cluster is down.
    """
    cluster = durable
    partitions = 3  # 4 or more partitions of a topic always use all three primaries
    topic, victim = _topic_elsewhere(cluster, partitions)
    url = cluster.urls[1] if victim == 0 else cluster.url
    handled: set[int] = set()

    async def handle(m: Message) -> None:
        handled.add(m.payload["n"])
        await asyncio.sleep(0.0005)

    options: dict[str, Any] = {"heartbeat_interval": 0.3, "poll_interval": 0.2, "batch_size": 20}
    consumers = [Consumer(topic, consumer_name=f"d{i}", redis_url=url, **options) for i in range(2)]
    first, second = 2000, 1000
    async with (
        Producer(topic, redis_url=url, init_partitions=partitions) as producer,
        Running(consumers[0], handle),
        Running(consumers[1], handle),
    ):
        for start in range(0, first, 100):
            batch = [{"k": i % 60, "n": i} for i in range(start, start + 100)]
            await producer.batch_enqueue(batch, partition_key="k")
        await eventually(lambda: len(handled) >= 200, timeout=20)
        dead = cluster.kill_master(victim)
        survivor = next(n for n in cluster.masters if n is not dead)
        client = Redis(host=survivor.host, port=survivor.port)
        try:
            # The survivors agree the primary failed: every node answers CLUSTERDOWN now.
            await eventually(lambda: _cluster_down(client), timeout=20, interval=0.1)
            await asyncio.sleep(1.0)
        finally:
            await client.aclose()
        await asyncio.to_thread(cluster.restart_node, dead)
        await cluster.wait_ok_async(30)
        for start in range(first, first + second, 100):
            await _enqueue_retrying(
                producer, [{"k": i % 60, "n": i} for i in range(start, start + 100)]
            )
        await eventually(lambda: len(handled) == first + second, timeout=60)
        assert all(c.running for c in consumers)
    assert handled == set(range(first + second))


def _topic_elsewhere(cluster: EmbeddedCluster, partitions: int) -> tuple[str, int]:
    """A topic none of whose keys live on one of the primaries; returns it and that primary."""
    for _ in range(1000):
        topic = f"cd-{uuid.uuid4().hex[:8]}"
        keys = TopicKeys(topic)
        names = [keys.members("default"), keys.meta, *(keys.stream(p) for p in range(partitions))]
        used = {cluster.master_of_slot(key_slot(k.encode())) for k in names}
        free = [i for i, node in enumerate(cluster.masters) if node not in used]
        if free:
            return topic, free[0]
    raise AssertionError("no suitable topic name found")


async def _cluster_down(client: Redis) -> bool:
    info: Any = await client.cluster("INFO")
    return bool(info.get("cluster_state") == "fail")


async def test_a_consumer_rides_out_a_whole_cluster_unreachable_for_seconds() -> None:
    """No node answers for a few seconds: redis-py then raises its own
    ``RedisClusterUnreachableError``, no ``RedisError``. It used to end the consumer's
    loop and its delayed-entry mover, and stop() then waited for ever. And a delayed
    entry of a partition whose lease lapsed meanwhile waited for the mover's next full
    check (a minute): a renewed lease wakes nothing."""
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with EmbeddedCluster(masters=1, node_timeout_ms=1000, extra_args=aof) as cluster:
        topic = f"cu-{uuid.uuid4().hex[:8]}"
        handled: set[int] = set()

        async def handle(m: Message) -> None:
            handled.add(m.payload["n"])

        options: dict[str, Any] = {"heartbeat_interval": 0.3, "poll_interval": 0.2}
        consumer = Consumer(topic, redis_url=cluster.url, **options)
        async with Producer(topic, redis_url=cluster.url) as producer:
            async with Running(consumer, handle):
                await producer.enqueue({"n": 0})
                await eventually(lambda: handled == {0}, timeout=10)
                await producer.enqueue({"n": 1}, delay=2.0)  # due while no node answers
                dead = cluster.kill_master(0)
                await asyncio.sleep(3.0)  # the outage itself: nothing to wait for
                await asyncio.to_thread(cluster.restart_node, dead)
                await cluster.wait_ok_async(30)
                await _enqueue_retrying(producer, [{"k": 2, "n": 2}])
                await eventually(lambda: handled == {0, 1, 2}, timeout=30)
                assert consumer.running
            await asyncio.wait_for(consumer.close(), 10)


def _topic_beside(cluster: EmbeddedCluster, partitions: int) -> tuple[str, int]:
    """A topic with partitions on two primaries, whose group keys are on neither the first
    primary nor a third one that holds partitions too; returns it and that third primary."""
    for _ in range(1000):
        topic = f"lr-{uuid.uuid4().hex[:8]}"
        keys = TopicKeys(topic)
        group_home = cluster.master_of_slot(key_slot(keys.members("default").encode()))
        group = cluster.masters.index(group_home)
        homes = {_home(cluster, topic, p) for p in range(partitions)}
        victims = [i for i in homes if i not in (0, group)]
        if victims and len(homes) > 1:
            return topic, victims[0]
    raise AssertionError("no suitable topic name found")


async def test_leases_renewed_on_live_nodes_stay_readable_while_a_primary_is_down() -> None:
    """A primary with no replica dies; the partitions of the other nodes are read on.

    Their leases are renewed in the same heartbeat as those of the dead node's partitions,
    whose calls fail (connection refused). Before, one failed renewal failed them all: no
    partition's local deadline moved on, so the live nodes' partitions were read no more
    until the dead node came back.
    """
    partial = ["--cluster-require-full-coverage", "no"]  # the live nodes serve their slots
    with EmbeddedCluster(masters=3, node_timeout_ms=1000, extra_args=partial) as cluster:
        partitions = 6
        topic, victim = _topic_beside(cluster, partitions)
        on_victim = [p for p in range(partitions) if _home(cluster, topic, p) == victim]
        live = next(p for p in range(partitions) if p not in on_victim)
        key = next(k for k in map(str, range(10_000)) if partition_for_key(k, partitions) == live)
        handled: set[int] = set()

        async def handle(m: Message) -> None:
            handled.add(m.payload["n"])

        options: dict[str, Any] = {"heartbeat_interval": 0.3, "poll_interval": 0.2}
        consumer = Consumer(topic, consumer_name="c", redis_url=cluster.url, **options)
        clock = asyncio.get_running_loop().time
        producer = Producer(topic, redis_url=cluster.url, init_partitions=partitions)
        async with producer, Running(consumer, handle):
            await eventually(lambda: len(consumer.assigned_partitions) == partitions)
            await producer.enqueue({"n": 0, "k": key}, partition_key="k")
            await eventually(lambda: handled == {0}, timeout=10)
            cluster.kill_master(victim)
            killed = clock()
            await eventually(
                lambda: all(consumer._owned[p].valid_until <= clock() for p in on_victim),
                message="the dead node's partitions past their local deadline",
            )
            # A lease call sent after the kill succeeded for the live node's partition.
            renewed = killed + 0.8 * consumer.heartbeat_ttl
            await eventually(
                lambda: consumer._owned[live].valid_until > max(clock(), renewed),
                message="the live node's partition renewed since the kill",
            )
            await producer.enqueue({"n": 1, "k": key}, partition_key="k")
            await eventually(lambda: handled == {0, 1}, timeout=10)
            assert all(consumer._owned[p].valid_until <= clock() for p in on_victim)
            # A member that joins while the node is still down reads the live partitions
            # too (its join used to wait for every lease: for the dead node to come back).
            await consumer.stop()
            late = Consumer(topic, consumer_name="late", redis_url=cluster.url, **options)
            async with Running(late, handle):
                await eventually(lambda: live in late.assigned_partitions, timeout=10)
                await producer.enqueue({"n": 2, "k": key}, partition_key="k")
                await eventually(lambda: handled == {0, 1, 2}, timeout=10)
