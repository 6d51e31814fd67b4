"""How much memory a topic's 15-minute series takes: fill every slot, ask MEMORY USAGE.

    PYTHONPATH=. python tools/series_memory.py redis://127.0.0.1:PORT/0 [GROUPS]

One bucket record is written by the real metrics flush (a producer's counts
and, for each of GROUPS consumer groups (default 1), handled messages in
every histogram bucket and a lag sample: the largest record a default
recorder writes), then copied into all the ring's slots with each slot's own
bucket start. Prints ``MEMORY USAGE <key> SAMPLES 0`` of the series hash.
Use a scratch server: the topic is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from redisaq_core.connection import create_client
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import DEFAULT_BUCKETS, MetricsRecorder, record_lag
from redisaq_core.metrics._series import SLOTS, STEP


async def main(url: str, groups: int) -> None:
    """Fill one topic's series on ``url`` for ``groups`` groups and print its memory."""
    redis = create_client(url)
    topic = f"series-memory-{uuid.uuid4().hex[:8]}"
    key = TopicKeys(topic).series
    try:
        producer = MetricsRecorder(redis, topic, flush_interval=60)
        producer.produced(0, 123_456)
        recorders = [
            MetricsRecorder(redis, topic, f"group-{i}", flush_interval=60) for i in range(groups)
        ]
        for recorder in recorders:
            for bound in (*DEFAULT_BUCKETS, 20.0):
                for _ in range(3):
                    recorder.handled(0, bound * 0.9)
        sec, _ = await redis.time()
        for recorder in (producer, *recorders):
            await recorder.stop()
        await record_lag(redis, topic, {f"group-{i}": 1_234_567 for i in range(groups)})
        bucket = int(sec) // STEP
        raw = await redis.hget(key, str(bucket % SLOTS))
        assert isinstance(raw, bytes), raw
        start = b'"t":%d' % (bucket * STEP)
        assert raw.count(start) == 1, raw
        for k in range(SLOTS):
            other = (bucket - k) * STEP
            await redis.hset(key, str((bucket - k) % SLOTS), raw.replace(start, b'"t":%d' % other))
        info = await redis.info("server")
        server = info.get("valkey_version") and f"Valkey {info['valkey_version']}"
        server = server or f"Redis {info['redis_version']}"
        used = await redis.memory_usage(key, samples=0)
        print(f"{server}: {groups} group(s), {SLOTS} records of {len(raw)} bytes: {used} bytes")
        print(f"  redis-cli MEMORY USAGE '{key}' SAMPLES 0")
    finally:
        await redis.delete(key, TopicKeys(topic).metrics)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1))
