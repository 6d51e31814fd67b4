"""Fan-out to 1, 3 and 10 targets beside raw redis-py: ``python -m benchmarks.fanout``.

Each run drains a source stream filled beforehand (server-side, untimed) with
warm-up + ``--n`` entries of one field ``p`` (orjson bytes, as the producer
writes them), and copies every entry to each target.

* library: ``FanOut(source, targets, batch_size=--batch)`` with its defaults
  (metrics on), in this process; the clock runs from the moment the warm-up
  entries are fanned out to the moment the last one is.
* raw redis-py: a loop of ``XREADGROUP COUNT --batch`` on the source and, per
  batch, one ``MULTI``: ``XADD`` of each entry to every target, ``XACK`` of
  the batch, ``EXEC``; the same clock.

Runs of the two sides alternate, the database is flushed between runs, and
the best run of each side is kept. It starts its own redis-server (the
``EmbeddedRedis`` the tests use) on a free loopback port and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from redisaq_core import EmbeddedRedis, FanOut, Producer

from .common import FIELD, GROUP, entries_of, raw_client
from .consume import fill
from .report import environment, environment_lines

__all__ = ["main"]

TARGET = 0.7
"""The library's rate over raw redis-py's that each case aims for."""


@dataclass
class Side:
    """The runs of one side of one case: rates (msgs/s) and CPU per message (us)."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The best rate."""
        return max(self.rates)

    @property
    def best_cpu(self) -> float:
        """CPU per message of the best run."""
        return self.cpu_us[self.rates.index(self.best)]


class _Clock:
    """Wall and CPU time from ``start()`` to ``stop()``."""

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> tuple[float, float]:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return n / wall, cpu * 1e6 / n


def _warm(n: int, batch: int) -> int:
    want = min(max(2 * batch, n // 10), 2_000)
    return -(-want // batch) * batch


async def lib_run(url: str, n: int, batch: int, targets: int) -> tuple[float, float]:
    """The library: FanOut draining a pre-filled topic to ``targets`` topics."""
    base = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    names = [f"{base}-t{i}" for i in range(targets)]
    warm = _warm(n, batch)
    async with Producer(base, redis_url=url, init_partitions=1, metrics=False) as producer:
        stream = producer.keys.stream(0)
    for name in names:  # created beforehand: topic creation is not part of the measurement
        async with Producer(name, redis_url=url, init_partitions=1, metrics=False):
            pass
    async with raw_client(url) as client:
        await fill(client, [stream], warm + n)
    bridge = FanOut(base, names, redis_url=url, batch_size=batch)
    clock = _Clock()
    async with bridge:
        task = asyncio.create_task(bridge.run())
        try:
            while bridge.stats.fanned_out < warm:
                await _check(task)
            clock.start()
            while bridge.stats.fanned_out < warm + n:
                await _check(task)
            return clock.stop(bridge.stats.fanned_out - warm)
        finally:
            await bridge.stop()
            await task


async def _check(task: asyncio.Task[None]) -> None:
    if task.done():
        task.result()
        raise RuntimeError("benchmark: the bridge stopped early")
    await asyncio.sleep(0.0005)


async def raw_run(url: str, n: int, batch: int, targets: int) -> tuple[float, float]:
    """Raw redis-py: XREADGROUP, then MULTI of XADD per entry per target and XACK."""
    base = f"bench:raw:fanout:{uuid.uuid4().hex[:8]}"
    source, names = f"{base}:in", [f"{base}:t{i}" for i in range(targets)]
    warm = _warm(n, batch)
    async with raw_client(url) as r:
        await fill(r, [source], warm + n)
        await r.xgroup_create(source, GROUP, id="0")
        clock = _Clock()
        done = 0
        while done < warm + n:
            done += await _raw_batch(r, source, names, batch)
            if done == warm:
                clock.start()
        return clock.stop(done - warm)


async def _raw_batch(r: Redis, source: str, names: list[str], batch: int) -> int:
    response = await r.xreadgroup(GROUP, "raw", {source: ">"}, count=batch, block=100)
    count = 0
    for _, entries in entries_of(response):
        pipe = r.pipeline(transaction=True)
        ids = []
        for entry_id, fields in entries:
            data = fields[FIELD]
            for name in names:
                pipe.xadd(name, {FIELD: data})
            ids.append(entry_id)
        pipe.xack(source, GROUP, *ids)
        await pipe.execute()
        count += len(ids)
    return count


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fanout",
        description="FanOut beside raw redis-py XREADGROUP + MULTI(XADD x targets, XACK).",
    )
    p.add_argument("--n", type=int, default=20_000, help="messages per timed run (default 20000)")
    p.add_argument("--repeat", type=int, default=5, help="runs per side, best kept (default 5)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument(
        "--targets", default="1,3,10", help="target counts, comma-separated (default 1,3,10)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


async def _measure(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    async with EmbeddedRedis() as server, raw_client(server.url) as admin:
        env = await environment(admin)
        await admin.flushdb()
        cases: dict[int, tuple[Side, Side]] = {}
        for targets in counts:
            lib, raw = Side(), Side()
            for rep in range(args.repeat):
                order = [(lib_run, lib), (raw_run, raw)]
                for run, side in order if rep % 2 == 0 else reversed(order):
                    rate, cpu = await run(server.url, args.n, args.batch, targets)
                    side.rates.append(rate)
                    side.cpu_us.append(cpu)
                    await admin.flushdb()
            cases[targets] = (lib, raw)
            if not args.json:
                print(
                    f"{targets} target(s): {lib.best:,.0f} vs {raw.best:,.0f} msgs/s",
                    file=sys.stderr,
                    flush=True,
                )
    return {"env": env, "cases": cases}


def _table(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    env = measured["env"]
    lines = [
        f"fan-out benchmark: --n {args.n}, best of {args.repeat} run(s), batch {args.batch}, "
        "1 source partition, 1 partition per target",
        "",
        f"{'targets':>7} {'msgs/s':>10} {'raw msgs/s':>11} {'ratio':>6}  {'target':<14}"
        f"{'cpu us':>7} {'raw':>6} {'writes/s':>10}",
        "-" * 80,
    ]
    for targets, (lib, raw) in measured["cases"].items():
        ratio = lib.best / raw.best
        met = "ok" if ratio >= TARGET else "MISSED"
        lines.append(
            f"{targets:>7} {lib.best:>10,.0f} {raw.best:>11,.0f} {ratio:>5.2f}x  "
            f">= {TARGET}x {met:<7}{lib.best_cpu:>7.1f} {raw.best_cpu:>6.1f} "
            f"{lib.best * targets:>10,.0f}"
        )
    lines += [
        "",
        *environment_lines(env),
    ]
    return "\n".join(lines)


def _json(args: argparse.Namespace, measured: dict[str, Any]) -> str:
    doc = {
        "settings": {"n": args.n, "repeat": args.repeat, "batch": args.batch},
        "environment": measured["env"],
        "results": [
            {
                "targets": targets,
                "rate": lib.best,
                "raw_rate": raw.best,
                "ratio": lib.best / raw.best,
                "min_ratio": TARGET,
                "runs": lib.rates,
                "raw_runs": raw.rates,
                "cpu_us": lib.best_cpu,
                "raw_cpu_us": raw.best_cpu,
            }
            for targets, (lib, raw) in measured["cases"].items()
        ],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def main(argv: list[str] | None = None) -> int:
    """Run the fan-out cases and print the table (or JSON)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        counts = [int(c) for c in args.targets.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--targets must be comma-separated integers, got {args.targets!r}")
    if not counts or min(counts) < 1 or args.n < 1 or args.repeat < 1 or args.batch < 1:
        parser.error("--targets, --n, --repeat and --batch must be >= 1")
    try:
        measured = asyncio.run(_measure(args, counts))
    except KeyboardInterrupt:
        print("benchmarks.fanout: interrupted", file=sys.stderr)
        return 130
    print(_json(args, measured) if args.json else _table(args, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
