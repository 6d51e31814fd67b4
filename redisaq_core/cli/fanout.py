"""``redisaq fanout``: run a fan-out bridge (topics or plain lists) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._delivery import POLL_INTERVAL
from ..errors import ConfigurationError
from ..fanout import FanOut, ListFanOut
from ..registry import ServiceRegistry
from ..signals import install_signal_handlers
from .common import EXIT_OK, UsageError, add_format, leaf_parent, print_json, redis_url

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``fanout``."""
    p = sub.add_parser(
        "fanout",
        parents=[leaf_parent()],
        help="copy every message of a topic (or a list) to several topics (or lists)",
        description="Stream mode (--from/--to): read TOPIC as a consumer group and write every "
        "message to each target topic, exactly once, on the partition its key picks there. "
        "List mode (--list-in/--list-out, mpush): move each item of a list to every output "
        "list. The bridge registers itself (service type fanout) and runs until SIGTERM/SIGINT "
        "or until its registration is deleted; the first signal finishes the batch in flight "
        "and exits 0, a second stops at once.",
    )
    stream = p.add_argument_group("stream mode")
    stream.add_argument("--from", dest="source", metavar="TOPIC", help="the source topic")
    stream.add_argument("--to", dest="targets", metavar="TOPIC", action="append", default=[],
                        help="a target topic (repeat for several)")  # fmt: skip
    stream.add_argument("--group", default="fanout", help="consumer group (default %(default)s)")
    stream.add_argument("--name", default=None, help="member name (default: host-pid-random)")
    stream.add_argument("--static", action="store_true",
                        help="static membership: a restart with the same --name within the "
                        "heartbeat TTL keeps its partitions")  # fmt: skip
    stream.add_argument("--maxlen", type=int, default=None, help="trim target streams to ~N")
    stream.add_argument("--target-partitions", type=int, default=None,
                        help="partitions of a target topic the bridge creates "
                        "(default: the source's)")  # fmt: skip
    stream.add_argument("--heartbeat-interval", type=float, default=3.0)
    stream.add_argument("--heartbeat-ttl", type=float, default=None)
    stream.add_argument("--poll-interval", type=float, default=POLL_INTERVAL,
                        help="longest blocking read, seconds (default %(default)s)")  # fmt: skip
    stream.add_argument("--max-deliveries", type=int, default=5)
    stream.add_argument("--retry-backoff", type=float, default=0.5)
    stream.add_argument("--shutdown-timeout", type=float, default=30.0)
    lists = p.add_argument_group("list mode")
    lists.add_argument("--list-in", metavar="KEY", help="the input list")
    lists.add_argument("--list-out", metavar="KEY", action="append", default=[],
                       help="an output list (repeat for several)")  # fmt: skip
    lists.add_argument("--pending", metavar="KEY", default=None,
                       help="the pending list (default: <list-in>:pending)")  # fmt: skip
    lists.add_argument("--pop-timeout", type=float, default=5.0,
                       help="seconds a pop blocks, which bounds a graceful stop "
                       "(default %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=100, help="default %(default)s")
    p.add_argument("--no-register", action="store_true",
                   help="do not register in the service registry")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="print nothing at exit")
    add_format(p)
    p.set_defaults(func=run_fanout)


def _bridge(args: argparse.Namespace, registry: ServiceRegistry | None) -> FanOut | ListFanOut:
    url = redis_url(args)
    if args.source is not None and args.list_in is not None:
        raise UsageError("give either --from/--to (topics) or --list-in/--list-out (lists)")
    if args.source is not None:
        if args.list_out or args.pending is not None:
            raise UsageError("--list-out and --pending belong to list mode (--list-in)")
        return FanOut(
            args.source, args.targets, group_name=args.group, consumer_name=args.name,
            static=args.static, batch_size=args.batch_size, maxlen=args.maxlen,
            target_partitions=args.target_partitions,
            heartbeat_interval=args.heartbeat_interval, heartbeat_ttl=args.heartbeat_ttl,
            poll_interval=args.poll_interval, max_deliveries=args.max_deliveries,
            retry_backoff=args.retry_backoff, shutdown_timeout=args.shutdown_timeout,
            redis_url=url, registry=registry,
        )  # fmt: skip
    if args.list_in is not None:
        if args.targets:
            raise UsageError("--to belongs to stream mode (--from)")
        return FanOut.from_lists(
            args.list_in, args.list_out, pending=args.pending, pop_timeout=args.pop_timeout,
            batch_size=args.batch_size, redis_url=url, registry=registry,
            name=args.name, heartbeat_interval=args.heartbeat_interval,
        )  # fmt: skip
    raise UsageError("give --from TOPIC --to TOPIC ... or --list-in KEY --list-out KEY ...")


async def run_fanout(args: argparse.Namespace) -> int:
    """Run the bridge until a signal or a remote shutdown, then print its counters."""
    registry = None
    if not args.no_register:
        registry = ServiceRegistry(redis_url=redis_url(args), key_prefix=args.key_prefix)
    try:
        try:
            bridge = _bridge(args, registry)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        install_signal_handlers(bridge)
        async with bridge:
            await bridge.run()
        stats = bridge.stats.as_dict()
    finally:
        if registry is not None:
            await registry.close()
    if not args.quiet:
        if args.format == "json":
            print_json(stats)
        else:
            sys.stdout.write(f"fanout {bridge.service_id}: stopped; {_summary(stats)}\n")
    return EXIT_OK


def _summary(stats: dict[str, Any]) -> str:
    if "pushed" in stats:
        return f"{stats['moved']} moved, {stats['recovered']} recovered"
    return (
        f"{stats['fanned_out']} fanned out, {stats['already_done']} already done, "
        f"{stats['failed']} failed"
    )
