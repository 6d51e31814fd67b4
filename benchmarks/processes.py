"""Consume rate of ``redisaq worker --processes K``: ``python -m benchmarks.processes``.

Each run fills a fresh topic of ``--partitions`` partitions (server-side,
untimed) with ``--n`` messages of one field ``p`` (orjson bytes, as the
producer writes them), then starts ``redisaq worker
benchmarks.processes:handle --processes K`` (a no-op handler, this module's
:func:`handle`) as a child process and watches the group with XINFO GROUPS
every 5 ms until every message is delivered and acknowledged; then it sends
SIGTERM and checks that the worker exits 0.

* ``msgs/s``: ``--n`` over the time from the first message delivered to the
  last one acknowledged (start-up before the first delivery excluded; joining
  the group, rebalancing and reaching full speed included).
* ``wall s``: from starting the command to the last acknowledgement
  (interpreter start-up and imports included); ``incl. start``: ``--n``
  over that.

``--work-us U`` makes the handler spin U microseconds of CPU per message
(a CPU-bound handler, the case several processes are for).
* ``cpu us``: CPU time of all the worker's processes (supervisor included,
  start-up included) per message; ``server``: the redis-server's CPU time
  over the handling span, in cores.

Runs of the process counts alternate and the best run of each is kept. It
starts its own redis-server (the ``EmbeddedRedis`` the tests use) on a free
loopback port and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core import EmbeddedRedis, Message, Producer

from .common import raw_client
from .consume import fill
from .report import environment, environment_lines

__all__ = ["handle", "handle_batch", "main"]

ROOT = Path(__file__).resolve().parent.parent
GROUP = "default"


_WORK = float(os.environ.get("BENCH_WORK_US", "0")) / 1e6


def _work(count: int) -> None:
    """Keep the CPU busy for ``--work-us`` per message (nothing by default)."""
    if _WORK:
        end = time.perf_counter() + _WORK * count
        while time.perf_counter() < end:
            pass


async def handle(message: Message) -> None:
    """The workers' handler: does nothing (or spins ``--work-us``)."""
    _work(1)


async def handle_batch(messages: list[Message]) -> None:
    """The workers' handler with ``--batch``: does nothing (or spins ``--work-us`` each)."""
    _work(len(messages))


@dataclass
class Run:
    """One run: rates and costs."""

    rate: float
    wall: float
    cpu_us: float
    server_cores: float


@dataclass
class Count:
    """The runs of one process count."""

    processes: int
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        """The fastest run."""
        return max(self.runs, key=lambda r: r.rate)


def _id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def _progress(
    client: Redis, streams: list[str], last: dict[str, tuple[int, int]]
) -> tuple[bool, bool]:
    """(anything delivered yet, everything up to ``last`` delivered and acknowledged)."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    replies = await pipe.execute()
    started, done = False, True
    for stream, groups in zip(streams, replies, strict=True):
        group = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
        if group is None:
            done = False
            continue
        delivered = _id(group["last-delivered-id"])
        started = started or delivered != (0, 0)
        done = done and delivered >= last[stream] and int(group["pending"]) == 0
    return started, done


async def _server_cpu(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_run(url: str, args: argparse.Namespace, processes: int) -> Run:
    """Fill a fresh topic, let ``redisaq worker --processes K`` drain it; measure."""
    topic = f"procs-{uuid.uuid4().hex[:8]}"
    async with Producer(topic, redis_url=url, init_partitions=args.partitions) as producer:
        streams = [producer.keys.stream(p) for p in range(producer.partitions)]
    async with raw_client(url) as client:
        await fill(client, streams, args.n)
        last = {}
        for stream in streams:
            newest = await client.xrevrange(stream, count=1)
            last[stream] = _id(newest[0][0]) if newest else (0, 0)
        handler = "benchmarks.processes:" + ("handle_batch" if args.batch else "handle")
        command = [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", url,
                   "worker", handler, "--topic", topic, "--processes", str(processes),
                   "--batch-size", str(args.batch_size), "--heartbeat-interval", "0.2",
                   "--poll-interval", "0.1", *(["--batch"] if args.batch else [])]  # fmt: skip
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        launched = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=dict(os.environ, LOG_LEVEL="ERROR", BENCH_WORK_US=str(args.work_us)),
        )  # fmt: skip
        try:
            first = await _watch(client, streams, last, proc, args.timeout)
            done = time.perf_counter()
            server = await _server_cpu(client) - first[1]
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            raise RuntimeError(f"redisaq worker --processes {processes} exited with {code}")
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        await client.delete(*streams)
    span = done - first[0]
    return Run(args.n / span, done - launched, cpu * 1e6 / args.n, server / span)


async def _watch(
    client: Redis,
    streams: list[str],
    last: dict[str, tuple[int, int]],
    proc: asyncio.subprocess.Process,
    timeout: float,
) -> tuple[float, float]:
    """Wait until the group has handled everything; return (first delivery, server CPU then)."""
    deadline = time.monotonic() + timeout
    first: tuple[float, float] | None = None
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the worker exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: messages not handled within {timeout:.0f}s")
        started, done = await _progress(client, streams, last)
        if started and first is None:
            first = (time.perf_counter(), await _server_cpu(client))
        if done and first is not None:
            return first
        await asyncio.sleep(0.005)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.processes",
        description="Consume rate of `redisaq worker --processes K` for K = 1 and 2.",
    )
    p.add_argument("--n", type=int, default=500_000, help="messages per run (default 500000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per count, best kept (default 3)")
    p.add_argument("--processes", default="1,2", help="process counts (default 1,2)")
    p.add_argument("--partitions", type=int, default=8, help="partitions (default 8)")
    p.add_argument("--batch-size", type=int, default=100, help="worker --batch-size (default 100)")
    p.add_argument("--batch", action="store_true", help="a batch handler (worker --batch)")
    p.add_argument("--work-us", type=float, default=0.0,
                   help="CPU microseconds the handler spins per message (default 0)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a run may take")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


async def _measure(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    async with EmbeddedRedis() as server, raw_client(server.url) as admin:
        env = await environment(admin)
        results = {k: Count(k) for k in counts}
        for rep in range(args.repeat):
            for k in counts if rep % 2 == 0 else reversed(counts):
                run = await one_run(server.url, args, k)
                results[k].runs.append(run)
                await admin.flushdb()
                if not args.json:
                    print(f"{k} process(es): {run.rate:,.0f} msgs/s", file=sys.stderr, flush=True)
    return {"env": env, "results": list(results.values())}


def _table(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    env = measured["env"]
    results: list[Count] = measured["results"]
    base = results[0].best.rate
    mode = "process_batch" if args.batch else "process"
    lines = [
        f"processes benchmark: --n {args.n}, best of {args.repeat} run(s), {args.partitions} "
        f"partitions, worker --batch-size {args.batch_size}, {mode}, "
        + (
            f"handler spinning {args.work_us:g} us per message" if args.work_us else "no-op handler"
        ),
        "",
        f"{'processes':>9} {'msgs/s':>10} {'speed-up':>9} {'incl. start':>12} {'wall s':>7} "
        f"{'cpu us':>7} {'server':>7}",
        "-" * 69,
    ]
    for count in results:
        best = count.best
        lines.append(
            f"{count.processes:>9} {best.rate:>10,.0f} {best.rate / base:>8.2f}x "
            f"{args.n / best.wall:>12,.0f} {best.wall:>7.2f} {best.cpu_us:>7.1f} "
            f"{best.server_cores:>6.2f}c"
        )
    lines += [
        "",
        *environment_lines(env),
    ]
    return "\n".join(lines)


def _json(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    results: list[Count] = measured["results"]
    doc = {
        "settings": {
            "n": args.n,
            "repeat": args.repeat,
            "partitions": args.partitions,
            "batch_size": args.batch_size,
            "batch": args.batch,
            "work_us": args.work_us,
        },
        "environment": measured["env"],
        "results": [
            {
                "processes": count.processes,
                "rate": count.best.rate,
                "speed_up": count.best.rate / results[0].best.rate,
                "wall": count.best.wall,
                "cpu_us": count.best.cpu_us,
                "server_cores": count.best.server_cores,
                "runs": [run.rate for run in count.runs],
            }
            for count in results
        ],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def main(argv: list[str] | None = None) -> int:
    """Run each process count and print the table (or JSON)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.processes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--processes must be comma-separated integers, got {args.processes!r}")
    if not counts or min(counts) < 1 or min(args.n, args.repeat, args.partitions) < 1:
        parser.error("--processes, --n, --repeat and --partitions must be >= 1")
    try:
        measured = asyncio.run(_measure(args, counts))
    except KeyboardInterrupt:
        print("benchmarks.processes: interrupted", file=sys.stderr)
        return 130
    print(_json(args, measured) if args.json else _table(args, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
