"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Playwright is given the system browser (``executable_path``), never a
downloaded one. Without Chromium the test is skipped. A screenshot of the
dashboard is saved as ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.helpers import Running
from tests.web.conftest import LiveGateway, consumer, echo

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Chromium is not installed (Debian: apt-get install chromium)",
    ),
    pytest.mark.timeout(90),
]


async def test_dashboard_submits_a_job_and_shows_workers_live(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    token = uuid.uuid4().hex
    auth = {"Authorization": f"Bearer {token}"}
    with LiveGateway(
        redis_url=web_redis_url, key_prefix=prefix, token=token, heartbeat_timeout=1.5
    ) as gateway:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            try:
                # the fragment never reaches the server; the page sends the token as a
                # subprotocol on its sockets and as a header on its requests
                await page.goto(f"{gateway.url}/#token={token}")
                await page.wait_for_function(
                    "document.getElementById('connection').textContent === 'live'"
                )
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
                await browser.close()
    assert problems == []
