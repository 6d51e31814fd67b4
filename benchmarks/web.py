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
  handler's return to its ``completed`` push;
* 1,000 slow sockets (clients that stop reading) each following the same
  jobs with large results: the gateway's peak memory, against the bound its
  limits set (``--socket-queue-bytes`` per socket, then close code 4408).

Needs the ``web`` extra. See the "Web gateway" section of
``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from redisaq_core import Consumer, EmbeddedRedis, Message, Producer
from redisaq_core.results import ResultStore

from .common import median, percentile, raw_client
from .report import environment

__all__ = ["main"]

WINDOW = 64
"""Submits in flight at once in the "many in flight" cases."""
HTTP_CONNECTIONS = 16


# ---- the gateway process ---------------------------------------------------------------


@contextlib.contextmanager
def gateway_process(redis_url: str, *options: str) -> Iterator[tuple[str, int]]:
    """Run ``redisaq web --port 0``; yield its URL and pid; stop it with SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
         "web", "--port", "0", *options],
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


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MiB, or its peak with ``field="VmHWM"`` (Linux ``/proc``;
    NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
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


# ---- slow sockets ----------------------------------------------------------------------

SOCKET_QUEUE_BYTES = 1_048_576
"""The gateway's default ``--socket-queue-bytes``, which the slow-socket run uses."""
TRANSPORT_BYTES = 65_536
"""What uvicorn's transport buffers per socket before it stops the writer (its high-water mark)."""


class RawSocket:
    """A minimal WebSocket client on asyncio streams: no compression offered, no buffering
    beyond a small stream buffer and a 4 KiB kernel receive buffer, so that a client that
    stops reading makes the gateway's writes back up at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int, path: str) -> RawSocket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16_384)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:60]!r}")
        return cls(reader, writer)

    def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    async def recv(self) -> dict[str, Any] | None:
        """The next text frame as JSON; ``None`` once closed (``close_code`` set if any)."""
        try:
            first, second = await self.reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                n = int.from_bytes(await self.reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self.reader.readexactly(8), "big")
            payload = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        if first & 0x0F == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            return None
        frame: dict[str, Any] = json.loads(payload)
        return frame

    def abort(self) -> None:
        self.writer.transport.abort()


async def quiet(pid: int, timeout: float = 60.0) -> None:
    """Wait until the gateway uses under 5% of a core over half a second (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cpu = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - cpu < 0.025:
            return


async def slow_sockets(
    url: str, ws_url: str, pid: int, topic: str, sockets: int, jobs: int, result_bytes: int
) -> dict[str, Any]:
    """``sockets`` clients follow ``jobs`` jobs each, then stop reading; results are pushed."""
    port = int(ws_url.rsplit(":", 1)[1])
    async with Producer(topic, redis_url=url) as producer:
        ids = [(await producer.submit({"i": i})).id for i in range(jobs)]
    await quiet(pid)
    before = rss_mib(pid)
    opened: list[RawSocket] = []
    try:
        for start in range(0, sockets, 100):
            chunk = [RawSocket.open(port, "/ws/jobs") for _ in range(min(100, sockets - start))]
            opened += await asyncio.gather(*chunk)

        async def follow(ws: RawSocket) -> None:
            for job in ids:
                ws.send(json.dumps({"type": "subscribe", "job_id": job}))
            for _ in ids:  # read the "queued" frames: every job is followed
                frame = await ws.recv()
                assert frame is not None and frame.get("status") == "queued", frame

        await asyncio.wait_for(asyncio.gather(*(follow(ws) for ws in opened)), 300)
        await quiet(pid)
        following = rss_mib(pid)
        started = time.perf_counter()
        # random text: uvicorn compresses frames (permessage-deflate), so a repetitive result
        # would shrink to nothing on the wire
        payload = base64.b64encode(os.urandom(result_bytes * 3 // 4)).decode()

        async def big(message: Message) -> dict[str, str]:
            return {"pad": payload}

        async with Producer(topic, redis_url=url), ResultStore(redis_url=url) as store:
            consumer = Consumer(topic, redis_url=url, group_name="bench-slow", batch_size=10,
                                heartbeat_interval=0.5, poll_interval=0.1)  # fmt: skip
            task = asyncio.create_task(consumer.process(big))
            try:
                for job in ids:
                    await store.wait(job, timeout=300)
            finally:
                await consumer.stop()
                await task
                await consumer.close()
        await quiet(pid)
        settled = time.perf_counter() - started
        peak = rss_mib(pid, "VmHWM")
        after = rss_mib(pid)
        codes: dict[str, int] = {}

        async def drain(ws: RawSocket) -> None:
            """Read what was left: every result, or up to the close."""
            completed = 0
            while completed < jobs:
                frame = await ws.recv()
                if frame is None:
                    code = ws.close_code
                    key = "dropped" if code is None else f"closed {code}"
                    break
                completed += frame.get("status") == "completed"
            else:
                key = "all results read"
            codes[key] = codes.get(key, 0) + 1

        await asyncio.wait_for(asyncio.gather(*(drain(ws) for ws in opened)), 120)
    finally:
        for ws in opened:
            ws.abort()
    # Shared by every socket: each record read once, its frame encoded once (and the read's
    # reply). Per socket: its queue (frames there may be its own), uvicorn's transport buffer,
    # and the frame being written (the text, its bytes, the WebSocket frame).
    shared = 3 * jobs * result_bytes
    per_socket = SOCKET_QUEUE_BYTES + TRANSPORT_BYTES + 3 * result_bytes
    bound = before + (shared + sockets * per_socket) / 2**20
    return {
        "sockets": sockets,
        "jobs": jobs,
        "result_bytes": result_bytes,
        "unread_per_socket_mib": jobs * result_bytes / 2**20,
        "rss_before_mib": before,
        "rss_following_mib": following,
        "rss_peak_mib": peak,
        "rss_after_mib": after,
        "bound_mib": bound,
        "close_codes": codes,
        "settled_s": settled,
    }


# ---- the run ---------------------------------------------------------------------------


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    async with EmbeddedRedis() as server:
        url = server.url
        async with raw_client(url) as admin:
            env = await environment(admin)
        with gateway_process(url, "--max-sockets", str(2 * max(args.sockets,
                             args.slow_sockets) + 100)) as (base, pid):  # fmt: skip
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
            progress(args, "1,000 sockets done; slow sockets")
            slow = await slow_sockets(
                url, ws_url, pid, f"bench-web-slow-{os.urandom(4).hex()}", args.slow_sockets,
                args.slow_jobs, args.slow_result_bytes,
            )  # fmt: skip
    return {
        "settings": {"n": n, "repeat": args.repeat, "window": WINDOW,
                     "http_connections": HTTP_CONNECTIONS, "rate": args.rate,
                     "latency_jobs": args.latency_jobs, "sockets": args.sockets,
                     "slow_sockets": args.slow_sockets, "slow_jobs": args.slow_jobs,
                     "slow_result_bytes": args.slow_result_bytes},
        "environment": env,
        "submit_rates": best,
        "gateway_cpu_us_per_job": gateway_cpu,
        "push_latency": {
            "jobs": len(latencies), "rate": args.rate, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "median_ms": median(latencies),
            "max_ms": max(latencies),
        },
        "sockets": sockets,
        "slow_sockets": slow,
    }  # fmt: skip


def progress(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text, file=sys.stderr, flush=True)


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    r = report["submit_rates"]
    lat = report["push_latency"]
    sock = report["sockets"]
    slow = report["slow_sockets"]
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
        f"{slow['sockets']} slow sockets each following {slow['jobs']} jobs with "
        f"{slow['result_bytes']:,}-byte results ({slow['unread_per_socket_mib']:.1f} MiB unread "
        "per socket, 1 MiB allowed):",
        f"  gateway RSS {slow['rss_before_mib']:.1f} MiB -> {slow['rss_following_mib']:.1f} MiB "
        f"following -> peak {slow['rss_peak_mib']:.1f} MiB (bound {slow['bound_mib']:,.0f} MiB), "
        f"{slow['rss_after_mib']:.1f} MiB after; close codes {slow['close_codes']}; "
        f"settled {slow['settled_s']:.1f} s after the consumer started",
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
    p.add_argument("--slow-sockets", type=int, default=1000, help="slow sockets (1000)")
    p.add_argument("--slow-jobs", type=int, default=12, help="jobs each slow socket follows (12)")
    p.add_argument("--slow-result-bytes", type=int, default=400_000,
                   help="bytes of each of those jobs' result (400000)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    for name in ("n", "repeat", "latency_jobs", "sockets", "slow_sockets", "slow_jobs",
                 "slow_result_bytes"):  # fmt: skip
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
