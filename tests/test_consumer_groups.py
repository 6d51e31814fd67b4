"""Group features against a real Redis: static membership, hooks, priorities, registry, recovery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    Consumer,
    DuplicateConsumerError,
    Message,
    Producer,
    _membership,
)
from redisaq_core._membership import Membership
from redisaq_core._scripts import HEARTBEAT
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys
from redisaq_core.registry import ServiceRegistry
from tests.helpers import Running, eventually

FAST = {"heartbeat_interval": 0.2, "poll_interval": 0.1}
ROOT = Path(__file__).resolve().parents[1]


async def _noop(m: Message) -> None:
    return None


async def test_static_member_restart_keeps_partitions_without_rebalance(
    redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4):
        pass
    b = Consumer(topic, consumer_name="b", redis_url=redis_url, heartbeat_ttl=5, **FAST)
    revoked_b: list[list[int]] = []
    b.on_revoke = revoked_b.append
    worker = [
        sys.executable, "-m", "redisaq_core.cli.main", "worker", "tests.test_consumer_groups:noop",
        "--redis-url", redis_url, "--topic", topic, "--name", "a", "--static",
        "--heartbeat-interval", "0.2", "--heartbeat-ttl", "5", "--poll-interval", "0.1",
    ]  # fmt: skip
    async with Running(b, _noop):
        proc = subprocess.Popen(worker, cwd=ROOT)
        try:
            await eventually(lambda: len(b.assigned_partitions) == 2, timeout=15)
            kept_by_b = b.assigned_partitions
            given = sorted(set(range(4)) - set(kept_by_b))
            await eventually(lambda: revoked_b == [given])  # b handed these to a
            revoked_b.clear()
            proc.kill()  # a crash: no leave, its leases and membership stay until the TTL
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        restarted = Consumer(
            topic, consumer_name="a", static=True, redis_url=redis_url, heartbeat_ttl=5, **FAST
        )
        async with Running(restarted, _noop):
            want = sorted(set(range(4)) - set(kept_by_b))
            await eventually(lambda: restarted.assigned_partitions == want, timeout=4)
            assert revoked_b == []
            assert b.assigned_partitions == kept_by_b


async def noop(m: Message) -> None:
    """Handler for the worker processes these tests start."""


async def test_assign_and_revoke_hooks(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4):
        pass
    events: list[tuple[str, str, list[int]]] = []

    def hooks(name: str) -> dict[str, Any]:
        async def assigned(ps: list[int]) -> None:
            events.append((name, "assign", ps))

        def revoked(ps: list[int]) -> None:
            events.append((name, "revoke", ps))

        return {"on_assign": assigned, "on_revoke": revoked}

    a = Consumer(topic, consumer_name="a", redis_url=redis_url, **FAST, **hooks("a"))
    b = Consumer(topic, consumer_name="b", redis_url=redis_url, **FAST, **hooks("b"))
    async with Running(a, _noop):
        await eventually(lambda: ("a", "assign", [0, 1, 2, 3]) in events)
        async with Running(b, _noop):
            await eventually(lambda: len(b.assigned_partitions) == 2)
            moved = b.assigned_partitions
            # Each hook runs once its side of the hand-over is done.
            await eventually(lambda: ("a", "revoke", moved) in events)
            await eventually(lambda: ("b", "assign", moved) in events)
            assert events.index(("a", "revoke", moved)) < events.index(("b", "assign", moved))
        await eventually(lambda: ("b", "revoke", moved) in events)
        await eventually(lambda: a.assigned_partitions == [0, 1, 2, 3])


async def test_higher_priority_first_under_backlog(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, priorities=3) as producer:
        await producer.batch_enqueue([{"n": i, "p": 0} for i in range(20)])
        await producer.batch_enqueue([{"n": i, "p": 2} for i in range(5)], priority=2)
        await producer.batch_enqueue([{"n": i, "p": 1} for i in range(5)], priority=1)
        with pytest.raises(ConfigurationError, match="priority must be between 0 and 15"):
            await producer.enqueue({"n": 0}, priority=16)
    order: list[tuple[int, int]] = []

    async def handle(m: Message) -> None:
        order.append((m.payload["p"], m.payload["n"]))
        assert m.priority == m.payload["p"]

    consumer = Consumer(topic, redis_url=redis_url, batch_size=50, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(order) == 30)
    assert order[:5] == [(2, i) for i in range(5)]
    assert order[5:10] == [(1, i) for i in range(5)]
    assert order[10:] == [(0, i) for i in range(20)]


async def test_consumer_registers_itself_and_remote_deregister_stops_it(
    redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=2):
        pass
    async with ServiceRegistry(redis_url=redis_url, key_prefix=f"{topic}:") as registry:
        consumer = Consumer(
            topic, consumer_name="w1", registry=registry, redis_url=redis_url, **FAST
        )
        task = asyncio.create_task(consumer.process(_noop))
        service_id = f"{topic}/default/w1"
        info = await eventually(lambda: registry.get_service(service_id))
        assert info.service_type == "consumer"
        await eventually(lambda: _partitions_reported(registry, service_id, [0, 1]))
        assert await registry.deregister_service(service_id)
        await asyncio.wait_for(task, 10)  # stopped gracefully, process() returned
        assert not consumer.running
        await consumer.close()


async def test_partitions_whose_report_failed_are_reported_again(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One failed report of a rebalance left the registry with the partitions of before for
    # good: they were taken as reported before the call went through.
    async with Producer(topic, redis_url=redis_url, init_partitions=2):
        pass
    async with ServiceRegistry(redis_url=redis_url, key_prefix=f"{topic}:") as registry:
        first = Consumer(topic, consumer_name="w1", registry=registry, redis_url=redis_url,
                         **FAST)  # fmt: skip
        service_id = f"{topic}/default/w1"
        async with Running(first, _noop):
            await eventually(lambda: _partitions_reported(registry, service_id, [0, 1]))
            update, failed = registry.update_health, []

            async def fails_once(*args: Any, **kwargs: Any) -> Any:
                if not failed:
                    failed.append(True)
                    raise ConnectionError("the report is lost (injected)")
                return await update(*args, **kwargs)

            monkeypatch.setattr(registry, "update_health", fails_once)
            second = Consumer(topic, consumer_name="w2", redis_url=redis_url, **FAST)
            async with Running(second, _noop):
                await eventually(lambda: len(first.assigned_partitions) == 1)
                mine = first.assigned_partitions
                await eventually(lambda: _partitions_reported(registry, service_id, mine))
            assert failed


async def _partitions_reported(registry: ServiceRegistry, sid: str, want: list[int]) -> bool:
    info = await registry.get_service(sid)
    return info is not None and list(info.metadata.get("partitions", [])) == want


async def test_group_destroyed_at_runtime_is_recreated(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, **FAST)
        async with Running(consumer, handle):
            await producer.enqueue({"n": 1})
            await eventually(lambda: seen == [1])
            await redis.xgroup_destroy(TopicKeys(topic).stream(0), "default")
            await producer.enqueue({"n": 2})
            await eventually(lambda: 2 in seen)


async def test_flushed_redis_is_recovered_without_restart(topic: str) -> None:
    async with EmbeddedRedis() as server:
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=server.url, **FAST)
        producer = Producer(topic, redis_url=server.url, init_partitions=3)
        async with producer, Running(consumer, handle):
            await producer.batch_enqueue([{"n": i} for i in range(3)])
            await eventually(lambda: len(seen) == 3)
            client = Redis.from_url(server.url)
            await client.flushall()
            await producer.batch_enqueue([{"n": i} for i in range(10, 16)])
            await eventually(lambda: set(seen[3:]) == set(range(10, 16)), timeout=15)
            meta = TopicKeys(topic).meta
            await eventually(lambda: _equals(client.hget(meta, "partitions"), b"3"))
            # Acknowledgements refused while the leases were gone are made good:
            # nothing stays pending.
            await eventually(lambda: _no_pending(client, topic, 3), timeout=10)
            await client.aclose()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _no_pending(client: Redis, topic: str, partitions: int) -> bool:
    for p in range(partitions):
        info: Any = await client.xpending(TopicKeys(topic).stream(p), "default")
        if info["pending"]:
            return False
    return True


async def test_trimmed_pending_entry_is_acknowledged_not_spun_on(
    redis_url: str, redis: Redis, topic: str
) -> None:
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, maxlen=2, approximate=False) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(3)])
        # A consumer that died with entries pending...
        await redis.xgroup_create(keys.stream(0), "default", id="0")
        await redis.xreadgroup("default", "ghost", {keys.stream(0): ">"}, count=10)
        # ...which are then trimmed away by later writes.
        await producer.batch_enqueue([{"n": i} for i in range(3, 6)])
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: sorted(seen) == [4, 5])
        await eventually(lambda: consumer.stats.trimmed >= 1)
    info: Any = await redis.xpending(keys.stream(0), "default")
    assert info["pending"] == 0


@pytest.mark.alone
async def test_cancelling_process_leaves_the_group(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(50)])

    async def slow(m: Message) -> None:
        await asyncio.sleep(0.05)

    consumer = Consumer(topic, consumer_name="c", redis_url=redis_url, **FAST)
    task = asyncio.create_task(consumer.process(slow))
    await eventually(lambda: consumer.stats.handled >= 3)
    task.cancel()
    # Its way out may wait for a read under way and for a give-back, up to 5 s each.
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 15)
    assert not consumer.running
    keys = TopicKeys(topic)
    assert await redis.zscore(keys.members("default"), "c") is None
    assert await redis.exists(keys.lease(0, "default"), keys.lease(1, "default")) == 0
    await consumer.close()


async def test_a_latest_group_created_again_loses_nothing_written_meanwhile(topic: str) -> None:
    """start="latest" is for a group new to the topic: after a flush, the group starts at 0."""
    async with EmbeddedRedis() as server:
        seen: list[int] = []

        async def handle(m: Message) -> None:
            seen.append(m.payload["n"])

        producer = Producer(topic, redis_url=server.url)
        consumer = Consumer(topic, redis_url=server.url, start="latest", **FAST)
        async with producer:
            await producer.enqueue({"n": 0})  # before the group existed: skipped by "latest"
            async with Running(consumer, handle):
                await eventually(lambda: consumer.assigned_partitions)
                await producer.enqueue({"n": 1})
                await eventually(lambda: seen == [1])
                client = Redis.from_url(server.url)
                stream = TopicKeys(topic).stream(0)
                # Written while the group is gone (one transaction: no read can come between):
                # the group is created again from the start of the stream.
                async with client.pipeline(transaction=True) as pipe:
                    pipe.delete(stream)
                    pipe.xadd(stream, {"p": b'{"n": 2}'})
                    await pipe.execute()
                await producer.enqueue({"n": 3})
                await eventually(lambda: seen == [1, 2, 3], timeout=10, message=f"{seen}")
                await client.aclose()
        await consumer.close()


async def test_a_latest_group_starts_at_the_end_of_a_partition_whose_lease_failed_at_join(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """start="latest": a partition taken at a later heartbeat still starts at its end."""
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(10)])  # skipped by "latest"
    real, failed = Membership.leases, []

    async def leases(self: Membership, partitions: list[int], held: Any = ()) -> dict[int, int]:
        if failed or 1 not in partitions:
            return await real(self, partitions, held)
        failed.append(1)  # left out, as a call that failed is
        states = await real(self, [p for p in partitions if p != 1], held)
        self.lease_error = ConnectionError("the lease call of partition 1 failed")
        return states

    monkeypatch.setattr(Membership, "leases", leases)
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, start="latest", **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions == [0, 1])
        async with Producer(topic, redis_url=redis_url) as producer:
            await producer.batch_enqueue([{"n": 100 + i} for i in range(10)])
        await eventually(lambda: len(seen) >= 10, message=f"{seen}")
    await consumer.close()
    assert failed == [1]
    assert sorted(seen) == list(range(100, 110))
    assert "a lease call failed as it joined" in caplog.text


async def test_a_member_that_leaves_clean_is_removed_from_the_stream_groups(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """XGROUP DELCONSUMER on leave, only when nothing of the member is pending."""
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(4)])
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, consumer_name="leaver", **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: len(seen) == 4)
    await consumer.close()
    for p in range(2):
        names = [
            c["name"] for c in await redis.xinfo_consumers(TopicKeys(topic).stream(p), "default")
        ]
        assert b"leaver" not in names


async def test_claiming_goes_past_pages_of_deleted_entries(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """A dead member's pending list whose first pages hold only deleted ids (scenario 16)."""
    stream = TopicKeys(topic).stream(0)
    async with Producer(topic, redis_url=redis_url) as producer:
        ids = await producer.batch_enqueue([{"n": i} for i in range(300)])
    await redis.xgroup_create(stream, "default", id="0")
    await redis.xreadgroup("default", "gone", {stream: ">"}, count=300)  # all pending, for good
    await redis.xdel(stream, *ids[:250])  # the first 25 pages of 10 are only deleted ids
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    consumer = Consumer(topic, redis_url=redis_url, batch_size=10, **FAST)
    async with Running(consumer, handle):
        await eventually(lambda: seen == list(range(250, 300)), timeout=10, message=f"{seen}")
        await eventually(lambda: _no_pending(redis, topic, 1))
    await consumer.close()
    assert consumer.stats.trimmed == 250


async def test_a_member_that_leaves_without_raising_the_members_version_is_noticed(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """A member of an older release joins and leaves without touching the members version.

    Its arrival and its graceful leave still change how many members there are, which the
    heartbeat compares as well: the others rebalance at once, not after its TTL.
    """
    async with Producer(topic, redis_url=redis_url, init_partitions=4):
        pass
    keys = TopicKeys(topic)
    members, tokens = keys.members("default"), keys.tokens("default")
    consumer = Consumer(topic, consumer_name="new", redis_url=redis_url, heartbeat_ttl=60, **FAST)

    stop = asyncio.Event()

    async def older_beats() -> None:  # stopped by an event: a cancelled command can hang
        while not stop.is_set():
            seconds, micros = await redis.time()
            await redis.zadd(members, {"older": seconds * 1000 + micros // 1000})
            await asyncio.sleep(0.1)

    async with Running(consumer, _noop):
        await eventually(lambda: consumer.assigned_partitions == [0, 1, 2, 3])
        await redis.hset(tokens, "older", "older-token")
        beats = asyncio.create_task(older_beats())
        try:
            await eventually(lambda: len(consumer.assigned_partitions) == 2, timeout=5)
        finally:
            stop.set()
            await beats
        await redis.zrem(members, "older")
        await redis.hdel(tokens, "older")
        await eventually(lambda: consumer.assigned_partitions == [0, 1, 2, 3], timeout=5)


@pytest.mark.alone
async def test_what_a_replaced_instance_read_under_the_shared_name_is_handled(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """A static restart while the earlier instance still runs (paused, or not yet stopped).

    The earlier instance, blocked on its read from before, is handed a new entry after the
    restarted one claimed the partition's pending entries; its acknowledgement is fenced,
    and the entry stays pending under the name both share. The restarted instance never
    looked at its own name's pending entries again: the entry waited there for ever.
    """
    async with Producer(topic, redis_url=redis_url, init_partitions=1):
        pass
    seen: list[tuple[str, int]] = []

    def recorder(who: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(m: Message) -> None:
            seen.append((who, m.payload["n"]))

        return handle

    # The earlier instance beats rarely: it is told it was replaced only at its next beat.
    earlier = Consumer(
        topic, consumer_name="w", static=True, redis_url=redis_url, heartbeat_interval=5.0,
        heartbeat_ttl=15.0, poll_interval=30.0,
    )  # fmt: skip
    running = asyncio.create_task(earlier.process(recorder("earlier")))
    later = Consumer(topic, consumer_name="w", static=True, redis_url=redis_url, **FAST)
    try:
        await eventually(lambda: earlier.assigned_partitions == [0] and earlier._read_started)
        async with Running(later, recorder("later")):
            await eventually(
                lambda: (
                    later.assigned_partitions == [0]
                    and not later._owned[0].claiming
                    and later._owned[0].sweeps == 0  # its look for strays after the take is done
                    and later._read_started
                )
            )
            async with Producer(topic, redis_url=redis_url) as producer:
                await producer.enqueue({"n": 1})  # the earlier instance blocked first: it gets it
            with pytest.raises(DuplicateConsumerError):
                await asyncio.wait_for(running, 15)
            assert ("earlier", 1) in seen
            await eventually(lambda: ("later", 1) in seen, timeout=5, message=f"{seen}")
            await eventually(lambda: _no_pending(redis, topic, 1))
    finally:
        if not running.done():
            running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await earlier.close()


async def test_a_static_restart_whose_join_reply_was_lost_still_takes_the_leases_over(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A static restart takes over its earlier instance's leases at once, by its token.

    The join's reply names that token. Lost after the script ran (a connection cut, the
    call sent again), the join ran again and found the name already the restart's own: it
    never learned the token, and waited out the earlier instance's leases.
    """
    async with Producer(topic, redis_url=redis_url, init_partitions=2):
        pass
    keys = TopicKeys(topic)
    crashed = Membership(redis, keys, "default", "a", "crashed-token", 20.0, static=True)
    view = await crashed.beat()
    assert await crashed.leases(sorted(view.owned_by("a"))) == {0: 2, 1: 2}
    lost: list[Any] = []

    async def reply_lost_once(client: Any, keys: list[Any], args: list[Any]) -> Any:
        if args[3] == "static-join" and not lost:
            lost.append(await HEARTBEAT(client, keys, args))  # ran; its reply never came
        return await HEARTBEAT(client, keys, args)  # sent again, as redis-py does

    monkeypatch.setattr(_membership, "HEARTBEAT", reply_lost_once)
    restarted = Consumer(
        topic, consumer_name="a", static=True, redis_url=redis_url, heartbeat_ttl=20, **FAST
    )
    async with Running(restarted, _noop):
        await eventually(lambda: restarted.assigned_partitions == [0, 1], timeout=5)
    assert lost and lost[0][5] == b"crashed-token"  # what the lost reply said


async def test_a_member_scored_under_a_clock_ahead_of_the_servers_still_expires(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """Members are scored with the server's TIME; after a failover to a replica whose clock
    is behind, the scores the old primary wrote lie in the future. A member that stopped
    then kept its partitions, unread, for as long as the clocks differ (here an hour)."""
    async with Producer(topic, redis_url=redis_url, init_partitions=4):
        pass
    keys = TopicKeys(topic)
    seconds, micros = await redis.time()
    ahead = seconds * 1000 + micros // 1000 + 3_600_000
    await redis.zadd(keys.members("default"), {"stopped": ahead})
    await redis.hset(keys.tokens("default"), "stopped", "stopped-token")
    consumer = Consumer(topic, consumer_name="live", redis_url=redis_url, **FAST)
    async with Running(consumer, _noop):
        await eventually(lambda: consumer.assigned_partitions == [0, 1, 2, 3], timeout=5)
