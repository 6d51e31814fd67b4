"""Who may talk to the gateway: the Host allow-list (DNS rebinding), Origins, tokens."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from redisaq_core.errors import ConfigurationError
from redisaq_core.web import create_app
from redisaq_core.web.security import host_name, subprotocol_token, token_subprotocol
from tests.web.conftest import LiveGateway
from tests.web.test_sockets import recv


@asynccontextmanager
async def asgi(**options: object) -> AsyncIterator[httpx.AsyncClient]:
    """httpx on a fresh app (lifespan run) addressed as http://localhost."""
    app = create_app(**options)  # type: ignore[arg-type]
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def raw_handshake(
    port: int, path: str, host: str, origin: str | None = None, *, frame: bytes = b""
) -> bytes:
    """Open a WebSocket by hand with any ``Host``, send ``frame`` (raw bytes) once accepted,
    and return what the server sent, up to its close frame."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        sent = not frame
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
            _, complete, frames = data.partition(b"\r\n\r\n")
            if complete and not sent:
                s.sendall(frame)
                sent = True
            if frames[:1] == b"\x88" and len(frames) >= 4:  # a close frame with its code
                return data


def close_code(answer: bytes) -> int:
    """The close code of the first frame after the handshake response."""
    _, _, frames = answer.partition(b"\r\n\r\n")
    assert frames[:1] == b"\x88", answer[:200]
    return int.from_bytes(frames[2:4], "big")


async def test_dns_rebinding_is_refused(web_redis_url: str, prefix: str, topic: str) -> None:
    """A page of evil.example rebound to 127.0.0.1 is "same-origin" but names its own host."""
    rebound = {"Host": "evil.example", "Origin": "http://evil.example"}
    async with asgi(redis_url=web_redis_url, key_prefix=prefix) as c:
        for method, path, body in (
            ("POST", "/jobs", {"topic": topic, "payload": 1}),
            ("POST", "/register", {"name": "n", "host": "h", "port": 1}),
            ("POST", f"/dlq/{topic}/replay", {"all": True}),
            ("GET", "/jobs", None),
            ("GET", "/workers", None),
            ("GET", "/", None),
        ):
            r = await c.request(method, path, json=body, headers=rebound)
            assert r.status_code == 421, (method, path, r.text)
            assert "host not allowed" in r.json()["detail"]
        r = await c.get("/jobs", headers={"Host": "evil.example"})  # no Origin: still refused
        assert r.status_code == 421
        assert (await c.get("/topics")).status_code == 200  # Host: localhost
        for name in ("127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            assert (await c.get("/health", headers={"Host": name})).status_code == 200, name
        assert (await c.get("/jobs", params={"topic": topic})).json() == []
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix) as g:
        for path in ("/ws/jobs", "/ws/dashboard", "/ws/w1"):
            answer = await asyncio.to_thread(
                raw_handshake, g.port, path, "evil.example:80", "http://evil.example:80"
            )
            assert close_code(answer) == 4421, path
        answer = await asyncio.to_thread(raw_handshake, g.port, "/ws/jobs", "evil.example")
        assert close_code(answer) == 4421
        async with connect(f"{g.ws_url}/ws/jobs") as ws:  # Host: 127.0.0.1:port
            await ws.send('{"type": "ping"}')
            assert (await recv(ws))["type"] == "pong"


async def test_allowed_hosts_names_domains_and_any(web_redis_url: str, prefix: str) -> None:
    hosts = ["gw.internal", ".example.com"]
    async with asgi(redis_url=web_redis_url, key_prefix=prefix, allowed_hosts=hosts) as c:
        for name, status in (
            ("gw.internal", 200), ("gw.internal:443", 200), ("example.com", 200),
            ("a.b.example.com", 200), ("badexample.com", 421), ("localhost", 421),
            ("gw.internal.evil", 421), ("", 421),
        ):  # fmt: skip
            r = await c.get("/health", headers={"Host": name})
            assert r.status_code == status, name
    async with asgi(redis_url=web_redis_url, key_prefix=prefix, allowed_hosts=["*"]) as c:
        assert (await c.get("/health", headers={"Host": "anything.example"})).status_code == 200
    for bad in ([], "localhost", [""]):
        with pytest.raises(ConfigurationError, match="allowed_hosts"):
            create_app(allowed_hosts=bad)  # type: ignore[arg-type]
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:8") == "example.com"


async def test_cross_origin_reads_and_sockets_are_refused(web_redis_url: str, prefix: str) -> None:
    async with asgi(redis_url=web_redis_url, key_prefix=prefix) as c:
        evil = {"Origin": "https://evil.example"}
        for path in ("/jobs", "/workers", "/topics", "/metrics", "/health", "/"):
            assert (await c.get(path, headers=evil)).status_code == 403, path
        assert (await c.get("/workers", headers={"Origin": "http://localhost"})).is_success
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix) as g:
        answer = await asyncio.to_thread(
            raw_handshake, g.port, "/ws/jobs", f"127.0.0.1:{g.port}", "https://evil.example"
        )
        assert close_code(answer) == 4403


async def test_token_from_the_header_or_the_subprotocol_only(
    web_redis_url: str, prefix: str
) -> None:
    token = "t/ok+en=" + os.urandom(4).hex()  # not a valid subprotocol as it is: encoded
    assert subprotocol_token({"subprotocols": ["redisaq", token_subprotocol(token)]}) == token
    assert subprotocol_token({"subprotocols": ["redisaq.bearer.!!"]}) is None
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, token=token) as g:
        headers = {"Authorization": f"Bearer {token}"}
        for path in ("/ws/jobs", "/ws/dashboard"):
            async with connect(f"{g.ws_url}{path}", additional_headers=headers) as ws:
                assert ws.subprotocol is None  # none offered, none chosen
                if path == "/ws/jobs":
                    await ws.send('{"type": "ping"}')
                    assert (await recv(ws))["type"] == "pong"
                else:
                    assert (await recv(ws))["type"] == "snapshot"
        offered = ["redisaq", token_subprotocol(token)]
        async with connect(f"{g.ws_url}/ws/dashboard", subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "redisaq"
            assert (await recv(ws))["type"] == "snapshot"
        async with connect(f"{g.ws_url}/ws/jobs", subprotocols=["redisaq"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "redisaq"  # so that a browser sees the close code
            with pytest.raises(ConnectionClosed) as info:
                await recv(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
        async with httpx.AsyncClient(base_url=g.url) as c:
            assert (await c.get("/health", params={"token": token})).status_code == 401
            assert (await c.get("/health", headers=headers)).status_code == 200
            page = await c.get("/")
            assert page.status_code == 200 and token not in page.text


@pytest.mark.parametrize("token", ["pässwört-1", "tab\there", "line\nbreak", "emoji-\U0001f511"])
def test_a_token_no_header_can_carry_is_refused_without_showing_it(token: str) -> None:
    # Accepted, it could never pass: the header is read as Latin-1, the token compared as UTF-8.
    with pytest.raises(ConfigurationError, match="token must be printable ASCII") as info:
        create_app(token=token)
    assert token not in str(info.value) and "REDISAQ_WEB_TOKEN" in str(info.value)
    create_app(token="ASCII only: ~!@#$%^&*()_+ 0123456789")
