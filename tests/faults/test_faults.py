"""Fault tests: real worker processes, real signals, a real Redis (restarted too).

Every test records each handler call (tests/faults/recorder.py) and checks
with tests/faults/checker.py: nothing lost, duplicates only where allowed,
per-partition order kept, no partition handled by two processes at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import DeadLetters, Producer
from redisaq_core.connection import create_client
from redisaq_core.embedded import EmbeddedRedis
from redisaq_core.keys import TopicKeys
from tests.faults.checker import Report, check, load
from tests.faults.conftest import Workers
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.alone]


def _done(workers: Workers) -> set[int]:
    return {e.n for e in load(workers.record_file) if e.kind == "end"}


def _pids(workers: Workers) -> set[int]:
    return {e.pid for e in load(workers.record_file)}


async def _produce(url: str, topic: str, payloads: list[dict[str, Any]], partitions: int) -> None:
    async with Producer(topic, redis_url=url, init_partitions=partitions) as producer:
        for i in range(0, len(payloads), 500):
            await producer.batch_enqueue(payloads[i : i + 500], partition_key="k")


async def _pending(url: str, topic: str, partitions: int, group: str = "default") -> int:
    client = create_client(url)
    try:
        total = 0
        for p in range(partitions):
            info: Any = await client.xpending(TopicKeys(topic).stream(p), group)
            total += int(info["pending"])
        return total
    finally:
        await client.aclose()


def _assert_clean(report: Report) -> None:
    assert not report.lost, f"lost: {sorted(report.lost)[:20]}"
    assert not report.order_violations, report.order_violations
    assert not report.overlaps, report.overlaps[:5]


async def test_sigkill_one_of_three_mid_run(redis_url: str, topic: str, workers: Workers) -> None:
    n, batch = 20_000, 50
    await _produce(redis_url, topic, [{"n": i, "k": i % 97} for i in range(n)], partitions=8)
    procs = [
        workers.start(redis_url, topic, "--batch-size", str(batch), delay=0.0005) for _ in range(3)
    ]
    victim = procs[1]
    await eventually(
        lambda: {p.pid for p in procs} <= {e.pid for e in load(workers.record_file)},
        timeout=30, message="all three handling",
    )  # fmt: skip
    await eventually(lambda: len(_done(workers)) >= n // 3, timeout=60, message="a third handled")
    victim.kill()
    killed_at = time.time()
    victim.wait(timeout=10)
    await eventually(lambda: len(_done(workers)) == n, timeout=90, message="all handled")
    events = load(workers.record_file)
    report = check(events, set(range(n)))
    _assert_clean(report)
    # What the victim read and did not acknowledge is delivered once more: count 2, exactly.
    theirs = {(e.partition, e.msg_id) for e in events if e.kind == "start" and e.pid == victim.pid}
    again = [
        e for e in events
        if e.kind == "start" and e.pid != victim.pid and (e.partition, e.msg_id) in theirs
    ]  # fmt: skip
    assert {e.deliveries for e in again} <= {2}, sorted({e.deliveries for e in again})
    # Takeover: each partition the victim was reading when killed is read again by a survivor
    # within heartbeat_ttl (1.2 s) plus two heartbeats (0.3 s each) and a second of slack.
    held = {e.partition for e in events if e.pid == victim.pid and e.time > killed_at - 0.5}
    assert held
    for p in held:
        resumed = min(
            (e.time for e in events if e.partition == p and e.time > killed_at), default=0
        )
        assert resumed == 0 or resumed - killed_at < 1.2 + 2 * 0.3 + 1.0, (p, resumed - killed_at)
    # Only the killed member's unacknowledged batch can come again: at most one
    # read of batch_size per partition it owned (8 partitions over 3 members: 3).
    assert report.duplicates <= batch * 3
    for p in procs:
        if p is not victim:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(timeout=30) in (0, -signal.SIGKILL)
    assert await _pending(redis_url, topic, 8) == 0


async def test_join_and_leave_during_a_run(redis_url: str, topic: str, workers: Workers) -> None:
    n = 3000
    await _produce(redis_url, topic, [], partitions=6)
    first = [workers.start(redis_url, topic, delay=0.001) for _ in range(2)]
    produced, joined = 0, asyncio.Event()

    async def produce() -> None:
        # At least n, and on until the joiner took part (a loaded machine starts it slowly).
        nonlocal produced
        async with Producer(topic, redis_url=redis_url) as producer:
            while produced < n or not joined.is_set():
                batch = [{"n": j, "k": j % 31} for j in range(produced, produced + 50)]
                await producer.batch_enqueue(batch, partition_key="k")
                produced += 50
                await asyncio.sleep(0.02)

    producing = asyncio.create_task(produce())
    await eventually(lambda: len(_done(workers)) >= n // 4, timeout=30)
    joiner = workers.start(redis_url, topic, delay=0.001)
    await eventually(lambda: joiner.pid in _pids(workers), timeout=60, message="joiner works")
    joined.set()
    await eventually(lambda: len(_done(workers)) >= n // 2, timeout=30)
    first[0].send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first[0].wait, 30) == 0
    await producing
    expected = set(range(produced))
    await eventually(lambda: _done(workers) == expected, timeout=60)
    report = check(load(workers.record_file), expected)
    _assert_clean(report)
    # A graceful leave hands over acknowledged work only: no duplicates at all.
    assert report.duplicates == 0
    assert joiner.pid in _pids(workers)


async def test_always_failing_ids_end_in_dead_letters(
    redis_url: str, topic: str, workers: Workers
) -> None:
    n, failing = 200, {13, 77, 150}
    payloads = [{"n": i, "k": i % 5, "fail": i in failing} for i in range(n)]
    await _produce(redis_url, topic, payloads, partitions=4)
    workers.start(redis_url, topic, "--max-deliveries", "3")
    expected = set(range(n)) - failing
    await eventually(lambda: _done(workers) == expected, timeout=30)
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        await eventually(dl.count, timeout=10)
        await eventually(lambda: _count_is(dl, 3), timeout=10)
        records = await dl.list()
    assert sorted(r.payload["n"] for r in records) == sorted(failing)
    for r in records:
        assert r.deliveries == 3 and r.error_type == "RuntimeError"
        assert r.topic == topic and r.group == "default" and "refusing message" in r.error
    starts = [e for e in load(workers.record_file) if e.kind == "start" and e.n in failing]
    assert sorted(e.deliveries for e in starts) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    report = check(load(workers.record_file), expected)
    _assert_clean(report)
    assert report.duplicates == 0
    assert await _pending(redis_url, topic, 4) == 0


async def test_a_message_that_kills_its_process_reaches_the_dead_letters(
    redis_url: str, topic: str, workers: Workers
) -> None:
    """Each delivery kills the worker; after max_deliveries the next one dead-letters it."""
    payloads = [{"n": i, "k": 0, "crash": i == 2} for i in range(5)]
    await _produce(redis_url, topic, payloads, partitions=1)
    crashes = 0
    for _ in range(6):
        proc = workers.start(redis_url, topic, "--max-deliveries", "2")
        await eventually(lambda p=proc: p.poll() is not None or _done(workers) >= {0, 1, 3, 4},
                         timeout=20)  # fmt: skip
        if proc.poll() is None:
            break
        assert proc.returncode == 9
        crashes += 1
    assert crashes == 2  # max_deliveries: the third delivery is not given to the handler
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        await eventually(lambda: _count_is(dl, 1), timeout=10)
        (record,) = await dl.list()
    assert record.payload["n"] == 2 and record.deliveries == 3
    assert "2 handler runs" in record.error
    starts = [e.deliveries for e in load(workers.record_file) if e.kind == "start" and e.n == 2]
    assert starts == [1, 2]
    assert await _pending(redis_url, topic, 1) == 0


async def test_messages_behind_ones_that_kill_their_process_are_handled_not_dead_lettered(
    redis_url: str, topic: str, workers: Workers
) -> None:
    """Every restart's claim raises the delivery count of the whole backlog; only runs count.

    A first delivery counts as a run (whether it reached the handler before the process
    died can't be known without a write per message): 1 is the first of the batch and
    runs twice; 2 and 3 waited behind it, so their first delivery never ran and they run
    once each. 4 and 5 are claimed six times and handled.
    """
    payloads = [{"n": i, "k": 0, "crash": i in (1, 2, 3)} for i in range(6)]
    await _produce(redis_url, topic, payloads, partitions=1)
    crashes = 0
    for _ in range(10):
        proc = workers.start(redis_url, topic, "--max-deliveries", "2")
        await eventually(lambda p=proc: p.poll() is not None or _done(workers) >= {0, 4, 5},
                         timeout=20)  # fmt: skip
        if proc.poll() is None:
            break
        assert proc.returncode == 9
        crashes += 1
    assert crashes == 4
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        await eventually(lambda: _count_is(dl, 3), timeout=10)
        assert sorted(r.payload["n"] for r in await dl.list()) == [1, 2, 3]
    starts = [e.deliveries for e in load(workers.record_file) if e.kind == "start" and e.n == 4]
    assert starts and starts[-1] > 2  # claimed more often than max_deliveries, handled once
    assert await _pending(redis_url, topic, 1) == 0


async def test_members_whose_clocks_are_an_hour_off_keep_their_partitions(
    redis_url: str, topic: str, workers: Workers
) -> None:
    """Liveness and leases are judged on the server's clock, never on a member's."""
    n = 4000
    await _produce(redis_url, topic, [{"n": i, "k": i % 97} for i in range(n)], partitions=4)
    procs = [  # about 4 s of work: several heartbeat TTLs
        workers.start(redis_url, topic, "--batch-size", "20", delay=0.004, clock_offset=offset)
        for offset in (3600, -3600)
    ]
    await eventually(
        lambda: {p.pid for p in procs} <= {e.pid for e in load(workers.record_file)},
        timeout=30, message="both handling",
    )  # fmt: skip
    client = create_client(redis_url)
    keys = TopicKeys(topic)
    try:
        version = await client.hget(keys.assignment("default"), "_v")
        await eventually(lambda: len(_done(workers)) == n, timeout=60, message="all handled")
        assert await client.hget(keys.assignment("default"), "_v") == version  # no rebalance
        assert await client.zcard(keys.members("default")) == 2
    finally:
        await client.aclose()
    report = check(load(workers.record_file), set(range(n)))
    _assert_clean(report)
    assert report.duplicates == 0
    assert all(p.poll() is None for p in procs)


async def _count_is(dl: DeadLetters, n: int) -> bool:
    return await dl.count() == n


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_garbage_entries_go_to_dead_letters(
    redis_url: str, redis: Redis, topic: str, workers: Workers
) -> None:
    await _produce(redis_url, topic, [{"n": i, "k": 0} for i in range(10)], partitions=1)
    stream = TopicKeys(topic).stream(0)
    await redis.xadd(stream, {b"p": b"\x00garbage"})
    await redis.xadd(stream, {b"unknown": b"field"})
    await _produce(redis_url, topic, [{"n": i, "k": 0} for i in range(10, 20)], partitions=1)
    workers.start(redis_url, topic)
    await eventually(lambda: _done(workers) == set(range(20)), timeout=30)
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        await eventually(lambda: _count_is(dl, 2), timeout=10)
        records = await dl.list()
    assert {r.error_type for r in records} == {"SerializationError"}
    assert records[0].fields == {b"p": b"\x00garbage"}
    _assert_clean(check(load(workers.record_file), set(range(20))))


@pytest.mark.single_node  # its own server
@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-empty", "same-data"])
async def test_redis_restart_mid_run(
    tmp_path: Path, topic: str, workers: Workers, persistent: bool
) -> None:
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    server = EmbeddedRedis(dir=str(tmp_path), extra_args=extra)
    await asyncio.to_thread(server.start)
    try:
        await _produce(server.url, topic, [{"n": i, "k": i} for i in range(500)], partitions=4)
        for _ in range(2):
            workers.start(server.url, topic, delay=0.002)
        client = Redis.from_url(server.url)
        members = TopicKeys(topic).members("default")
        await eventually(lambda: _equals(client.zcard(members), 2), timeout=15)
        await client.aclose()
        await eventually(lambda: len(_done(workers)) >= 100, timeout=30)
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.restart)
        # New work after the restart is handled by the same processes, unrestarted.
        after = [{"n": i, "k": i} for i in range(1000, 1200)]
        await _produce(server.url, topic, after, partitions=4)
        want = {p["n"] for p in after}
        if persistent:
            want |= set(range(500))  # the old backlog survived: it is all handled too
        await eventually(lambda: want <= _done(workers), timeout=60, message="work after restart")
        assert all(p.poll() is None for p in workers.procs)
    finally:
        workers.stop_all()
        await asyncio.to_thread(server.stop)


@pytest.mark.single_node  # its own server
async def test_sigterm_with_redis_frozen_exits_cleanly_within_the_timeout(
    tmp_path: Path, topic: str, workers: Workers
) -> None:
    """Redis stopped (SIGSTOP) under a worker: SIGTERM ends it with code 0, no traceback."""
    server = EmbeddedRedis()
    await asyncio.to_thread(server.start)
    try:
        await _produce(server.url, topic, [{"n": i, "k": i} for i in range(20)], partitions=2)
        proc = workers.start(server.url, topic, "--shutdown-timeout", "1", name="frozen")
        await eventually(lambda: len(_done(workers)) == 20, timeout=15)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 15)
            took = time.monotonic() - began
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # shutdown_timeout (1 s), then at most heartbeat_ttl (1.2 s) per clean-up step.
        assert code == 0 and took < 1 + 3 * 1.2 + 1, (code, took)
        log = workers.record_file.with_suffix(".0.log").read_text()
        assert "Traceback" not in log and "CancelledError" not in log, log[-2000:]
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.single_node  # its own server
async def test_with_appendfsync_always_every_acknowledged_write_survives_a_kill(
    tmp_path: Path, topic: str
) -> None:
    """kill -9 of Redis mid-stream: every enqueue that returned an id is there after a restart."""
    server = EmbeddedRedis(
        dir=str(tmp_path), extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    )
    await asyncio.to_thread(server.start)
    acknowledged: list[tuple[int, str]] = []
    try:
        async with Producer(topic, redis_url=server.url, init_partitions=2) as producer:

            async def produce() -> None:
                for i in range(100_000):
                    try:
                        entry_id = await producer.enqueue({"n": i, "k": i % 7}, partition_key="k")
                    except Exception:
                        return  # the server is gone: what returned an id is what counts
                    acknowledged.append((i, entry_id))

            writer = asyncio.create_task(produce())
            await eventually(lambda: len(acknowledged) >= 300, timeout=15)
            await asyncio.to_thread(server.kill)
            await asyncio.wait_for(writer, 10)
        await asyncio.to_thread(server.restart)
        client = Redis.from_url(server.url)
        try:
            found: set[str] = set()
            for p in range(2):
                entries = await client.xrange(TopicKeys(topic).stream(p))
                found |= {entry_id.decode() for entry_id, _ in entries}
        finally:
            await client.aclose()
        missing = [(i, e) for i, e in acknowledged if e not in found]
        assert len(acknowledged) >= 300 and missing == []
    finally:
        await asyncio.to_thread(server.stop)


async def test_sigterm_during_slow_handler(redis_url: str, topic: str, workers: Workers) -> None:
    await _produce(redis_url, topic, [], partitions=4)
    slow = workers.start(redis_url, topic, "--batch-size", "1", delay=1.0, name="slow")
    fast = workers.start(redis_url, topic, "--batch-size", "1", name="fast")
    client = create_client(redis_url)
    keys = TopicKeys(topic)
    try:
        await eventually(lambda: _owners(client, keys, "slow", "fast"), timeout=15)
        await _produce(redis_url, topic, [{"n": i, "k": i} for i in range(8)], partitions=4)
        records = workers.record_file
        await eventually(
            lambda: any(e.pid == slow.pid and e.kind == "start" for e in load(records)), timeout=10
        )
        slow.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(slow.wait, 15) == 0
        left = time.monotonic()
        # The in-flight handler finished and its message was acknowledged, not redelivered.
        ends = [e for e in load(records) if e.pid == slow.pid and e.kind == "end"]
        assert ends
        # The survivor owns everything within one heartbeat interval (plus a poll).
        await eventually(lambda: _all_leased(client, keys, 4), timeout=0.3 + 0.2 + 1.0)
        assert time.monotonic() - left < 1.5
        await eventually(lambda: _done(workers) == set(range(8)), timeout=20)
        report = check(load(records), set(range(8)))
        _assert_clean(report)
        assert report.duplicates == 0
        assert fast.poll() is None
    finally:
        await client.aclose()


async def _owners(client: Redis, keys: TopicKeys, *names: str) -> bool:
    """The assignment names exactly ``names``, and each partition's lease is taken."""
    assignment = await client.hgetall(keys.assignment("default"))
    owners = {v for k, v in assignment.items() if k != b"_v"}
    tokens = await client.hgetall(keys.tokens("default"))
    leases = [await client.get(keys.lease(int(k), "default")) for k in assignment if k != b"_v"]
    expected = {tokens.get(v) for k, v in assignment.items() if k != b"_v"}
    return owners == {n.encode() for n in names} and set(leases) == expected


async def _all_leased(client: Redis, keys: TopicKeys, partitions: int) -> bool:
    assignment = await client.hgetall(keys.assignment("default"))
    leased = await client.exists(*(keys.lease(p, "default") for p in range(partitions)))
    owners = {v for k, v in assignment.items() if k != b"_v"}
    return leased == partitions and owners == {b"fast"}


async def test_paused_consumer_loses_partitions_and_stays_fenced(
    redis_url: str, topic: str, workers: Workers
) -> None:
    await _produce(redis_url, topic, [], partitions=4)
    paused = workers.start(redis_url, topic, name="paused", delay=0.005)
    other = workers.start(redis_url, topic, name="other", delay=0.005)
    client = create_client(redis_url)
    keys = TopicKeys(topic)
    n = 2000

    async def produce() -> None:
        async with Producer(topic, redis_url=redis_url) as producer:
            for i in range(0, n, 20):
                batch = [{"n": j, "k": j} for j in range(i, i + 20)]
                await producer.batch_enqueue(batch, partition_key="k")
                await asyncio.sleep(0.01)

    try:
        await eventually(lambda: _owners(client, keys, "paused", "other"), timeout=15)
        producing = asyncio.create_task(produce())
        await eventually(lambda: any(e.pid == paused.pid for e in load(workers.record_file)))
        paused.send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        # Longer than heartbeat_ttl (1.2 s): the other member takes everything.
        await eventually(lambda: _only_owner(client, keys, "other"), timeout=10)
        await asyncio.sleep(0.5)  # keep it paused a while after the takeover
        paused.send_signal(signal.SIGCONT)
        resumed_at = time.time()
        await producing
        await eventually(lambda: _done(workers) == set(range(n)), timeout=60)
        events = load(workers.record_file)
        late_starts = [
            e for e in events if e.pid == paused.pid and e.kind == "start" and e.time > resumed_at
        ]
        # After resuming it starts no handler for partitions it lost... unless it got
        # some back by rejoining, which then shows up as a fresh assignment.
        moved_back = await client.hgetall(keys.assignment("default"))
        regained = {int(k) for k, v in moved_back.items() if v == b"paused" and k != b"_v"}
        assert all(e.partition in regained for e in late_starts), late_starts[:5]
        report = check(events, set(range(n)), late_redeliveries=True)
        assert not report.lost and not report.order_violations, report.order_violations
        # Redeliveries that came out of order: at most a batch per partition it lost
        # (README). Those left in order at a hand-over are checked with the rest.
        assert report.late_redeliveries <= 10 * 4
        # Duplicates are allowed only for what was in flight when it was paused.
        assert report.duplicates <= 10 * 4
        del stopped_at
    finally:
        await client.aclose()
        assert paused.poll() is None and other.poll() is None
        os.kill(paused.pid, signal.SIGCONT)


async def _only_owner(client: Redis, keys: TopicKeys, name: str) -> bool:
    assignment = await client.hgetall(keys.assignment("default"))
    owners = {v for k, v in assignment.items() if k != b"_v"}
    return owners == {name.encode()}


async def test_long_handler_is_not_taken_for_dead(
    redis_url: str, topic: str, workers: Workers
) -> None:
    await _produce(redis_url, topic, [], partitions=2)
    a = workers.start(redis_url, topic, "--batch-size", "1", delay=2.5, name="a")
    b = workers.start(redis_url, topic, "--batch-size", "1", delay=2.5, name="b")
    client = create_client(redis_url)
    keys = TopicKeys(topic)
    try:
        await eventually(lambda: _owners(client, keys, "a", "b"), timeout=15)
        # Two in each partition (keys 0, 1 and 4, 5), side by side: each handler runs 2.5 s,
        # more than twice heartbeat_ttl (1.2 s).
        payloads = [{"n": i, "k": k} for i, k in enumerate((0, 1, 4, 5))]
        await _produce(redis_url, topic, payloads, partitions=2)
        await eventually(lambda: _done(workers) == set(range(4)), timeout=30)
        report = check(load(workers.record_file), set(range(4)))
        _assert_clean(report)
        assert report.duplicates == 0
        starts = [e for e in load(workers.record_file) if e.kind == "start"]
        assert len(starts) == 4 and all(e.deliveries == 1 for e in starts)
        assert a.poll() is None and b.poll() is None
    finally:
        await client.aclose()
