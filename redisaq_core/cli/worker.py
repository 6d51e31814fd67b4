"""``redisaq worker MODULE:FUNCTION --topic T``: run a consumer with a handler from a module."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from ..consumer import Consumer
from ..signals import install_signal_handlers
from .common import EXIT_OK, UsageError, leaf_parent, redis_url

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``worker``."""
    p = sub.add_parser(
        "worker",
        parents=[leaf_parent()],
        help="consume a topic with a handler function until SIGTERM/SIGINT",
        description="Run a consumer whose handler is MODULE:FUNCTION (an async function taking "
        "a Message, or a list of them with --batch). The first SIGTERM/SIGINT stops it "
        "gracefully (in-flight handlers finish, partitions are released), a second at once.",
    )
    p.add_argument("handler", metavar="MODULE:FUNCTION")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", default="default", help="consumer group (default %(default)s)")
    p.add_argument("--name", default=None, help="consumer name (default: host-pid-random)")
    p.add_argument("--batch", action="store_true", help="the handler takes a list of messages")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--heartbeat-interval", type=float, default=3.0)
    p.add_argument("--heartbeat-ttl", type=float, default=None)
    p.add_argument("--max-deliveries", type=int, default=5)
    p.add_argument("--retry-backoff", type=float, default=0.5)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--static", action="store_true", help="static membership (needs --name)")
    p.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    p.set_defaults(func=run_worker)


def load_handler(spec: str) -> Callable[[Any], Any]:
    """Import ``module:function`` and return the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"handler must look like module:function, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import handler module {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if func is None or not inspect.iscoroutinefunction(func):
        raise UsageError(f"{spec!r} is not an async function")
    return func  # type: ignore[no-any-return]


async def run_worker(args: argparse.Namespace) -> int:
    """Consume until a signal, then shut down gracefully."""
    handler = load_handler(args.handler)
    if args.static and not args.name:
        raise UsageError("--static needs --name (a static member keeps its name across restarts)")
    consumer = Consumer(
        args.topic,
        group_name=args.group,
        consumer_name=args.name,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_ttl=args.heartbeat_ttl,
        max_deliveries=args.max_deliveries,
        retry_backoff=args.retry_backoff,
        poll_interval=args.poll_interval,
        shutdown_timeout=args.shutdown_timeout,
        static=args.static,
        start=args.start,
        redis_url=redis_url(args),
    )
    install_signal_handlers(consumer)
    async with consumer:
        if args.batch:
            await consumer.process_batch(handler)
        else:
            await consumer.process(handler)
    return EXIT_OK
