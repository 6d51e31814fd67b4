"""Web gateway benchmarks: ``python -m benchmarks.web [--json]``.

Starts its own redis-server and one gateway process (``redisaq web`` on a
free loopback port), then measures from this process:

* jobs/s submitted through the gateway, over one WebSocket and over HTTP
  keep-alive, beside ``Producer.submit`` called directly (one at a time, and
  with many in flight);
* p50/p99 from sending ``submit_job`` to receiving its ``completed`` push,
  at a paced rate, with a consumer handling the jobs (in this process);
* 1,000 concurrent sockets each following one job on the one gateway
  process: the gateway's memory before and after, and the latency from each
  handler's return to its ``completed`` push.

Needs the ``web`` extra. See the "Web gateway" section of
``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from redisaq_core import Consumer, EmbeddedRedis, Message, Producer

from .common import median, percentile, raw_client
from .report import environment

__all__ = ["main"]

WINDOW = 64
"""Submits in flight at once in the "many in flight" cases."""
HTTP_CONNECTIONS = 16


# ---- the gateway process ---------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(redis_url: str) -> Iterator[tuple[str, int]]:
    """Run ``redisaq web --port 0``; yield its URL and pid; stop it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
         "web", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        stdout = proc.stdout
        assert stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(30)
        if not lines or not lines[0].startswith("http://"):
            raise RuntimeError("the gateway did not start")
        yield lines[0].strip().rstrip("/"), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---- helpers ---------------------------------------------------------------------------


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


def submit_frame(topic: str, i: int) -> str:
    return json.dumps({"type": "submit_job", "topic": topic, "payload": {"i": i},
                       "request_id": i})  # fmt: skip


async def timed(n: int, run: Callable[[], Awaitable[None]]) -> float:
    """Jobs per second of ``run`` (which submits ``n`` jobs)."""
    start = time.perf_counter()
    await run()
    return n / (time.perf_counter() - start)


async def handle(message: Message) -> dict[str, float]:
    """The benchmark's handler: returns the time it finished (this process's clock)."""
    return {"done": time.time()}


@contextlib.asynccontextmanager
async def consuming(topic: str, url: str) -> AsyncIterator[Consumer]:
    """A consumer of ``topic`` (made with one partition if new) that has its partition."""
    async with Producer(topic, redis_url=url):
        pass
    consumer = Consumer(
        topic, redis_url=url, group_name="bench", batch_size=100, heartbeat_interval=0.5,
        poll_interval=0.1,
    )  # fmt: skip
    task = asyncio.create_task(consumer.process(handle))
    try:
        while not consumer.assigned_partitions:
            if task.done():
                await task
            await asyncio.sleep(0.01)
        yield consumer
    finally:
        await consumer.stop()
        await task
        await consumer.close()


# ---- submit throughput -----------------------------------------------------------------


async def direct(url: str, topic: str, n: int, window: int) -> float:
    async with Producer(topic, redis_url=url) as producer:
        for i in range(min(n, 200)):
            await producer.submit({"i": i})
        if window == 1:

            async def one_at_a_time() -> None:
                for i in range(n):
                    await producer.submit({"i": i})

            return await timed(n, one_at_a_time)
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await producer.submit({"i": i})

        async def many() -> None:
            await asyncio.gather(*(worker() for _ in range(window)))

        return await timed(n, many)


async def over_websocket(ws_url: str, topic: str, n: int, window: int) -> float:
    async with connect(f"{ws_url}/ws/jobs", max_size=None, max_queue=None) as ws:

        async def run(count: int) -> None:
            slots = asyncio.Semaphore(window)
            accepted = 0
            done = asyncio.get_running_loop().create_future()

            async def read() -> None:
                nonlocal accepted
                while accepted < count:
                    frame = await recv(ws)
                    if frame["type"] == "job_accepted":
                        accepted += 1
                        slots.release()
                    elif frame["type"] == "error":
                        raise RuntimeError(frame["detail"])
                done.set_result(None)

            reader = asyncio.create_task(read())
            for i in range(count):
                await slots.acquire()
                await ws.send(submit_frame(topic, i))
            await done
            await reader

        await run(min(n, 200))
        return await timed(n, lambda: run(n))


async def over_http(base: str, topic: str, n: int, connections: int) -> float:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def post(i: int) -> None:
            r = await client.post("/jobs", json={"topic": topic, "payload": {"i": i}})
            r.raise_for_status()

        async def run(count: int) -> None:
            counter = iter(range(count))

            async def worker() -> None:
                for i in counter:
                    await post(i)

            await asyncio.gather(*(worker() for _ in range(connections)))

        await run(min(n, 200))
        return await timed(n, lambda: run(n))


# ---- latency ---------------------------------------------------------------------------


async def push_latency(url: str, ws_url: str, topic: str, n: int, rate: float) -> list[float]:
    """Milliseconds from sending submit_job to receiving its completed push, paced."""
    sent: dict[int, float] = {}
    job_of: dict[str, int] = {}
    latencies: list[float] = []
    async with consuming(topic, url), connect(f"{ws_url}/ws/jobs", max_queue=None) as ws:
        finished = asyncio.get_running_loop().create_future()

        async def read() -> None:
            while len(latencies) < n:
                frame = await recv(ws)
                if frame["type"] == "job_accepted":
                    job_of[frame["job_id"]] = frame["request_id"]
                elif frame["type"] == "job_status" and frame["status"] == "completed":
                    i = job_of[frame["job_id"]]
                    latencies.append((time.perf_counter() - sent[i]) * 1000)
            finished.set_result(None)

        reader = asyncio.create_task(read())
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = time.perf_counter()
            await ws.send(submit_frame(topic, i))
        await asyncio.wait_for(finished, 120)
        await reader
    return latencies


async def many_sockets(url: str, ws_url: str, pid: int, topic: str, sockets: int) -> dict[str, Any]:
    """``sockets`` sockets each following one job; gateway memory and push latency."""
    async with Producer(topic, redis_url=url) as producer:
        jobs = [(await producer.submit({"i": i})).id for i in range(sockets)]
    before = rss_mib(pid)
    opened: list[ClientConnection] = []
    try:
        for start in range(0, sockets, 100):
            chunk = [connect(f"{ws_url}/ws/jobs") for _ in range(min(100, sockets - start))]
            opened += await asyncio.gather(*chunk)
        await asyncio.sleep(0.5)
        connected = rss_mib(pid)
        for ws, job in zip(opened, jobs, strict=True):
            await ws.send(json.dumps({"type": "subscribe", "job_id": job}))
        for ws in opened:
            frame = await recv(ws)
            assert frame["status"] == "queued", frame
        await asyncio.sleep(0.5)
        following = rss_mib(pid)

        latencies: list[float] = []

        async def wait_completed(ws: ClientConnection) -> None:
            while True:
                frame = await recv(ws)
                if frame.get("status") == "completed":
                    latencies.append((time.time() - frame["result"]["done"]) * 1000)
                    return

        started = time.perf_counter()
        cpu = cpu_seconds(pid)
        async with consuming(topic, url):
            await asyncio.wait_for(asyncio.gather(*(wait_completed(ws) for ws in opened)), 120)
        elapsed = time.perf_counter() - started
        gateway_cpu = cpu_seconds(pid) - cpu
        peak = rss_mib(pid)
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
    return {
        "sockets": sockets,
        "rss_before_mib": before,
        "rss_connected_mib": connected,
        "rss_following_mib": following,
        "rss_after_mib": peak,
        "kib_per_socket": (following - before) * 1024 / sockets,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "all_completed_s": elapsed,
        "gateway_cpu_s": gateway_cpu,
    }


# ---- the run ---------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async with EmbeddedRedis() as server:
        url = server.url
        async with raw_client(url) as admin:
            env = await environment(admin)
        with gateway_process(url) as (base, pid):
            ws_url = "ws" + base[len("http") :]
            n = args.n
            best: dict[str, float] = {}
            cases: list[tuple[str, Callable[[str], Awaitable[float]]]] = [
                ("direct_one", lambda t: direct(url, t, n, 1)),
                ("direct_many", lambda t: direct(url, t, n, WINDOW)),
                ("websocket_one", lambda t: over_websocket(ws_url, t, n, 1)),
                ("websocket_many", lambda t: over_websocket(ws_url, t, n, WINDOW)),
                ("http_one", lambda t: over_http(base, t, n, 1)),
                ("http_many", lambda t: over_http(base, t, n, HTTP_CONNECTIONS)),
            ]
            gateway_cpu: dict[str, float] = {}
            for _ in range(args.repeat):
                for key, run in cases:
                    cpu = cpu_seconds(pid)
                    rate = await run(f"bench-web-{key}-{os.urandom(4).hex()}")
                    used = (cpu_seconds(pid) - cpu) * 1e6 / (n + min(n, 200))
                    if key.startswith("direct"):
                        used = 0.0
                    if rate > best.get(key, 0.0):
                        best[key] = rate
                        gateway_cpu[key] = used
                    progress(args, f"{key}: {rate:,.0f} jobs/s, gateway {used:,.0f} us CPU/job")
            latencies = await push_latency(
                url, ws_url, f"bench-web-lat-{os.urandom(4).hex()}", args.latency_jobs, args.rate
            )
            progress(args, f"push latency: p50 {percentile(latencies, 50):.2f} ms")
            sockets = await many_sockets(
                url, ws_url, pid, f"bench-web-sockets-{os.urandom(4).hex()}", args.sockets
            )
    return {
        "settings": {"n": n, "repeat": args.repeat, "window": WINDOW,
                     "http_connections": HTTP_CONNECTIONS, "rate": args.rate,
                     "latency_jobs": args.latency_jobs, "sockets": args.sockets},
        "environment": env,
        "submit_rates": best,
        "gateway_cpu_us_per_job": gateway_cpu,
        "push_latency": {
            "jobs": len(latencies), "rate": args.rate, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "median_ms": median(latencies),
            "max_ms": max(latencies),
        },
        "sockets": sockets,
    }  # fmt: skip


def progress(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    r = report["submit_rates"]
    lat = report["push_latency"]
    sock = report["sockets"]
    env = report["environment"]
    cpu = report["gateway_cpu_us_per_job"]

    def row(name: str, key: str, many: str) -> str:
        one_cpu = f"{cpu[key + '_one']:,.0f}" if key != "direct" else "-"
        many_cpu = f"{cpu[key + '_many']:,.0f}" if key != "direct" else "-"
        return (
            f"{name:<32}{r[key + '_one']:>10,.0f}/s {one_cpu:>9}"
            f"{r[key + '_many']:>12,.0f}/s {many_cpu:>9}   {many}"
        )

    lines = [
        f"redisaq-core web gateway: --n {s['n']}, best of {s['repeat']}",
        "",
        f"{'jobs submitted':<32}{'one at a time':>13}{'cpu us':>9}{'many in flight':>16}"
        f"{'cpu us':>8}",
        row("Producer.submit (direct)", "direct", f"{s['window']} tasks"),
        row("one WebSocket, /ws/jobs", "websocket", f"{s['window']} in flight"),
        row("HTTP keep-alive, POST /jobs", "http", f"{s['http_connections']} connections"),
        "(cpu us: CPU time of the gateway process per job)",
        "",
        f"submit -> completed push, {lat['jobs']} jobs at {lat['rate']:,.0f}/s: "
        f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms",
        "",
        f"{sock['sockets']} sockets each following a job on one gateway process:",
        f"  gateway RSS {sock['rss_before_mib']:.1f} MiB -> {sock['rss_connected_mib']:.1f} MiB "
        f"connected -> {sock['rss_following_mib']:.1f} MiB "
        f"following ({sock['kib_per_socket']:.1f} KiB per socket), "
        f"{sock['rss_after_mib']:.1f} MiB after the pushes",
        f"  handler return -> completed push: p50 {sock['p50_ms']:.1f} ms, "
        f"p99 {sock['p99_ms']:.1f} ms, max {sock['max_ms']:.1f} ms; "
        f"all {sock['sockets']} pushed {sock['all_completed_s']:.2f} s after the consumer started "
        f"(gateway CPU {sock['gateway_cpu_s']:.2f} s)",
        "",
        f"versions: redis-py {env['redis_py']}, Python {env['python']}, "
        f"redis-server {env['redis_server']}, redisaq-core {env['redisaq_core']} "
        f"({env['git_commit']})",
        f"machine: {env['cores']} cores, {env['cpu']}, {env['os']}",
    ]
    return "\n".join(lines)


async def _interruptible(run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Run ``run``; SIGTERM or SIGINT cancels it, so the servers it started are stopped."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    fired = False

    def interrupt() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await task
    except Exception:
        if fired:  # the gateway got the signal too and went first
            raise asyncio.CancelledError from None
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000, help="jobs per submit measurement (3000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per submit case, best kept (3)")
    p.add_argument("--rate", type=float, default=200.0, help="jobs/s of the latency run (200)")
    p.add_argument("--latency-jobs", type=int, default=1000, help="jobs of the latency run")
    p.add_argument("--sockets", type=int, default=1000, help="concurrent sockets (1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    for name in ("n", "repeat", "latency_jobs", "sockets"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rate <= 0:
        p.error("--rate must be > 0")
    try:
        report = asyncio.run(_interruptible(measure(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmarks.web: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
