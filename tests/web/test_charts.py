"""``GET /topics/{name}/series``: the dashboard's charts, read from Redis by every gateway alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from redisaq_core import Producer
from redisaq_core.connection import create_client
from redisaq_core.keys import TopicKeys
from redisaq_core.metrics import SERIES_STEP, SERIES_WINDOW
from redisaq_core.web import create_app
from tests.helpers import Running, eventually
from tests.web.conftest import consumer, echo


@contextlib.asynccontextmanager
async def _gateway(url: str, prefix: str, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(redis_url=url, key_prefix=prefix, **options)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def _counts(series: dict[str, Any]) -> dict[str, Any]:
    """The series with its rates turned back into counts (the current bucket's rate is over
    the part of it that passed when it was read)."""
    last = min(float(SERIES_STEP), max(1.0, series["time"] - series["times"][-1]))
    spans = [SERIES_STEP] * (len(series["times"]) - 1) + [last]

    def counts(rates: list[float]) -> list[int]:
        return [round(r * s) for r, s in zip(rates, spans, strict=True)]

    out = {k: v for k, v in series.items() if k != "time"}
    out["produced"] = counts(series["produced"])
    out["groups"] = [{**g, "handled": counts(g["handled"])} for g in series["groups"]]
    return out


async def test_two_gateways_serve_the_same_series(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    async with Producer(topic, redis_url=web_redis_url, init_partitions=2) as producer:
        c = consumer(topic, web_redis_url)
        async with Running(c, echo):
            await producer.batch_enqueue([{"n": i} for i in range(30)])
            await eventually(lambda: c.stats.handled == 30, timeout=15)
    async with (
        _gateway(web_redis_url, prefix) as one,
        _gateway(web_redis_url, prefix) as two,
    ):
        a = (await one.get(f"/topics/{topic}/series")).json()
        b = (await two.get(f"/topics/{topic}/series")).json()
        if a["times"] != b["times"]:  # a bucket ended between the two reads
            a = (await one.get(f"/topics/{topic}/series")).json()
            b = (await two.get(f"/topics/{topic}/series")).json()
        assert _counts(a) == _counts(b)
        assert a["step"] == SERIES_STEP and a["window"] == SERIES_WINDOW
        assert len(a["times"]) == len(a["produced"]) == SERIES_WINDOW // SERIES_STEP
        (group,) = a["groups"]
        assert group["group"] == c.group and any(group["handled"])
        assert any(v is not None for v in group["p99"]) and 0 in group["lag"][-2:]

        assert (await one.get("/topics/no-such-topic/series")).status_code == 404
        r = await one.get("/topics/%7Bbad%7D/series")
        assert r.status_code == 422 and "braces" in r.text


async def test_a_malformed_record_is_skipped(web_redis_url: str, prefix: str, topic: str) -> None:
    async with Producer(topic, redis_url=web_redis_url) as producer:
        await producer.enqueue({"n": 1})
    redis: Redis = create_client(web_redis_url)
    try:
        await redis.hset(TopicKeys(topic).series, mapping={"7": "{not json", "slot": "[]"})
    finally:
        await redis.aclose()
    async with _gateway(web_redis_url, prefix) as gateway:
        r = await gateway.get(f"/topics/{topic}/series")
        assert r.status_code == 200, r.text
        series = r.json()
        assert series["skipped"] == 2 and sum(series["produced"]) > 0


async def test_the_series_needs_the_token(web_redis_url: str, prefix: str, topic: str) -> None:
    async with Producer(topic, redis_url=web_redis_url) as producer:
        await producer.enqueue({"n": 1})
    async with _gateway(web_redis_url, prefix, token="s3cret") as gateway:
        r = await gateway.get(f"/topics/{topic}/series")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = await gateway.get(f"/topics/{topic}/series", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["topic"] == topic
