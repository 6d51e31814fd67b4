"""The FastAPI examples: the worker (seed 002) against a gateway, the job app (seed 004)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.helpers import eventually
from tests.web.conftest import LiveGateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "fastapi"


def load(name: str) -> ModuleType:
    """Import an example file as a fresh module (it reads its settings from the environment)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


async def test_worker_example_registers_and_heartbeats(
    live: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKER_NAME", "Example Worker")
    monkeypatch.setenv("WORKER_PORT", "8011")
    monkeypatch.setenv("MANAGER_HOST", "127.0.0.1")
    monkeypatch.setenv("MANAGER_PORT", str(live.port))
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "0.2")
    worker = load("worker")
    async with LifespanManager(worker.app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as c:

            async def healthy() -> bool:
                body = (await c.get("/health")).json()
                return bool(body["manager_connected"] and body["heartbeats_sent"] >= 2)

            await eventually(healthy, timeout=10)
            worker_id = (await c.get("/health")).json()["worker_id"]
        async with httpx.AsyncClient(base_url=live.url) as gateway:

            async def alive() -> bool:
                w = (await gateway.get(f"/workers/{worker_id}")).json()
                return bool(w["status"] == "alive" and w["name"] == "Example Worker")

            await eventually(alive, timeout=10)
            w = (await gateway.get(f"/workers/{worker_id}")).json()
            assert w["port"] == 8011 and w["host"] == "127.0.0.1"
    async with httpx.AsyncClient(base_url=live.url) as gateway:

        async def disconnected() -> bool:
            w = (await gateway.get(f"/workers/{worker_id}")).json()
            return bool(w["status"] == "disconnected")

        await eventually(disconnected, timeout=10)


async def test_job_app_example_enqueues_and_processes(
    web_redis_url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", web_redis_url)
    monkeypatch.setenv("TOPIC", topic)
    example = load("app")
    async with LifespanManager(example.app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            r = await c.post("/jobs", json={"task": "resize", "user": "u1", "seconds": 0})
            assert r.status_code == 201, r.text
            job_id = r.json()["job_id"]
            r = await c.get(f"/jobs/{job_id}/result", params={"timeout": 15})
            assert r.status_code == 200, r.text
            record = r.json()
            assert record["status"] == "completed"
            assert record["result"]["task"] == "resize" and record["result"]["user"] == "u1"
            assert (await c.get(f"/jobs/{job_id}")).json()["status"] == "completed"
            assert (await c.get(f"/jobs/{topic}/0/ffff")).status_code == 404
            assert (await c.get("/jobs/garbage")).status_code == 422
            assert (await c.post("/jobs", json={"user": "u1"})).status_code == 422
