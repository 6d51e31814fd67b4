"""The gateway's WebSockets against real uvicorn servers, with a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from redisaq_core import Producer, ServiceRegistry
from redisaq_core.connection import create_client
from redisaq_core.keys import TopicKeys
from redisaq_core.web import ManagerClient
from redisaq_core.web.gateway import Gateway
from redisaq_core.web.security import token_subprotocol
from tests.helpers import Running, eventually
from tests.web.conftest import LiveGateway, consumer, echo


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def statuses_until(ws: ClientConnection, job_id: str, final: str) -> list[str]:
    """The job_status values received for ``job_id`` up to ``final``."""
    seen: list[str] = []
    while not seen or seen[-1] != final:
        frame = await recv(ws)
        if frame["type"] == "job_status" and frame["job_id"] == job_id:
            seen.append(frame["status"])
    return seen


async def worker_status(base: str, worker_id: str) -> str:
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get(f"/workers/{worker_id}")
        return "unknown" if r.status_code == 404 else str(r.json()["status"])


async def wait_status(base: str, worker_id: str, status: str, timeout: float = 10) -> None:
    async def check() -> bool:
        return await worker_status(base, worker_id) == status

    await eventually(check, timeout=timeout, message=f"{worker_id} {status}")


async def register(base: str, **body: Any) -> str:
    body = {"name": "w", "host": "127.0.0.1", "port": 9000, **body}
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.post("/register", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["worker_id"])


@asynccontextmanager
async def pubsub_admin(url: str) -> AsyncIterator[Redis]:
    client: Any = create_client(url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_submit_over_a_socket_and_follow_every_transition(
    live: LiveGateway, web_redis_url: str, topic: str
) -> None:
    async with connect(f"{live.ws_url}/ws/jobs") as ws:
        await ws.send(json.dumps({"type": "submit_job", "topic": topic,
                                  "payload": {"n": 7}, "request_id": "r1"}))  # fmt: skip
        accepted = await recv(ws)
        assert accepted["type"] == "job_accepted" and accepted["request_id"] == "r1"
        assert accepted["status"] == "queued" and accepted["topic"] == topic
        ok = accepted["job_id"]
        first = await recv(ws)
        assert first == {"type": "job_status", "job_id": ok, "status": "queued"}

        await ws.send(json.dumps({"type": "submit_job", "topic": topic,
                                  "payload": {"fail": True}, "request_id": 2}))  # fmt: skip
        second = await recv(ws)
        assert second["type"] == "job_accepted" and second["request_id"] == 2
        bad = second["job_id"]

        async with Running(consumer(topic, web_redis_url), echo):
            frames: list[dict[str, Any]] = []
            while len([f for f in frames if f.get("status") in ("completed", "dead")]) < 2:
                frames.append(await recv(ws))
        by_job: dict[str, list[dict[str, Any]]] = {}
        for f in frames:
            assert f["type"] == "job_status", f
            by_job.setdefault(f["job_id"], []).append(f)
        assert [f["status"] for f in by_job[ok]] == ["active", "completed"]
        assert by_job[ok][-1]["result"] == {"echo": {"n": 7}}
        assert [f["status"] for f in by_job[bad]] == ["queued", "active", "failed", "active",
                                                      "dead"]  # fmt: skip
        assert by_job[bad][2]["error"] == "asked to fail"
        assert by_job[bad][-1]["error_type"] == "RuntimeError"
        await ws.send(json.dumps({"type": "ping", "request_id": 9}))
        assert await recv(ws) == {"type": "pong", "request_id": 9}


async def test_a_seed_001_client_sends_a_priority_to_a_new_topic(
    live: LiveGateway, web_redis_url: str, topic: str
) -> None:
    """``"priority": 5`` on a topic nobody set up is queued (level 0) and handled."""
    async with connect(f"{live.ws_url}/ws/jobs") as ws:
        await ws.send(json.dumps({"type": "submit_job", "topic": topic, "payload": {"n": 1},
                                  "priority": 5, "job_type": "image", "client_id": "c1",
                                  "request_id": "p5"}))  # fmt: skip
        accepted = await recv(ws)
        assert accepted["type"] == "job_accepted", accepted
        assert accepted["request_id"] == "p5" and accepted["status"] == "queued"
        async with Running(consumer(topic, web_redis_url), echo):
            seen = await statuses_until(ws, accepted["job_id"], "completed")
        assert seen[-1] == "completed"


async def test_follow_a_job_from_another_gateway_one_subscription_per_process(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "heartbeat_timeout": 5.0}
    with LiveGateway(**options) as a, LiveGateway(**options) as b:
        async with httpx.AsyncClient(base_url=a.url) as c:
            jobs = [
                (await c.post("/jobs", json={"topic": topic, "payload": i})).json()["job_id"]
                for i in range(3)
            ]
        sockets = [await connect(f"{b.ws_url}/ws/jobs") for _ in range(10)]
        try:
            for i, ws in enumerate(sockets):
                await ws.send(json.dumps({"type": "subscribe", "job_id": jobs[i % 3]}))
                assert (await recv(ws))["status"] == "queued"
            async with pubsub_admin(web_redis_url) as admin:
                channel = TopicKeys(topic).job_channel
                counts = dict(await admin.pubsub_numsub(channel))
                assert counts[channel.encode()] == 1  # gateway b's one connection, not 10
            async with Running(consumer(topic, web_redis_url), echo):
                for i, ws in enumerate(sockets):
                    seen = await statuses_until(ws, jobs[i % 3], "completed")
                    assert seen == ["active", "completed"]
        finally:
            for ws in sockets:
                await ws.close()


async def test_followed_jobs_survive_a_lost_pubsub_connection(
    live: LiveGateway, web_redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=web_redis_url) as producer:
        handle = await producer.submit({"n": 1})
    async with connect(f"{live.ws_url}/ws/jobs") as ws:
        await ws.send(json.dumps({"type": "subscribe", "job_id": handle.id}))
        assert (await recv(ws))["status"] == "queued"
        async with pubsub_admin(web_redis_url) as admin:
            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        async with Running(consumer(topic, web_redis_url), echo):
            seen = await statuses_until(ws, handle.id, "completed")
        assert seen[-1] == "completed" and "queued" not in seen


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(
    live: LiveGateway, topic: str
) -> None:
    async with connect(f"{live.ws_url}/ws/jobs") as ws:

        async def error_for(frame: str | bytes) -> dict[str, Any]:
            await ws.send(frame)
            answer = await recv(ws)
            assert answer["type"] == "error", answer
            return answer

        assert "invalid JSON" in (await error_for("{nope"))["detail"]
        assert '"type"' in (await error_for("[1, 2]"))["detail"]
        assert '"type"' in (await error_for('{"type": 5}'))["detail"]
        assert "unknown frame type" in (await error_for('{"type": "launch"}'))["detail"]
        missing = await error_for('{"type": "submit_job", "request_id": "x"}')
        assert missing["fields"] == ["topic", "payload"] and missing["request_id"] == "x"
        assert "topic" in missing["detail"] and "payload" in missing["detail"]
        frame = {"type": "submit_job", "topic": topic, "payload": 1, "priority": 99}
        assert (await error_for(json.dumps(frame)))["fields"] == ["priority"]
        assert (await error_for('{"type": "subscribe"}'))["field"] == "job_id"
        assert "job id" in (await error_for('{"type": "subscribe", "job_id": "x"}'))["detail"]
        unknown = f"{topic}/0/00ff"
        answer = await error_for(json.dumps({"type": "subscribe", "job_id": unknown}))
        assert "no record" in answer["detail"] and answer["job_id"] == unknown
        assert "request_id" in (await error_for('{"type": "ping", "request_id": [1]}'))["detail"]
        assert "UTF-8" in (await error_for(b"\xff\xfe"))["detail"]
        await ws.send('{"type": "unsubscribe", "job_id": "whatever/0/1"}')
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"


async def test_worker_heartbeats_alive_not_responding_disconnected(live: LiveGateway) -> None:
    worker_id = await register(live.url, name="Worker 1")
    assert await worker_status(live.url, worker_id) == "registered"
    async with httpx.AsyncClient(base_url=live.url) as c:
        before = (await c.get(f"/workers/{worker_id}")).json()["last_heartbeat"]
    ws = await connect(f"{live.ws_url}/ws/{worker_id}")
    try:
        hello = await recv(ws)
        assert hello["type"] == "connected" and hello["heartbeat_timeout"] == 1.5
        assert await worker_status(live.url, worker_id) == "connected"
        await ws.send(json.dumps({"type": "heartbeat", "worker_id": worker_id}))
        assert (await recv(ws))["type"] == "heartbeat_ack"
        async with httpx.AsyncClient(base_url=live.url) as c:
            worker = (await c.get(f"/workers/{worker_id}")).json()
        assert worker["status"] == "alive" and worker["connected"]
        assert worker["last_heartbeat"] > before  # the Redis server's clock
        started = time.monotonic()
        await wait_status(live.url, worker_id, "not_responding", timeout=6)
        assert time.monotonic() - started >= 1.0
        await ws.send("beat")  # any frame is a heartbeat
        await recv(ws)
        assert await worker_status(live.url, worker_id) == "alive"
    finally:
        await ws.close()
    await wait_status(live.url, worker_id, "disconnected", timeout=5)


async def test_unknown_worker_socket_is_closed_with_4404(live: LiveGateway) -> None:
    async with connect(f"{live.ws_url}/ws/nobody-here") as ws:
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4404


async def test_deregistered_worker_socket_is_closed_with_4410(
    live: LiveGateway, web_redis_url: str, prefix: str
) -> None:
    worker_id = await register(live.url)
    async with connect(f"{live.ws_url}/ws/{worker_id}") as ws:
        await recv(ws)
        async with ServiceRegistry(redis_url=web_redis_url, key_prefix=prefix) as registry:
            assert await registry.deregister_service(worker_id)
        await ws.send("beat")
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4410


async def test_sockets_need_the_token(web_redis_url: str, prefix: str, topic: str) -> None:
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, token="tok") as g:
        for path in ("/ws/jobs", "/ws/dashboard", "/ws/someone"):
            async with connect(f"{g.ws_url}{path}") as ws:
                with pytest.raises(ConnectionClosed) as info:
                    await recv(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        for offered in (["redisaq", token_subprotocol("wrong")], ["redisaq"]):
            async with connect(f"{g.ws_url}/ws/jobs", subprotocols=offered) as ws:  # type: ignore[arg-type]
                with pytest.raises(ConnectionClosed) as info:
                    await recv(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        async with connect(f"{g.ws_url}/ws/jobs?token=tok") as ws:  # never in a URL
            with pytest.raises(ConnectionClosed):
                await recv(ws)
        offered = ["redisaq", token_subprotocol("tok")]
        async with connect(f"{g.ws_url}/ws/jobs", subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "redisaq"  # never the one carrying the token
            await ws.send('{"type": "ping"}')
            assert (await recv(ws))["type"] == "pong"
        headers = {"Authorization": "Bearer tok"}
        async with connect(f"{g.ws_url}/ws/dashboard", additional_headers=headers) as ws:
            assert (await recv(ws))["type"] == "snapshot"
        async with ManagerClient(
            g.url, name="w", host="127.0.0.1", port=1, interval=0.2, token="tok"
        ) as manager:
            await asyncio.wait_for(manager.connected.wait(), 10)
            assert manager.worker_id is not None
            async with httpx.AsyncClient(base_url=g.url, headers=headers) as c:

                async def alive() -> bool:
                    r = await c.get(f"/workers/{manager.worker_id}")
                    return bool(r.json()["status"] == "alive")

                await eventually(alive, timeout=10)


async def test_manager_client_reconnects_and_registers_again(
    web_redis_url: str, prefix: str
) -> None:
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "heartbeat_timeout": 3.0}
    first = LiveGateway(**options)
    with first:
        port = first.port
        manager = ManagerClient(
            first.url, name="Worker 9", host="127.0.0.1", port=8009, interval=0.1,
            backoff=0.05, backoff_max=0.2, metadata={"zone": "a"},
        )  # fmt: skip
        await manager.start()
        await asyncio.wait_for(manager.connected.wait(), 10)
        worker_id = manager.worker_id
        assert worker_id is not None
        await wait_status(first.url, worker_id, "alive")
    try:
        # the gateway is gone: the client keeps trying, with backoff
        await eventually(lambda: not manager.connected.is_set(), timeout=10)
        second = LiveGateway(**options)
        second.server.config.port = port
        with second:
            await asyncio.wait_for(manager.connected.wait(), 10)
            assert manager.reconnects >= 1
            await wait_status(second.url, worker_id, "alive")
            # the registration disappears: the socket is closed, the client registers again
            async with ServiceRegistry(redis_url=web_redis_url, key_prefix=prefix) as registry:
                await registry.deregister_service(worker_id)
            await wait_status(second.url, worker_id, "alive")
            async with httpx.AsyncClient(base_url=second.url) as c:
                worker = (await c.get(f"/workers/{worker_id}")).json()
            assert worker["name"] == "Worker 9" and worker["metadata"] == {"zone": "a"}
    finally:
        await manager.stop()
        await manager.stop()
    assert not manager.running


async def test_dashboard_socket_sends_snapshots(live: LiveGateway, topic: str) -> None:
    async with httpx.AsyncClient(base_url=live.url) as c:
        await c.post("/jobs", json={"topic": topic, "payload": 1})
    async with connect(f"{live.ws_url}/ws/dashboard") as ws:
        snapshot = await recv(ws)
        assert snapshot["type"] == "snapshot"
        assert {"topics", "workers", "dead_letters", "jobs", "topics_total"} <= set(snapshot)
        worker_id = await register(live.url, name="dash")
        await ws.send('{"type": "refresh"}')
        while not any(w["worker_id"] == worker_id for w in snapshot["workers"]):
            snapshot = await recv(ws)
        assert snapshot["workers"][0]["status"] == "registered"


async def test_a_snapshot_that_fails_unexpectedly_does_not_end_the_dashboard(
    live: LiveGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anything but a failed Redis call (a record other clients spoilt, say) ended the
    # dashboard's loop: every open dashboard froze. Now it is an error frame, and on.
    read = Gateway.snapshot
    broken = True

    async def fails_once(self: Gateway) -> dict[str, Any]:
        nonlocal broken
        if broken:
            broken = False
            raise ValueError("a record no reader can read")
        return await read(self)

    monkeypatch.setattr(Gateway, "snapshot", fails_once)
    async with connect(f"{live.ws_url}/ws/dashboard") as ws:
        frame = await recv(ws)
        assert frame == {"type": "error", "detail": "cannot read the snapshot"}
        await ws.send('{"type": "refresh"}')
        assert (await recv(ws))["type"] == "snapshot"


async def test_sockets_from_other_origins_are_refused(live: LiveGateway) -> None:
    async with connect(f"{live.ws_url}/ws/jobs", origin="https://evil.example") as ws:
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4403
    same = f"http://127.0.0.1:{live.port}"
    async with connect(f"{live.ws_url}/ws/jobs", origin=same) as ws:
        await ws.send('{"type": "ping"}')
        assert (await recv(ws))["type"] == "pong"
