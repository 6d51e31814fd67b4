"""Fixtures of the web gateway tests: the app over httpx, and real uvicorn servers.

The gateway's tests use their own Redis database (number 7 of the session's
server), so the topics they make (schemathesis makes many) stay out of the
other suites' listings; on a cluster, where there is only database 0, they
share it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")

import httpx
import uvicorn
from asgi_lifespan import LifespanManager

from redisaq_core import Consumer, Message
from redisaq_core.web import DEFAULT_MAX_BODY, create_app

WEB_DB = 7


@pytest.fixture(scope="session")
def web_redis_url(redis_url: str) -> str:
    """The session's server, database 7 (unchanged for clusters and unix sockets)."""
    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss"):
        return redis_url
    return urlunsplit(parts._replace(path=f"/{WEB_DB}"))


@pytest.fixture
def prefix() -> str:
    """A registry key prefix no other test uses."""
    return f"web-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def client(web_redis_url: str, prefix: str) -> AsyncIterator[httpx.AsyncClient]:
    """httpx on the ASGI app (lifespan run), no token, a 1.5 s heartbeat timeout."""
    app = create_app(redis_url=web_redis_url, key_prefix=prefix, heartbeat_timeout=1.5)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


class LiveGateway:
    """A gateway served by uvicorn on a free loopback port, in a thread with its own loop.

    uvicorn's ``ws_max_size`` is the app's ``max_body_size`` unless given, as
    ``redisaq web`` sets it.
    """

    def __init__(self, *, ws_max_size: int | None = None, **options: Any) -> None:
        self.app = create_app(**options)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            ws_max_size=ws_max_size or options.get("max_body_size", DEFAULT_MAX_BODY),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-gateway", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test gateway did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "the test gateway did not stop"


@pytest.fixture
def live(web_redis_url: str, prefix: str) -> Iterator[LiveGateway]:
    """A running gateway (no token, 1.5 s heartbeat timeout)."""
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, heartbeat_timeout=1.5) as g:
        yield g


async def echo(message: Message) -> Any:
    """A handler whose result is its payload; a payload ``{"fail": true}`` raises."""
    if isinstance(message.payload, dict) and message.payload.get("fail"):
        raise RuntimeError("asked to fail")
    return {"echo": message.payload}


def consumer(topic: str, url: str, **options: Any) -> Consumer:
    """A quick consumer for the gateway tests."""
    settings: dict[str, Any] = {
        "group_name": "web-tests", "heartbeat_interval": 0.2, "poll_interval": 0.1,
        "max_deliveries": 2, "retry_backoff": 0.05,
    }  # fmt: skip
    settings.update(options)
    return Consumer(topic, redis_url=url, **settings)
