"""Delayed messages and jobs: ``delay=`` / ``at=``, moved into the stream by the partition's owner.

Times are judged on the Redis server's clock: a moved entry's stream id is the
server's time of the move, compared with the server's time around the enqueue.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from redisaq_core import ConfigurationError, Consumer, Message, Monitor, Producer, _delayed
from redisaq_core._assignment import partition_for_key
from redisaq_core._scripts import MOVE_DUE
from redisaq_core.connection import is_cluster
from redisaq_core.keys import TopicKeys
from redisaq_core.results import JobStatus, ResultStore
from tests.faults.checker import check, load
from tests.faults.conftest import Workers
from tests.helpers import Running, eventually

# A read blocks up to 5 s and the safety-net check runs every 30 s: a message due sooner
# than that is moved on time only through the owner's timer and the producer's nudge.
SLOW_POLL = {"poll_interval": 5.0, "heartbeat_interval": 3.0}
LATE = 0.25
"""Lateness allowed in these tests (seconds); the benchmark measures the real figures."""


async def _server_ms(redis: Any) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def _server_sleep(redis: Any, ms: int) -> None:
    """Return once ``ms`` milliseconds passed on the server's clock."""
    start = await _server_ms(redis)

    async def passed() -> bool:
        return await _server_ms(redis) - start >= ms

    await eventually(passed, timeout=5, message=f"{ms} ms of server time")


def _entry_ms(msg_id: str) -> int:
    return int(msg_id.split("-")[0])


async def _scheduled(redis: Any, topic: str, partitions: int = 1, levels: int = 1) -> int:
    keys = TopicKeys(topic)
    return sum(
        [await redis.zcard(keys.delayed(p, lv)) for p in range(partitions) for lv in range(levels)]
    )


async def _length(redis: Any, topic: str, partitions: int = 1) -> int:
    keys = TopicKeys(topic)
    return sum([await redis.xlen(keys.stream(p)) for p in range(partitions)])


async def _idle(consumer: Consumer) -> None:
    """Wait until the consumer owns its partitions and sits in a blocking read."""
    await eventually(lambda: consumer.assigned_partitions, timeout=10, message="partitions")
    await asyncio.sleep(0.3)  # its first read of the (empty) streams has begun by now


@pytest.mark.alone  # measures lateness against LATE
async def test_a_delayed_message_is_delivered_after_its_due_time_and_not_before(
    redis_url: str, redis: Redis, topic: str
) -> None:
    got: list[Message] = []

    async def handler(m: Message) -> None:
        got.append(m)

    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await _idle(consumer)
            before = await _server_ms(redis)
            first = await producer.enqueue({"n": 1}, delay=0.6)
            at = datetime.now(timezone.utc) + timedelta(seconds=0.8)
            second = await producer.enqueue({"n": 2}, at=at)
            after = await _server_ms(redis)
            assert first.startswith("delayed:") and second.startswith("delayed:")
            assert await _scheduled(redis, topic, 2) == 2
            assert await _length(redis, topic, 2) == 0
            await eventually(lambda: len(got) == 2, timeout=5, message="both delivered")
    by_n = {m.payload["n"]: m for m in got}
    moved = _entry_ms(by_n[1].msg_id)
    assert before + 600 <= moved <= after + 600 + LATE * 1000, moved - before - 600
    at_ms = math.ceil(at.timestamp() * 1000)
    assert at_ms <= _entry_ms(by_n[2].msg_id) <= at_ms + LATE * 1000
    assert await _scheduled(redis, topic, 2) == 0


@pytest.mark.alone  # measures lateness against LATE
async def test_a_message_due_before_the_owners_blocking_read_ends_is_moved_on_time(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """The owner is blocked in a 5 s read when the message is scheduled; the nudge wakes it."""
    got: list[tuple[Message, float]] = []

    async def handler(m: Message) -> None:
        got.append((m, time.monotonic()))

    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await _idle(consumer)
            for delay in (0.3, 0.2):  # the second one becomes the earliest again
                sent = time.monotonic()
                await producer.enqueue({"delay": delay}, delay=delay)
                await eventually(lambda: got, timeout=5, message="delivered")
                assert got[0][1] - sent < delay + LATE
                got.clear()


async def test_a_message_already_due_goes_straight_to_the_stream(
    redis_url: str, redis: Redis, topic: str
) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        entry = await producer.enqueue({"n": 0}, delay=0)
        past = await producer.enqueue({"n": 1}, at=datetime(2020, 1, 1, tzinfo=timezone.utc))
        assert not entry.startswith("delayed:") and not past.startswith("delayed:")
        assert await _length(redis, topic) == 2
        assert await _scheduled(redis, topic) == 0


async def test_order_per_key_follows_due_time_and_ties_keep_enqueue_order(
    redis_url: str, redis: Redis, topic: str
) -> None:
    seen: list[str] = []

    async def handler(m: Message) -> None:
        seen.append(m.payload["name"])

    async with Producer(topic, redis_url=redis_url, init_partitions=4) as producer:
        at = datetime.now(timezone.utc) + timedelta(seconds=1.0)
        for name in ("tie-1", "tie-2", "tie-3"):
            await producer.enqueue({"k": "a", "name": name}, "k", at=at)
        await producer.enqueue({"k": "a", "name": "late"}, "k", delay=1.4)
        await producer.enqueue({"k": "a", "name": "early"}, "k", delay=0.5)
        await producer.enqueue({"k": "a", "name": "now"}, "k")
        await producer.batch_enqueue(
            [{"k": "a", "name": f"batch-{i}"} for i in range(3)], "k", delay=1.2
        )
        # Not handled before they are due: nobody has moved them yet.
        assert seen == []
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await eventually(lambda: len(seen) == 9, timeout=10, message="all delivered")
    assert seen == [
        "now", "early", "tie-1", "tie-2", "tie-3", "batch-0", "batch-1", "batch-2", "late",
    ]  # fmt: skip


@pytest.mark.parametrize("when", ["delay=0", "a past at="])
async def test_a_delayed_message_goes_behind_what_was_due_before_it(
    redis_url: str, redis: Redis, topic: str, when: str
) -> None:
    """A message already due lands behind due entries still waiting to be moved.

    One given a past ``at=`` used to go first, scored at that time.
    """
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"name": "waiting"}, delay=0.05)
        await _server_sleep(redis, 100)  # the first one is overdue, and nobody moved it
        past = datetime(2020, 1, 1, tzinfo=timezone.utc)
        due: dict[str, Any] = {"delay": 0} if when == "delay=0" else {"at": past}
        second = await producer.enqueue({"name": "due"}, **due)
        assert second.startswith("delayed:")  # not ahead of the overdue one
        seen: list[str] = []

        async def handler(m: Message) -> None:
            seen.append(m.payload["name"])

        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await eventually(lambda: len(seen) == 2, timeout=10, message="both delivered")
    assert seen == ["waiting", "due"]


async def test_priority_levels_and_groups_each_get_a_delayed_message_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    """Each level has its own delayed set; the owners of two groups race, one move wins."""
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}

    def recorder(group: str) -> Any:
        async def handler(m: Message) -> None:
            seen[group].append((m.payload["n"], m.priority))

        return handler

    async with Producer(topic, redis_url=redis_url, priorities=3) as producer:
        first = Consumer(topic, group_name="a", redis_url=redis_url, **SLOW_POLL)
        second = Consumer(topic, group_name="b", redis_url=redis_url, **SLOW_POLL)
        async with Running(first, recorder("a")), Running(second, recorder("b")):
            await _idle(first)
            await _idle(second)
            for n, level in enumerate((0, 2, 1, 2)):  # all four still waiting when counted
                await producer.enqueue({"n": n}, priority=level, delay=1.0)
            assert await _scheduled(redis, topic, levels=3) == 4
            await eventually(
                lambda: len(seen["a"]) == 4 and len(seen["b"]) == 4, timeout=5,
                message="each group got every message",
            )  # fmt: skip
            await asyncio.sleep(0.3)  # a second move would have been read by now
    for group in ("a", "b"):
        assert sorted(seen[group]) == [(0, 0), (1, 2), (2, 1), (3, 2)], group
    assert sum([await redis.xlen(TopicKeys(topic).stream(0, lv)) for lv in range(3)]) == 4


async def test_a_delayed_job_is_scheduled_then_queued_then_completed(
    redis_url: str, redis: Redis, topic: str
) -> None:
    release = asyncio.Event()

    async def handler(m: Message) -> Any:
        if m.payload.get("block"):
            await release.wait()
        return m.payload

    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await _idle(consumer)
            blocker = await producer.submit({"block": True})  # holds the partition busy
            await eventually(
                lambda: _status_is(blocker.status(), JobStatus.ACTIVE), timeout=5, message="busy"
            )
            # Due in 1 s: the record is read well before, even on a loaded machine.
            handle = await producer.submit({"n": 7}, delay=1.0)
            async with ResultStore(redis_url=redis_url) as store:
                record = await store.get(handle.id)
                assert record is not None and record.status == JobStatus.SCHEDULED
                assert record.msg_id is None
                assert record.scheduled_at is not None and record.due_at is not None
                assert record.due_at - record.scheduled_at == pytest.approx(1.0, abs=0.002)
                await eventually(
                    lambda: _status_is(handle.status(), JobStatus.QUEUED), timeout=5,
                    message="queued once due",
                )  # fmt: skip
                record = await store.get(handle.id)
                assert record is not None and record.msg_id is not None
                assert record.queued_at is not None and record.queued_at >= record.due_at
            release.set()
            assert await handle.result(timeout=10) == {"n": 7}
            assert await handle.status() == JobStatus.COMPLETED


async def _status_is(status: Any, wanted: JobStatus) -> bool:
    return bool(await status == wanted)


async def test_idempotency_keys_work_with_delay(redis_url: str, redis: Redis, topic: str) -> None:
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=4) as producer:
        first = await producer.enqueue({"n": 1}, delay=30, idempotency_key="order-1")
        again = await producer.enqueue({"n": 1}, delay=30, idempotency_key="order-1")
        assert again == first and first.startswith("delayed:")
        job = await producer.submit({"n": 2}, delay=30, idempotency_key="job-2")
        job_again = await producer.submit({"n": 2}, delay=30, idempotency_key="job-2")
        assert job_again.id == job.id
        ids = await producer.batch_enqueue([{"n": 3}, {"n": 4}], delay=30, idempotency_key="b")
        assert (
            await producer.batch_enqueue([{"n": 3}, {"n": 4}], delay=30, idempotency_key="b") == ids
        )
        assert await _scheduled(redis, topic, 4) == 4
        assert sum([await redis.zcard(keys.jobs(p)) for p in range(4)]) == 1
        # Once moved, a repeat still writes nothing.
        soon = await producer.enqueue({"n": 5}, delay=0.2, idempotency_key="soon")
        seen: list[Any] = []

        async def handler(m: Message) -> None:
            seen.append(m.payload["n"])

        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await eventually(lambda: seen == [5], timeout=5, message="moved and handled")
            assert await producer.enqueue({"n": 5}, delay=0.2, idempotency_key="soon") == soon
            await asyncio.sleep(0.5)  # nothing more comes: there is nothing more to come
        assert seen == [5]
        assert await _scheduled(redis, topic, 4) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": float("nan")}, "delay must be a finite number"),
        ({"delay": float("inf")}, "delay must be a finite number"),
        ({"delay": "5"}, "delay must be a finite number"),
        ({"delay": True}, "delay must be a finite number"),
        ({"delay": 10**400}, "delay must be a finite number of seconds, got a larger int"),
        ({"delay": 1, "at": datetime.now(timezone.utc)}, "give delay or at, not both"),
        ({"at": datetime(2030, 1, 1)}, "at must be timezone-aware"),
        ({"at": "2030-01-01T00:00:00Z"}, "at must be a timezone-aware datetime"),
    ],
)
async def test_bad_delay_or_at_raises_and_stores_nothing(
    redis_url: str, redis: Redis, topic: str, kwargs: dict[str, Any], message: str
) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        with pytest.raises(ConfigurationError, match=message):
            await producer.enqueue({"n": 1}, **kwargs)
        with pytest.raises(ConfigurationError, match=message):
            await producer.batch_enqueue([{"n": 1}, {"n": 2}], **kwargs)
        with pytest.raises(ConfigurationError, match=message):
            await producer.submit({"n": 1}, idempotency_key="k", **kwargs)
        keys = TopicKeys(topic)
        assert await _scheduled(redis, topic, 2) == 0
        assert await _length(redis, topic, 2) == 0
        for p in range(2):
            assert await redis.zcard(keys.jobs(p)) == 0
            assert not await redis.exists(keys.once(p, "k"), keys.delayed_sequence(p))


async def test_only_the_lease_holder_moves_entries(
    redis_url: str, redis: Redis, topic: str
) -> None:
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 1}, delay=0.01)
    await _server_sleep(redis, 50)
    lease = keys.lease(0, "g")
    await redis.set(lease, "owner-token")
    call_keys = [lease, keys.jobs(0), keys.dead_letters(0), keys.delayed(0), keys.stream(0)]
    args = ["someone-else", 1, 100, keys.job_channel, topic, "g", "c", 0]
    assert (await MOVE_DUE(redis, call_keys, args))[0] == -1
    assert await _scheduled(redis, topic) == 1 and await _length(redis, topic) == 0
    args[0] = "owner-token"
    moved, next_due, _now = await MOVE_DUE(redis, call_keys, args)
    assert (moved, next_due) == (1, -1)
    assert await _scheduled(redis, topic) == 0 and await _length(redis, topic) == 1
    # Moved once: a second call finds nothing.
    assert (await MOVE_DUE(redis, call_keys, args))[0] == 0


def _member_field(name: bytes, value: bytes) -> bytes:
    return b"%08x" % len(name) + name + b"%08x" % len(value) + value


_NOT_UTF8_JOB = b"0" * 16 + _member_field(b"p", b'{"n": 0}') + _member_field(b"j", b"\xff-job")


_TOO_MANY_FIELDS = b"0" * 16 + _member_field(b"p", b"1") * 4001
_DLQ_SPOILT = b"junk, the dead letters of another type"


@pytest.mark.parametrize(
    "member",
    [b"junk that is no entry", _NOT_UTF8_JOB, _TOO_MANY_FIELDS, _DLQ_SPOILT],
    ids=["no-entry", "job-id-no-utf8", "too-many-fields", "dead-letters-of-another-type"],
)
async def test_a_member_written_by_another_client_goes_to_the_dead_letters(
    redis_url: str, redis: Redis, topic: str, member: bytes
) -> None:
    # What is no entry the mover dead-letters; an entry whose job id is no UTF-8 it moves
    # (it asks for that job's record by the id as stored: it sent back a decoded id, which
    # the script never matched, and the level stopped there for good), and the consumer
    # dead-letters it as undecodable. Either way the message behind it is delivered. A
    # member of more fields than a command takes, or a dead-letter key of another type
    # (written over), used to fail every move of the partition: nothing was delivered.
    keys = TopicKeys(topic)
    got: list[Any] = []

    async def handler(m: Message) -> None:
        got.append(m.payload)

    async with Producer(topic, redis_url=redis_url) as producer:
        if member == _DLQ_SPOILT:
            await redis.set(keys.dead_letters(0), "another client's")
        await redis.zadd(keys.delayed(0), {member: 1})
        await producer.enqueue({"n": 1}, delay=0.1)
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await eventually(lambda: got == [{"n": 1}], timeout=5, message="the real one")
            await eventually(lambda: _dead_letters(redis, keys, 1), message="dead-lettered")
        assert await _scheduled(redis, topic) == 0


async def _dead_letters(redis: Redis, keys: TopicKeys, n: int) -> bool:
    return bool(await redis.xlen(keys.dead_letters(0)) == n)


async def test_a_delayed_message_at_a_priority_level_added_later_is_moved_on_time(
    redis_url: str, topic: str
) -> None:
    # The nudge of the new level's entry comes before the member reads that level: it used
    # to note "nothing due" for the partition and wait for its next full check (a minute).
    got: list[int] = []

    async def handler(m: Message) -> None:
        got.append(m.payload["n"])

    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.enqueue({"n": 0})
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=1, poll_interval=1)
        async with Running(consumer, handler):
            await eventually(lambda: got == [0])
            async with Producer(topic, redis_url=redis_url, priorities=3) as more:
                await more.enqueue({"n": 1}, priority=2, delay=0.5)
                await eventually(lambda: got == [0, 1], timeout=10, message="moved on time")


async def test_foreign_data_in_the_delayed_keys_or_on_the_due_channel_stops_nothing(
    redis_url: str, redis: Redis, topic: str
) -> None:
    keys = TopicKeys(topic)
    got: list[Any] = []

    async def handler(m: Message) -> None:
        got.append(m.payload["n"])

    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, handler):
            await _idle(consumer)
            other = 1 - partition_for_key("a", 2)
            await redis.set(keys.delayed(other), "not a sorted set")
            for junk in ("", "x y z", "0 not-a-number", "1 inf", "999 5"):
                await redis.publish(keys.due_channel, junk)
            await producer.enqueue({"n": 1, "k": "a"}, "k", delay=0.2)
            await producer.enqueue({"n": 2, "k": "a"}, "k", delay=0.3)
            await eventually(lambda: sorted(got) == [1, 2] or consumer.running is False,
                             timeout=5, message="delivered")  # fmt: skip
            assert consumer.running
        assert sorted(got) == [1, 2]


async def test_a_delayed_key_another_client_made_of_another_type_is_replaced(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # It holds no delayed entry, yet every delayed enqueue on its partition failed with
    # WRONGTYPE, one already due as well.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await redis.set(keys.delayed(0), "another client's")
        await producer.enqueue({"n": 0}, delay=0)
        await redis.set(keys.delayed(0), "another client's")
        await producer.batch_enqueue([{"n": 1}, {"n": 2}], delay=60)
    assert await redis.xlen(keys.stream(0)) == 1
    assert await redis.zcard(keys.delayed(0)) == 2


async def test_monitor_shows_the_scheduled_count(redis_url: str, redis: Redis, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=3, priorities=2) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(5)], delay=60)
        await producer.enqueue({"n": 9}, delay=60, priority=1)
        await producer.enqueue({"n": 10})
    async with Monitor(redis_url=redis_url) as monitor:
        view = await monitor.topic(topic)
        assert view is not None and view["scheduled"] == 6
        assert sum(s["scheduled"] for s in view["partition_stats"]) == 6
        (summary,) = [t for t in await monitor.topics() if t["topic"] == topic]
        assert summary["scheduled"] == 6 and summary["length"] == 1
        text = await monitor.prometheus([topic])
        exposed = [line for line in text.splitlines() if line.startswith("redisaq_messages_sched")]
        assert sum(float(line.split()[-1]) for line in exposed) == 6
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
        "monitor", "topics", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    header, *rows = out.decode().splitlines()
    (row,) = [r.split() for r in rows if r.startswith(topic)]
    assert row[header.split().index("SCHEDULED")] == "6"


async def test_the_gateway_schedules_jobs_with_a_delay(
    redis_url: str, redis: Redis, topic: str
) -> None:
    httpx = pytest.importorskip("httpx")
    lifespan = pytest.importorskip("asgi_lifespan")
    from redisaq_core.web import create_app

    app = create_app(redis_url=redis_url, key_prefix=f"{topic}:", heartbeat_timeout=1.5)
    async with lifespan.LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            bad = await client.post("/jobs", json={"topic": topic, "payload": 1, "delay": -1})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "delay"
            r = await client.post("/jobs", json={"topic": topic, "payload": 5, "delay": 0.3})
            assert r.status_code == 201, r.text
            assert r.json()["status"] == "scheduled"
            job_id = r.json()["job_id"]
            assert (await client.get(f"/jobs/{job_id}")).json()["status"] == "scheduled"

            async def handler(m: Message) -> Any:
                return m.payload * 2

            consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
            async with Running(consumer, handler):

                async def completed() -> Any:
                    body = (await client.get(f"/jobs/{job_id}")).json()
                    return body if body["status"] == "completed" else None

                record = await eventually(completed, timeout=5, message="job completed")
            assert record["result"] == 10
            assert record["scheduled_at"] < record["due_at"] <= record["queued_at"]


# ---- a real worker process killed before the message is due --------------------------


@pytest.mark.alone
@pytest.mark.slow
async def test_delayed_messages_of_a_sigkilled_owner_are_delivered_once(
    redis_url: str, redis: Redis, topic: str, workers: Workers
) -> None:
    n, partitions = 200, 4
    async with Producer(topic, redis_url=redis_url, init_partitions=partitions) as producer:
        owner = workers.start(redis_url, topic)
        await producer.enqueue({"n": -1, "k": "probe"}, "k")
        await eventually(
            lambda: any(e.n == -1 for e in load(workers.record_file)), timeout=20,
            message="the owner handles messages",
        )  # fmt: skip
        payloads = [{"n": i, "k": i % 13} for i in range(n)]
        # Due in 1.5 s: the owner is killed long before, with every partition in its hands.
        await producer.batch_enqueue(payloads, "k", delay=1.5)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert await _scheduled(redis, topic, partitions) == n
        workers.start(redis_url, topic)
        workers.start(redis_url, topic)
        await eventually(
            lambda: len({e.n for e in load(workers.record_file) if e.kind == "end"}) == n + 1,
            timeout=30, message="every delayed message handled",
        )  # fmt: skip
        await asyncio.sleep(1.0)  # a duplicate would come within a heartbeat or two
    events = [e for e in load(workers.record_file) if e.n >= 0]
    report = check(events, set(range(n)))
    assert not report.lost and report.duplicates == 0, (report.lost, report.duplicates)
    assert not report.order_violations, report.order_violations[:5]
    assert await _scheduled(redis, topic, partitions) == 0
    assert await _length(redis, topic, partitions) == n + 1


@pytest.mark.parametrize("spoilt", ["a count that is no number", "a key of another type"])
async def test_a_delayed_counter_another_client_spoilt_is_written_over(
    redis_url: str, redis: Redis, topic: str, spoilt: str
) -> None:
    # Before, every delayed enqueue to the partition failed (INCR's error). The count goes
    # on past any it could have made, so no new entry can equal one already scheduled.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0}, delay=60)
        if spoilt.startswith("a key"):
            await redis.delete(keys.delayed_sequence(0))
            await redis.lpush(keys.delayed_sequence(0), "x")
        else:
            await redis.set(keys.delayed_sequence(0), spoilt)
        ids = [await producer.enqueue({"n": 0}, delay=60) for _ in range(2)]
        job = await producer.submit({"n": 1}, delay=60)
    assert await redis.zcard(keys.delayed(0)) == 4
    assert ids[0] != ids[1] and all(i.split(":")[-1].isdigit() for i in ids)  # not 1.79e+15
    assert int(await redis.get(keys.delayed_sequence(0)) or 0) > 10**15
    assert job.id


async def test_a_delayed_counter_set_back_overwrites_no_waiting_message(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # The counter is deleted (or evicted) while a message waits: the same payload made the
    # same member again, and ZADD only moved the waiting one's due time; one was lost.
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        first = await producer.enqueue({"n": 0}, delay=600)
        await redis.delete(keys.delayed_sequence(0))
        second = await producer.enqueue({"n": 0}, delay=60)
    assert first != second
    assert await redis.zcard(keys.delayed(0)) == 2


async def test_out_of_memory_writes_over_nothing_of_the_delayed_keys(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A script's first write refused for memory is the server's own error, not another
    # client's data: the counter and the dead letters stay as they are, and the error comes
    # back. Before, the counter was written over, and the dead letters deleted.
    if is_cluster(redis):
        pytest.skip("CONFIG SET reaches one node of a cluster, not the one holding the keys")
    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=redis_url, init_partitions=1) as producer:
        await producer.enqueue({"n": 0}, delay=60)
        await redis.xadd(keys.dead_letters(0), {"x": "a real dead letter"})
        await redis.zadd(keys.delayed(0), {b"junk that is no entry": 1})
        await redis.set(keys.lease(0, "g"), "owner-token")
        call_keys = [keys.lease(0, "g"), keys.jobs(0), keys.dead_letters(0), keys.delayed(0),
                     keys.stream(0)]  # fmt: skip
        args = ["owner-token", 1, 100, keys.job_channel, topic, "g", "c", 0]
        policy = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", 1)
        try:
            with pytest.raises(Exception, match=r"(?i)memory"):
                await producer.enqueue({"n": 1}, delay=60)
            with pytest.raises(Exception, match="maxmemory"):
                await MOVE_DUE(redis, call_keys, args)
        finally:
            await redis.config_set("maxmemory", 0)
            await redis.config_set("maxmemory-policy", policy)
    assert await redis.get(keys.delayed_sequence(0)) == b"1"
    assert await redis.xlen(keys.dead_letters(0)) == 1


async def test_a_nudged_entry_is_moved_soon_after_a_failed_move(
    redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The move that the nudge asked for fails once (its round trip cut). Before, the nudge
    # was spent with it, and the entry waited for the next full check (every 30 s here).
    got: list[Message] = []
    pipelined = _delayed.run_pipelined
    cut: list[int] = []

    async def fails_once(r: Any, calls: Any) -> Any:
        if armed and not cut:
            cut.append(1)
            raise RedisConnectionError("connection lost (injected)")
        return await pipelined(r, calls)

    armed = False
    monkeypatch.setattr(_delayed, "run_pipelined", fails_once)
    async with Producer(topic, redis_url=redis_url) as producer:
        consumer = Consumer(topic, redis_url=redis_url, **SLOW_POLL)
        async with Running(consumer, got.append):
            await _idle(consumer)
            armed = True
            await producer.enqueue({"n": 1}, delay=0.2)
            await eventually(lambda: got, timeout=5, message="delivered")
    assert cut == [1]
