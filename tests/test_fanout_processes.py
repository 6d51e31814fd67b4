"""``redisaq fanout`` as real processes: SIGKILL at random moments, SIGTERM, remote shutdown.

The kill tests check every target (or output list) for lost and duplicated
messages after a run during which the bridge process is killed over and
over, each time at a random moment after it has shown progress (frozen with
SIGSTOP first, so that the test can see whether entries were in flight).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import Producer, ServiceRegistry
from redisaq_core.keys import TopicKeys
from tests.fanout_support import (
    ROOT,
    Bridges,
    assert_exactly_once,
    assert_key_order,
    assert_routed,
    create_topic,
    pending,
    rows,
    total_length,
)
from tests.helpers import eventually

pytestmark = [pytest.mark.slow, pytest.mark.alone]

FAST = ["--heartbeat-interval", "0.2", "--heartbeat-ttl", "0.8", "--poll-interval", "0.2"]


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[Bridges]:
    b = Bridges(tmp_path)
    try:
        yield b
    finally:
        b.stop_all()


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def _kill_after_progress(
    proc: subprocess.Popen[bytes], progress: Any, rng: random.Random, in_flight: Any
) -> bool:
    """Wait until ``progress()`` grows, then a random moment; freeze, look, kill.

    Returns whether work was in flight (``in_flight()`` true) at the kill.
    """
    before = await progress()
    deadline = time.monotonic() + 20
    while await progress() == before and proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGSTOP)
    busy = bool(await in_flight())
    proc.kill()
    await _wait_exit(proc, 10)
    return busy


async def _kill_in_flight(
    proc: subprocess.Popen[bytes], progress: Any, rng: random.Random, in_flight: Any
) -> bool:
    """Freeze the process at random moments until work is in flight there, then kill it.

    Falls back to :func:`_kill_after_progress` if no such moment shows up.
    """
    before = await progress()
    while await progress() == before and proc.poll() is None:
        await asyncio.sleep(0.005)
    for _ in range(300):
        await asyncio.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGSTOP)
        if await in_flight():
            proc.kill()
            await _wait_exit(proc, 10)
            return True
        proc.send_signal(signal.SIGCONT)
    return await _kill_after_progress(proc, progress, rng, in_flight)


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    redis_url: str, redis: Redis, topic: str, bridges: Bridges
) -> None:
    n, kills_wanted = 50_000, 10
    targets = [f"{topic}-a", f"{topic}-b"]
    await create_topic(redis_url, targets[0], 3)
    await create_topic(redis_url, targets[1], 5)
    await create_topic(redis_url, topic, 8)
    rng = random.Random()
    # A message in flight at more than max_deliveries kills is dead-lettered, as a message
    # that kills its process should be; these kills are the test's, not the messages'.
    args = ["--from", topic, "--to", targets[0], "--to", targets[1], "--name", "bridge",
            "--static", "--batch-size", "200", "--no-register", "--max-deliveries", "1000",
            *FAST]  # fmt: skip
    kills = busy = 0
    produced = 0

    async def produce() -> None:
        nonlocal produced
        async with Producer(topic, redis_url=redis_url) as producer:
            for i in range(0, n, 500):
                batch = [{"n": j, "k": f"k{j % 101}"} for j in range(i, i + 500)]
                await producer.batch_enqueue(batch, partition_key="k")
                produced = i + 500
                # Paced so that the run outlasts the kills (about 12 s of production).
                await asyncio.sleep(0.12 if kills < kills_wanted else 0)

    async def progress() -> int:
        return await total_length(redis, targets)

    async def in_flight() -> int:
        return await pending(redis, topic, "fanout")

    producing = asyncio.create_task(produce())
    started = time.monotonic()
    while kills < kills_wanted or not producing.done():
        proc = bridges.start(redis_url, *args)
        if kills >= kills_wanted:
            await producing
            break
        kill = _kill_in_flight if kills % 2 else _kill_after_progress
        busy += await kill(proc, progress, rng, in_flight)
        kills += 1
    else:
        proc = bridges.start(redis_url, *args)
    await producing
    await eventually(
        lambda: _all_written(redis, targets, 2 * n), timeout=40, message="every target filled"
    )
    await _running(bridges)
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc, 15) == 0, bridges.log()
    elapsed = time.monotonic() - started
    assert kills >= kills_wanted and produced == n
    # Every other kill waits for a moment when a batch is in flight (read, not yet fanned
    # out and acknowledged); the others are at a random moment after some progress.
    assert busy >= 3, f"only {busy} of {kills} kills caught a batch in flight"
    for target, count in zip(targets, (3, 5), strict=True):
        found = await rows(redis, target)
        assert_exactly_once(found, set(range(n)), target)
        assert_key_order(found)
        assert_routed(found, count)
    assert await pending(redis, topic, "fanout") == 0
    print(f"{kills} kills ({busy} with a batch in flight), {elapsed:.1f}s")


async def _all_written(redis: Redis, targets: list[str], total: int) -> bool:
    return await total_length(redis, targets) >= total


async def test_sigterm_finishes_the_batch_in_flight_and_exits_zero(
    redis_url: str, redis: Redis, topic: str, bridges: Bridges
) -> None:
    target = f"{topic}-a"
    prefix = f"{topic}:"
    await create_topic(redis_url, topic, 4)
    proc = bridges.start(
        redis_url, "--from", topic, "--to", target, "--key-prefix", prefix, "--format", "json",
        *FAST,
    )  # fmt: skip
    stop = asyncio.Event()
    sent = 0

    async def produce() -> None:
        nonlocal sent
        async with Producer(topic, redis_url=redis_url) as producer:
            while not stop.is_set():
                await producer.batch_enqueue(
                    [{"n": j, "k": j % 7} for j in range(sent, sent + 200)], partition_key="k"
                )
                sent += 200
                await asyncio.sleep(0.005)

    producing = asyncio.create_task(produce())
    await eventually(lambda: total_length(redis, [target]), timeout=20)
    await asyncio.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc, 10) == 0, bridges.log()
    took = time.monotonic() - began
    stop.set()
    await producing
    assert took < 0.2 + 2.0, f"took {took:.2f}s to stop"
    # What was read was fanned out and acknowledged; the group was left.
    assert await pending(redis, topic, "fanout") == 0
    assert await redis.zcard(TopicKeys(topic).members("fanout")) == 0
    found = await rows(redis, target)
    done = {r[2]["n"] for r in found}
    assert_exactly_once(found, done)
    stats = json.loads(proc_output(bridges))
    assert stats["fanned_out"] == len(done) and stats["written"] == {target: len(done)}
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as registry:
        assert await registry.list_services(service_type="fanout") == []


def proc_output(bridges: Bridges) -> str:
    """The last JSON document a bridge printed (stdout and stderr share the log)."""
    text = bridges.log()
    return text[text.index("{\n") : text.rindex("}") + 1]


async def test_registry_lists_the_bridge_and_deregistering_stops_it(
    redis_url: str, topic: str, bridges: Bridges
) -> None:
    prefix = f"{topic}:"
    proc = bridges.start(
        redis_url, "--from", topic, "--to", f"{topic}-a", "--to", f"{topic}-b",
        "--key-prefix", prefix, *FAST,
    )  # fmt: skip
    listing = await eventually(lambda: _registry_list(redis_url, prefix), timeout=20)
    (service,) = listing
    assert service["service_type"] == "fanout"
    assert service["metadata"]["targets"] == [f"{topic}-a", f"{topic}-b"]
    assert service["metadata"]["pid"] == proc.pid
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as registry:
        assert await registry.deregister_service(service["service_id"])
    assert await _wait_exit(proc, 10) == 0, bridges.log()
    assert "deregistered from outside" in bridges.log()


async def _registry_list(url: str, prefix: str) -> list[dict[str, Any]]:
    command = [
        sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", url, "--key-prefix", prefix,
        "registry", "list", "--service-type", "fanout", "--format", "json",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, check=True
    )
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


async def test_list_mode_kills_between_the_move_and_the_push(
    redis_url: str, redis: Redis, bridges: Bridges
) -> None:
    n, kills_wanted = 20_000, 6
    tag = f"{{mp-{uuid.uuid4().hex[:10]}}}"
    in_list, outs, pend = f"{tag}:in", [f"{tag}:out0", f"{tag}:out1"], f"{tag}:pending"
    args = ["--list-in", in_list, "--list-out", outs[0], "--list-out", outs[1], "--pending",
            pend, "--pop-timeout", "0.2", "--batch-size", "50", "--no-register"]  # fmt: skip
    rng = random.Random()
    kills = busy = 0
    published = 0

    async def publish() -> None:  # a plain LPUSH publisher
        nonlocal published
        for i in range(0, n, 200):
            await redis.lpush(in_list, *[str(j) for j in range(i, i + 200)])
            published = i + 200
            await asyncio.sleep(0.03 if kills < kills_wanted else 0)

    async def progress() -> int:
        return int(await redis.llen(outs[0]))

    async def in_flight() -> int:
        return int(await redis.llen(pend))

    publishing = asyncio.create_task(publish())
    while kills < kills_wanted:
        proc = bridges.start(redis_url, *args)
        caught = False
        for _ in range(50):  # look for a moment between BLMOVE and the MULTI
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGSTOP)
            if await in_flight():
                caught = True
                break
            proc.send_signal(signal.SIGCONT)
            if proc.poll() is not None:
                break
        if not caught:  # still a kill at a random moment
            await _kill_after_progress(proc, progress, rng, in_flight)
        else:
            proc.kill()
            await _wait_exit(proc, 10)
        busy += caught
        kills += 1
    proc = bridges.start(redis_url, *args)
    await publishing
    await eventually(lambda: _lists_full(redis, outs, n), timeout=40, message="outputs filled")
    await _running(bridges)
    proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(proc, 10) == 0, bridges.log()
    assert busy >= kills_wanted // 2, f"only {busy} of {kills} kills caught items in flight"
    expected = [str(i).encode() for i in range(n)]
    for out in outs:
        got = await redis.lrange(out, 0, -1)
        got.reverse()  # a BRPOP subscriber takes from the right: oldest first
        assert got == expected, f"{out}: {len(got)} items, first difference at " + str(
            next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
        )
    assert await redis.llen(pend) == 0 and await redis.llen(in_list) == 0


async def _lists_full(redis: Redis, outs: list[str], n: int) -> bool:
    return all([await redis.llen(o) >= n for o in outs])


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redisaq_core.cli.main", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--from", "src"],
        ["--from", "src", "--to", "src"],
        ["--from", "src", "--to", "a b"],
        ["--from", "src", "--to", "a", "--batch-size", "0"],
        ["--from", "src", "--to", "a", "--list-in", "x"],
        ["--list-in", "x"],
        ["--list-in", "x", "--list-out", "y", "--to", "a"],
        ["--from", "src", "--to", "a", "--pending", "p"],
        ["--list-in", "x", "--list-out", "y", "--pop-timeout", "0"],
    ],
)
def test_bad_usage_exits_2(redis_url: str, args: list[str]) -> None:
    done = _run_cli("--redis-url", redis_url, "fanout", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "error" in done.stderr


async def _running(bridges: Bridges) -> None:
    """Wait until the last bridge started runs (its signal handlers in place).

    The bridges killed before it may have written everything already: a SIGTERM sent while
    it still starts ends it as the signal's default does.
    """
    await eventually(lambda: " -> " in bridges.log(), timeout=20, message="the last bridge runs")
