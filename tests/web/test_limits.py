"""The gateway's memory bounds: sockets, socket queues, frames, dead-letter pages, heartbeats."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from redisaq_core import Producer
from redisaq_core.errors import ConfigurationError
from redisaq_core.results import JobRecord, JobStatus
from redisaq_core.web import create_app
from redisaq_core.web.sockets import JobsSession, encode_status
from tests.helpers import Running, eventually
from tests.web.conftest import LiveGateway, consumer
from tests.web.test_security import raw_handshake
from tests.web.test_sockets import recv, register


async def slow_client(url: str, port: int) -> ClientConnection:
    """A client that reads nothing: a tiny receive buffer, and frames left unread."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await connect(url, sock=sock, max_queue=1)


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the socket closes; its close code (``None`` if no close frame came)."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return None if info.value.rcvd is None else info.value.rcvd.code


async def test_sockets_beyond_max_sockets_are_closed_with_1013(
    web_redis_url: str, prefix: str
) -> None:
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, max_sockets=2) as g:
        first = await connect(f"{g.ws_url}/ws/jobs")
        second = await connect(f"{g.ws_url}/ws/dashboard")
        try:
            await first.send('{"type": "ping"}')
            assert (await recv(first))["type"] == "pong"
            async with connect(f"{g.ws_url}/ws/jobs") as third:
                assert await closed_with(third) == 1013
            assert third.close_reason == "too many sockets (max 2)"
        finally:
            await first.close()

        async def room() -> bool:
            async with connect(f"{g.ws_url}/ws/jobs") as ws:
                try:
                    await ws.send('{"type": "ping"}')
                    return (await recv(ws))["type"] == "pong"
                except ConnectionClosed:
                    return False

        await eventually(room, timeout=10, message="a socket once one closed")
        await second.close()


async def test_a_client_that_reads_nothing_is_closed_with_4408(
    web_redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redisaq_core.web.sockets")
    limit = 32_768
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "socket_queue_bytes": limit}
    with LiveGateway(**options) as g:
        ws = await slow_client(f"{g.ws_url}/ws/jobs", g.port)
        pad = "p" * 180
        for i in range(4000):  # ~1 MB of pongs, far more than the buffers on the way hold
            await ws.send(json.dumps({"type": "ping", "request_id": f"{pad}{i}"}))

        def tripped() -> bool:
            return any("client too slow" in r.getMessage() for r in caplog.records)

        await eventually(tripped, timeout=10, message="the queue bound tripped")
        pongs = 0
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
                    pongs += 1
        assert info.value.rcvd is not None and info.value.rcvd.code == 4408
        assert 0 < pongs < 4000  # what was queued beyond the bound was dropped


async def test_a_client_that_never_reads_its_close_is_dropped(
    web_redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(JobsSession, "close_timeout", 0.5)
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "max_sockets": 1,
               "socket_queue_bytes": 16_384}  # fmt: skip
    with LiveGateway(**options) as g:
        ws = await slow_client(f"{g.ws_url}/ws/jobs", g.port)
        try:
            for i in range(4000):
                await ws.send(json.dumps({"type": "ping", "request_id": "p" * 180 + str(i)}))

            async def served() -> bool:  # the one slot is free again once it was dropped
                async with connect(f"{g.ws_url}/ws/jobs") as other:
                    try:
                        await other.send('{"type": "ping"}')
                        return (await recv(other))["type"] == "pong"
                    except ConnectionClosed:
                        return False

            await eventually(served, timeout=15, message="the slow socket's slot freed")
        finally:
            ws.transport.abort()


async def test_frames_over_the_limit_are_refused_before_they_are_read(
    web_redis_url: str, prefix: str
) -> None:
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, max_body_size=65_536) as g:
        # only a frame header announcing 1 GiB is sent: the server closes with 1009 at once
        header = bytes([0x81, 0xFF]) + (1 << 30).to_bytes(8, "big") + b"\x00\x00\x00\x00"

        def announce_a_huge_frame() -> bytes:
            return raw_handshake(g.port, "/ws/jobs", f"127.0.0.1:{g.port}", frame=header)

        answer = await asyncio.to_thread(announce_a_huge_frame)
        _, _, frames = answer.partition(b"\r\n\r\n")
        assert frames[:1] == b"\x88" and int.from_bytes(frames[2:4], "big") == 1009
    # behind a server with a larger frame limit, the app still refuses the frame
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "max_body_size": 1000}
    with LiveGateway(ws_max_size=1_048_576, **options) as g:
        async with connect(f"{g.ws_url}/ws/jobs") as ws:
            await ws.send(" " * 2000)
            assert "larger than 1000 bytes" in (await recv(ws))["detail"]


def test_a_result_larger_than_the_queue_bound_is_left_out_of_its_frame() -> None:
    record = JobRecord(id="t/0/1", topic="t", partition=0, status=JobStatus.COMPLETED,
                       has_result=True, result="r" * 5000, attempts=1)  # fmt: skip
    small = orjson.loads(encode_status("t/0/1", "completed", record, 100_000))
    assert small["result"] == "r" * 5000
    big = orjson.loads(encode_status("t/0/1", "completed", record, 1000))
    assert "result" not in big and "GET /jobs/t/0/1" in big["result_omitted"]
    assert big["status"] == "completed" and big["attempts"] == 1


async def test_worker_heartbeats_are_written_at_most_once_per_interval(
    web_redis_url: str, prefix: str
) -> None:
    options = {"redis_url": web_redis_url, "key_prefix": prefix, "heartbeat_timeout": 5.0,
               "heartbeat_min_interval": 0.5}  # fmt: skip
    with LiveGateway(**options) as g:
        worker_id = await register(g.url)
        async with httpx.AsyncClient(base_url=g.url) as c:

            async def last_heartbeat() -> float:
                return float((await c.get(f"/workers/{worker_id}")).json()["last_heartbeat"])

            async with connect(f"{g.ws_url}/ws/{worker_id}") as ws:
                await recv(ws)
                await ws.send("beat")
                assert (await recv(ws))["type"] == "heartbeat_ack"
                first = await last_heartbeat()
                started = time.monotonic()
                for _ in range(50):  # a flood within the interval: answered, not written
                    await ws.send("beat")
                    assert (await recv(ws))["type"] == "heartbeat_ack"
                if time.monotonic() - started < 0.4:
                    assert await last_heartbeat() == first

                async def written() -> bool:
                    await ws.send("beat")
                    await recv(ws)
                    return await last_heartbeat() > first

                await eventually(written, timeout=5, interval=0.05)
                assert time.monotonic() - started >= 0.45
    with pytest.raises(ConfigurationError, match="heartbeat_min_interval"):
        create_app(heartbeat_timeout=2, heartbeat_min_interval=2)


async def dead_letters(url: str, topic: str, count: int, pad: int) -> list[str]:
    """``count`` jobs of ``topic`` (2 partitions) dead-lettered by a failing consumer."""
    async with Producer(topic, redis_url=url, init_partitions=2) as producer:
        jobs = [
            await producer.submit({"fail": True, "i": i, "pad": "x" * pad}, partition_key="i")
            for i in range(count)
        ]
    async with Running(consumer(topic, url, max_deliveries=1), _fail) as c:
        from redisaq_core.dlq import DeadLetters

        async def all_dead() -> bool:
            async with DeadLetters(topic, redis=c.redis) as d:
                return await d.count() == count

        await eventually(all_dead, timeout=15)
    return [j.id for j in jobs]


async def _fail(message: Any) -> None:
    raise RuntimeError("dead on arrival")


async def test_dead_letters_are_listed_by_pages_within_a_byte_budget(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    await dead_letters(web_redis_url, topic, 12, pad=3000)
    app = create_app(redis_url=web_redis_url, key_prefix=prefix, dead_letter_page_bytes=8000)
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": 100}
                if cursor is not None:
                    params["cursor"] = cursor
                r = await c.get(f"/dlq/{topic}", params=params)
                assert r.status_code == 200, r.text
                page = r.json()
                assert len(r.content) <= 8000 or len(page) == 1
                seen += [d["id"] + "@" + str(d["partition"]) for d in page]
                pages += 1
                cursor = r.headers.get("x-next-cursor")
                if cursor is None:
                    break
                assert 'rel="next"' in r.headers["link"] and "cursor=" in r.headers["link"]
            assert len(seen) == 12 == len(set(seen)) and pages >= 5
            limited = await c.get(f"/dlq/{topic}", params={"limit": 5})
            assert len(limited.json()) <= 5 and limited.headers["x-next-cursor"]
            r = await c.get(f"/dlq/{topic}", params={"cursor": "nonsense"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
            assert (await c.get(f"/dlq/{topic}", params={"limit": 1001})).status_code == 422


def test_limits_are_checked() -> None:
    for name in ("max_sockets", "socket_queue_bytes", "dead_letter_page_bytes"):
        with pytest.raises(ConfigurationError, match=name):
            create_app(**{name: 0})  # type: ignore[arg-type]
