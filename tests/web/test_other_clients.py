"""Keys and records other clients wrote stop neither a listing nor the dashboard.

These tests write keys every reader of a database sees (the topic index, the
schedules), so they use a database of their own (number 9 of the session's
server), emptied before and after each test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from redisaq_core import ServiceInfo, ServiceRegistry
from redisaq_core.keys import TopicKeys, schedule_definitions
from redisaq_core.web.sockets import dumps
from tests.web.conftest import LiveGateway

OWN_DB = 9


@pytest.fixture
def own_url(redis_url: str) -> str:
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        pytest.skip("needs a server with numbered databases")
    return urlunsplit(parts._replace(path=f"/{OWN_DB}"))


@pytest.fixture
async def admin(own_url: str) -> AsyncIterator[Redis]:
    """Another client of the database (emptied before and after the test)."""
    redis = Redis.from_url(own_url)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.flushdb()
        await redis.aclose()


@pytest.fixture
def gateway(own_url: str, admin: Redis, prefix: str) -> Iterator[LiveGateway]:
    with LiveGateway(redis_url=own_url, key_prefix=prefix, heartbeat_timeout=5.0) as g:
        yield g


async def snapshot(gateway: LiveGateway) -> dict[str, Any]:
    """A fresh dashboard frame (the first one the socket gets)."""
    async with connect(f"{gateway.ws_url}/ws/dashboard") as ws:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def test_a_topic_whose_keys_are_of_another_type_lists_as_empty(
    gateway: LiveGateway, admin: Redis
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r = await c.post("/jobs", json={"topic": "good", "payload": 1})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        # A topic in the index whose metadata another client made a string; and one
        # whose metadata is fine but whose dead-letter stream is a string.
        await admin.sadd(TopicKeys.topic_index(), "other", "odd")
        await admin.set(TopicKeys("other").meta, "not a hash")
        await admin.hset(TopicKeys("odd").meta, "partitions", 1)
        await admin.set(TopicKeys("odd").dead_letters(0), "not a stream")
        # These answered 503 "Redis unavailable" (and the dashboard said so).
        r = await c.get("/jobs")
        assert r.status_code == 200, r.text
        assert [j["job_id"] for j in r.json()] == [job_id]
        for topic in ("other", "odd"):
            r = await c.get(f"/dlq/{topic}")
            assert (r.status_code, r.json()) == (200, []), r.text
        assert (await c.get("/topics")).status_code == 200
    frame = await snapshot(gateway)
    assert frame["type"] == "snapshot", frame
    assert [j["job_id"] for j in frame["jobs"]] == [job_id]


async def test_a_topic_index_member_that_is_no_topic_name_is_skipped(
    gateway: LiveGateway, admin: Redis
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        job_id = (await c.post("/jobs", json={"topic": "good", "payload": 1})).json()["job_id"]
        await admin.sadd(TopicKeys.topic_index(), "not a topic", "{braces}", "")
        r = await c.get("/jobs")  # answered 422 naming body.topic, which no one sent
        assert r.status_code == 200, r.text
        assert [j["job_id"] for j in r.json()] == [job_id]
        r = await c.get("/topics")
        assert r.status_code == 200 and [t["topic"] for t in r.json()] == ["good"], r.text
        assert (await c.get("/metrics")).status_code == 200
    frame = await snapshot(gateway)
    assert frame["type"] == "snapshot", frame
    assert [j["job_id"] for j in frame["jobs"]] == [job_id]


async def test_a_registration_holding_an_integer_past_64_bits_does_not_stop_the_dashboard(
    gateway: LiveGateway, admin: Redis, own_url: str, prefix: str
) -> None:
    # The library's registry takes any JSON integer; the dashboard's encoder takes none
    # past 64 bits, and every snapshot failed ("cannot read the snapshot").
    async with ServiceRegistry(redis_url=own_url, key_prefix=prefix) as registry:
        info = ServiceInfo("big-1", "h", 1, "worker", metadata={"big": 2**70, "ok": 1})
        await registry.register_service(info)
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r = await c.get("/workers")
        assert r.status_code == 200 and r.json()[0]["metadata"]["big"] == 2**70
    frame = await snapshot(gateway)
    assert frame["type"] == "snapshot", frame
    [worker] = frame["workers"]
    assert worker["metadata"] == {"big": str(2**70), "ok": 1}


def test_frames_write_what_orjson_refuses_as_text() -> None:
    assert json.loads(dumps({"a": [2**64, -(2**63) - 1, 2**64 - 1]})) == {
        "a": [str(2**64), str(-(2**63) - 1), 2**64 - 1]
    }
    deep: Any = 2**70
    for _ in range(300):
        deep = [deep]
    shown = json.loads(dumps({"deep": deep}))["deep"]
    for _ in range(199):
        shown = shown[0]
    assert shown == "(nested too deep to show)"


async def test_an_error_reply_is_not_reported_as_redis_unavailable(
    gateway: LiveGateway, admin: Redis
) -> None:
    # Another client's schedules key of another type: Redis answers WRONGTYPE. That is
    # no outage to retry later (503), but a refusal the answer names.
    await admin.set(schedule_definitions(), "not a hash")
    async with httpx.AsyncClient(base_url=gateway.url) as c:
        r = await c.get("/schedules")
        assert r.status_code == 500, r.text
        assert r.json() == {"detail": "Redis refused the call (WRONGTYPE)"}
        assert (await c.get("/health")).status_code == 200
    frame = await snapshot(gateway)
    assert frame == {"type": "error", "detail": "cannot read the snapshot"}
