"""End to end on one Redis server beside a Redis Cluster: ``python -m benchmarks.cluster``.

Each run starts ``P`` worker processes. Every worker owns a topic with
``--partitions`` partitions, runs a warmed-up ``Consumer.process`` with a
no-op handler, and sends ``--n`` small messages with ``batch_enqueue`` as
fast as it can, the same work as the ``end_to_end`` case of
``python -m benchmarks``. The workers start their timed part together (a
barrier); the aggregate rate is every worker's messages over the span from
the first timed send to the last message handled.

The topologies: one redis-server, and Redis Clusters of ``--masters``
primaries (a 1-primary cluster separates the client's cluster overhead from
the effect of spreading over nodes). Every server runs on this machine, so
servers and clients share its cores; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import platform
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.synchronize import Barrier
from typing import Any

import hiredis
import orjson
import redis
from redis import Redis as SyncRedis

from redisaq_core import Consumer, Producer
from redisaq_core.embedded import EmbeddedCluster, EmbeddedRedis

from .common import GROUP, Sink, median, payload, percentile, wait_until
from .consume import run_consumer

__all__ = ["Measurement", "main"]


@dataclass
class _WorkerResult:
    start: float
    end: float
    n: int
    cpu_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Measurement:
    """One topology and process count: the best aggregate rate over the repeats."""

    topology: str
    processes: int
    rate: float
    runs: list[float]
    p50_ms: float
    p99_ms: float
    cpu_us_per_msg: float
    server_cpu_us_per_msg: float


async def _end_to_end(
    url: str, n: int, warm: int, partitions: int, batch: int, barrier: Barrier, timeout: float
) -> _WorkerResult:
    topic = f"bench-cluster-{uuid.uuid4().hex[:10]}"
    sink = Sink(warm, n, latency=True)
    async with Producer(topic, redis_url=url, init_partitions=partitions) as producer:
        consumer = Consumer(topic, group_name=GROUP, batch_size=batch, redis_url=url)
        running = asyncio.create_task(run_consumer(consumer, sink, batch=False, timeout=timeout))
        try:
            await wait_until(
                lambda: len(consumer.assigned_partitions) == partitions,
                timeout,
                "the consumer taking its partitions",
            )
            for first in range(0, warm, batch):
                await producer.batch_enqueue([payload(first + i) for i in range(batch)])
            await asyncio.wait_for(sink.warmed.wait(), timeout)
            await asyncio.to_thread(barrier.wait, timeout)
            cpu = time.process_time()
            start = time.perf_counter()
            for first in range(0, n, batch):
                count = min(batch, n - first)
                await producer.batch_enqueue([payload(warm + first + i) for i in range(count)])
            await running
        finally:
            if not running.done():
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
    return _WorkerResult(
        start,
        sink.t_done,
        n,
        sink.cpu_done - cpu,
        percentile(sink.latencies, 50),
        percentile(sink.latencies, 99),
    )


def _worker(
    url: str,
    n: int,
    warm: int,
    partitions: int,
    batch: int,
    barrier: Barrier,
    timeout: float,
    out: Any,
) -> None:
    try:
        result = asyncio.run(_end_to_end(url, n, warm, partitions, batch, barrier, timeout))
        out.put(("ok", asdict(result)))
    except BaseException as exc:  # report, never hang the parent
        barrier.abort()
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_once(
    url: str, nodes: list[EmbeddedRedis], processes: int, args: argparse.Namespace
) -> tuple[float, list[float], float, float]:
    """Aggregate rate, latencies (p50, p99), client and server CPU us/msg of one run."""
    server_cpu = _server_cpu(nodes)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    warm = max(2 * args.batch, min(2_000, args.n // 10))
    warm -= warm % args.batch
    procs = [
        ctx.Process(
            target=_worker,
            args=(url, args.n, warm, args.partitions, args.batch, barrier, args.timeout, out),
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = []
    try:
        for _ in procs:
            status, value = out.get(timeout=args.timeout + 60)
            if status != "ok":
                raise RuntimeError(f"benchmark worker failed: {value}")
            results.append(_WorkerResult(**value))
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    # Server CPU covers the warm-up and the consumers' start too: per message sent in all.
    server_us = (_server_cpu(nodes) - server_cpu) * 1e6 / (processes * (args.n + warm))
    span = max(r.end for r in results) - min(r.start for r in results)
    total = sum(r.n for r in results)
    latencies = [median([r.p50_ms for r in results]), max(r.p99_ms for r in results)]
    cpu = sum(r.cpu_s for r in results) * 1e6 / total
    return total / span, latencies, cpu, server_us


@contextmanager
def _topology(name: str) -> Iterator[tuple[str, list[EmbeddedRedis]]]:
    """The URL and the server processes of one topology, started for the measurement."""
    if name == "1 node":
        with EmbeddedRedis() as server:
            yield server.url, [server]
        return
    masters = int(name.split()[0])
    with EmbeddedCluster(masters=masters) as cluster:
        yield cluster.url, list(cluster.nodes)


def _server_cpu(nodes: list[EmbeddedRedis]) -> float:
    """CPU seconds (user + system) the servers have used so far, all together."""
    total = 0.0
    for node in nodes:
        client = SyncRedis(host=node.host, port=node.port)
        try:
            info = client.info("cpu")
        finally:
            client.close()
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _server_version() -> str:
    with EmbeddedRedis() as server:
        client = SyncRedis(host=server.host, port=server.port, decode_responses=True)
        try:
            return str(client.info("server").get("redis_version"))
        finally:
            client.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster",
        description="End to end (batch_enqueue + Consumer.process) on one redis-server and on "
        "Redis Clusters, each started for the run on loopback ports.",
    )
    p.add_argument("--n", type=int, default=20_000, help="messages per worker (default 20000)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")
    p.add_argument("--masters", default="1,3", help="cluster sizes, comma-separated (default 1,3)")
    p.add_argument(
        "--processes", default="1,2", help="worker process counts, comma-separated (default 1,2)"
    )
    p.add_argument("--repeat", type=int, default=2, help="runs per setting, best kept (default 2)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default 120)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _render(measurements: list[Measurement], env: dict[str, Any]) -> str:
    base = {m.processes: m.rate for m in measurements if m.topology == "1 node"}
    lines = [
        "redisaq-core end to end: one redis-server vs Redis Cluster (all on this machine)",
        ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        f"{'topology':<22}{'procs':>6}{'msg/s':>10}{'vs 1 node':>11}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'client us/msg':>15}{'server us/msg':>15}",
    ]
    for m in measurements:
        ratio = m.rate / base[m.processes] if m.processes in base else float("nan")
        lines.append(
            f"{m.topology:<22}{m.processes:>6}{m.rate:>10,.0f}{ratio:>10.2f}x{m.p50_ms:>9.1f}"
            f"{m.p99_ms:>9.1f}{m.cpu_us_per_msg:>15.1f}{m.server_cpu_us_per_msg:>15.1f}"
        )
    lines += [
        "",
        "client us/msg: CPU of the worker processes per message; server us/msg: CPU of all",
        "redis-server processes per message (warm-up included). Rates: best of the repeats.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every topology and process count; print the table (or JSON)."""
    args = _parser().parse_args(argv)
    try:
        masters = [int(x) for x in args.masters.split(",") if x.strip()]
        processes = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        _parser().error("--masters and --processes take comma-separated integers")
    if min([args.n, args.batch, args.partitions, args.repeat, *masters, *processes]) < 1:
        _parser().error("every count must be >= 1")
    topologies = ["1 node", *(f"{m} primaries (cluster)" for m in masters)]
    env = {
        "redis-py": redis.__version__,
        "hiredis": hiredis.__version__,
        "orjson": orjson.__version__,
        "python": platform.python_version(),
        "redis-server": _server_version(),
        "cores": mp.cpu_count(),
        "partitions": args.partitions,
        "batch": args.batch,
        "n/worker": args.n,
    }
    measurements: list[Measurement] = []
    for name in topologies:
        with _topology(name) as (url, nodes):
            for count in processes:
                runs = []
                for _ in range(args.repeat):
                    began = time.perf_counter()
                    rate, (p50, p99), cpu, server = _run_once(url, nodes, count, args)
                    runs.append((rate, p50, p99, cpu, server))
                    if not args.json:
                        print(
                            f"{name}, {count} process(es): {rate:,.0f} msg/s "
                            f"({time.perf_counter() - began:.1f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
                best = max(runs)
                measurements.append(
                    Measurement(name, count, best[0], [r[0] for r in runs], *best[1:])
                )
    if args.json:
        doc = {"environment": env, "results": [asdict(m) for m in measurements]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(_render(measurements, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
