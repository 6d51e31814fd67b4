"""Shared fixtures: one real redis-server for the session, a fresh namespace per test.

The server is ``$REDIS_URL`` when set, else an :class:`EmbeddedRedis` started
here, on the binary :func:`redisaq_core.embedded.servers.find_server` picks
(``$REDISAQ_SERVER`` names one of the matrix; by default Valkey 8.1).
``--docker`` runs the suite against a Redis started by testcontainers
instead; it is skipped when no Docker engine answers.

``--cluster`` (or a ``redis+cluster://`` ``$REDIS_URL``) runs the same suites
on a 3-master Redis Cluster started here (:class:`EmbeddedCluster`); tests
marked ``single_node`` are skipped there, and every test fails if any node
answered CROSSSLOT while it ran. The ``cluster`` and ``cluster_url`` fixtures
give tests that always run on a cluster (``tests/test_cluster.py``) the same
session cluster.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core.connection import create_client
from redisaq_core.embedded import EmbeddedCluster, EmbeddedRedis
from tests.cluster_helpers import crossslot_errors
from tests.faults.conftest import Workers


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--docker", action="store_true", help="run against a Redis container (testcontainers)"
    )
    parser.addoption(
        "--cluster",
        action="store_true",
        help="run against a 3-master Redis Cluster (EmbeddedCluster, or $REDISAQ_CLUSTER_URL); "
        "tests marked single_node are skipped",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "single_node: needs one plain Redis server (skipped on a cluster)"
    )
    config.addinivalue_line("markers", "cluster: runs on a real multi-node Redis Cluster")
    config.addinivalue_line(
        "markers",
        "alone: runs alone among suites run side by side (real processes on short heartbeats, "
        "or a benchmark that takes every core)",
    )


def _cluster_mode(config: pytest.Config) -> bool:
    """Whether the ordinary suites run on a cluster (``--cluster`` or a cluster $REDIS_URL)."""
    return bool(config.getoption("--cluster")) or os.environ.get("REDIS_URL", "").startswith(
        ("redis+cluster://", "rediss+cluster://")
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _cluster_mode(config):
        return
    skip = pytest.mark.skip(reason="assumes a single Redis server, not a cluster")
    for item in items:
        if "single_node" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Run a test marked ``alone`` holding ``$REDISAQ_TEST_LOCK`` (a file), when it is set.

    ``make test`` runs two suites at once, each with that lock: their tests mostly wait, but one
    whose processes heartbeat every 0.3 s must not share the machine's two cores with another
    such test or a benchmark. The lock is taken before the test's timeout starts.
    """
    path = os.environ.get("REDISAQ_TEST_LOCK")
    if not path or item.get_closest_marker("alone") is None:
        return (yield)
    with open(path, "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return (yield)


def _dump_pending_tasks(name: str) -> None:
    """Print where every unfinished asyncio task waits: a hung test's trail.

    pytest-timeout shows the threads' stacks only, and a hung coroutine is not on them.
    """
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"\n--- {name}: near its timeout, {len(tasks)} pending task(s) ---", file=sys.stderr)
    for task in tasks:
        print(f"{task.get_name()}:", file=sys.stderr)
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                print(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}",
                      file=sys.stderr)  # fmt: skip
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)


@pytest.fixture(autouse=True)
def _hang_trail(request: pytest.FixtureRequest) -> Iterator[None]:
    """Shortly before the test's timeout, dump its pending tasks (see above)."""
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else request.config.getini("timeout")
    if not limit or float(limit) <= 10:
        yield
        return
    timer = threading.Timer(float(limit) - 5, _dump_pending_tasks, (request.node.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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
    if request.config.getoption("--cluster"):
        yield request.getfixturevalue("cluster_url")
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of 3 primaries on loopback ports, started on first use."""
    with EmbeddedCluster(masters=3) as c:
        yield c


@pytest.fixture(scope="session")
def cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis+cluster://`` URL of the session's cluster (``$REDISAQ_CLUSTER_URL`` if set)."""
    if os.environ.get("REDISAQ_CLUSTER_URL"):
        return os.environ["REDISAQ_CLUSTER_URL"]
    url: str = request.getfixturevalue("cluster").url
    return url


@pytest.fixture(scope="session")
def crossslot_counter(request: pytest.FixtureRequest) -> Callable[[str], int]:
    """``count(url)``: CROSSSLOT errors so far on every node of the cluster at ``url``."""
    return crossslot_errors


@pytest.fixture(autouse=True)
def _no_crossslot(request: pytest.FixtureRequest) -> Iterator[None]:
    """On a cluster run, fail a test during which any node answered CROSSSLOT."""
    if not _cluster_mode(request.config) or "redis_url" not in request.fixturenames:
        yield
        return
    url = request.getfixturevalue("redis_url")
    before = crossslot_errors(url)
    yield
    after = crossslot_errors(url)
    assert after == before, f"{after - before} command(s) failed with CROSSSLOT"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A raw-bytes client on the session's server, closed after the test.

    On a cluster (``redis+cluster://``) it is a ``RedisCluster`` client.
    """
    client: Any = create_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes recording what they handle (tests/faults), all killed at the end."""
    w = Workers(tmp_path / "records.txt")
    w.record_file.touch()
    try:
        yield w
    finally:
        w.stop_all()
