"""Leases renewed when due, and idle reads that end at the leases' local deadline.

A held lease is renewed about every other heartbeat (``lease_due``), with one
GETEX while the member holds it by its own clock; it never lapses while the
member heartbeats, a lease found in another's hands is given up at once, and
an idle read blocks until the leases' local deadline, not once a second.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError

from redisaq_core import (
    Consumer,
    DuplicateConsumerError,
    Message,
    Producer,
    _membership,
    _settlement,
)
from redisaq_core._codec import default_deserializer, default_serializer
from redisaq_core._delivery import ConsumerStats, OwnedPartition, Reader
from redisaq_core._give_back import GiveBack
from redisaq_core._membership import lease_due
from redisaq_core._read_ahead import ReadAhead
from redisaq_core._scripts import (
    ACK,
    COMMIT_ASSIGNMENT,
    ENSURE_PARTITIONS,
    HEARTBEAT,
    JOBS_COMPLETE,
    LEAVE,
    RELEASE,
)
from redisaq_core._settlement import Settler
from redisaq_core.connection import AnyRedis, create_client, is_cluster
from redisaq_core.keys import MAX_PRIORITIES, TopicKeys, partition_count, priority_levels
from redisaq_core.message import received
from redisaq_core.monitor import Monitor
from tests.helpers import Running, eventually


def test_a_lease_is_renewed_every_other_heartbeat_with_the_default_ttl() -> None:
    interval, ttl = 3.0, 9.0
    renewed_at = 100.0
    deadline = renewed_at + 0.8 * ttl
    # The heartbeat loop sleeps an interval, then beats: a little later each time.
    assert not lease_due(deadline, renewed_at + interval + 0.05, interval, ttl)
    assert lease_due(deadline, renewed_at + 2 * interval + 0.1, interval, ttl)
    # Late past its local deadline: renewed (and checked, as it may have lapsed).
    assert lease_due(deadline, deadline + 1.0, interval, ttl)


def test_a_short_ttl_renews_on_every_heartbeat() -> None:
    for interval, ttl in ((1.0, 1.5), (1.0, 2.0), (1.0, 2.5), (0.2, 0.3)):
        renewed_at = 50.0
        assert lease_due(renewed_at + 0.8 * ttl, renewed_at + interval, interval, ttl), ttl


def test_a_skipped_renewal_leaves_more_than_half_the_lease() -> None:
    for interval in (0.1, 0.3, 1.0, 3.0):
        for factor in (1.2, 2.0, 3.0, 4.0, 10.0):
            ttl = interval * factor
            renewed_at = 10.0
            deadline = renewed_at + 0.8 * ttl
            for step in range(1, 40):
                now = renewed_at + step * interval * 0.5
                if not lease_due(deadline, now, interval, ttl):
                    # Skipped: the lease itself still has over half its TTL, and its local
                    # deadline is more than an interval away (reads go on until the next).
                    assert renewed_at + ttl - now > ttl / 2, (interval, ttl, now)
                    assert deadline - now > interval, (interval, ttl, now)


async def _calls(redis: Redis, command: str) -> int:
    info: Any = await redis.info("commandstats")
    return int(info.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_an_idle_member_keeps_its_lease_and_reads_rarely(
    redis_url: str, redis: Redis, topic: str
) -> None:
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2)
        lease = TopicKeys(topic).lease(0, "default")
        async with Running(consumer, handle):
            await eventually(lambda: consumer.assigned_partitions == [0])
            reads_before = await _calls(redis, "xreadgroup")
            started = time.monotonic()
            lowest = 10_000
            while time.monotonic() - started < 3.0:
                # The lease (TTL 0.6 s) never lapses while its owner heartbeats.
                ttl_ms = await redis.pttl(lease)
                assert ttl_ms > 0, "the lease lapsed"
                assert await redis.get(lease) == consumer.token.encode()
                lowest = min(lowest, ttl_ms)
                await asyncio.sleep(0.02)
            reads = await _calls(redis, "xreadgroup") - reads_before
            # Renewed about every other heartbeat: it runs down below the 0.4 s that
            # renewing on each 0.2 s heartbeat would leave.
            assert lowest < 350, lowest
            # One read per renewal (0.4 s): about 8 in 3 s, where a 0.1 s poll would make 30.
            assert reads <= 12, reads
            await producer.enqueue({"n": 1})
            await eventually(lambda: seen == [1], timeout=5)
        await consumer.close()
    assert consumer.stats.fenced == 0


async def test_a_lease_found_in_other_hands_on_renewal_is_given_up(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=1):
        pass
    consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2)
    lease = TopicKeys(topic).lease(0, "default")

    async def handle(m: Message) -> None:
        """Nothing arrives."""

    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions == [0])
        # Someone else's token where the member believes its own lease is (a key deleted
        # and taken by another): the next renewal, a GETEX, tells and the partition goes.
        await redis.set(lease, b"another-token", px=5000)
        await eventually(lambda: consumer.assigned_partitions == [], timeout=5)
        assert await redis.get(lease) == b"another-token"
        # Once that lease is gone, the partition, still assigned to it, is taken again.
        await redis.delete(lease)
        await eventually(lambda: consumer.assigned_partitions == [0], timeout=5)
        assert await redis.get(lease) == consumer.token.encode()
    await consumer.close()


async def test_a_member_without_leases_still_notices_its_name_taken_over(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=1):
        pass
    keys = TopicKeys(topic)

    async def handle(m: Message) -> None:
        """Nothing arrives."""

    owner = Consumer(topic, consumer_name="owner", redis_url=redis_url, heartbeat_interval=0.1)
    spare = Consumer(topic, consumer_name="spare", redis_url=redis_url, heartbeat_interval=0.1)
    async with Running(owner, handle):
        await eventually(lambda: owner.assigned_partitions == [0])
        task = asyncio.create_task(spare.process(handle))
        try:
            await eventually(lambda: spare.members == ("owner", "spare"))
            # What a static restart of an older release does: it takes the name over
            # without raising the members version. The spare's heartbeats carry no lease,
            # so only its periodic name check can tell.
            await redis.hset(keys.tokens("default"), "spare", "a-newer-instance")
            await asyncio.wait_for(asyncio.shield(task), 10)
        except DuplicateConsumerError:
            pass
        else:
            raise AssertionError("the replaced member did not stop")
        finally:
            await spare.stop()
        await spare.close()
    await owner.close()


async def _settling(redis: Redis, topic: str, n: int) -> tuple[Reader, Settler, list[Any]]:
    """A reader and settler of member ``me`` (lease token ``tok``) holding partition 0, and
    ``n`` messages it read there."""
    keys, group, token = TopicKeys(topic), "default", "tok"
    stats = ConsumerStats()
    reader = Reader(keys, group, "me", "tok", batch_size=10, deserializer=default_deserializer,
                    stats=stats)  # fmt: skip
    settler = Settler(
        keys, group, "me", token, serializer=default_serializer, max_deliveries=1,
        dead_letter=True, dead_letter_maxlen=0, retry_backoff=0.1, retry_backoff_max=1.0,
        stats=stats,
    )  # fmt: skip
    stream = keys.stream(0)
    await redis.xgroup_create(stream, group, "0", mkstream=True)
    ids = [(await redis.xadd(stream, {"p": b'{"n": 1}'})).decode() for _ in range(n)]
    await redis.xreadgroup(group, "me", {stream: ">"})
    await redis.set(keys.lease(0, group), token)
    return reader, settler, [received(topic, {"n": 1}, i, 0, group, 0.0, 1, 0) for i in ids]


async def test_a_failed_settlement_is_not_kept_for_a_partition_taken_afresh_meanwhile(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handled message's acknowledgement goes out on its own; while it is out, the heartbeat
    # takes the partition afresh (a new hold), and the round trip fails. The acknowledgement
    # is dropped (its message is claimed back under the new hold), not kept and sent under
    # the new hold as if it were made for it.
    reader, settler, (m,) = await _settling(redis, topic, 1)
    stats = settler.stats
    owned = {0: reader.partition(0, 1, valid_until=1e12)}

    async def taken_afresh_then_fails(r: Any, calls: Any) -> Any:
        owned[0] = reader.partition(0, 1, valid_until=1e12)
        raise RedisConnectionError("connection lost (injected)")

    monkeypatch.setattr(_settlement, "run_pipelined", taken_afresh_then_fails)
    with pytest.raises(RedisConnectionError):
        await settler.settle(redis, owned, [(m, None)], [], 0.0, lambda part, count: None)
    assert settler.take_deferred(owned) == []
    assert stats.fenced == 1


@pytest.mark.single_node  # a cluster client reads nothing ahead, so gives nothing back
async def test_a_partition_found_lost_before_its_retry_claims_nothing(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Message 15 fails, its retry due at once: the batch read ahead behind it is given back
    # first. The heartbeat finds the lease lost while that give-back is made: neither the
    # retry nor a claim may then touch the partition's pending entries (its new owner's).
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(60)])
    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, retry_backoff=0.0, heartbeat_interval=0.2,
        poll_interval=0.1,
    )  # fmt: skip
    lost: list[int] = []
    make = GiveBack.make

    async def lease_lost_meanwhile(self: GiveBack, redis: Any) -> None:
        if self.owed and not lost:
            lost.append(len(consumer._owned))
            consumer._owned.pop(0)  # as the heartbeat does when a renewal finds the lease gone
        await make(self, redis)

    strays: list[int] = []
    retries, claim = Reader.retries, Reader.claim

    async def checked_retries(
        self: Reader, redis: Any, parts: list[OwnedPartition], runs: Any = None
    ) -> Any:
        strays.extend(p.number for p in parts if consumer._owned.get(p.number) is not p)
        return await retries(self, redis, parts, runs)

    async def checked_claim(self: Reader, redis: Any, parts: list[OwnedPartition]) -> Any:
        strays.extend(p.number for p in parts if consumer._owned.get(p.number) is not p)
        return await claim(self, redis, parts)

    monkeypatch.setattr(GiveBack, "make", lease_lost_meanwhile)
    monkeypatch.setattr(Reader, "retries", checked_retries)
    monkeypatch.setattr(Reader, "claim", checked_claim)
    seen: set[int] = set()
    failed: list[int] = []

    async def fails_at_15(m: Message) -> None:
        if m.payload["n"] == 15 and not failed:
            failed.append(m.deliveries)
            raise RuntimeError("fails once")
        seen.add(m.payload["n"])

    async with Running(consumer, fails_at_15):
        await eventually(lambda: seen == set(range(60)), timeout=15)
    assert lost == [1]
    assert strays == []


async def test_a_failed_flush_is_not_kept_for_a_partition_taken_afresh_meanwhile(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An acknowledgement kept back for the next round trip goes out; meanwhile the partition
    # is taken afresh and a batch is settled under the new hold; then the round trip fails.
    # The first acknowledgement is dropped, not kept as if made for the new hold.
    reader, settler, (first, second) = await _settling(redis, topic, 2)
    stats, settler.deferrable = settler.stats, True
    owned = {0: reader.partition(0, 1, valid_until=1e12)}
    await settler.settle(redis, owned, [(first, None)], [], 0.0, lambda p, c: None, defer=True)

    async def taken_afresh_then_fails(r: Any, calls: Any) -> Any:
        owned[0] = reader.partition(0, 1, valid_until=1e12)
        await settler.settle(r, owned, [(second, None)], [], 0.0, lambda p, c: None, defer=True)
        raise RedisConnectionError("connection lost (injected)")

    monkeypatch.setattr(_settlement, "run_pipelined", taken_afresh_then_fails)
    with pytest.raises(RedisConnectionError):
        await settler.flush(redis, owned, lambda part, count: None)
    kept = settler.take_deferred(owned)
    assert [c[2][3] for c in kept] == [second.msg_id.encode()]  # the new hold's only
    assert stats.fenced == 1


@pytest.mark.single_node  # a cluster client reads nothing ahead, and keeps nothing back
async def test_priority_levels_added_while_messages_are_settled_stop_nothing(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Priority levels are added while a consumer works through a backlog, reading ahead with
    # acknowledgements kept back; its heartbeat picks them up just then. The same hold reads
    # the new level: what it kept back goes out, nothing runs twice. It used to take the
    # partition as a new hold, dropping them (run again, dead-lettered with
    # max_deliveries=1), or stop with an IndexError if a batch was settled meanwhile.
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(60)])
    seen: dict[int, int] = {}
    take = ReadAhead.take
    added: list[int] = []

    async def levels_added_first(self: ReadAhead) -> Any:
        if len(seen) >= 20 and not added:
            added.append(len(seen))
            async with Producer(topic, redis_url=redis_url, init_partitions=1, priorities=2):
                pass
            await consumer._sync()  # as the heartbeat does, beside the read ahead
        return await take(self)

    monkeypatch.setattr(ReadAhead, "take", levels_added_first)

    async def handle(m: Message) -> None:
        seen[m.payload["n"]] = seen.get(m.payload["n"], 0) + 1

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, max_deliveries=1, heartbeat_interval=5.0,
        poll_interval=0.1,
    )  # fmt: skip
    async with Running(consumer, handle):
        await eventually(lambda: len(seen) == 60 and consumer.running)
    assert added
    assert seen == dict.fromkeys(range(60), 1)
    assert consumer.stats.fenced == 0 and consumer.stats.dead_lettered == 0


async def test_priority_levels_lowered_by_another_client_are_kept(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Another client lowers the topic's priority levels (or Redis lost the topic's metadata)
    # while a level-1 message is in its handler. The consumer keeps reading both levels and
    # puts the count back; it used to stop with an IndexError, and to read level 1 no more.
    meta = TopicKeys(topic).meta
    running, release = asyncio.Event(), asyncio.Event()
    handled: list[int] = []

    async def handle(m: Message) -> None:
        if m.payload["n"] == 0:
            running.set()
            await release.wait()
        handled.append(m.payload["n"])

    async with Producer(topic, redis_url=redis_url, init_partitions=1, priorities=2) as producer:
        await producer.enqueue({"n": 0}, priority=1)
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        async with Running(consumer, handle):
            await asyncio.wait_for(running.wait(), 10)
            await redis.hset(meta, "priorities", 1)
            await eventually(lambda: _levels(redis, meta, b"2"))
            release.set()
            await producer.enqueue({"n": 1}, priority=1)
            await eventually(lambda: handled == [0, 1])
            assert consumer.running


async def _levels(redis: Redis, meta: str, want: bytes) -> bool:
    return bool(await redis.hget(meta, "priorities") == want)


@pytest.mark.single_node  # acknowledgements go with a read on one server only
async def test_a_settlement_cut_off_while_sent_again_for_its_script_is_kept(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis lost its scripts (a restart): an acknowledgement sent with a read is answered
    # NOSCRIPT and sent again on its own, loading the script; a forced stop lands in that
    # round trip. It is kept back for the leave, not dropped (its message ran again).
    reader, settler, (m,) = await _settling(redis, topic, 1)
    settler.deferrable = True
    owned = {0: reader.partition(0, 1, valid_until=1e12)}
    owned[0].claims.clear()  # read new entries (nothing to claim)
    await settler.settle(redis, owned, [(m, None)], [], 0.0, lambda p, c: None, defer=True)
    await redis.script_flush()
    await _flush_cut_while_sending(monkeypatch, redis, settler, reader, owned)
    assert [c[2][3] for c in settler.take_deferred(owned)] == [m.msg_id.encode()]


async def _flush_cut_while_sending(
    monkeypatch: pytest.MonkeyPatch,
    redis: Redis,
    settler: Settler,
    reader: Reader,
    owned: dict[int, OwnedPartition],
) -> None:
    """Flush partition 0's kept calls, and cancel the flush while its one round trip hangs."""
    sent: list[int] = []

    async def hangs(r: Any, calls: Any) -> Any:
        sent.append(len(calls))
        await asyncio.Event().wait()

    monkeypatch.setattr(_settlement, "run_pipelined", hangs)
    task = asyncio.create_task(
        settler.flush(redis, owned, lambda part, count: None, reader, [owned[0]])
    )
    await eventually(lambda: sent == [1])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_trimmed_entries_of_an_earlier_hold_leave_the_new_hold_kept_calls_alone(
    redis: Redis, topic: str
) -> None:
    # A retry's claim found its entry trimmed, while the partition was taken afresh (a new
    # hold that has acknowledgements kept back). The trimmed entry's acknowledgement, made
    # for the earlier hold, is not kept; the new hold's calls stay (they were dropped).
    reader, settler, (m,) = await _settling(redis, topic, 1)
    settler.deferrable = True
    earlier = reader.partition(0, 1, valid_until=1e12)
    owned = {0: reader.partition(0, 1, valid_until=1e12)}
    await settler.settle(redis, owned, [(m, None)], [], 0.0, lambda p, c: None, defer=True)
    settler.ack_gone({(earlier, 0): ["1-0"]}, owned)
    assert [c[2][3] for c in settler.take_deferred(owned)] == [m.msg_id.encode()]


@pytest.mark.single_node  # acknowledgements go with a read on one server only
async def test_a_stop_while_scripts_are_sent_again_keeps_the_other_failed_calls_too(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two acknowledgements sent with a read: one answered NOSCRIPT, the other an error (as
    # under OOM). A stop lands while the first is sent again: both are kept back.
    reader, settler, (m, n) = await _settling(redis, topic, 2)
    settler.deferrable = True
    owned = {0: reader.partition(0, 1, valid_until=1e12)}
    owned[0].claims.clear()
    await settler.settle(redis, owned, [(m, None)], [], 0.0, lambda p, c: None, defer=True)
    await settler.settle(redis, owned, [(n, None)], [], 0.0, lambda p, c: None, defer=True)

    async def replies(self: Reader, r: Any, parts: Any, calls: Any) -> Any:
        return [], [NoScriptError("NOSCRIPT (injected)"), ResponseError("OOM (injected)")]

    monkeypatch.setattr(Reader, "read_after", replies)
    await _flush_cut_while_sending(monkeypatch, redis, settler, reader, owned)
    kept = [c[2][3] for c in settler.take_deferred(owned)]
    assert sorted(kept) == sorted([m.msg_id.encode(), n.msg_id.encode()])


async def _beats_on_after(
    redis_url: str, redis: Redis, topic: str, disturb: Callable[[Consumer], Awaitable[Any]]
) -> Consumer:
    """Run a consumer until it handled a message, ``disturb`` it, then see it beat on and
    handle the next message with its partition still in hand."""
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0})
        handled: list[int] = []

        async def handle(m: Message) -> None:
            handled.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        async with Running(consumer, handle):
            await eventually(lambda: handled == [0])
            members = TopicKeys(topic).members(consumer.group)
            since = await redis.zscore(members, consumer.name)
            assert since is not None
            await disturb(consumer)
            # The member's score is the time of its last beat: three beats after it.
            await eventually(
                lambda: _beaten_since(redis, members, consumer.name, since + 600),
                message="heartbeats after the disturbance",
            )
            await producer.enqueue({"n": 1})
            await eventually(lambda: handled == [0, 1])
            assert consumer.running and consumer.assigned_partitions == [0]
    return consumer


async def _beaten_since(redis: Redis, members: str, name: str, since: float) -> bool:
    try:
        score = await redis.zscore(members, name)
    except ResponseError:  # a key of another type, until the member writes it anew
        return False
    return score is not None and score >= since


async def test_a_priority_count_another_client_wrote_that_is_no_number_is_read_as_one(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The heartbeat script passes the stored count on as it is, for the member to read; it
    # turned a count that is no number into a nil, which cut its reply short and ended the
    # heartbeats.
    async def spoil(consumer: Consumer) -> None:
        await redis.hset(TopicKeys(topic).meta, "priorities", "many")

    await _beats_on_after(redis_url, redis, topic, spoil)
    assert "heartbeat failed" not in caplog.text


@pytest.mark.parametrize("stored", ["abc", "-1", "2.0"])  # more spellings: the test below
async def test_a_partition_count_another_client_spoilt_is_written_back(
    redis_url: str, redis: Redis, topic: str, stored: str
) -> None:
    # Read as lost metadata: the member writes its own count back. Before, "abc" failed
    # every heartbeat in the script, "-1" stopped the member as replaced by another
    # instance, and "2.0" (a count the script read, the member not) left it no partition.
    meta = TopicKeys(topic).meta

    async def spoil(consumer: Consumer) -> None:
        await redis.hset(meta, "partitions", stored)
        await eventually(lambda: _stored_partitions(redis, meta, b"1"), message="written back")

    await _beats_on_after(redis_url, redis, topic, spoil)


@pytest.mark.parametrize(
    ("stored", "partitions", "levels"),
    [
        (b"3", 3, 3),
        (3, 3, 3),
        (b"0", 0, 1),
        (None, 0, 1),
        (b"100", 100, MAX_PRIORITIES),
        (b"65536", 65_536, MAX_PRIORITIES),
        (b"65537", 0, MAX_PRIORITIES),
        (b"1e12", 0, 1),
        (b"70000", 0, MAX_PRIORITIES),
        (b"-1", 0, 1),
        (-1, 0, 1),
        (b"3.0", 0, 1),
        (b" 3", 0, 1),
        (b"+3", 0, 1),
        (b"3_0", 0, 1),
        (b"0x3", 0, 1),
        ("\u0663", 0, 1),
        (b"1" * 5000, 0, MAX_PRIORITIES),
        (b"0" * 5000 + b"7", 0, 1),
        (b"03", 0, 1),
        (b"00", 0, 1),
        (b"\xff", 0, 1),
        (True, 0, 1),
    ],
)
def test_stored_counts_are_digits_only_as_the_scripts_read_them(
    stored: object, partitions: int, levels: int
) -> None:
    # ensure_partitions.lua writes over whatever these read as absent (0, or 1 level).
    assert (partition_count(stored), priority_levels(stored)) == (partitions, levels)


async def test_the_script_reads_stored_counts_as_members_do(redis: Redis, topic: str) -> None:
    meta = TopicKeys(topic).meta
    odd = ("3.0", " 3", "+3", "3_0", "0x3", "03", "00", "9" * 5000)
    for stored in ("3", "0", "100", "65537", "1e12", "-1", *odd):
        await redis.hset(meta, mapping={"partitions": stored, "priorities": stored})
        count, levels = await ENSURE_PARTITIONS(redis, [meta], [1, 0, 1])
        assert (count, levels) == (
            max(partition_count(stored.encode()), 1),
            priority_levels(stored.encode()),
        ), stored


async def _stored_partitions(redis: Redis, meta: str, want: bytes) -> bool:
    return bool(await redis.hget(meta, "partitions") == want)


async def _replace(redis: Redis, key: str, command: str, *args: Any) -> None:
    """Delete ``key`` and write it anew with ``command`` in one step (MULTI/EXEC), so that
    no heartbeat can write it in between."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        getattr(pipe, command)(key, *args)
        await pipe.execute()


@pytest.mark.parametrize(
    "spoilt",
    [
        "assignment",
        "member",
        "lease",
        "members version",
        "assignment version",
        "version 1.5",
        "topic meta",
        "members version of another type",
        "assignment of another type",
        "members of another type",
        "tokens of another type",
    ],
)
async def test_a_group_record_another_client_spoilt_stops_nothing(
    redis_url: str, redis: Redis, topic: str, spoilt: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An assignment field that names no partition, or a member name that is no UTF-8, is
    # left out of the member's view; a lease key of another type is taken over, and a
    # version that is no integer is written over. Before, every heartbeat failed on each,
    # and the member stopped reading once its leases' local deadline passed (a version of
    # 1.5 was never written over: the script read 1.5, the member 1).
    keys = TopicKeys(topic)

    async def spoil(consumer: Consumer) -> None:
        group = consumer.group
        if spoilt == "assignment":
            await redis.hset(keys.assignment(group), "x", "y")
        elif spoilt == "member":
            score = await redis.zscore(keys.members(group), consumer.name)
            await redis.zadd(keys.members(group), {b"\xff\xfe": score or 0})
        elif spoilt == "lease":
            await _replace(redis, keys.lease(0, group), "hset", "x", "y")
        elif spoilt == "topic meta":
            await _replace(redis, keys.meta, "set", "another client's")
        elif spoilt.endswith("of another type"):
            key = {
                "members version": keys.members_version(group),
                "assignment": keys.assignment(group),
                "members": keys.members(group),
                "tokens": keys.tokens(group),
            }[spoilt.removesuffix(" of another type")]
            await _replace(redis, key, "rpush", "another client's")
            if key == keys.tokens(group):
                await redis.zadd(keys.members(group), {"gone": 1})  # expires: HDEL of its token
            return  # the member's view no longer matches what the script reads: it looks again
        elif spoilt == "members version":
            await redis.set(keys.members_version(group), "abc")
            await redis.zadd(keys.members(group), {"gone": 1})  # expires: the version goes up
            return
        else:
            await redis.hset(keys.assignment(group), "_v", "abc" if spoilt[0] == "a" else "1.5")
        await redis.incr(keys.members_version(group))  # members look again

    await _beats_on_after(redis_url, redis, topic, spoil)
    assert "heartbeat failed" not in caplog.text


async def test_an_assignment_is_written_over_in_place(redis: Redis, topic: str) -> None:
    # It was deleted, then written field by field: on a cluster whose slot moved away in
    # between, the script failed half way and left no assignment at all.
    key = TopicKeys(topic).assignment("g")
    await redis.hset(key, mapping={"_v": 3, "0": "a", "1": "a", "5": "gone"})
    assert await COMMIT_ASSIGNMENT(redis, [key], [2, "0", "b"]) == 0  # the version moved on
    assert await COMMIT_ASSIGNMENT(redis, [key], [3, "0", "b", "1", "a"]) == 1
    assert await redis.hgetall(key) == {b"_v": b"4", b"0": b"b", b"1": b"a"}
    await redis.delete(key)
    await redis.rpush(key, "another client's")
    assert await COMMIT_ASSIGNMENT(redis, [key], [0, "0", "c"]) == 1
    assert await redis.hgetall(key) == {b"_v": b"1", b"0": b"c"}


async def test_a_member_leaves_past_group_keys_of_another_type(redis: Redis, topic: str) -> None:
    # A tokens or members key another client made of another type no longer stops a member
    # from leaving: it is deleted, the member removed and the members version raised. Before,
    # leaving failed with WRONGTYPE and the member stayed until its heartbeats expired.
    keys = TopicKeys(topic)
    members, tokens, version = keys.members("g"), keys.tokens("g"), keys.members_version("g")
    await redis.rpush(tokens, "another client's")
    await redis.zadd(members, {"m": 1, "other": 1})
    assert await LEAVE(redis, [members, tokens, version], ["m", "tok"]) == 1
    assert await redis.zrange(members, 0, -1) == [b"other"]
    assert (await redis.type(tokens), await redis.get(version)) == (b"none", b"1")
    await redis.hset(tokens, "m", "tok")
    await redis.delete(members)
    await redis.rpush(members, "another client's")
    assert await LEAVE(redis, [members, tokens, version], ["m", "tok"]) == 1
    assert (await redis.type(members), await redis.hgetall(tokens)) == (b"none", {})


async def test_a_lease_key_of_another_type_fences_as_a_lease_not_ours(
    redis: Redis, topic: str
) -> None:
    # Scripts fenced by a lease answer "not ours" (-1) for a key another client made of
    # another type. Before, they failed with WRONGTYPE, and the consumer stopped.
    keys = TopicKeys(topic)
    stream, lease = keys.stream(0), keys.lease(0, "g")
    await redis.hset(lease, "x", "y")
    assert await ACK(redis, [stream, lease], ["g", "tok", "0", "1-0"]) == -1
    assert (
        await JOBS_COMPLETE(redis, [stream, lease, keys.jobs(0)], ["g", "tok", "c", "w", 1]) == -1
    )
    assert await RELEASE(redis, [lease], ["tok"]) == 0
    assert await redis.hget(lease, "x") == b"y"


@pytest.mark.parametrize("spoilt", ["member name", "version"])
async def test_group_records_another_client_spoilt_cost_steady_beats_nothing(
    redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch, spoilt: str
) -> None:
    # A member skipped for its name (another client's) is still counted in the member set,
    # and an assignment version of 1.5 reads as none, alike in the script and the member:
    # steady beats then send no lists. Before, every beat fetched the whole view.
    keys = TopicKeys(topic)
    await redis.hset(keys.meta, "partitions", 4)
    if spoilt == "version":
        await redis.hset(keys.assignment("g"), mapping={"_v": "1.5", "0": "m", "1": "m"})
        await redis.hset(keys.assignment("g"), mapping={"2": "m", "3": "m"})
    else:
        await redis.zadd(keys.members("g"), {b"\xff\xfe": time.time() * 1000 + 60_000})
    full: list[bool] = []

    async def heartbeat(*args: Any) -> Any:
        reply = await HEARTBEAT(*args)
        full.append(bool(reply[2]))
        return reply

    monkeypatch.setattr(_membership, "HEARTBEAT", heartbeat)
    member = _membership.Membership(redis, keys, "g", "m", "tok", 10.0)
    views = [await member.beat() for _ in range(3)]
    assert [v.members for v in views] == [("m",)] * 3
    assert full == [True, False, False]


async def test_an_unexpected_error_in_a_heartbeat_does_not_end_the_heartbeats(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before, anything but a failed Redis call (a reply other clients' data spoilt, say)
    # ended the heartbeat task for good: the member went on reading while its leases lapsed.
    async def break_once(consumer: Consumer) -> None:
        report = consumer._report_partitions

        async def report_once_broken() -> None:
            consumer._report_partitions = report  # type: ignore[method-assign]
            raise ValueError("a reply no member can read")

        consumer._report_partitions = report_once_broken  # type: ignore[method-assign]

    await _beats_on_after(redis_url, redis, topic, break_once)
    assert "heartbeat failed: ValueError('a reply no member can read')" in caplog.text


async def test_a_priority_count_another_client_wrote_out_of_range_is_capped(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Another client writes a priority count no topic can have: the consumer (and the
    # monitor) read at most MAX_PRIORITIES levels and go on; they built a stream name (and
    # the consumer a group) per level.
    async def spoil(consumer: Consumer) -> None:
        await redis.hset(TopicKeys(topic).meta, "priorities", 1_000_000)
        await eventually(lambda: consumer._priorities == MAX_PRIORITIES)

    await _beats_on_after(redis_url, redis, topic, spoil)
    async with Monitor(redis_url=redis_url) as monitor:  # which reads the count too
        view = await monitor.topic(topic)
    assert view is not None and view["priorities"] == MAX_PRIORITIES


@pytest.mark.single_node
@pytest.mark.parametrize("batch", [False, True])
async def test_no_handler_starts_for_a_partition_past_its_lease(
    redis_url: str, topic: str, batch: bool
) -> None:
    # A read brings batch_size entries per partition; one chunk's handler blocks the loop
    # past the lease's TTL. ``process`` checked the lease's local deadline before each
    # message; ``process_batch`` started the next chunk's handler anyway, for a partition
    # another member could own by then: both handled its messages at once.
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(20)])
    keys = TopicKeys(topic)
    unleased: list[int] = []
    stalled: list[bool] = []
    # The lease is read as the handler starts, with a blocking client: an awaited read of
    # another partition's handler could go out only after the stall, when that lease had
    # lapsed since its handler started.
    at_start = SyncRedis.from_url(redis_url)

    async def started(ms: list[Message]) -> None:
        for p in {m.partition for m in ms}:
            if at_start.get(keys.lease(p, "default")) != consumer.token.encode():
                unleased.extend(m.payload["n"] for m in ms if m.partition == p)
        if not stalled:
            stalled.append(True)
            time.sleep(1.4)  # blocks the loop past the lease's TTL (1 s)

    async def handle(m: Message) -> None:
        await started([m])

    consumer = Consumer(
        topic, redis_url=redis_url, batch_size=10, heartbeat_interval=0.25, heartbeat_ttl=1.0,
        poll_interval=0.1,
    )  # fmt: skip
    try:
        async with Running(consumer, started if batch else handle, batch=batch):
            await eventually(lambda: consumer.stats.handled >= 19, timeout=15, message="handled")
    finally:
        at_start.close()
    assert unleased == []


async def test_jobs_read_before_the_lease_was_lost_are_not_marked_active(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease goes to another member while a read is under way, and that member
    # dead-letters the job. Before, the first member's mark wrote "active" over "dead" and
    # ran the handler; its completion was then refused, and the record stayed "active".
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url) as producer:
        job = await producer.submit({"n": 1})
    started = Settler.started
    ran: list[Any] = []

    async def taken_over(self: Settler, client: Any, messages: list[Any]) -> Any:
        await redis.set(keys.lease(0, "default"), "another-member", px=30_000)
        await redis.hset(keys.job(0, job.id), "status", "dead")
        return await started(self, client, messages)

    monkeypatch.setattr(Settler, "started", taken_over)
    consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.25, poll_interval=0.1)
    async with Running(consumer, ran.append):
        await eventually(lambda: consumer.stats.fenced == 1, timeout=10, message="fenced")
    assert ran == []
    assert await redis.hget(keys.job(0, job.id), "status") == b"dead"


async def test_a_hold_dropped_while_its_group_is_created_cuts_no_heartbeat_short(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A refused settlement (a reply for the partition's earlier hold) may drop a partition
    # while the heartbeat that took it back waits on XGROUP CREATE. That heartbeat used to
    # end on a KeyError, skipping its stray sweep and the read's interrupt.
    create_groups = Consumer._create_groups
    dropped: list[int] = []

    async def dropping_one(self: Consumer, parts: list[OwnedPartition]) -> None:
        await create_groups(self, parts)
        if not dropped:
            dropped.append(parts[0].number)
            self._fenced(parts[0], 0)

    monkeypatch.setattr(Consumer, "_create_groups", dropping_one)
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        handled: list[int] = []

        async def handle(m: Message) -> None:
            handled.append(m.payload["n"])

        async with Running(consumer, handle):
            await eventually(lambda: len(consumer.assigned_partitions) == 2, timeout=10)
            for n in range(10):
                await producer.enqueue({"n": n}, partition_key="n")
            await eventually(lambda: sorted(handled) == list(range(10)), timeout=10)
    assert dropped
    assert "heartbeat failed" not in caplog.text


async def test_a_refusal_for_an_earlier_hold_leaves_the_one_taken_back(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A settlement sent for the hold a partition had before it was lost and taken back is
    # refused (-1); it used to drop the hold the partition has now, found by its lease key.
    async with Producer(topic, redis_url=redis_url, init_partitions=1):
        pass
    consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=5.0, poll_interval=0.1)

    async def handle(m: Message) -> None:
        return None

    async with Running(consumer, handle):
        await eventually(lambda: consumer.assigned_partitions, timeout=10)
        earlier = consumer._owned[0]
        now = consumer._reader.partition(0, 1, earlier.valid_until)
        consumer._owned[0] = now  # taken back since
        call = (ACK, [earlier.streams[0], earlier.lease], [b"", b"", b"", b"1-0"])
        await consumer._settler.record(
            redis, [call], [-1], consumer._owned, consumer._fenced, holds={earlier.lease: earlier}
        )
        assert consumer.stats.fenced == 1
        assert consumer._owned.get(0) is now


@asynccontextmanager
async def _limited_to(
    redis: Redis, redis_url: str, keys: list[str]
) -> AsyncIterator[tuple[AnyRedis, str]]:
    """A client of a user with a password who may touch ``keys`` only (on every node)."""
    user, password = f"lease-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    nodes: dict[str, Any] = {"target_nodes": "all"} if is_cluster(redis) else {}
    rules = ["on", ">" + password, "resetkeys", *("~" + k for k in keys), "&*", "+@all"]
    await redis.execute_command("ACL", "SETUSER", user, *rules, **nodes)
    scheme, _, rest = redis_url.partition("://")
    client = create_client(f"{scheme}://{user}:{password}@{rest}")
    try:
        yield client, password
    finally:
        await client.aclose()
        await redis.execute_command("ACL", "DELUSER", user, **nodes)


async def test_a_lease_call_that_failed_leaves_the_other_partitions_states(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # One partition's lease call answers an error (NOPERM here: the member's user may not
    # touch that key; on a cluster, a node down does the same); the others' leases were
    # taken. Before, leases() raised, and the heartbeat dropped the taken ones with it:
    # their local deadlines did not move, so they were read no more.
    keys = TopicKeys(topic)
    async with _limited_to(redis, redis_url, [keys.lease(0, "g"), keys.lease(2, "g")]) as (
        client,
        password,
    ):
        member = _membership.Membership(client, keys, "g", "m", "tok", 30.0)
        assert await member.leases([0, 1, 2]) == {0: 2, 2: 2}
        with pytest.raises(NoPermissionError) as failed:
            member.check_leases()
        assert password not in str(failed.value)
        member.check_leases()  # raised once
        assert await member.leases([0, 2], held=[0, 2]) == {0: 1, 2: 1}
        member.check_leases()
    assert [await redis.get(keys.lease(p, "g")) for p in range(3)] == [b"tok", None, b"tok"]


async def test_a_release_that_failed_is_raised_after_the_others_are_released(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # A release answered with an error is raised, once the other partitions' releases are
    # done; a member leaving still leaves. Before, the error was ignored: the consumer took
    # the lease for released and said so, while it kept its partition from the new owner.
    keys = TopicKeys(topic)
    owner = _membership.Membership(redis, keys, "g", "m", "tok", 30.0)
    await owner.beat()
    assert await owner.leases([0, 1, 2]) == {0: 2, 1: 2, 2: 2}
    group = [keys.members("g"), keys.tokens("g"), keys.members_version("g")]
    allowed = [keys.lease(0, "g"), keys.lease(2, "g"), *group]
    async with _limited_to(redis, redis_url, allowed) as (client, password):
        member = _membership.Membership(client, keys, "g", "m", "tok", 30.0)
        with pytest.raises(NoPermissionError) as failed:
            await member.release([0, 1, 2])
        assert password not in str(failed.value)
        assert [await redis.get(keys.lease(p, "g")) for p in range(3)] == [None, b"tok", None]
        with pytest.raises(NoPermissionError):
            await member.leave([1])
        assert await redis.zscore(keys.members("g"), "m") is None
    assert await redis.get(keys.lease(1, "g")) == b"tok"
