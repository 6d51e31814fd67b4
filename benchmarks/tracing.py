"""Tracing overhead: ``process_batch`` and end-to-end, three ways, in one run.

``python -m benchmarks.tracing`` starts one redis-server and measures each case
in a child process per mode, the modes taking turns on every repetition (best
run kept):

* ``off``: OpenTelemetry is not importable (the ``otel`` extra not installed);
* ``api``: the API installed and no SDK or tracer provider configured (the
  common case: FastAPI brings the API along);
* ``sdk``: the SDK's tracer provider with a batch span processor and an
  exporter that drops the spans: every message gets its producer and consumer
  spans and its trace context field, and nothing leaves the process.

The topic is filled with ``Producer.batch_enqueue`` in the same mode (untimed),
so that in ``sdk`` mode the entries carry the trace field the consumer reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from redisaq_core import EmbeddedRedis

from .common import percentile
from .report import environment, environment_lines

__all__ = ["MODES", "main"]

ROOT = Path(__file__).resolve().parents[1]

MODES = ("off", "api", "sdk")

_CHILD = """
import sys
if {mode!r} == "off":
    sys.modules["opentelemetry"] = None  # as if the extra were not installed
elif {mode!r} == "sdk":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
from benchmarks.tracing import child
child({url!r}, {n}, {batch})
"""


def child(url: str, n: int, batch: int) -> None:
    """Measure both cases in this process (its mode already set) and print them as JSON."""
    from redisaq_core import _tracing

    out = asyncio.run(_both(url, n, batch))
    out["tracer"] = type(_tracing.tracer()).__name__
    out["api"] = "opentelemetry" in sys.modules and sys.modules["opentelemetry"] is not None
    print(json.dumps(out))


async def _both(url: str, n: int, batch: int) -> dict[str, Any]:
    from redisaq_core import Consumer, Producer

    from .common import GROUP, Context, Sink
    from .consume import run_consumer
    from .endtoend import _lib as end_to_end

    ctx = Context(url=url, n=n, batch=batch)
    topic = ctx.topic("tracing-batch")
    total = ctx.warm + n
    async with Producer(topic, redis_url=url) as producer:
        for start in range(0, total, batch):
            end = min(total, start + batch)
            await producer.batch_enqueue([{"i": i} for i in range(start, end)])
    sink = Sink(ctx.warm, n)
    consumer = Consumer(topic, group_name=GROUP, batch_size=batch, redis_url=url)
    await run_consumer(consumer, sink, batch=True, timeout=ctx.timeout)
    e2e = await end_to_end(ctx, None)
    return {
        "process_batch": {"rate": sink.rate, "cpu_us": sink.cpu_us},
        "end_to_end": {
            "rate": e2e.rate,
            "cpu_us": e2e.cpu_us,
            "p50_ms": percentile(e2e.latencies_ms, 50),
            "p99_ms": percentile(e2e.latencies_ms, 99),
        },
    }


def _run_child(mode: str, url: str, n: int, batch: int) -> dict[str, Any]:
    code = _CHILD.format(mode=mode, url=url, n=n, batch=batch)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child ({mode}) failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _table(best: dict[str, dict[str, dict[str, Any]]], env: dict[str, Any], args: Any) -> str:
    lines = [
        f"n={args.n} per case and run, batch {args.batch}, best of {args.repeat} runs per mode",
        "",
        "| case | tracing | msgs/s | CPU µs/msg | vs off | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in ("process_batch", "end_to_end"):
        base = best["off"][case]["rate"]
        for mode in MODES:
            r = best[mode][case]
            p50 = f"{r['p50_ms']:.1f}" if "p50_ms" in r else ""
            p99 = f"{r['p99_ms']:.1f}" if "p99_ms" in r else ""
            lines.append(
                f"| {case} | {mode} | {r['rate']:,.0f} | {r['cpu_us']:.1f} | "
                f"{r['rate'] / base:.2f} | {p50} | {p99} |"
            )
    return "\n".join([*lines, "", *environment_lines(env)])


async def _environment(url: str) -> dict[str, Any]:
    from .common import raw_client

    async with raw_client(url) as client:
        return await environment(client)


def main(argv: list[str] | None = None) -> int:
    """Run the three modes side by side and print the table (or JSON)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracing", description=__doc__)
    p.add_argument("--n", type=int, default=20_000, help="messages per case and run")
    p.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="runs per mode, best kept (default 3)")
    p.add_argument("--json", action="store_true", help="print every run as JSON")
    args = p.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.repeat < 1:
        p.error("--n, --batch and --repeat must be >= 1")
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    began = time.perf_counter()
    with EmbeddedRedis() as server:
        for rep in range(args.repeat):
            order = MODES[rep % 3 :] + MODES[: rep % 3]
            for mode in order:
                runs[mode].append(_run_child(mode, server.url, args.n, args.batch))
                if not args.json:
                    r = runs[mode][-1]
                    print(
                        f"{mode}: process_batch {r['process_batch']['rate']:,.0f}/s, "
                        f"end-to-end {r['end_to_end']['rate']:,.0f}/s (tracer {r['tracer']})",
                        file=sys.stderr,
                    )
        env = asyncio.run(_environment(server.url))
    if args.json:
        print(json.dumps({"settings": vars(args), "environment": env, "runs": runs}, indent=2))
        return 0
    best = {
        mode: {
            case: max((r[case] for r in found), key=lambda r: r["rate"])
            for case in ("process_batch", "end_to_end")
        }
        for mode, found in runs.items()
    }
    print(_table(best, env, args))
    print(f"\n({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
