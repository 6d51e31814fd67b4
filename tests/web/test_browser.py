"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Playwright is given the system browser (``executable_path``), never a
downloaded one. Without Chromium the tests are skipped. Screenshots of the
dashboard are saved as ``test-artifacts/dashboard.png`` and, of its charts
while a producer runs, ``test-artifacts/dashboard-charts.png``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from redisaq_core import Producer
from tests.helpers import Running, eventually
from tests.web.conftest import LiveGateway, consumer, echo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WIDE = {"width": 1280, "height": 1000}

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (Debian: apt-get install chromium)",
    ),
    pytest.mark.timeout(90),
]


@asynccontextmanager
async def browser_page(
    *, viewport: dict[str, int] | None = None, console_errors: bool = False
) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page of headless Chromium (closed on exit) and the list its errors go to.

    Uncaught page errors always; with ``console_errors``, errors logged to the console too.
    """
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = await (browser.new_page(viewport=viewport) if viewport else browser.new_page())
            problems: list[str] = []
            if console_errors:
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            yield page, problems
        finally:
            await browser.close()


async def open_live(page: Any, url: str) -> None:
    """Open the dashboard at ``url`` and wait until its live connection is up."""
    await page.goto(url)
    await page.wait_for_function("document.getElementById('connection').textContent === 'live'")


async def test_dashboard_submits_a_job_and_shows_workers_live(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    token = uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {token}"}
    with LiveGateway(
        redis_url=web_redis_url, key_prefix=prefix, token=token, heartbeat_timeout=1.5
    ) as gateway:
        async with browser_page(viewport=WIDE, console_errors=True) as (page, problems):
            try:
                # the fragment never reaches the server; the page sends the token as a
                # subprotocol on its sockets and as a header on its requests
                await open_live(page, f"{gateway.url}/#token={token}")
                assert "token" not in page.url  # taken out of the address bar

                # a job submitted from the form becomes completed, live
                c = consumer(topic, web_redis_url)
                async with Running(c, echo):
                    await page.fill("#job-topic", topic)
                    await page.fill("#job-payload", '{"n": 42}')
                    await page.click("#job-submit")
                    row = page.locator('#my-jobs tr[data-status="completed"]')
                    await row.wait_for(timeout=15_000)
                    assert '"n":42' in (await row.locator(".detail").inner_text())
                    assert "completed" in await row.locator(".status").inner_text()
                    # the topic shows its partition and its owner
                    owner = page.locator(f'#topics [data-topic="{topic}"] tbody tr')
                    await owner.first.wait_for(timeout=10_000)

                    # a failing job ends in the dead letters
                    await page.fill("#job-payload", '{"fail": true}')
                    await page.click("#job-submit")
                    await page.locator('#my-jobs tr[data-status="dead"]').wait_for(timeout=15_000)
                    letters = page.locator(f'#dead-letters [data-topic="{topic}"]')
                    await letters.wait_for(timeout=10_000)
                    assert "asked to fail" in await letters.inner_text()

                # replay puts it back on its partition (the consumer is stopped now)
                await letters.get_by_role("button", name="Replay all").click()
                await letters.wait_for(state="detached", timeout=10_000)

                # a registered worker goes alive, then not_responding when it goes silent
                async with httpx.AsyncClient(base_url=gateway.url, headers=auth) as http:
                    body = {"name": "browser-worker", "host": "10.0.0.7", "port": 8001}
                    r = await http.post("/register", json=body)
                    worker_id = r.json()["worker_id"]
                worker = f'#workers tr[data-worker-id="{worker_id}"]'
                await page.locator(f'{worker}[data-status="registered"]').wait_for(timeout=10_000)
                async with connect(
                    f"{gateway.ws_url}/ws/{worker_id}", additional_headers=auth
                ) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "heartbeat"}))
                    await ws.recv()
                    await page.locator(f'{worker}[data-status="alive"]').wait_for(timeout=10_000)
                    # the socket stays open but sends nothing more
                    await page.locator(f'{worker}[data-status="not_responding"]').wait_for(
                        timeout=10_000
                    )
                    assert "not responding" in await page.locator(f"{worker} .status").inner_text()
                    ARTIFACTS.mkdir(exist_ok=True)
                    shot = ARTIFACTS / "dashboard-not-responding.png"
                    await page.screenshot(path=str(shot), full_page=True)
                    await ws.send(json.dumps({"type": "heartbeat"}))
                    await ws.recv()
                    await page.locator(f'{worker}[data-status="alive"]').wait_for(timeout=10_000)
            finally:
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert problems == []


_CANVAS_INK = """(selector) => {
    const canvas = document.querySelector(selector + " canvas");
    if (!canvas || !canvas.width) return null;
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let ink = 0, sum = 0;
    for (let i = 0; i < pixels.length; i += 4) {
        if (pixels[i + 3] > 0) { ink += 1; sum = (sum * 31 + pixels[i] + pixels[i + 1] * 7) % 1e9; }
    }
    return { ink: ink, sum: sum };
}"""


async def test_dashboard_charts_draw_and_move_while_a_producer_runs(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    token = uuid.uuid4().hex
    chart = f'#charts [data-topic="{topic}"]'
    throughput = f'{chart} [data-chart="throughput"]'
    with LiveGateway(
        redis_url=web_redis_url, key_prefix=prefix, token=token, heartbeat_timeout=5.0
    ) as gateway:
        async with browser_page(viewport=WIDE, console_errors=True) as (page, problems):
            stop = asyncio.Event()

            async def produce(producer: Producer) -> None:
                n = 0
                while not stop.is_set():
                    await producer.batch_enqueue([{"n": n + i} for i in range(10)])
                    n += 10
                    await asyncio.sleep(0.05)

            try:
                for i in range(11):  # idle topics whose names sort first: the busy one is charted
                    async with Producer(f"0-idle-{i}-{topic}", redis_url=web_redis_url):
                        pass
                async with Producer(topic, redis_url=web_redis_url, init_partitions=2) as producer:
                    c = consumer(topic, web_redis_url)
                    async with Running(c, echo):
                        feeding = asyncio.create_task(produce(producer))
                        await page.goto(f"{gateway.url}/#token={token}")
                        # drawn: a canvas with lines on it, and the figures behind them
                        await page.wait_for_function(
                            "(s) => Number(document.querySelector(s)?.dataset.total) > 0",
                            arg=throughput, timeout=20_000,
                        )  # fmt: skip
                        first = await page.evaluate(_CANVAS_INK, throughput)
                        assert first is not None and first["ink"] > 500
                        total = await page.get_attribute(throughput, "data-total")
                        # moving: the figures and the pixels change while the producer runs
                        await page.wait_for_function(
                            "([s, t]) => document.querySelector(s).dataset.total !== t",
                            arg=[throughput, total], timeout=20_000,
                        )  # fmt: skip
                        # the redraw follows the figures: wait for the pixels too
                        await page.wait_for_function(
                            f"([s, before]) => {{ const r = ({_CANVAS_INK})(s); "
                            "return r !== null && r.sum !== before; }",
                            arg=[throughput, first["sum"]], timeout=20_000,
                        )  # fmt: skip
                        latency = f'{chart} [data-chart="latency"]'
                        await page.wait_for_function(
                            "(s) => document.querySelector(s)?.dataset.last > 0",
                            arg=latency, timeout=20_000,
                        )  # fmt: skip
                        lag = f'{chart} [data-chart="lag"]'
                        assert await page.evaluate(_CANVAS_INK, lag) is not None
                        legend = await page.locator(f"{throughput} .u-legend").inner_text()
                        assert "produced" in legend and f"handled {c.group}" in legend
                        ARTIFACTS.mkdir(exist_ok=True)
                        await page.locator("#charts-section").screenshot(
                            path=str(ARTIFACTS / "dashboard-charts.png")
                        )
                        stop.set()
                        await feeding
            finally:
                stop.set()
    assert problems == []


async def _shows_a_time(cell: Any) -> bool:
    text: str = await cell.inner_text()
    return text not in ("", "never")


async def test_dashboard_lists_the_stored_schedules(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    from redisaq_core import Scheduler

    name = f"browser-{uuid.uuid4().hex[:8]}"
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix) as gateway:
        async with browser_page() as (page, problems):
            try:
                await open_live(page, gateway.url)
                body = {"topic": topic, "cron": "0 7 * * *", "timezone": "Europe/Paris"}
                async with httpx.AsyncClient(base_url=gateway.url) as http:
                    r = await http.put(f"/schedules/{name}", json=body)
                    assert r.status_code == 200, r.text
                    row = page.locator(f'#schedules tr[data-schedule="{name}"]')
                    await row.wait_for(timeout=15_000)
                    cells = await row.locator("td").all_inner_texts()
                    assert cells[:3] == [name, topic, "0 7 * * * (Europe/Paris)"]
                    assert cells[4]  # the next tick
                    # The last tick shows once the gateway's ticker has run its first round,
                    # which may come after the row does.
                    last = row.locator("td.last")
                    await eventually(
                        lambda: _shows_a_time(last), timeout=15, message="a last tick shown"
                    )
                    assert await page.locator("#schedules-empty").is_hidden()
                    assert (await http.delete(f"/schedules/{name}")).status_code == 204
                await row.wait_for(state="detached", timeout=15_000)
                assert problems == []
            finally:
                async with Scheduler(redis_url=web_redis_url) as scheduler:
                    await scheduler.remove(name)


async def test_a_letter_replayed_from_its_row_is_that_one_though_another_partition_shares_its_id(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    """Dead-letter ids are unique within a partition only: two written in the same millisecond
    on two partitions share one. A row's button replays its own letter, and only it."""
    from redis.asyncio import Redis

    from redisaq_core.keys import TopicKeys

    keys = TopicKeys(topic)
    async with Producer(topic, redis_url=web_redis_url, init_partitions=2) as producer:
        for n in range(8):
            await producer.enqueue({"fail": True, "n": n}, partition_key="n")
    redis = Redis.from_url(web_redis_url)
    try:
        c = consumer(topic, web_redis_url, max_deliveries=1)
        async with Running(c, echo):
            await eventually(lambda: _letters_are(redis, keys, 8), timeout=15, message="8 letters")
        assert 0 not in await _dead_letters(redis, keys)  # keys 0 to 7 hash to both
        for p in range(2):  # each partition keeps one letter, both with the id 1-0
            dead = keys.dead_letters(p)
            (_, fields), *_ = await redis.xrange(dead)
            await redis.delete(dead)
            await redis.xadd(dead, fields, id="1-0")
        before = await redis.xlen(keys.stream(1))
        with LiveGateway(redis_url=web_redis_url, key_prefix=prefix) as gateway:
            async with browser_page() as (page, problems):
                await open_live(page, gateway.url)
                letters = page.locator(f'#dead-letters [data-topic="{topic}"]')
                row = letters.locator('tr[data-dead-letter="1:1-0"]')
                await row.wait_for(timeout=10_000)
                await row.get_by_role("button", name="Replay").click()
                await row.wait_for(state="detached", timeout=10_000)
                assert await letters.locator('tr[data-dead-letter="0:1-0"]').count() == 1
                assert problems == []
        assert await _dead_letters(redis, keys) == [1, 0]
        assert await redis.xlen(keys.stream(1)) == before + 1
    finally:
        await redis.aclose()


async def _dead_letters(redis: Any, keys: Any) -> list[int]:
    return [int(await redis.xlen(keys.dead_letters(p))) for p in range(2)]


async def _letters_are(redis: Any, keys: Any, n: int) -> bool:
    return sum(await _dead_letters(redis, keys)) == n
