"""A connection cut off without a word is noticed: timeouts and TCP keepalive by default."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from redisaq_core import Consumer, Message, Producer
from redisaq_core.connection import SOCKET_TIMEOUT, create_client
from tests.helpers import eventually
from tests.proxy import FaultProxy

pytestmark = pytest.mark.single_node


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _socket_of(client: Any) -> socket.socket:
    """The socket of one of ``client``'s idle pooled connections."""
    connection = client.connection_pool._available_connections[0]
    sock: socket.socket = connection._writer.get_extra_info("socket")
    return sock


async def test_connections_have_keepalive_and_timeouts_by_default(redis_url: str) -> None:
    client = create_client(redis_url)
    await client.ping()
    sock = _socket_of(client)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    options = client.connection_pool.connection_kwargs
    assert options["socket_timeout"] == SOCKET_TIMEOUT
    assert options["socket_connect_timeout"] == 10
    await client.aclose()


async def test_a_consumer_allows_for_its_longest_blocking_read(redis_url: str, topic: str) -> None:
    consumer = Consumer(topic, redis_url=redis_url, poll_interval=45)
    await consumer.connect()
    assert isinstance(consumer.redis, Redis)
    assert consumer.redis.connection_pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT + 45
    await consumer.close()


async def test_a_reply_that_never_comes_times_out(redis_url: str, topic: str) -> None:
    """A black-holed link: the call ends with a timeout (0.5 s here, from the URL's query)."""
    async with FaultProxy(_port(redis_url)) as proxy:
        url = f"{proxy.url}?socket_timeout=0.5"
        async with Producer(topic, redis_url=url) as producer:
            proxy.blackhole = True
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await asyncio.wait_for(producer.enqueue({"n": 1}), 10)
            assert time.monotonic() - started < 5


async def test_a_consumer_behind_a_black_hole_carries_on_once_the_link_is_back(
    redis_url: str, redis: Redis, topic: str
) -> None:
    seen: list[int] = []

    async def handle(m: Message) -> None:
        seen.append(m.payload["n"])

    async with FaultProxy(_port(redis_url)) as proxy, Producer(topic, redis_url=redis_url) as p:
        url = f"{proxy.url}?socket_timeout=1"
        consumer = Consumer(topic, redis_url=url, heartbeat_interval=0.3, poll_interval=0.2)
        task = asyncio.create_task(consumer.process(handle))
        await p.enqueue({"n": 0})
        await eventually(lambda: seen == [0])
        opened = proxy.connections
        proxy.blackhole = True
        await p.enqueue({"n": 1})
        # Its calls time out and it connects again (into the black hole), rather than waiting.
        await eventually(lambda: proxy.connections > opened, timeout=10, message="reconnected")
        assert 1 not in seen
        proxy.blackhole = False
        await proxy.cut()
        await eventually(lambda: seen[-1:] == [1], timeout=15, message=f"{seen}")
        await consumer.stop()
        await task
        await consumer.close()
