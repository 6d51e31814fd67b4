"""Job records, topics, groups and members for the tests of the read side.

The tests of results, metrics and the monitor build their data with these
helpers. Job changes go through the library's own scripts (those of
``Producer.submit`` and of a consumer's status writes, acknowledgements and
dead letters), so a change of the record layout shows here too; topics,
groups and members are written as ``redisaq_core.keys`` lays them out.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core._codec import F_BYTES, F_JOB
from redisaq_core._scripts import DEAD_LETTER, JOB_UPDATE, JOBS_COMPLETE, JOBS_STARTED, SUBMIT
from redisaq_core.dlq import dead_letter_fields
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


_LEASE_TOKEN = "job-records"
_GROUP = "job-records"


async def submit(
    redis: Redis,
    topic: str,
    partition: int = 0,
    *,
    priority: int = 0,
    result_ttl: int = 3600,
    payload: Any = None,
) -> str:
    """A queued job: its stream entry and record, written by ``Producer.submit``'s script."""
    keys = TopicKeys(topic)
    jid = job_id(topic, partition, uuid.uuid4().hex)
    stream = keys.stream(partition, priority)
    await SUBMIT(
        redis,
        [stream, keys.job(partition, jid), keys.jobs(partition)],
        [0, "~", jid, keys.job_channel, topic, partition, priority, result_ttl, 0,
         F_BYTES, orjson.dumps(payload), F_JOB, jid],
    )  # fmt: skip
    return jid


async def activate(redis: Redis, jid: str, worker: str = "w1") -> None:
    """The job's handler started (a consumer's ``started()`` script), attempt + 1."""
    topic, partition = parse_job_id(jid)
    keys = TopicKeys(topic)
    attempts = int(await redis.hget(keys.job(partition, jid), "attempts") or 0) + 1
    lease = keys.lease(partition, "jr")
    await redis.set(lease, "jr-token")
    await JOBS_STARTED(
        redis,
        [keys.jobs(partition), lease, keys.job(partition, jid)],
        [keys.job_channel, worker, len(keys.job(partition, "")), "jr-token", attempts],
    )


async def fail(redis: Redis, jid: str, error: str = "boom", error_type: str = "ValueError") -> None:
    """The job's handler raised; it will be retried (the consumer's status script)."""
    topic, partition = parse_job_id(jid)
    keys = TopicKeys(topic)
    await JOB_UPDATE(
        redis,
        [keys.job(partition, jid), keys.jobs(partition)],
        [jid, keys.job_channel, "failed", "w1", error, error_type, 0],
    )


async def _settling(redis: Redis, jid: str) -> tuple[TopicKeys, int, str, str]:
    """Keys, partition, stream and entry id of a job, with a lease the helpers hold."""
    topic, partition = parse_job_id(jid)
    keys = TopicKeys(topic)
    record = await redis.hgetall(keys.job(partition, jid))
    stream = keys.stream(partition, int(record.get(b"priority", 0)))
    await redis.set(keys.lease(partition, _GROUP), _LEASE_TOKEN, px=60_000)
    return keys, partition, stream, record[b"msg_id"].decode()


async def _deliver(redis: Redis, stream: str, msg_id: str) -> None:
    """Deliver entry ``msg_id`` (only it) to member w1 of the group, as a read would."""
    ms, seq = (int(part) for part in msg_id.split("-"))
    before = f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**64 - 1}"
    await redis.xgroup_create(stream, _GROUP, before, mkstream=True)
    await redis.xreadgroup(_GROUP, "w1", {stream: ">"}, count=1)


async def complete(
    redis: Redis,
    jid: str,
    result: Any = None,
    *,
    text: bool = False,
    worker: str = "w1",
    publish: bool = True,
) -> None:
    """The job's handler returned ``result``: the acknowledgement script of a consumer.

    ``publish=False`` writes the record as it would be without the announcement (one lost
    on its way), straight into the hash.
    """
    data: bytes | str = orjson.dumps(result).decode() if text else orjson.dumps(result)
    kind = "s" if text else "b"
    keys, partition, stream, msg_id = await _settling(redis, jid)
    if not publish:
        now = await server_ms(redis)
        await redis.hset(
            keys.job(partition, jid),
            mapping={"status": "completed", "completed_at": now, "updated_at": now,
                     "worker": worker, "result": data, "result_kind": kind},
        )  # fmt: skip
        return
    await JOBS_COMPLETE(
        redis,
        [stream, keys.lease(partition, _GROUP), keys.jobs(partition), keys.job(partition, jid)],
        [
            _GROUP,
            _LEASE_TOKEN,
            keys.job_channel,
            worker,
            len(keys.job(partition, "")),
            msg_id,
            kind + (data if isinstance(data, str) else data.decode()),
        ],
    )


async def kill(redis: Redis, jid: str, error: str = "boom", error_type: str = "ValueError") -> None:
    """Retries exhausted: the dead-letter script of a consumer (the job becomes ``dead``)."""
    keys, partition, stream, msg_id = await _settling(redis, jid)
    await _deliver(redis, stream, msg_id)  # a dead letter is made only of a pending entry
    fields = dead_letter_fields(
        topic=keys.topic, partition=partition, group=_GROUP, msg_id=msg_id, deliveries=1,
        error=error, consumer="w1", original={},
    )  # fmt: skip
    await DEAD_LETTER(
        redis,
        [stream, keys.lease(partition, _GROUP), keys.dead_letters(partition),
         keys.job(partition, jid), keys.jobs(partition)],
        [_GROUP, _LEASE_TOKEN, msg_id, 0, jid, keys.job_channel, "w1", error, error_type, "",
         len(fields), *fields],
    )  # fmt: skip
    await redis.xgroup_destroy(stream, _GROUP)  # the helpers' own: not for listings to show


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
