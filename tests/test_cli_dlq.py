"""``redisaq dlq`` and ``redisaq worker`` through real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import ConfigurationError, Consumer, DeadLetters, Message, Producer
from redisaq_core._scripts import REPLAY
from redisaq_core.dlq import dead_letter_fields
from redisaq_core.keys import TopicKeys
from tests import job_records as jr
from tests.helpers import Running, eventually, redisaq

ROOT = Path(__file__).resolve().parents[1]


async def _dead_letters(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        await producer.batch_enqueue([{"n": i, "bad": i % 2 == 0} for i in range(6)])

    async def handle(m: Message) -> None:
        if m.payload["bad"]:
            raise ValueError(f"bad {m.payload['n']}")

    consumer = Consumer(
        topic, redis_url=redis_url, max_deliveries=1, heartbeat_interval=0.2, poll_interval=0.1
    )
    async with Running(consumer, handle):
        await eventually(lambda: consumer.stats.dead_lettered == 3)


async def test_dlq_commands(redis_url: str, topic: str) -> None:
    await _dead_letters(redis_url, topic)
    count = redisaq("--redis-url", redis_url, "dlq", "count", topic, "--format", "json")
    assert count.returncode == 0, count.stderr
    assert json.loads(count.stdout) == {"topic": topic, "count": 3}
    listed = redisaq("dlq", "list", topic, "--format", "json", "--redis-url", redis_url)
    records: list[dict[str, Any]] = json.loads(listed.stdout)
    assert sorted(r["payload"]["n"] for r in records) == [0, 2, 4]
    assert {r["error_type"] for r in records} == {"ValueError"}
    table = redisaq("--redis-url", redis_url, "dlq", "list", topic)
    assert table.returncode == 0 and "ValueError: bad" in table.stdout
    replay = redisaq("--redis-url", redis_url, "dlq", "replay", topic, "--id", records[0]["id"])
    assert replay.returncode == 0 and replay.stdout.strip() == "1"
    refused = redisaq("--redis-url", redis_url, "dlq", "purge", topic)
    assert refused.returncode == 2 and "--confirm" in refused.stderr
    purged = redisaq("--redis-url", redis_url, "dlq", "purge", topic, "--confirm")
    assert purged.returncode == 0 and purged.stdout.strip() == "2"
    bad_id = redisaq("--redis-url", redis_url, "dlq", "replay", topic, "--id", "nope")
    assert bad_id.returncode == 1 and "dead-letter ids like" in bad_id.stderr


def test_worker_usage_errors(redis_url: str) -> None:
    no_colon = redisaq("--redis-url", redis_url, "worker", "nomodule", "--topic", "t")
    assert no_colon.returncode == 2 and "module:function" in no_colon.stderr
    missing = redisaq("--redis-url", redis_url, "worker", "no.such.module:f", "--topic", "t")
    assert missing.returncode == 2 and "cannot import" in missing.stderr
    static = redisaq("--redis-url", redis_url, "worker", "tests.test_cli_dlq:handle", "--topic",
                     "t", "--static")  # fmt: skip
    assert static.returncode == 2 and "--static needs --name" in static.stderr


async def handle(m: Message) -> None:
    """Handler of the worker started below: print the payload."""
    print("handled", m.payload, flush=True)


async def test_worker_runs_until_sigterm(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url) as producer:
        await producer.batch_enqueue([{"n": i} for i in range(3)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisaq_core.cli.main", "worker", "tests.test_cli_dlq:handle",
         "--topic", topic, "--redis-url", redis_url, "--heartbeat-interval", "0.2",
         "--poll-interval", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    assert [line.startswith("handled") for line in lines] == [True] * 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    proc.stdout.close()
    assert proc.stderr is not None
    proc.stderr.close()


async def test_dead_letters_and_topics_another_client_spoilt_are_skipped(
    redis_url: str, topic: str
) -> None:
    # Partition 0's dead letters, and another topic's meta, are keys of another type. Before,
    # `dlq list/count/replay` and `monitor topics` printed a traceback (the gateway's /dlq
    # and /topics answered 503 "Redis unavailable").
    from redis.asyncio import Redis

    from redisaq_core.keys import TopicKeys

    await _dead_letters(redis_url, topic)
    async with Redis.from_url(redis_url) as redis:
        spoilt = TopicKeys(topic).dead_letters(0)
        kept = await redis.xlen(TopicKeys(topic).dead_letters(1))
        await redis.delete(spoilt)
        await redis.set(spoilt, "another client's")
        other = TopicKeys(f"{topic}-other")
        await redis.sadd(TopicKeys.topic_index(), f"{topic}-other")
        await redis.set(other.meta, "another client's")
        count = redisaq("--redis-url", redis_url, "dlq", "count", topic, "--format", "json")
        assert count.returncode == 0, count.stderr
        assert json.loads(count.stdout)["count"] == kept
        listed = redisaq("--redis-url", redis_url, "dlq", "list", topic, "--format", "json")
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == kept
        replay = redisaq("--redis-url", redis_url, "dlq", "replay", topic)
        assert replay.returncode == 0 and replay.stdout.strip() == str(kept)
        topics = redisaq("--redis-url", redis_url, "monitor", "topics")
        assert topics.returncode == 0, topics.stderr
        assert topic in topics.stdout
        await redis.delete(other.meta)
        await redis.srem(TopicKeys.topic_index(), f"{topic}-other")


async def _dead_letter(redis: Redis, topic: str, original: dict[bytes, bytes]) -> str:
    fields = dead_letter_fields(topic=topic, partition=0, group="g", msg_id="1-0", deliveries=3,
                                error="boom", consumer="c", original=original)  # fmt: skip
    entry_id = await redis.execute_command("XADD", TopicKeys(topic).dead_letters(0), "*", *fields)
    return str(entry_id.decode())


_WIDE = {b"s": b'"wide"', **{b"x%d" % i: b"v" for i in range(5000)}}


async def test_a_dead_letter_of_more_fields_than_a_command_carries_stays_in_place(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # Another client's (or an older writer's) dead letter of 5,000 original fields. Before,
    # replay failed on it ("too many results to unpack") after moving the ones before it,
    # every later replay failed there too, and the CLI printed a traceback.
    await jr.make_topic(redis, topic, 1)
    keys = TopicKeys(topic)
    first = await _dead_letter(redis, topic, {b"s": b'"first"'})
    wide = await _dead_letter(redis, topic, _WIDE)
    last = await _dead_letter(redis, topic, {b"s": b'"last"'})
    plain = [x for letter in (first, wide, last) for x in (letter, "0")]
    calls = [keys.dead_letters(0), keys.stream(0), keys.jobs(0)]
    assert await REPLAY(redis, calls, [keys.job_channel, topic, 0, 0, 3600, *plain]) == 2
    assert [i.decode() for i, _ in await redis.xrange(keys.dead_letters(0))] == [wide]
    async with DeadLetters(topic, redis=redis) as dl:
        with pytest.raises(ConfigurationError, match=f"{wide} .*5001 original fields"):
            await dl.replay([wide])
    again = await _dead_letter(redis, topic, {b"s": b'"again"'})
    run = redisaq("--redis-url", redis_url, "dlq", "replay", topic)
    assert run.returncode == 0 and run.stdout.strip() == "1", run.stderr
    assert "Traceback" not in run.stderr and wide in run.stderr
    assert [i.decode() for i, _ in await redis.xrange(keys.dead_letters(0))] == [wide]
    assert again not in [i.decode() for i, _ in await redis.xrange(keys.stream(0))]
    assert await redis.xlen(keys.stream(0)) == 3


@pytest.mark.single_node
async def test_a_redis_error_is_one_line_without_the_password(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # A reply no command explains itself (here: the partition stream replaced by a key of
    # another type, which replay's script can't append to). Before, a traceback.
    await jr.make_topic(redis, topic, 1)
    await _dead_letter(redis, topic, {b"s": b'"x"'})
    await redis.set(TopicKeys(topic).stream(0), "another client's")
    user, password = f"dlq-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.execute_command("ACL", "SETUSER", user, "on", ">" + password, "~*", "&*", "+@all")
    try:
        url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
        for args in (["--redis-url", url], ["--format", "json", "--redis-url", url]):
            run = redisaq(*args[-2:], "dlq", "replay", topic, *args[:-2])
            assert run.returncode == 1 and run.stdout == ""
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and "WRONGTYPE" in lines[0], run.stderr
            assert password not in run.stderr
    finally:
        await redis.execute_command("ACL", "DELUSER", user)


async def test_an_id_in_two_partitions_is_replayed_only_when_named_with_its_partition(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # Dead-letter ids are unique within a partition only. Before, replaying by an id that
    # two partitions' letters share replayed both.
    await jr.make_topic(redis, topic, 2)
    keys = TopicKeys(topic)
    for p in (0, 1):
        fields = dead_letter_fields(topic=topic, partition=p, group="g", msg_id="1-0",
                                    deliveries=3, error="boom", consumer="c",
                                    original={b"s": b'"%d"' % p})  # fmt: skip
        await redis.execute_command("XADD", keys.dead_letters(p), "5-0", *fields)
    async with DeadLetters(topic, redis_url=redis_url) as dl:
        with pytest.raises(ConfigurationError, match=r"5-0 \(partitions 0, 1\).*PARTITION:ID"):
            await dl.replay(["5-0"])
        assert await dl.count() == 2
        assert await dl.replay(["1:5-0"]) == 1
        assert [letter.partition for letter in await dl.list()] == [0]
        assert await redis.xlen(keys.stream(1)) == 1 and await redis.xlen(keys.stream(0)) == 0
        assert await dl.replay(["5-0"]) == 1  # in one partition now
    assert await redis.xlen(keys.stream(0)) == 1
    usage = redisaq("--redis-url", redis_url, "dlq", "replay", topic, "--id", "x:5-0")
    assert usage.returncode == 1 and "3:1700000000000-0" in usage.stderr
