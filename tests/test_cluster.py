"""The library on a real 3-master Redis Cluster on loopback ports.

Representative producer, consumer-group, rebalance, dead-letter, job-result
and CLI scenarios run on the session's cluster (``cluster_url`` in
``tests/conftest.py``), with the partitions of each topic spread over every
node. Every test also checks that no node answered CROSSSLOT while it ran.
The full ordinary suites run on a cluster with ``pytest --cluster``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from redisaq_core import Consumer, DeadLetters, Message, Producer
from redisaq_core._assignment import partition_for_key
from redisaq_core._reads import read_streams, slot_groups
from redisaq_core._scripts import Script, run_pipelined
from redisaq_core.connection import create_client
from redisaq_core.embedded import EmbeddedCluster
from redisaq_core.keys import TopicKeys, partition_slots
from redisaq_core.results import JobStatus, ResultStore
from tests.cluster_helpers import cluster_nodes, crossslot_errors, node_of_key
from tests.helpers import Running, eventually

pytestmark = pytest.mark.cluster

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.2, "retry_backoff": 0.01}
ROOT = Path(__file__).resolve().parents[1]


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


def _nodes_of(url: str, topic: str, partitions: int) -> dict[int, int]:
    """Partition -> port of the primary holding its stream."""
    keys = TopicKeys(topic)
    return {p: node_of_key(url, keys.stream(p)) for p in range(partitions)}


async def test_cluster_has_three_primaries_sharing_every_slot(cluster_url: str) -> None:
    primaries = [n for n in cluster_nodes(cluster_url) if n["role"] == "master"]
    assert len(primaries) == 3
    covered = sum(high - low + 1 for n in primaries for low, high in n["slots"])  # type: ignore[attr-defined]
    assert covered == 16384


async def test_batch_enqueue_spreads_partitions_over_every_node(
    cluster_url: str, client: Any, topic: str
) -> None:
    async with Producer(topic, redis_url=cluster_url, init_partitions=12) as producer:
        assert isinstance(producer.redis, RedisCluster)
        ids = await producer.batch_enqueue([{"k": i % 48, "n": i} for i in range(1200)], "k")
        assert len(ids) == 1200
        many = await asyncio.gather(*(producer.enqueue({"n": i}) for i in range(300)))
        assert len(many) == 300 and all(many)
    nodes = _nodes_of(cluster_url, topic, 12)
    assert len(set(nodes.values())) == 3, nodes
    keys = TopicKeys(topic)
    lengths = [int(await client.xlen(keys.stream(p))) for p in range(12)]
    assert sum(lengths) == 1500 and all(lengths)


def test_partition_slots_cover_everything_of_a_partition() -> None:
    keys = TopicKeys("orders")
    slots = partition_slots("orders", 8)
    assert len(set(slots.values())) == 8
    for p, slot in slots.items():
        names = [keys.stream(p), keys.stream(p, 3), keys.dead_letters(p), keys.lease(p, "g")]
        names += [keys.job(p, f"orders/{p}/ab"), keys.jobs(p)]
        assert {key_slot(n.encode()) for n in names} == {slot}


async def test_pipelined_scripts_run_once_when_only_some_nodes_lack_them(
    cluster_url: str, client: Any, topic: str
) -> None:
    """NOSCRIPT from one node repeats only the calls that node refused."""
    script = Script.__new__(Script)
    script.name = "incr"
    script.source = f"-- {topic}\nreturn redis.call('INCR', KEYS[1])"
    script.sha = hashlib.sha1(script.source.encode()).hexdigest()
    counters = [f"{{{topic}:{i}}}:n" for i in range(12)]
    assert len({node_of_key(cluster_url, k) for k in counters}) == 3
    await client.ping()  # learn the slot table, so that the script goes to one primary only
    await script.load(client, counters[:1])
    loaded = [
        (await client.execute_command("SCRIPT EXISTS", script.sha, target_nodes=node))[0]
        for node in client.get_primaries()
    ]
    assert sorted(loaded) == [False, False, True], loaded
    results = await run_pipelined(client, [(script, [k], []) for k in counters])
    assert results == [1] * 12
    assert [int(await client.get(k)) for k in counters] == [1] * 12


async def test_read_streams_groups_by_slot(cluster_url: str, client: Any, topic: str) -> None:
    keys = TopicKeys(topic)
    streams = [keys.stream(p, level) for p in range(6) for level in (2, 1, 0)]
    groups = slot_groups(streams)
    assert len(groups) == 6 and all(len(g) == 3 for g in groups.values())
    for stream in streams:
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
        await client.xadd(stream, {"p": stream})
    wanted = dict.fromkeys(streams, ">")
    got = await read_streams(client, "g", "c", wanted, count=10, block_ms=100)
    assert sorted(name.decode() for name, entries in got if entries) == sorted(streams)
    for name, entries in got:  # a reader acknowledges what it read before reading again
        await client.xack(name, "g", *(entry_id for entry_id, _ in entries))
    assert await read_streams(client, "g", "c", wanted, count=10, block_ms=None) == []
    # Blocking on six slots at once: the first entry anywhere ends the wait.
    reader = asyncio.create_task(read_streams(client, "g", "c", wanted, count=10, block_ms=20_000))
    await asyncio.sleep(0.2)
    assert not reader.done()
    await client.xadd(streams[7], {"p": "late"})
    got = await asyncio.wait_for(reader, 5)
    assert [(name.decode(), len(entries)) for name, entries in got] == [(streams[7], 1)]
    for stream in streams:
        info: Any = await client.xpending(stream, "g")
        assert info["pending"] == (1 if stream == streams[7] else 0)


async def test_a_read_back_after_a_cut_read_counts_no_second_delivery(
    cluster_url: str, client: Any, topic: str
) -> None:
    """What a cut read was handed is read back with the delivery count it was handed at.

    An entry of ``b`` pending with the consumer stands for one served to a read whose
    reply was dropped. A blocking read of ``a`` and ``b`` ends with an entry of ``a``:
    the read of ``b`` is cut, and what it may have been handed is read back. A history
    read (XREADGROUP with id 0) counted a second delivery; the consumer counts one.
    """
    keys = TopicKeys(topic)
    a, b = keys.stream(0), keys.stream(1)
    for stream in (a, b):
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
    await client.xadd(b, {"p": "b"})
    [[_, [(handed, _)]]] = await client.xreadgroup("g", "c", {b: ">"})
    ports = {node_of_key(cluster_url, a), node_of_key(cluster_url, b)}
    wanted = {a: ">", b: ">"}
    reader = asyncio.create_task(read_streams(client, "g", "c", wanted, count=10, block_ms=20_000))
    await eventually(lambda: sum(_blocked_reads_on(port) for port in ports) == 2)
    new = await client.xadd(a, {"p": "a"})
    got = await asyncio.wait_for(reader, 5)
    assert sorted((name.decode(), [i for i, _ in entries]) for name, entries in got) == [
        (a, [new]),
        (b, [handed]),
    ]
    rows = await client.xpending_range(b, "g", "-", "+", 10)
    assert [(r["message_id"], r["times_delivered"]) for r in rows] == [(handed, 1)]


async def test_group_of_three_handles_everything_in_key_order(cluster_url: str, topic: str) -> None:
    n, partitions = 900, 9
    async with Producer(topic, redis_url=cluster_url, init_partitions=partitions) as producer:
        for start in range(0, n, 300):
            await producer.batch_enqueue(
                [{"k": i % 30, "n": i} for i in range(start, start + 300)], partition_key="k"
            )
    seen: dict[int, list[int]] = {}
    by_consumer: dict[str, set[int]] = {}

    def handler_for(name: str) -> Any:
        async def handle(m: Message) -> None:
            seen.setdefault(m.payload["k"], []).append(m.payload["n"])
            by_consumer.setdefault(name, set()).add(m.partition or 0)

        return handle

    consumers = [
        Consumer(topic, consumer_name=f"c{i}", redis_url=cluster_url, batch_size=50, **FAST)
        for i in range(3)
    ]
    async with (
        Running(consumers[0], handler_for("c0")),
        Running(consumers[1], handler_for("c1")),
        Running(consumers[2], handler_for("c2")),
    ):
        await eventually(lambda: sum(len(v) for v in seen.values()) >= n, timeout=30)
        owned = [set(c.assigned_partitions) for c in consumers]
    assert sum(len(v) for v in seen.values()) == n
    for k, ns in seen.items():
        assert ns == sorted(ns), f"key {k} out of order"
    assert set().union(*owned) == set(range(partitions))
    nodes = _nodes_of(cluster_url, topic, partitions)
    # Each member reads partitions that live on more than one node.
    assert any(len({nodes[p] for p in mine}) > 1 for mine in owned), (owned, nodes)


async def test_rebalance_as_members_join_and_leave(cluster_url: str, topic: str) -> None:
    partitions = 6
    async with Producer(topic, redis_url=cluster_url, init_partitions=partitions) as producer:
        handled: list[int] = []

        async def handle(m: Message) -> None:
            handled.append(m.payload["n"])

        a = Consumer(topic, consumer_name="a", redis_url=cluster_url, **FAST)
        b = Consumer(topic, consumer_name="b", redis_url=cluster_url, **FAST)
        async with Running(a, handle):
            await eventually(lambda: len(a.assigned_partitions) == partitions)
            await producer.batch_enqueue([{"n": i} for i in range(300)])
            async with Running(b, handle):
                await eventually(
                    lambda: len(a.assigned_partitions) == len(b.assigned_partitions) == 3,
                    timeout=10,
                )
                await producer.batch_enqueue([{"n": i} for i in range(300, 600)])
                await eventually(lambda: len(set(handled)) == 600, timeout=20)
            await eventually(lambda: len(a.assigned_partitions) == partitions, timeout=10)
            await producer.batch_enqueue([{"n": i} for i in range(600, 700)])
            await eventually(lambda: len(set(handled)) == 700, timeout=20)
    assert set(handled) == set(range(700))


async def test_idle_member_wakes_for_an_entry_on_any_node(cluster_url: str, topic: str) -> None:
    """A member blocked on partitions of three nodes answers the first entry at once."""
    partitions = 6
    got: list[int] = []

    async def handle(m: Message) -> None:
        got.append(m.payload["n"])

    async with Producer(topic, redis_url=cluster_url, init_partitions=partitions) as producer:
        # poll_interval bounds a blocking read: far longer than the waits allowed below.
        consumer = Consumer(topic, redis_url=cluster_url, heartbeat_interval=5, poll_interval=30)
        async with Running(consumer, handle):
            await eventually(lambda: len(consumer.assigned_partitions) == partitions)
            for i in range(12):
                await asyncio.sleep(0.05)
                await producer.enqueue({"n": i})  # round robin: each partition in turn
                await eventually(lambda i=i: i in got, timeout=5, interval=0.005)  # type: ignore[misc]
            # A burst over every partition while idle: nothing stays behind.
            await producer.batch_enqueue([{"n": i} for i in range(12, 112)])
            await eventually(lambda: len(got) >= 112, timeout=10)
    assert sorted(got) == list(range(112))


def _one_alone(url: str, topic: str, group_node: int) -> tuple[int, int, int]:
    """A partition count, a partition alone on its node, and a node of others but the group's."""
    for partitions in range(3, 16):
        nodes = _nodes_of(url, topic, partitions)
        ports = list(nodes.values())
        for part, port in nodes.items():
            others = [p for p in set(ports) if p not in (port, group_node)]
            if ports.count(port) == 1 and others:
                return partitions, part, others[0]
    raise AssertionError(f"no partition alone on its node for topic {topic!r}")


def _blocked_reads_on(port: int) -> int:
    node = SyncRedis(host="127.0.0.1", port=port)
    try:
        clients: list[dict[str, Any]] = node.client_list()
    finally:
        node.close()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""))


async def test_a_stop_while_a_cut_read_waits_on_a_paused_node_gives_back_what_others_served(
    cluster_url: str, client: Any, topic: str
) -> None:
    """Entries one node served to a read cut short at a stop come to the next owner first.

    The member blocks on every node. One node is paused; entries come on another, whose
    read returns them, so the read of the paused node is cut and what it may have been
    handed is read back, which waits on the pause. A stop then ends the read. The
    entries were served (pending with the member, delivered once) but never handled:
    with ``max_deliveries=1`` the next owner runs them, it does not dead-letter them.
    """
    keys = TopicKeys(topic)
    group_node = node_of_key(cluster_url, keys.members("default"))
    partitions, part, paused = _one_alone(cluster_url, topic, group_node)
    key = next(k for k in map(str, range(10_000)) if partition_for_key(k, partitions) == part)
    ran: list[tuple[str, int]] = []

    async def handle(m: Message) -> None:
        ran.append((m.msg_id, m.deliveries))

    async with Producer(topic, redis_url=cluster_url, init_partitions=partitions) as producer:
        first = Consumer(
            topic, consumer_name="first", redis_url=cluster_url, max_deliveries=1,
            heartbeat_interval=0.5, poll_interval=30,
        )  # fmt: skip
        running = asyncio.create_task(first.process(handle))
        try:
            await eventually(lambda: len(first.assigned_partitions) == partitions)
            await eventually(
                lambda: (
                    _blocked_reads_on(paused)
                    and _blocked_reads_on(node_of_key(cluster_url, keys.stream(part)))
                ),
                message="the member blocked on both nodes",
            )
            await client.xpending_range(keys.stream(part), "default", "-", "+", 10)  # connected
            node = SyncRedis(host="127.0.0.1", port=paused)
            node.execute_command("CLIENT", "PAUSE", 4000, "WRITE")  # XREADGROUP and scripts
            node.close()
            ids = [await producer.enqueue({"n": i, "k": key}, partition_key="k") for i in range(5)]

            async def served() -> bool:
                rows = await client.xpending_range(keys.stream(part), "default", "-", "+", 10)
                return bool(rows) and all(r["consumer"] == b"first" for r in rows)

            await eventually(served, message="the entries served to the member")
            assert ran == [], "the read back after the cut waits on the paused node"
            await first.stop()
        finally:
            await first.stop()
            await running
            await first.close()
    second = Consumer(
        topic, consumer_name="second", redis_url=cluster_url, max_deliveries=1, **FAST
    )
    async with Running(second, handle), DeadLetters(topic, redis_url=cluster_url) as dl:
        await eventually(lambda: len(ran) + second.stats.dead_lettered == 5, timeout=20)
        assert sorted(ran) == [(i, 1) for i in sorted(ids)]
        assert await dl.count() == 0


async def test_a_consumer_speaking_resp3_reads_every_node(cluster_url: str, topic: str) -> None:
    """``protocol=3``: redis-py wraps each stream's entries of a cluster read in one more
    list; the consumer used to end on a ValueError at its first read."""
    url = cluster_url + ("&" if "?" in cluster_url else "?") + "protocol=3"
    handled: list[int] = []

    async def handle(m: Message) -> None:
        if m.payload["flaky"] and m.deliveries == 1:
            raise RuntimeError("fails once")
        handled.append(m.payload["n"])

    async with Producer(topic, redis_url=url, init_partitions=6) as producer:
        await producer.batch_enqueue([{"n": i, "flaky": i % 5 == 0} for i in range(30)])
        consumer = Consumer(topic, redis_url=url, **FAST)
        async with Running(consumer, handle):
            await eventually(lambda: len(handled) == 30, timeout=20)
    assert sorted(handled) == list(range(30))


async def test_dead_letters_and_replay(cluster_url: str, topic: str) -> None:
    partitions = 4
    async with Producer(topic, redis_url=cluster_url, init_partitions=partitions) as producer:
        await producer.batch_enqueue([{"n": i, "bad": i % 10 == 0} for i in range(40)])
    ok: set[int] = set()

    async def handle(m: Message) -> None:
        if m.payload["bad"]:
            raise ValueError(f"bad {m.payload['n']}")
        ok.add(m.payload["n"])

    consumer = Consumer(topic, redis_url=cluster_url, max_deliveries=2, **FAST)
    async with Running(consumer, handle), DeadLetters(topic, redis_url=cluster_url) as dl:
        await eventually(lambda: len(ok) == 36 and consumer.stats.dead_lettered == 4, timeout=20)
        assert await dl.count() == 4
        letters = await dl.list()
        assert sorted(d.payload["n"] for d in letters) == [0, 10, 20, 30]
        assert {d.partition for d in letters} <= set(range(partitions))
        assert await dl.purge() == 4
        assert await dl.count() == 0


async def test_job_results_across_nodes(cluster_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=cluster_url, init_partitions=6) as producer:
        handles = [await producer.submit({"x": i}) for i in range(12)]

        async def double(m: Message) -> Any:
            return m.payload["x"] * 2

        consumer = Consumer(topic, redis_url=cluster_url, **FAST)
        async with Running(consumer, double), ResultStore(redis_url=cluster_url) as store:
            results = await asyncio.gather(*(h.result(timeout=15) for h in handles))
            assert results == [2 * i for i in range(12)]
            record = await store.get(handles[0].id)
            assert record is not None and record.status is JobStatus.COMPLETED
            listed = await store.list_jobs(topic=topic)
            assert len(listed) == 12
    parts = {int(h.id.split("/")[1]) for h in handles}
    nodes = _nodes_of(cluster_url, topic, 6)
    assert len({nodes[p] for p in parts}) > 1


async def test_embedded_cluster_of_one_primary_stops_exactly_its_processes() -> None:
    async with EmbeddedCluster(masters=1) as cluster:
        assert len(cluster.urls) == 1 and cluster.url == cluster.urls[0]
        pids = cluster.pids
        assert len(pids) == 1 and cluster.running
        async with Producer("one-primary", redis_url=cluster.url, init_partitions=4) as p:
            assert len(await p.batch_enqueue([{"n": i} for i in range(8)])) == 8
    assert not cluster.running and cluster.pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_server_runs_a_cluster_and_stops_its_nodes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisaq_core.cli.main", "server", "--cluster", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    ports: list[int] = []
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("redis+cluster://127.0.0.1:"), url
        nodes = cluster_nodes(url)
        assert sorted(n["role"] for n in nodes) == ["master"] * 3

        async def use() -> int:
            async with Producer("cli-cluster", redis_url=url, init_partitions=6) as p:
                return len(await p.batch_enqueue([{"n": i} for i in range(60)]))

        assert asyncio.run(use()) == 60
        ports = [int(str(n["port"])) for n in nodes]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert code == 0
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


@pytest.mark.alone
@pytest.mark.timeout(120)
def test_cluster_benchmark_runs_and_reports() -> None:
    """``python -m benchmarks.cluster`` with a tiny N: one node and a 3-primary cluster."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--n", "300", "--batch", "50",
         "--masters", "3", "--processes", "1", "--repeat", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    rows = {(r["topology"], r["processes"]): r for r in doc["results"]}
    assert set(rows) == {("1 node", 1), ("3 primaries (cluster)", 1)}
    assert all(r["rate"] > 0 and r["server_cpu_us_per_msg"] > 0 for r in rows.values())
