"""One member process of ``python -m benchmarks.scale``: a few ``Consumer`` instances.

Started by the scale benchmark as ``python -m benchmarks.scale_worker ...``;
it talks to its parent over its standard streams, one line at a time:

* it imports everything, then prints ``ready`` and waits (the parent reads
  the process's memory at this point: the interpreter and the imports, no
  consumer yet);
* on the line ``go`` it starts ``--members`` consumers of one group, named
  ``<prefix>-000``, ``<prefix>-001``, ..., each with its own client, and
  prints ``started``;
* on the line ``stop``, at the end of its standard input (the parent is
  gone) or on SIGTERM/SIGINT it stops them gracefully (they leave the group),
  prints ``stopped`` and exits.

Handlers record marker messages (payloads ``{"round": n}``) by adding the
message's partition to the set ``<seen>:<n>``, so the parent can tell when
every partition is being read; anything else is dropped. A handler call that
fails writes a line starting with :data:`HANDLER_FAILED` to standard error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis

from redisaq_core import Consumer, Message

__all__ = ["HANDLER_FAILED", "RECORDER_CONNECTIONS", "main"]

RECORDER_CONNECTIONS = 32
"""Connections the handlers of one process record markers with, at most."""

HANDLER_FAILED = "scale_worker: marker handler failed"
"""Written to standard error, one line per failed handler call."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_worker",
        description="Member process of the scale benchmark (started by benchmarks.scale).",
    )
    p.add_argument("--url", required=True, help="redis://host:port/db of the server")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--members", type=int, required=True, help="consumers in this process")
    p.add_argument("--prefix", required=True, help="consumer names are <prefix>-NNN")
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--seen", required=True, help="markers are recorded in the set <seen>:<round>")
    return p


def _say(line: str) -> None:
    """Tell the parent process something (one line on standard output, if it still listens)."""
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


async def _next_line(reader: asyncio.StreamReader) -> str:
    """The next line from the parent, stripped; ``""`` at the end of input."""
    return (await reader.readline()).decode().strip()


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    quit_now = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, quit_now.set)
    commands = await _stdin_reader()
    _say("ready")

    async def told(word: str) -> None:
        """Return once the parent sends ``word`` or stops talking (end of input)."""
        while True:
            line = await _next_line(commands)
            if line in (word, ""):
                return

    waiting = asyncio.ensure_future(told("go"))
    quitting = asyncio.ensure_future(quit_now.wait())
    await asyncio.wait([waiting, quitting], return_when=asyncio.FIRST_COMPLETED)
    if quitting.done() or commands.at_eof():
        waiting.cancel()
        _say("stopped")
        return

    # One client for the process's handlers; its pool waits for a free connection rather
    # than failing the handler (and so delaying the marker by a retry) when many handlers
    # record at once: 16 consumers x 16 concurrent handlers exceed redis-py's default 100.
    recorder = Redis.from_pool(
        BlockingConnectionPool.from_url(args.url, max_connections=RECORDER_CONNECTIONS, timeout=60)
    )

    async def handle(message: Message) -> None:
        """Record a marker's partition; ignore anything else."""
        body: Any = message.payload
        if isinstance(body, dict) and "round" in body:
            try:
                await recorder.sadd(f"{args.seen}:{body['round']}", message.partition or 0)
            except Exception as exc:
                # Counted by the benchmark: the consumer retries the message later.
                print(f"{HANDLER_FAILED}: {exc!r}", file=sys.stderr, flush=True)
                raise

    consumers = [
        Consumer(
            args.topic,
            group_name=args.group,
            consumer_name=f"{args.prefix}-{i:03d}",
            redis_url=args.url,
            heartbeat_interval=args.heartbeat_interval,
        )
        for i in range(args.members)
    ]
    tasks = [asyncio.ensure_future(c.process(handle)) for c in consumers]
    _say("started")
    stopping = asyncio.ensure_future(told("stop"))
    try:
        await asyncio.wait([stopping, quitting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        await asyncio.gather(*(c.stop(timeout=10) for c in consumers), return_exceptions=True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for c in consumers:
            with contextlib.suppress(Exception):
                await c.close()
        await recorder.aclose()
        for task in (stopping, quitting):
            task.cancel()
    for result in results:
        if isinstance(result, BaseException):
            print(f"scale_worker: a consumer failed: {result!r}", file=sys.stderr)
    _say("stopped")


def main(argv: list[str] | None = None) -> int:
    """Run the member process until told to stop; the exit code is always 0 when it stops."""
    args = _parser().parse_args(argv)
    if args.members < 1:
        _parser().error("--members must be >= 1")
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
