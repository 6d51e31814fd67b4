"""FanOut.from_lists (mpush list mode): plain LPUSH publishers and BRPOP subscribers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import ConfigurationError, FanOut, ListFanOut, ServiceRegistry
from tests.helpers import eventually


@pytest.fixture
def names() -> dict[str, Any]:
    """List names sharing a hash tag (so the tests also run on a cluster)."""
    tag = f"{{mp-{uuid.uuid4().hex[:10]}}}"
    return {
        "in": f"{tag}:in",
        "out": [f"{tag}:out0", f"{tag}:out1"],
        "pending": f"{tag}:pending",
    }


@asynccontextmanager
async def running(bridge: ListFanOut) -> AsyncIterator[ListFanOut]:
    async with bridge:
        task = asyncio.create_task(bridge.run())
        await eventually(lambda: bridge.running or task.done(), timeout=5)
        try:
            yield bridge
        finally:
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)


async def _subscribe(redis: Redis, key: str, n: int, into: list[str]) -> None:
    """A plain subscriber: BRPOP its own list until it has ``n`` items."""
    while len(into) < n:
        got: Any = await redis.brpop([key], timeout=1)
        if got is not None:
            into.append(got[1].decode())


async def test_lpush_publisher_and_brpop_subscribers_see_every_item_in_order(
    redis_url: str, redis: Redis, names: dict[str, Any]
) -> None:
    n = 2000
    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=0.5)
    assert bridge.pending == f"{names['in']}:pending"
    got: list[list[str]] = [[], []]
    async with running(bridge):
        subscribers = [
            asyncio.create_task(_subscribe(redis, out, n, into))
            for out, into in zip(names["out"], got, strict=True)
        ]
        for i in range(0, n, 100):
            if i % 200:
                await redis.lpush(names["in"], *[str(j) for j in range(i, i + 100)])
            else:
                for j in range(i, i + 100):
                    await redis.lpush(names["in"], str(j))
        await asyncio.wait_for(asyncio.gather(*subscribers), 30)
    expected = [str(i) for i in range(n)]
    assert got == [expected, expected]
    assert bridge.stats.moved == n and bridge.stats.pushed == dict.fromkeys(names["out"], n)
    assert await redis.llen(bridge.pending) == 0


async def test_items_left_pending_by_a_dead_bridge_are_pushed_first(
    redis_url: str, redis: Redis, names: dict[str, Any]
) -> None:
    # A bridge killed between the move and the push left "0" and "1" in the pending list
    # (moved oldest first, each onto its left end); "2" and "3" still wait in the input.
    await redis.lpush(names["pending"], "0", "1")
    await redis.lpush(names["in"], "2", "3")
    bridge = FanOut.from_lists(
        names["in"], names["out"], pending=names["pending"], redis_url=redis_url, pop_timeout=0.2
    )
    async with running(bridge):
        await eventually(lambda: bridge.stats.moved == 2, timeout=5)
    for out in names["out"]:
        assert await redis.lrange(out, 0, -1) == [b"3", b"2", b"1", b"0"]
    assert bridge.stats.recovered == 2
    assert await redis.llen(names["pending"]) == 0


async def test_the_old_brpoplpush_path(redis_url: str, redis: Redis, names: dict[str, Any]) -> None:
    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=1)
    bridge._legacy = True  # as on a server older than 6.2
    async with running(bridge):
        await redis.lpush(names["in"], *[str(i) for i in range(50)])
        await eventually(lambda: bridge.stats.moved == 50, timeout=5)
    for out in names["out"]:
        assert await redis.lrange(out, 0, -1) == [str(i).encode() for i in reversed(range(50))]


async def test_stop_returns_within_one_pop_timeout(redis_url: str, names: dict[str, Any]) -> None:
    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=1.0)
    async with bridge:
        task = asyncio.create_task(bridge.run())
        await eventually(lambda: bridge.running, timeout=5)
        await asyncio.sleep(0.3)  # the bridge is blocked in its pop
        started = time.monotonic()
        await bridge.stop()
        assert time.monotonic() - started < 1.0 + 0.5
        await asyncio.wait_for(task, 1)
        await bridge.stop()  # idempotent


async def test_a_hard_stop_cancels_the_pop_and_run_returns(
    redis_url: str, redis: Redis, names: dict[str, Any]
) -> None:
    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=30)
    async with bridge:
        task = asyncio.create_task(bridge.run())
        await eventually(lambda: bridge.running, timeout=5)
        await asyncio.sleep(0.2)
        await asyncio.wait_for(bridge.stop(timeout=0), 2)
        await asyncio.wait_for(task, 2)  # no error: a stop, not a failure
    # A later bridge works on the same lists.
    again = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=0.2)
    async with running(again):
        await redis.lpush(names["in"], "x")
        await eventually(lambda: again.stats.moved == 1, timeout=5)


async def test_remote_shutdown_through_the_registry(redis_url: str, names: dict[str, Any]) -> None:
    prefix = f"lists-{uuid.uuid4().hex[:8]}:"
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as registry:
        bridge = FanOut.from_lists(
            names["in"], names["out"], redis_url=redis_url, pop_timeout=0.3, registry=registry,
            heartbeat_interval=0.2,
        )  # fmt: skip
        async with bridge:
            task = asyncio.create_task(bridge.run())
            (info,) = await eventually(lambda: registry.list_services(service_type="fanout"))
            assert info.metadata["mode"] == "list" and info.metadata["in"] == names["in"]
            await registry.deregister_service(info.service_id)
            await asyncio.wait_for(task, 3)


async def test_an_output_key_of_another_type_is_refused(
    redis_url: str, redis: Redis, names: dict[str, Any]
) -> None:
    await redis.set(names["out"][1], "a string")
    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url)
    with pytest.raises(ConfigurationError, match="not a list"):
        await bridge.connect()
    await bridge.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [
        (("in", []), {}, "out_lists"),
        (("in", "out"), {}, "out_lists"),
        (("in", ["in"]), {}, "out_lists"),
        (("in", ["a", "a"]), {}, "out_lists"),
        (("", ["a"]), {}, "in_list"),
        (("in", ["a", ""]), {}, "out_lists"),
        (("in", ["a"]), {"pending": "in"}, "pending"),
        (("in", ["a"]), {"pending": "a"}, "pending"),
        (("in", ["a"]), {"pop_timeout": 0}, "pop_timeout"),
        (("in", ["a"]), {"batch_size": 0}, "batch_size"),
        # One script moves a batch: ten million items held Redis for seconds.
        (("in", ["a"]), {"batch_size": 10**7}, "batch_size must be .* <= 5000"),
        (("in", ["a"]), {"name": "x y"}, "name"),
    ],
)
def test_bad_input(args: tuple[Any, Any], kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigurationError, match=argument):
        FanOut.from_lists(*args, redis_url="redis://127.0.0.1:1/0", **kwargs)


@pytest.mark.parametrize("which", ["out", "in", "pending"])
async def test_a_list_made_of_another_type_while_running_loses_no_item_and_stops_nothing(
    redis_url: str, redis: Redis, names: dict[str, Any], which: str
) -> None:
    # Another client replaces one of the bridge's lists by a string while it runs. Before,
    # the push's MULTI went on past the failed LPUSH: the item reached the other output and
    # left the pending list, lost for that output; and such a key ended the bridge's loop.
    key = {"out": names["out"][1], "in": names["in"], "pending": names["pending"]}[which]
    bridge = FanOut.from_lists(
        names["in"], names["out"], pending=names["pending"], redis_url=redis_url, pop_timeout=0.2
    )
    warned = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another type" in record.getMessage():
                warned.set()

    seen = Seen()
    logging.getLogger("redisaq_core").addHandler(seen)
    try:
        async with running(bridge) as bridge:
            await redis.lpush(names["in"], "a")
            await eventually(lambda: bridge.stats.pushed[names["out"][1]] == 1, timeout=5)
            await redis.set(key, "another client's")
            if which != "in":
                await redis.lpush(names["in"], "b")
            await eventually(lambda: warned.is_set() or not bridge.running, timeout=5)
            assert bridge.running
            if which == "out":  # nothing written while it can't be written everywhere
                assert await redis.lrange(names["pending"], 0, -1) == [b"b"]
                assert await redis.lrange(names["out"][0], 0, -1) == [b"a"]
            await redis.delete(key)  # the other client gives the name back
            if which == "in":
                await redis.lpush(names["in"], "b")
            await eventually(lambda: bridge.stats.pushed[names["out"][1]] == 2, timeout=5)
    finally:
        logging.getLogger("redisaq_core").removeHandler(seen)
    for out in names["out"]:
        assert await redis.lrange(out, 0, -1) == ([b"b"] if key == out else [b"b", b"a"])
    assert await redis.llen(names["pending"]) == 0


async def test_a_list_bridge_runs_again_after_a_stop(
    redis_url: str, redis: Redis, names: dict[str, Any]
) -> None:
    # A second run() of a stopped bridge returned at once, moving nothing.
    out = names["out"][0]

    async def moved(n: int) -> bool:
        return int(await redis.llen(out)) == n

    bridge = FanOut.from_lists(names["in"], names["out"], redis_url=redis_url, pop_timeout=0.2)
    async with bridge:
        for n, item in enumerate(("a", "b"), 1):
            await redis.lpush(names["in"], item)
            task = asyncio.create_task(bridge.run())
            await eventually(lambda n=n: moved(n), timeout=10)
            await bridge.stop(timeout=10)
            await asyncio.wait_for(task, 15)
