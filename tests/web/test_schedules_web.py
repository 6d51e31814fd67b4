"""Schedules over HTTP: ``GET/PUT/DELETE /schedules``, bad input, who may change them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from redisaq_core import Scheduler
from redisaq_core.connection import create_client
from redisaq_core.keys import TopicKeys, schedule_definitions, schedule_ticks
from tests.helpers import eventually
from tests.web.conftest import LiveGateway
from tests.web.test_security import asgi
from tests.web.test_sockets import recv


@pytest.fixture
async def name(web_redis_url: str) -> AsyncIterator[str]:
    """A schedule name no other test uses; whatever is stored under it is removed after."""
    chosen = f"web-{uuid.uuid4().hex[:10]}"
    yield chosen
    async with Scheduler(redis_url=web_redis_url) as scheduler:
        await scheduler.remove(chosen)


async def stored(web_redis_url: str, name: str) -> tuple[Any, Any]:
    """The raw definition and last tick kept in Redis for ``name``."""
    redis = create_client(web_redis_url)
    try:
        return (
            await redis.hget(schedule_definitions(), name),
            await redis.zscore(schedule_ticks(), name),
        )
    finally:
        await redis.aclose()


async def test_a_schedule_put_over_http_is_listed_run_and_removed(
    client: httpx.AsyncClient, web_redis_url: str, topic: str, name: str
) -> None:
    body = {"topic": topic, "cron": "*/5 * * * *", "timezone": "Europe/Paris", "payload": {"r": 1}}
    r = await client.put(f"/schedules/{name}", json=body)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["name"] == name and created["cron"] == "*/5 * * * *"
    assert created["every"] is None and created["payload"] == {"r": 1}
    assert created["missed"] == "skip" and created["job"] is False
    assert created["last_tick"] is not None and created["next_tick"] > created["last_tick"]
    assert created["next_tick"] - created["last_tick"] == 300  # a whole number of 5-minute steps
    assert [s for s in (await client.get("/schedules")).json() if s["name"] == name] == [created]
    assert (await client.get(f"/schedules/{name}")).json() == created

    # Replaced by an interval schedule of the same name: it keeps its last tick.
    every = {"topic": topic, "every": 0.2, "payload": 7, "grace": 1}  # few past ticks
    r = await client.put(f"/schedules/{name}", json=every)
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert replaced["cron"] is None and replaced["every"] == 0.2
    assert replaced["last_tick"] == created["last_tick"]

    # What the gateway stored is what `redisaq schedule run` runs.
    scheduler = Scheduler(redis_url=web_redis_url, reload_interval=0.2)
    async with scheduler:
        running = asyncio.create_task(scheduler.run([name]))
        redis = create_client(web_redis_url)
        try:

            async def ticked() -> bool:
                return int(await redis.xlen(TopicKeys(topic).stream(0))) >= 2

            await eventually(ticked, timeout=15, message="two ticks enqueued")
        finally:
            await redis.aclose()
            await scheduler.stop()
            await asyncio.wait_for(running, 15)
    after = (await client.get(f"/schedules/{name}")).json()
    assert after["last_tick"] > replaced["last_tick"]

    r = await client.delete(f"/schedules/{name}")
    assert r.status_code == 204 and r.content == b""
    assert await stored(web_redis_url, name) == (None, None)
    assert (await client.get(f"/schedules/{name}")).status_code == 404
    again = await client.delete(f"/schedules/{name}")
    assert again.status_code == 404 and name in again.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"cron": "61 * * * *"}, "cron", "cron expression '61 * * * *' is not valid"),
        ({"cron": "every day"}, "cron", "is not valid"),
        ({"cron": "0 0 30 2 *"}, "cron", "it matches no date"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "not a known IANA zone"),
        ({"cron": "* * * * *", "every": 5}, "cron", "exactly one of cron= and every=, got both"),
        ({}, "cron", "exactly one of cron= and every=, got neither"),
        ({"every": 0.001}, "every", "greater than or equal to 0.01"),
        ({"every": 1, "priority": 16}, "priority", "less than or equal to 15"),
        ({"every": 1, "missed": "sometimes"}, "missed", "'skip' or 'catch_up'"),
        ({"every": 1, "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"every": 1, "topic": "a b"}, "topic", "should match pattern"),
    ],
)
async def test_bad_schedules_get_422_naming_the_field_and_store_nothing(
    client: httpx.AsyncClient,
    web_redis_url: str,
    topic: str,
    name: str,
    body: dict[str, Any],
    field: str,
    needle: str,
) -> None:
    r = await client.put(f"/schedules/{name}", json={"topic": topic, **body})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert [e["loc"][-1] for e in errors] == [field], errors
    assert needle in errors[0]["msg"]
    assert await stored(web_redis_url, name) == (None, None)

    # A bad replacement leaves the stored schedule as it was.
    good = await client.put(f"/schedules/{name}", json={"topic": topic, "every": 60})
    assert good.status_code == 200, good.text
    before = await stored(web_redis_url, name)
    again = await client.put(f"/schedules/{name}", json={"topic": topic, **body})
    assert again.status_code == 422
    assert await stored(web_redis_url, name) == before


async def test_bad_schedule_names_get_422(client: httpx.AsyncClient, topic: str) -> None:
    body = {"topic": topic, "every": 1}
    for bad in ("a%20b", "a%7Bb%7D", "é" * 150):  # whitespace, braces, over 200 bytes
        r = await client.put(f"/schedules/{bad}", json=body)
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["detail"]] == [["path", "name"]]
        assert (await client.get(f"/schedules/{bad}")).status_code in (404, 422)


async def test_changing_schedules_needs_the_token_and_the_gateway_origin(
    web_redis_url: str, prefix: str, topic: str, name: str
) -> None:
    token = uuid.uuid4().hex
    body = {"topic": topic, "every": 30}
    async with asgi(redis_url=web_redis_url, key_prefix=prefix, token=token) as c:
        for method, content in (("GET", None), ("PUT", body), ("DELETE", None)):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = await c.request(method, f"/schedules/{name}", json=content, headers=headers)
                assert r.status_code == 401, (method, r.text)
        assert (await c.get("/schedules")).status_code == 401
        assert await stored(web_redis_url, name) == (None, None)

        auth = {"Authorization": f"Bearer {token}"}
        evil = {**auth, "Origin": "https://evil.example"}
        assert (await c.put(f"/schedules/{name}", json=body, headers=evil)).status_code == 403
        rebound = {**auth, "Host": "evil.example"}
        assert (await c.put(f"/schedules/{name}", json=body, headers=rebound)).status_code == 421
        assert await stored(web_redis_url, name) == (None, None)

        r = await c.put(f"/schedules/{name}", json=body, headers=auth)
        assert r.status_code == 200, r.text
        kept = await stored(web_redis_url, name)
        assert (await c.delete(f"/schedules/{name}")).status_code == 401
        assert (await c.delete(f"/schedules/{name}", headers=evil)).status_code == 403
        assert await stored(web_redis_url, name) == kept
        assert (await c.delete(f"/schedules/{name}", headers=auth)).status_code == 204


async def test_the_dashboard_snapshot_lists_schedules(
    live: LiveGateway, web_redis_url: str, topic: str, name: str
) -> None:
    async with (
        httpx.AsyncClient(base_url=live.url) as c,
        connect(f"{live.ws_url}/ws/dashboard") as ws,
    ):
        r = await c.put(f"/schedules/{name}", json={"topic": topic, "cron": "0 7 * * *"})
        assert r.status_code == 200, r.text

        async def listed() -> dict[str, Any] | None:
            frame = await recv(ws)
            rows = [s for s in frame.get("schedules", []) if s["name"] == name]
            return rows[0] if rows else None

        row = await eventually(listed, timeout=15, message="the schedule in a snapshot")
        assert row == r.json()


async def test_what_other_clients_wrote_is_shown_or_skipped_never_a_500(
    client: httpx.AsyncClient, web_redis_url: str, topic: str, name: str
) -> None:
    broken = f"{name}-broken"
    r = await client.put(f"/schedules/{name}", json={"topic": topic, "every": 60})
    assert r.status_code == 200, r.text
    redis = create_client(web_redis_url)
    try:
        await redis.zadd(schedule_ticks(), {name: float("inf")})
        await redis.hset(schedule_definitions(), broken, b"{not json")
        listed = await client.get("/schedules")
        assert listed.status_code == 200, listed.text
        names = [s["name"] for s in listed.json()]
        assert name in names and broken not in names
        shown = (await client.get(f"/schedules/{name}")).json()
        assert shown["last_tick"] is None and shown["next_tick"] is not None
        assert (await client.get(f"/schedules/{broken}")).status_code == 404
        assert (await client.delete(f"/schedules/{broken}")).status_code == 204
    finally:
        await redis.hdel(schedule_definitions(), broken)
        await redis.aclose()
