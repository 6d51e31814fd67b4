"""Command line of ``python -m benchmarks``: run every case, print the table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redisaq_core import EmbeddedRedis
from redisaq_core._retention import server_features

from . import consume, delayed, endtoend, enqueue
from .common import Context, Run, raw_client
from .idle import IdleCost, measure_idle
from .report import CaseResult, environment, render_json, render_table

__all__ = ["CASES", "Case", "main"]

Measure = Callable[[Context], Awaitable[Run]]


@dataclass(frozen=True)
class Case:
    """A library measurement, its raw redis-py counterpart and its target."""

    key: str
    name: str
    lib: Measure
    raw: Measure
    min_ratio: float | None = None
    max_p99_ms: float | None = None
    scale: float = 1.0
    """Messages per run as a multiple of ``--n`` (slow cases run fewer, fast ones more)."""
    needs_acked_trim: bool = False
    """Runs only on a server with XACKDEL (Redis 8.2 and newer); skipped elsewhere."""


def cases(ctx: Context) -> list[Case]:
    """The cases, in the order they run and print."""
    return [
        Case("enqueue", "enqueue, one at a time", enqueue.lib_one, enqueue.raw_one, scale=0.25),
        Case(
            "enqueue_concurrent",
            f"enqueue, {ctx.concurrency} concurrent tasks",
            enqueue.lib_concurrent,
            enqueue.raw_concurrent,
            min_ratio=1.5,
        ),
        Case(
            "enqueue_idempotent",
            "idempotent enqueue, one at a time",
            enqueue.lib_one_idempotent,
            enqueue.raw_one,
            scale=0.25,
        ),
        Case(
            "enqueue_idempotent_concurrent",
            f"idempotent enqueue, {ctx.concurrency} concurrent",
            enqueue.lib_concurrent_idempotent,
            enqueue.raw_concurrent,
        ),
        Case(
            "submit_concurrent",
            f"submit (jobs), {ctx.concurrency} concurrent tasks",
            enqueue.lib_submit_concurrent,
            enqueue.raw_concurrent,
        ),
        Case(
            "batch_enqueue",
            f"batch_enqueue of {ctx.batch}",
            enqueue.lib_batch,
            enqueue.raw_batch,
            min_ratio=0.8,
            scale=2,
        ),
        Case(
            "process",
            "consume, process",
            consume.lib_process,
            consume.raw_process,
            min_ratio=0.8,
            scale=3,
        ),
        Case(
            "process_batch",
            "consume, process_batch",
            consume.lib_process_batch,
            consume.raw_process,
            min_ratio=0.9,
            scale=3,
        ),
        Case(
            "process_batch_no_metrics",
            "consume, process_batch, metrics off",
            consume.lib_process_batch_no_metrics,
            consume.raw_process,
            scale=3,
        ),
        Case(
            "process_batch_delete_acked",
            "consume, process_batch, trim=delete-acked (Redis 8.2+)",
            consume.lib_process_batch_delete_acked,
            consume.raw_process,
            scale=3,
            needs_acked_trim=True,
        ),
        Case(
            "jobs_batch",
            "consume jobs, process_batch",
            consume.lib_jobs_batch,
            consume.raw_process,
            min_ratio=0.5,
            scale=1,
        ),
        Case(
            "jobs_batch_records",
            "consume jobs, beside raw job-record writes",
            consume.lib_jobs_batch,
            consume.raw_jobs_batch,
            scale=1,
        ),
        Case(
            "end_to_end",
            "end-to-end, max rate",
            endtoend.lib_saturated,
            endtoend.raw_saturated,
            min_ratio=0.9,
            scale=2,
        ),
        Case(
            "end_to_end_paced",
            f"end-to-end, {ctx.offered_rate:,.0f}/s offered",
            endtoend.lib_paced,
            endtoend.raw_paced,
            max_p99_ms=10.0,
            scale=0.5,
        ),
        Case(
            "delayed_enqueue",
            f"delayed enqueue, {ctx.concurrency} concurrent tasks",
            delayed.lib_delayed_enqueue,
            delayed.raw_delayed_enqueue,
        ),
        Case(
            "delayed_move",
            "delayed: move + consume, all due at once",
            delayed.lib_move,
            delayed.raw_move,
        ),
        Case(
            "delayed_lateness",
            f"delayed: lateness, {delayed.DELAYED_RATE:,.0f}/s offered",
            delayed.lib_lateness,
            delayed.raw_lateness,
            max_p99_ms=50.0,
            scale=0.5,
        ),
    ]


CASES = [c.key for c in cases(Context(url="", n=0))]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="redisaq-core beside raw redis-py, on a redis-server started for the run.",
    )
    p.add_argument(
        "--n",
        type=int,
        default=20_000,
        help="messages per timed run (default 20000; some cases run a multiple of it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--repeat", type=int, default=5, help="runs per case, best kept (default 5)")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--partitions", type=int, default=1, help="partitions per topic (default 1)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent enqueuers (default 64)")
    p.add_argument(
        "--rate", type=float, default=20_000.0, help="offered msgs/s, paced case (default 20000)"
    )
    p.add_argument("--idle-seconds", type=float, default=6.0, help="idle-cost window (default 6)")
    p.add_argument(
        "--only", action="append", choices=[*CASES, "idle"], help="run only this case (repeatable)"
    )
    return p


class _Interrupt:
    """SIGTERM/SIGINT: cancel the run; if it has not ended 2 s later, stop the server anyway.

    A cancellation can be lost inside a client library (redis-py 8.1 drops it
    when 64 tasks are cancelled mid-command), so the server this run started is
    stopped directly as a backstop: every pending command then fails.
    """

    def __init__(self, task: asyncio.Task[Any], server: EmbeddedRedis) -> None:
        self.task = task
        self.server = server
        self.fired = False

    def install(self) -> None:
        """Route SIGTERM and SIGINT to this object (where the event loop supports it)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.fire)

    def fire(self) -> None:
        """Cancel the run, and arm the backstop."""
        self.fired = True
        self.task.cancel()
        asyncio.get_running_loop().call_later(2.0, self._backstop)

    def _backstop(self) -> None:
        if not self.task.done():
            threading.Thread(target=self.server.stop, daemon=True).start()


def _progress(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> str:
    task = asyncio.current_task()
    assert task is not None
    async with EmbeddedRedis() as server:
        interrupt = _Interrupt(task, server)
        interrupt.install()
        try:
            return await _measure(args, server)
        except Exception:
            if interrupt.fired:
                raise asyncio.CancelledError from None
            raise


async def _measure(args: argparse.Namespace, server: EmbeddedRedis) -> str:
    verbose = not args.json
    ctx = Context(
        url=server.url,
        n=args.n,
        batch=args.batch,
        partitions=args.partitions,
        concurrency=args.concurrency,
        offered_rate=args.rate,
        idle_seconds=args.idle_seconds,
    )
    async with raw_client(server.url) as admin:
        env = await environment(admin)
        results: list[CaseResult] = []
        for case in cases(ctx):
            if args.only and case.key not in args.only:
                continue
            if case.needs_acked_trim and not (await server_features(admin)).acked_trim:
                continue
            began = time.perf_counter()
            case_ctx = dataclasses.replace(ctx, n=max(1, round(ctx.n * case.scale)))
            runs: list[Run] = []
            raw_runs: list[Run] = []
            for rep in range(args.repeat):
                order = [(case.lib, runs), (case.raw, raw_runs)]
                for measure, into in order if rep % 2 == 0 else reversed(order):
                    into.append(await measure(case_ctx))
                    await admin.flushdb()
            result = CaseResult(
                case.key,
                case.name,
                runs,
                raw_runs,
                case.min_ratio,
                case.max_p99_ms,
                extra={"n": case_ctx.n, "warm": case_ctx.warm},
            )
            results.append(result)
            _progress(
                verbose,
                f"{case.name}: {result.rate:,.0f} vs {result.raw_rate or 0:,.0f} msgs/s "
                f"({time.perf_counter() - began:.1f} s)",
            )
        idle: IdleCost | None = None
        if not args.only or "idle" in args.only:
            _progress(verbose, "idle consumer ...")
            idle = await measure_idle(ctx)
    settings = {
        "n": args.n,
        "repeat": args.repeat,
        "batch": args.batch,
        "partitions": args.partitions,
        "concurrency": args.concurrency,
        "offered_rate": args.rate,
        "idle_seconds": args.idle_seconds,
    }
    render = render_json if args.json else render_table
    return render(settings, env, results, idle)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print the results; the exit code is 0 unless something failed."""
    args = _parser().parse_args(argv)
    for name in ("n", "repeat", "batch", "partitions", "concurrency"):
        if getattr(args, name) < 1:
            _parser().error(f"--{name.replace('_', '-')} must be >= 1")
    if args.rate <= 0 or args.idle_seconds <= 0:
        _parser().error("--rate and --idle-seconds must be > 0")
    try:
        print(asyncio.run(_run(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmarks: interrupted", file=sys.stderr)
        return 130
    return 0
