"""Periodic jobs: ``Schedule``'s ticks, ``Producer.add_schedule``, ``redisaq schedule``.

With real processes: three ``redisaq schedule run`` share one schedule and each of its
ticks is enqueued once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import (
    ConfigurationError,
    Consumer,
    Message,
    Producer,
    Schedule,
    Scheduler,
    SerializationError,
)
from redisaq_core import _ticks as ticks_module
from redisaq_core._scripts import CLEAR_FOREIGN
from redisaq_core._ticks import Ticker
from redisaq_core.keys import TopicKeys, schedule_definitions, schedule_ticks
from tests.helpers import Running, eventually, redisaq

ROOT = Path(__file__).resolve().parents[1]


def _name() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


async def _ticks(redis: Redis, topic: str, partitions: int = 1) -> list[int]:
    """The tick (ms) of every entry of the topic: its ``created_at``."""
    keys = TopicKeys(topic)
    found = []
    for p in range(partitions):
        for _, fields in await redis.xrange(keys.stream(p)):
            found.append(round(float(fields[b"c"]) * 1000))
    return sorted(found)


async def _server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# ---- the schedule itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "exactly one of cron= and every=, got neither"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= and every=, got both"),
        ({"every": 0}, "every must be >= 0.01"),
        ({"every": -1}, "every must be >= 0.01"),
        ({"every": timedelta(seconds=-5)}, "every must be >= 0.01"),
        ({"every": 0.001}, "every must be >= 0.01"),
        ({"every": 1e306}, "every must be >= 0.01 and <= 3.16224e+08, got 1e+306"),
        ({"every": math.nan}, "every must be a finite number of seconds"),
        ({"every": "5"}, "every must be a finite number"),
        ({"cron": "61 * * * *"}, "cron expression '61 * * * *' is not valid"),
        ({"cron": "every day"}, "cron expression 'every day' is not valid"),
        ({"cron": ""}, "cron must be a cron expression string"),
        ({"cron": "0 0 30 2 *"}, "cron expression '0 0 30 2 *' is not valid: it matches no date"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not"),
        ({"every": 1, "timezone": "../etc/passwd"}, "is not a known IANA zone"),
        ({"every": 1, "missed": "sometimes"}, "missed must be 'skip' or 'catch_up'"),
        ({"every": 1, "max_catch_up": 0}, "max_catch_up must be an integer >= 1"),
        ({"every": 1, "priority": 16}, "priority must be an integer >= 0 and <= 15"),
        ({"every": 1, "partition_key": ""}, "partition_key must be a non-empty field name"),
        # A key the payload lacks: every tick used to be dropped (logged, marked handled).
        (
            {"every": 1, "payload": {"user": 1}, "partition_key": "tenant"},
            "partition_key 'tenant' is not a field of the payload",
        ),
        ({"every": 1, "payload": [1], "partition_key": "k"}, "needs a mapping payload"),
        ({"every": 1, "topic": "a b"}, "topic must not contain braces or whitespace"),
        ({"every": 1, "grace": -1}, "grace must be >= 0"),
    ],
)
def test_bad_schedules_name_what_is_wrong(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Schedule("reports", **kwargs)
    assert needle in str(caught.value)


async def test_a_schedule_whose_payload_the_producer_cannot_serialize_is_refused(
    redis_url: str, topic: str
) -> None:
    # Every tick used to fail to serialize, be logged and be recorded as handled.
    async with Producer(topic, redis_url=redis_url) as producer:
        with pytest.raises(SerializationError, match="cannot serialize payload of type object"):
            producer.add_schedule(Schedule("reports", every=1, payload=object()))


def test_a_bad_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="schedule name must not contain"):
        Schedule("a b", every=1)
    with pytest.raises(ConfigurationError, match="at most 200 bytes"):
        Schedule("x" * 201, every=1)
    with pytest.raises(ConfigurationError, match="schedule name must be text UTF-8"):
        Schedule("\ud800x", every=1)
    with pytest.raises(ConfigurationError, match="every must be a finite number"):
        Schedule("r", every=10**400)


def test_every_takes_a_timedelta_or_seconds_and_ticks_on_the_epoch_grid() -> None:
    assert Schedule("r", every=timedelta(minutes=5)).every == 300.0
    fast = Schedule("r", every=0.1)
    assert fast.every == 0.1
    assert fast.before(1_000) == 900 and fast.before(1_001) == 1_000
    assert fast.after(1_000) == 1_100 and fast.after(999) == 1_000
    assert fast.idempotency_key(1_000) == "schedule:r:1000"


def test_a_schedule_with_no_grace_still_enqueues_the_tick_it_woke_up_for() -> None:
    s = Schedule("r", every=1, grace=0)
    assert s.plan(10_000, 11_001) == ([11_000], 11_000)  # woken 1 ms after the tick
    assert s.plan(10_000, 13_500) == ([13_000], 13_000)  # 11 and 12 were missed


def test_plan_on_time_ticks_and_a_schedule_that_never_ran() -> None:
    s = Schedule("r", every=1)
    assert s.plan(None, 10_500) == ([], 10_000)  # a new schedule starts with its next tick
    assert s.plan(10_000, 10_500) == ([], 10_000)
    assert s.plan(10_000, 11_000) == ([11_000], 11_000)
    assert s.plan(10_000, 13_200) == ([11_000, 12_000, 13_000], 13_000)  # late, within grace


def test_plan_missed_ticks_skip_or_catch_up_with_a_bound() -> None:
    # Last tick at 0 s, now 100 s, ticks every second, on time when at most 60 s late (and
    # the second a scheduler takes to wake up).
    skip = Schedule("r", every=1, grace=60)
    ticks, last = skip.plan(0, 100_000)
    assert ticks == list(range(39_000, 100_001, 1_000)) and last == 100_000
    catch_up = Schedule("r", every=1, grace=60, missed="catch_up", max_catch_up=3)
    ticks, last = catch_up.plan(0, 100_000)
    assert ticks == list(range(36_000, 100_001, 1_000)) and last == 100_000
    # A bound larger than what was missed catches up everything after the last tick.
    everything = Schedule("r", every=1, grace=60, missed="catch_up", max_catch_up=1000)
    assert everything.plan(95_000, 100_000)[0] == [96_000, 97_000, 98_000, 99_000, 100_000]
    assert everything.plan(0, 100_000)[0][0] == 1_000
    # Nothing on time, everything missed: skip records the newest missed tick as handled.
    strict = Schedule("r", every=10, grace=0)
    assert strict.plan(0, 95_000) == ([], 90_000)
    assert strict.plan(0, 100_000) == ([100_000], 100_000)


def test_plan_never_hands_out_more_than_a_round() -> None:
    s = Schedule("r", every=0.01, grace=3600)
    ticks, last = s.plan(0, 1_000_000)
    assert ticks == list(range(10, 10_001, 10)) and last == 10_000
    assert s.plan(last, 1_000_000)[0][0] == 10_010


def test_cron_ticks_in_the_schedule_time_zone() -> None:
    s = Schedule("reports", cron="0 9 * * *", timezone="Europe/Paris")
    winter = datetime(2026, 1, 15, 0, 0, tzinfo=timezone.utc)
    summer = datetime(2026, 7, 15, 0, 0, tzinfo=timezone.utc)
    for day, utc_hour in ((winter, 8), (summer, 7)):
        tick = s.after(round(day.timestamp() * 1000))
        assert datetime.fromtimestamp(tick / 1000, timezone.utc) == day.replace(hour=utc_hour)
    five = Schedule("five", cron="*/5 * * * *")
    start = round(datetime(2026, 1, 1, 12, 3, 30, tzinfo=timezone.utc).timestamp() * 1000)
    assert five.after(start) - start == 90_000 and start - five.before(start) == 210_000
    previous = five.before(start)
    assert five.plan(previous - 300_000, start) == ([], previous)  # 210 s late: missed
    lenient = Schedule("five", cron="*/5 * * * *", grace=300)
    assert lenient.plan(previous - 300_000, start) == ([previous], previous)


def test_without_croniter_a_cron_schedule_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['croniter'] = None\n"
        "from redisaq_core import Schedule, ConfigurationError\n"
        "Schedule('ok', every=5)\n"
        "try:\n"
        "    Schedule('r', cron='* * * * *')\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "pip install 'redisaq-core[cron]'" in done.stdout


def test_a_schedule_round_trips_through_its_stored_form() -> None:
    s = Schedule("r", cron="0 * * * *", timezone="Asia/Tokyo", topic="t", payload={"a": [1]},
                 partition_key="a", priority=3, job=True, missed="catch_up", max_catch_up=5,
                 grace=2.5)  # fmt: skip
    assert Schedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    for bad in ([1], {"name": 5}, {"name": "r", "every": 1, "color": "red"}, {"name": "r"}):
        with pytest.raises(ConfigurationError):
            Schedule.from_dict(bad)


# ---- running it -----------------------------------------------------------------------------


async def test_producers_share_a_schedule_and_enqueue_each_tick_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    name = _name()
    producers = [Producer(topic, redis_url=redis_url, init_partitions=3) for _ in range(3)]
    for producer in producers:
        producer.add_schedule(Schedule(name, every=0.1, payload={"kind": "beat"}))
        await producer.connect()
    try:
        await eventually(lambda: _count(redis, topic, 3, 25), timeout=20, message="25 ticks")
    finally:
        for producer in producers:
            await producer.close()
    ticks = await _ticks(redis, topic, 3)
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert all(b - a == 100 for a, b in itertools.pairwise(ticks)), "a tick was missed"
    assert await redis.zscore(schedule_ticks(), _member(topic, name)) == ticks[-1]


async def _count(redis: Redis, topic: str, partitions: int, at_least: int) -> bool:
    keys = TopicKeys(topic)
    return sum([await redis.xlen(keys.stream(p)) for p in range(partitions)]) >= at_least


async def test_a_schedule_for_another_topic_is_refused(redis_url: str, topic: str) -> None:
    producer = Producer(topic, redis_url=redis_url)
    with pytest.raises(ConfigurationError, match="is for topic 'other'"):
        producer.add_schedule(Schedule("r", every=1, topic="other"))
    with pytest.raises(ConfigurationError, match="expected a Schedule, got"):
        producer.add_schedule({"name": "r", "every": 1})  # type: ignore[arg-type]
    producer.add_schedule(Schedule("r", every=1))
    with pytest.raises(ConfigurationError, match="already added"):
        producer.add_schedule(Schedule("r", every=2))


async def test_missed_ticks_are_skipped_or_caught_up_up_to_the_bound(
    redis_url: str, redis: Redis, topic: str
) -> None:
    skip, catch_up = _name(), _name()
    every = 2.0
    grid = Schedule("grid", every=every)
    keys = {skip: f"{topic}-skip", catch_up: f"{topic}-catch"}
    async with (
        Producer(keys[skip], redis_url=redis_url) as p1,
        Producer(keys[catch_up], redis_url=redis_url) as p2,
    ):
        # Start just after a tick, so that the newest tick is on time (grace 1 s) and the
        # ones before it were missed: the scheduler "was down" for the 10 ticks before it.
        now = await eventually(lambda: _just_after_a_tick(redis, 2000), timeout=5)
        due = grid.before(now + 1)
        members = [_member(keys[skip], skip), _member(keys[catch_up], catch_up)]
        await redis.zadd(schedule_ticks(), dict.fromkeys(members, due - 20_000))
        p1.add_schedule(Schedule(skip, every=every, grace=1))
        p2.add_schedule(Schedule(catch_up, every=every, grace=1, missed="catch_up", max_catch_up=3))
        await eventually(lambda: _count(redis, keys[catch_up], 1, 4), timeout=5)
        await eventually(lambda: _count(redis, keys[skip], 1, 1), timeout=5)
    assert [t for t in await _ticks(redis, keys[skip]) if t <= due] == [due]
    caught = [t for t in await _ticks(redis, keys[catch_up]) if t <= due]
    assert caught == [due - 6000, due - 4000, due - 2000, due]
    await redis.zrem(schedule_ticks(), *members)


@pytest.mark.parametrize("garbage", [math.inf, 1e15, -5.0])
async def test_a_last_tick_another_client_wrote_does_not_stop_the_schedule(
    redis_url: str, redis: Redis, topic: str, garbage: float
) -> None:
    name = _name()
    await redis.zadd(schedule_ticks(), {_member(topic, name): garbage})
    async with Producer(topic, redis_url=redis_url) as producer:
        producer.add_schedule(Schedule(name, every=0.1))
        await eventually(lambda: _count(redis, topic, 1, 3), timeout=10, message="3 ticks")
    now = await _server_ms(redis)
    assert now - 5000 < (await redis.zscore(schedule_ticks(), _member(topic, name)) or 0) <= now
    await redis.zrem(schedule_ticks(), _member(topic, name))


async def test_a_schedule_of_the_same_name_on_another_topic_ticks_on_its_own(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Another topic's schedule of the same name (here a stored one) recorded a tick ahead of
    # this one's. The record was the name's alone: this schedule took that tick for its own
    # and enqueued nothing until then (with two producers' schedules, the slower one never
    # ticked).
    name = _name()
    await redis.zadd(schedule_ticks(), {name: await _server_ms(redis) + 30_000})
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            producer.add_schedule(Schedule(name, every=0.1))
            await eventually(lambda: _count(redis, topic, 1, 3), timeout=5, message="3 ticks")
    finally:
        await redis.zrem(schedule_ticks(), name, _member(topic, name))


async def test_producers_of_different_partition_views_still_enqueue_each_tick_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # One producer saw the topic's 2 partitions, the other (its refresh not due for an hour)
    # too; then the topic grows to 8. The tick's idempotency key picks its partition, so
    # both must read the count: each round of ticks reads it first. Before, the stale one
    # wrote its ticks to other partitions, and ticks were enqueued twice.
    name = _name()
    async with (
        Producer(topic, redis_url=redis_url, init_partitions=2) as fresh,
        Producer(topic, redis_url=redis_url, refresh_interval=3600) as stale,
    ):
        await fresh.request_partition_increase(8)
        for producer in (stale, fresh):
            producer.add_schedule(Schedule(name, every=0.2))
        await eventually(lambda: _count(redis, topic, 8, 6), timeout=10, message="6 ticks")
    ticks = await _ticks(redis, topic, 8)
    assert len(ticks) == len(set(ticks))
    await redis.zrem(schedule_ticks(), _member(topic, name))


async def test_a_ticks_key_another_client_made_of_another_type_stops_no_schedule(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Before, every round failed on it (WRONGTYPE) and no schedule ticked again.
    name = _name()
    kept = await redis.zrange(schedule_ticks(), 0, -1, withscores=True)
    await redis.delete(schedule_ticks())
    await redis.set(schedule_ticks(), "another client's")
    try:
        async with Producer(topic, redis_url=redis_url) as producer:
            producer.add_schedule(Schedule(name, every=0.1))
            await eventually(lambda: _count(redis, topic, 1, 3), timeout=10, message="3 ticks")
        assert await redis.zscore(schedule_ticks(), _member(topic, name)) is not None
        # A second schedule's round that also found the key spoilt replaces it only if it
        # still is: it used to delete the first one's record, which then lost a tick.
        assert await CLEAR_FOREIGN(redis, [schedule_ticks()], ["zset"]) == 0
        assert await redis.zscore(schedule_ticks(), _member(topic, name)) is not None
    finally:
        await redis.delete(schedule_ticks())
        if kept:
            await redis.zadd(schedule_ticks(), dict(kept))


async def test_a_definition_no_schedule_can_have_is_skipped_and_the_others_tick_on(
    redis_url: str, redis: Redis, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Another client stores an interval past any a Schedule takes: it is skipped as
    # unreadable. Before, its OverflowError ended the scheduler's loop, and every schedule.
    name, bad = _name(), _name()
    scheduler = Scheduler(redis_url=redis_url, reload_interval=0.1)
    async with scheduler:
        await scheduler.add(Schedule(name, every=0.1, topic=topic))
        running = asyncio.create_task(scheduler.run([name, bad]))
        await eventually(lambda: _count(redis, topic, 1, 1), timeout=10, message="ticking")
        stored = {"name": bad, "topic": topic, "every": 1e306}
        await redis.hset(schedule_definitions(), bad, json.dumps(stored))
        await eventually(lambda: f"stored schedule '{bad}' can't be read" in caplog.text)
        ticked = await redis.xlen(TopicKeys(topic).stream(0))
        await eventually(lambda: _count(redis, topic, 1, ticked + 3), timeout=10, message="on")
        assert not running.done()
        await scheduler.stop()
        await asyncio.wait_for(running, 10)
        await scheduler.remove(name)
        await redis.hdel(schedule_definitions(), bad)


async def test_a_scheduler_stopped_in_the_middle_of_many_ticks_stops_at_once(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # 300 ticks on time at once (grace 60 s, every 0.2 s), so that the stop lands
    # mid-command: redis-py may swallow that cancellation, and the loop must end anyway.
    name = _name()
    await redis.zadd(schedule_ticks(), {name: await _server_ms(redis) - 120_000})
    scheduler = Scheduler(redis_url=redis_url, reload_interval=0.2)
    async with scheduler:
        await scheduler.add(Schedule(name, every=0.2, topic=topic))
        running = asyncio.create_task(scheduler.run([name]))
        await eventually(lambda: _count(redis, topic, 1, 2), timeout=10, message="ticking")
        began = time.monotonic()
        await scheduler.stop()
        await asyncio.wait_for(running, 10)
        assert time.monotonic() - began < 2  # the tasks were waited for, none was left
        stopped = await redis.xlen(TopicKeys(topic).stream(0))
        await asyncio.sleep(0.5)  # nothing may enqueue after the stop: a fixed wait is the test
        assert await redis.xlen(TopicKeys(topic).stream(0)) == stopped
        await scheduler.remove(name)


async def test_a_round_cut_off_keeps_the_ticks_it_enqueued_recorded(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A round of missed ticks (caught up) is cut off as its fourth tick is enqueued, as by
    # a process that ends there. The three before it are recorded as done. Before, a round
    # recorded only at its end: a restart past the idempotency window enqueued them again.
    name = _name()
    started = await _server_ms(redis)
    await redis.zadd(schedule_ticks(), {name: started - 10_000})
    fire, fired, cut = Ticker._fire, [], asyncio.Event()

    async def fire_until_cut(self: Ticker, schedule: Schedule, tick: int) -> None:
        if len(fired) == 3:
            cut.set()
            await asyncio.Event().wait()
        await fire(self, schedule, tick)
        fired.append(tick)

    monkeypatch.setattr(Ticker, "_fire", fire_until_cut)
    scheduler = Scheduler(redis_url=redis_url)
    async with scheduler:
        await scheduler.add(Schedule(name, every=1, topic=topic, missed="catch_up"))
        running = asyncio.create_task(scheduler.run([name]))
        await asyncio.wait_for(cut.wait(), 10)
        await scheduler.stop()
        await asyncio.wait_for(running, 10)
        recorded = await redis.zscore(schedule_ticks(), name)
        await scheduler.remove(name)
    assert await _ticks(redis, topic) == fired
    assert recorded == fired[-1]


async def _just_after_a_tick(redis: Redis, every_ms: int) -> int | None:
    now = await _server_ms(redis)
    return now if 50 <= now % every_ms <= 400 else None


async def test_a_job_schedule_submits_tracked_jobs_handled_by_a_consumer(
    redis_url: str, redis: Redis, topic: str
) -> None:
    seen: list[Message] = []

    async def handle(message: Message) -> str:
        seen.append(message)
        return "ok"

    async with Producer(topic, redis_url=redis_url, priorities=2) as producer:
        producer.add_schedule(
            Schedule(_name(), every=0.1, payload={"report": "daily"}, job=True, priority=1)
        )
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.05)
        async with Running(consumer, handle):
            await eventually(lambda: len(seen) >= 3, timeout=10)
    first = seen[0]
    assert first.payload == {"report": "daily"} and first.job_id and first.priority == 1
    assert round(first.created_at * 1000) % 100 == 0  # the tick's time


# ---- redisaq schedule ------------------------------------------------------------------------


async def test_cli_add_list_remove(redis_url: str, redis: Redis, topic: str) -> None:
    name = _name()
    added = redisaq("--redis-url", redis_url, "schedule", "add", name, "--topic", topic,
                    "--cron", "*/5 * * * *", "--timezone", "Europe/Paris",
                    "--payload", '{"report": "sales"}', "--format", "json")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["cron"] == "*/5 * * * *"
    garbage = f"{name}-garbage"
    await redis.hset(schedule_definitions(), garbage, '{"name": "other", "every": 1}')
    listed = redisaq("--redis-url", redis_url, "schedule", "list", "--format", "json")
    await redis.hdel(schedule_definitions(), garbage)
    assert listed.returncode == 0, listed.stderr
    assert f"stored schedule '{garbage}' can't be read" in listed.stderr
    assert garbage not in listed.stdout
    (row,) = [r for r in json.loads(listed.stdout) if r["name"] == name]
    assert row["topic"] == topic and row["timezone"] == "Europe/Paris"
    assert row["payload"] == {"report": "sales"} and row["last_tick"] is not None
    table = redisaq("--redis-url", redis_url, "schedule", "list")
    assert table.returncode == 0 and name in table.stdout and "*/5 * * * *" in table.stdout
    again = redisaq("--redis-url", redis_url, "schedule", "add", name, "--topic", topic,
                    "--every", "60")  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr
    replaced = redisaq("--redis-url", redis_url, "schedule", "add", name, "--topic", topic,
                       "--every", "60", "--replace")  # fmt: skip
    assert replaced.returncode == 0, replaced.stderr
    async with Scheduler(redis_url=redis_url) as scheduler:
        (stored,) = [s for s in await scheduler.list() if s.name == name]
    assert stored.every == 60.0 and stored.cron is None
    removed = redisaq("--redis-url", redis_url, "schedule", "remove", name, "--format", "json")
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"name": name,
                                                                      "removed": True}  # fmt: skip
    assert not await redis.hexists(schedule_definitions(), name)
    assert await redis.zscore(schedule_ticks(), name) is None
    gone = redisaq("--redis-url", redis_url, "schedule", "remove", name)
    assert gone.returncode == 1 and f"no schedule named {name!r}" in gone.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cron", "61 * * * *"], "cron expression '61 * * * *' is not valid"),
        (["--cron", "* * * * *", "--timezone", "Nowhere/Land"], "timezone 'Nowhere/Land'"),
        (["--cron", "* * * * *", "--every", "5"], "got both"),
        ([], "got neither"),
        (["--every", "0"], "every must be >= 0.01"),
        (["--every", "-3"], "every must be >= 0.01"),
        (["--every", "soon"], "invalid float value"),
        (["--every", "5", "--payload", "{nope"], "--payload is not JSON"),
    ],
)
async def test_cli_bad_input_exits_2_and_stores_nothing(
    redis_url: str, redis: Redis, topic: str, args: list[str], needle: str
) -> None:
    name = _name()
    done = redisaq("--redis-url", redis_url, "schedule", "add", name, "--topic", topic, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert needle in done.stderr
    assert not await redis.hexists(schedule_definitions(), name)
    assert await redis.zscore(schedule_ticks(), name) is None


@pytest.mark.alone
async def test_three_scheduler_processes_enqueue_sixty_ticks_once_each(
    redis_url: str, redis: Redis, topic: str, tmp_path: Path
) -> None:
    name = _name()
    async with Producer(topic, redis_url=redis_url, init_partitions=3):
        pass
    added = redisaq("--redis-url", redis_url, "schedule", "add", name, "--topic", topic,
                    "--every", "0.1", "--payload", '{"beat": true}')  # fmt: skip
    assert added.returncode == 0, added.stderr
    # What another client wrote: a definition that is not one. Every process skips it.
    garbage = f"{name}-garbage"
    await redis.hset(schedule_definitions(), garbage, b"\xff not json")
    logs = [tmp_path / f"scheduler-{i}.log" for i in range(3)]
    command = [sys.executable, "-m", "redisaq_core.cli.main", "-v", "--redis-url", redis_url,
               "schedule", "run", name, garbage, "--reload-interval", "0.5"]  # fmt: skip
    files = [log.open("w") for log in logs]
    procs = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=f, cwd=ROOT) for f in files
    ]
    try:
        # 60 ticks from the moment all three processes were running the schedule.
        await eventually(
            lambda: all(f"schedule {name}: running" in log.read_text() for log in logs),
            timeout=30,
            message="three schedulers running",
        )
        start = await _server_ms(redis)

        async def sixty_ticks() -> bool:
            return len([t for t in await _ticks(redis, topic, 3) if t > start]) >= 60

        await eventually(sixty_ticks, timeout=30, interval=0.2, message="60 ticks")
        assert all(p.poll() is None for p in procs), "a scheduler exited early"
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, f in zip(procs, files, strict=True):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:  # fails the returncode check below
                p.kill()
                p.wait()
            f.close()
        await redis.hdel(schedule_definitions(), name, garbage)
    outputs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for err in outputs]
    ticks = await _ticks(redis, topic, 3)
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert gaps == [100] * len(gaps), "a tick was missed"
    assert len([t for t in ticks if t > start]) >= 60
    for err in outputs:
        assert err.count(f"stored schedule '{garbage}' can't be read") == 1


async def test_a_removed_schedule_added_again_starts_with_its_next_tick(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A running scheduler learns of a removal at its next reload; its rounds before that
    # brought the removed schedule's last tick back (ZADD NX), and the schedule added again
    # under that name kept it: it enqueued at once the ticks of the time it was gone.
    name = _name()

    def schedule() -> Schedule:
        return Schedule(
            name, every=0.2, topic=topic, payload="x", grace=0, missed="catch_up", max_catch_up=5
        )

    first = Scheduler(redis_url=redis_url, reload_interval=60)
    await first.add(schedule())
    task = asyncio.create_task(first.run())
    await eventually(lambda: redis.xlen(TopicKeys(topic).stream(0)), message="a tick")
    assert await first.remove(name)
    # Its ticker's next rounds, before a reload: the record stays gone.
    start = await _server_ms(redis)
    await eventually(lambda: _server_past(redis, start + 1_000))
    assert await redis.zscore(schedule_ticks(), name) is None
    await first.stop()
    await task
    await first.close()
    await eventually(lambda: _server_past(redis, start + 2_000))
    before = set(await _ticks(redis, topic))
    again = Scheduler(redis_url=redis_url, reload_interval=60)
    added = await _server_ms(redis)
    await again.add(schedule())
    task = asyncio.create_task(again.run())
    try:
        await eventually(lambda: _ticked_after(redis, topic, added), message="a new tick")
    finally:
        await again.stop()
        await task
        await again.close()
    new = set(await _ticks(redis, topic)) - before
    assert new and min(new) > added, sorted(t - added for t in new)


async def test_a_new_schedule_starts_afresh_past_a_tick_an_earlier_one_left(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # A removal cut off between its two writes leaves the last tick without its definition.
    name = _name()
    now = await _server_ms(redis)
    await redis.zadd(schedule_ticks(), {name: now - 60_000})
    async with Scheduler(redis_url=redis_url) as scheduler:
        await scheduler.add(Schedule(name, every=1, topic=topic, payload="x", grace=3600))
    assert (await redis.zscore(schedule_ticks(), name) or 0) > now - 1_000  # its last tick


async def _server_past(redis: Redis, ms: int) -> bool:
    return await _server_ms(redis) > ms


async def _ticked_after(redis: Redis, topic: str, ms: int) -> bool:
    return any(t > ms for t in await _ticks(redis, topic))


async def test_a_schedule_ticks_again_after_an_outage_of_any_length(
    redis_url: str, redis: Redis, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait after a failed round doubled with each failure, without a bound on the count:
    # 2**1024 is past a float, and the 1,024th failure in a row (85 minutes of an outage at
    # the 5 s cap) ended the schedule's task for good. The ticker's waits are made instant
    # here; its rounds fail for real (TIME refused to its ACL user).
    real_sleep = asyncio.sleep

    async def instant(seconds: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(ticks_module.asyncio, "sleep", instant)
    user = f"u{uuid.uuid4().hex[:8]}"
    await redis.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
    host, port = redis_url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    failed: list[str] = []
    logger = logging.getLogger(f"tests.schedule.{user}")
    logger.addHandler(_Collect(failed))
    logger.propagate = False
    try:
        url = f"redis://{user}:pw@{host}:{port}/0"
        async with Producer(topic, redis_url=url, logger=logger, metrics=False) as producer:
            producer.add_schedule(Schedule(_name(), every=0.05, payload="tick"))
            stream = TopicKeys(topic).stream(0)
            await eventually(lambda: redis.xlen(stream), message="a first tick")
            await redis.execute_command("ACL", "SETUSER", user, "-time")
            await eventually(lambda: len(failed) >= 1_100, timeout=60, message="1,100 failures")
            await redis.execute_command("ACL", "SETUSER", user, "+time")
            ticks = await redis.xlen(stream)
            await eventually(lambda: _longer(redis, stream, ticks), message="ticks again")
    finally:
        await redis.execute_command("ACL", "DELUSER", user)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if "trying again" in record.getMessage():
            self.into.append(record.getMessage())


async def _longer(redis: Redis, stream: str, than: int) -> bool:
    return int(await redis.xlen(stream)) > than


async def test_a_tick_due_after_the_record_was_lost_is_still_enqueued(
    redis_url: str, redis: Redis, topic: str
) -> None:
    # Redis restarted without its data between two ticks: the schedule's last tick is gone
    # from Redis, not the schedule. Before, its ticker took it for a schedule that never
    # ran and recorded the tick it woke up for without enqueueing it: the tick was skipped,
    # though within the grace. Now the ticker goes on from the last tick it handled.
    name = _name()
    async with Producer(topic, redis_url=redis_url, metrics=False) as producer:
        producer.add_schedule(Schedule(name, every=1.0, payload="tick"))
        first = (await eventually(lambda: _ticks(redis, topic), message="a first tick"))[0]
        await eventually(
            lambda: _recorded(redis, _member(topic, name), first), message="the first tick recorded"
        )
        assert await redis.zrem(schedule_ticks(), _member(topic, name)) == 1  # the record is lost
        assert await _ticks(redis, topic) == [first]  # the next tick was not handled yet
        await eventually(lambda: _ticked_after(redis, topic, first + 1000), message="2 more")
    assert await _ticks(redis, topic) == [first, first + 1000, first + 2000]


async def _recorded(redis: Redis, member: str, tick: int) -> bool:
    return await redis.zscore(schedule_ticks(), member) == tick


def _member(topic: str, name: str) -> str:
    """A producer's schedule's member in the ticks set: its topic's, then its name."""
    return f"{topic} {name}"
