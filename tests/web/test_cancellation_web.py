"""Cancelling jobs over HTTP, and job progress and cancellations on ``/ws/jobs``."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from redisaq_core import Producer, Received
from tests.helpers import Running
from tests.web.conftest import LiveGateway, consumer
from tests.web.test_sockets import recv


async def test_cancel_over_http_queued_finished_unknown_and_malformed(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    job_id = (await client.post("/jobs", json={"topic": topic, "payload": 1})).json()["job_id"]
    r = await client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": job_id, "status": "cancelled"}
    record = (await client.get(f"/jobs/{job_id}")).json()
    assert record["status"] == "cancelled" and record["cancelled_at"] is not None

    again = await client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert (await client.get(f"/jobs/{job_id}")).json() == record  # nothing changed

    unknown = await client.post(f"/jobs/{topic}/0/{uuid.uuid4().hex}/cancel")
    assert unknown.status_code == 404 and "no record" in unknown.json()["detail"]
    malformed = await client.post("/jobs/not-a-job-id/cancel")
    assert malformed.status_code == 422
    assert [e["loc"][-1] for e in malformed.json()["detail"]] == ["job_id"]
    listed = await client.get("/jobs", params={"topic": topic, "status": "cancelled"})
    assert [j["job_id"] for j in listed.json()] == [job_id]


async def test_progress_and_cancellation_reach_a_jobs_socket(
    live: LiveGateway, web_redis_url: str, topic: str
) -> None:
    first_seen = asyncio.Event()

    async def handler(m: Received) -> Any:
        await m.progress(0.5)
        await first_seen.wait()
        await m.progress({"step": 2, "of": 3})
        await asyncio.sleep(60)

    async with Producer(topic, redis_url=web_redis_url) as producer:
        job = await producer.submit({"n": 1})
        async with connect(f"{live.ws_url}/ws/jobs") as ws:
            await ws.send(json.dumps({"type": "subscribe", "job_id": job.id}))
            assert (await recv(ws))["status"] == "queued"
            async with Running(consumer(topic, web_redis_url), handler):
                active = {"type": "job_status", "job_id": job.id, "status": "active"}
                assert await recv(ws) == active
                assert await recv(ws) == {**active, "progress": 0.5}
                first_seen.set()
                assert await recv(ws) == {**active, "progress": {"step": 2, "of": 3}}
                async with httpx.AsyncClient(base_url=live.url) as c:
                    r = await c.post(f"/jobs/{job.id}/cancel")
                assert r.json()["status"] == "cancelling"
                assert (await recv(ws))["status"] == "cancelling"
                assert (await recv(ws))["status"] == "cancelled"
        record = await job.record()
        assert record is not None and record.progress == {"step": 2, "of": 3}


async def test_the_dashboard_shows_progress_and_the_cancellation(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    from tests.web.test_browser import CHROMIUM, browser_page, open_live

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    reported = asyncio.Event()

    async def handler(m: Received) -> Any:
        await m.progress({"rows": 120})
        reported.set()
        await asyncio.sleep(60)

    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix) as gateway:
        async with browser_page() as (page, problems):
            await open_live(page, gateway.url)
            async with Running(consumer(topic, web_redis_url), handler):
                await page.fill("#job-topic", topic)
                await page.fill("#job-payload", '{"n": 1}')
                await page.click("#job-submit")
                await asyncio.wait_for(reported.wait(), 15)
                row = page.locator('#my-jobs tr[data-status="active"]')
                await row.wait_for(timeout=15_000)
                detail = row.locator(".detail")
                await page.wait_for_function(
                    "el => el.textContent.includes('progress')",
                    arg=await detail.element_handle(),
                    timeout=15_000,
                )
                assert '{"rows":120}' in await detail.inner_text()
                job_id = await row.get_attribute("data-job-id")
                async with httpx.AsyncClient(base_url=gateway.url) as c:
                    r = await c.post(f"/jobs/{job_id}/cancel")
                assert r.json()["status"] == "cancelling"
                done = page.locator('#my-jobs tr[data-status="cancelled"]')
                await done.wait_for(timeout=15_000)
            assert problems == []
