"""Write job records, topics, groups and members straight into Redis, as the library does.

The tests of the read side (results, metrics, monitor) build their data with
these helpers, following the layout documented in ``redisaq_core.keys`` and
``redisaq_core.results``: each job change updates the record hash, the
partition's job index and announces ``"<job_id> <status>"`` on the topic's
job channel, in one MULTI block like the scripts that write them.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core.keys import TopicKeys, job_id, parse_job_id


async def server_ms(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def next_ms(redis: Redis) -> int:
    """Wait until the server's clock has moved to a later millisecond (distinct scores)."""
    start = await server_ms(redis)
    while (now := await server_ms(redis)) <= start:
        pass
    return now


async def make_topic(redis: Redis, topic: str, partitions: int, priorities: int = 1) -> None:
    keys = TopicKeys(topic)
    meta: dict[str, Any] = {"partitions": partitions}
    if priorities > 1:
        meta["priorities"] = priorities
    await redis.hset(keys.meta, mapping=meta)
    await redis.sadd(TopicKeys.topic_index(), topic)


async def submit(
    redis: Redis,
    topic: str,
    partition: int = 0,
    *,
    priority: int = 0,
    result_ttl: int = 3600,
    payload: Any = None,
) -> str:
    """A queued job: its stream entry and record (like ``Producer.submit``)."""
    keys = TopicKeys(topic)
    jid = job_id(topic, partition, uuid.uuid4().hex)
    msg_id = await redis.xadd(
        keys.stream(partition, priority), {"p": orjson.dumps(payload), "j": jid}
    )
    now = await server_ms(redis)
    await _change(
        redis,
        jid,
        "queued",
        now,
        {
            "topic": topic,
            "partition": partition,
            "priority": priority,
            "msg_id": msg_id,
            "attempts": 0,
            "result_ttl": result_ttl,
        },
    )
    return jid


async def _change(
    redis: Redis, jid: str, status: str, now: int, fields: dict[str, Any], expire: int = 0
) -> None:
    topic, partition = parse_job_id(jid)
    keys = TopicKeys(topic)
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        keys.job(partition, jid),
        mapping={"status": status, f"{status}_at": now, "updated_at": now, **fields},
    )
    if expire:
        pipe.expire(keys.job(partition, jid), expire)
    pipe.zadd(keys.jobs(partition), {jid: now})
    await pipe.execute()
    # After the transaction, not in it: a cluster pipeline refuses PUBLISH.
    await redis.publish(keys.job_channel, f"{jid} {status}")


async def activate(redis: Redis, jid: str, worker: str = "w1") -> None:
    topic, partition = parse_job_id(jid)
    await redis.hincrby(TopicKeys(topic).job(partition, jid), "attempts", 1)
    await _change(redis, jid, "active", await server_ms(redis), {"worker": worker})


async def fail(redis: Redis, jid: str, error: str = "boom", error_type: str = "ValueError") -> None:
    await _change(
        redis, jid, "failed", await server_ms(redis), {"error": error, "error_type": error_type}
    )


async def _ttl(redis: Redis, jid: str) -> int:
    topic, partition = parse_job_id(jid)
    raw = await redis.hget(TopicKeys(topic).job(partition, jid), "result_ttl")
    return int(raw or 0)


async def complete(
    redis: Redis,
    jid: str,
    result: Any = None,
    *,
    text: bool = False,
    worker: str = "w1",
    publish: bool = True,
) -> None:
    data: bytes | str = orjson.dumps(result).decode() if text else orjson.dumps(result)
    fields = {"worker": worker, "result": data, "result_kind": "s" if text else "b"}
    now = await server_ms(redis)
    if publish:
        await _change(redis, jid, "completed", now, fields, expire=await _ttl(redis, jid))
        return
    topic, partition = parse_job_id(jid)
    await redis.hset(
        TopicKeys(topic).job(partition, jid),
        mapping={"status": "completed", "completed_at": now, "updated_at": now, **fields},
    )


async def kill(redis: Redis, jid: str, error: str = "boom", error_type: str = "ValueError") -> None:
    fields = {"error": error, "error_type": error_type}
    await _change(redis, jid, "dead", await server_ms(redis), fields, expire=await _ttl(redis, jid))


async def add_member(
    redis: Redis,
    topic: str,
    group: str,
    name: str,
    partitions: list[int],
    *,
    age_ms: int = 0,
) -> None:
    """A group member with a heartbeat ``age_ms`` ago owning ``partitions``."""
    keys = TopicKeys(topic)
    await redis.sadd(keys.groups, group)
    await redis.zadd(keys.members(group), {name: await server_ms(redis) - age_ms})
    await redis.hset(keys.tokens(group), name, uuid.uuid4().hex)
    if partitions:
        await redis.hset(keys.assignment(group), mapping={p: name for p in partitions})
    await redis.hincrby(keys.assignment(group), "_v", 1)


async def create_group(
    redis: Redis, topic: str, group: str, partitions: int, priorities: int = 1
) -> None:
    keys = TopicKeys(topic)
    await redis.sadd(keys.groups, group)
    for p in range(partitions):
        for level in range(priorities):
            await redis.xgroup_create(keys.stream(p, level), group, id="0", mkstream=True)


async def read(redis: Redis, topic: str, group: str, consumer: str, partition: int, n: int) -> int:
    """Deliver up to ``n`` entries of a partition (priority 0) to ``consumer``; return how many."""
    stream = TopicKeys(topic).stream(partition)
    got: Any = await redis.xreadgroup(group, consumer, {stream: ">"}, count=n)
    return sum(len(entries) for _, entries in got)


async def ack_all(redis: Redis, topic: str, group: str, partition: int) -> int:
    stream = TopicKeys(topic).stream(partition)
    pending: Any = await redis.xpending_range(stream, group, "-", "+", 10_000)
    ids = [p["message_id"] for p in pending]
    return int(await redis.xack(stream, group, *ids)) if ids else 0
