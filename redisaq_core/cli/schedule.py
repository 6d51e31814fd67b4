"""``redisaq schedule list|add|remove|run``: periodic jobs stored in Redis.

Exit codes: 0 done, 1 a runtime error (Redis unreachable, no such schedule, a name
taken), 2 bad usage (an invalid cron expression, an unknown time zone, both or
neither of ``--cron`` and ``--every``, a payload that is not JSON): nothing is
stored then.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigurationError
from ..schedule import Schedule, Scheduler
from ..signals import install_signal_handlers
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_format,
    leaf_parent,
    print_json,
    print_table,
    redis_url,
)

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``schedule`` and its actions."""
    p = sub.add_parser("schedule", help="periodic jobs: list, add, remove and run schedules")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    a = actions.add_parser("list", help="show the stored schedules and their last tick",
                           parents=[leaf_parent()])  # fmt: skip
    add_format(a)
    a.set_defaults(func=_list)

    a = actions.add_parser(
        "add", help="store a schedule", parents=[leaf_parent()],
        description="Store a schedule that `redisaq schedule run` enqueues on TOPIC at every "
        "tick: give exactly one of --cron and --every.",
    )  # fmt: skip
    a.add_argument("name", metavar="NAME")
    a.add_argument("--topic", required=True, help="the topic each tick is enqueued on")
    a.add_argument("--cron", help="a cron expression, e.g. '*/5 * * * *' (needs croniter)")
    a.add_argument("--every", type=float, metavar="SECONDS", help="a fixed interval")
    a.add_argument("--timezone", default="UTC", help="IANA zone of --cron (default UTC)")
    a.add_argument("--payload", default="null", help="the payload, as JSON (default null)")
    a.add_argument("--partition-key", help="the payload field whose value picks the partition")
    a.add_argument("--priority", type=int, help="priority of each message (0-15)")
    a.add_argument("--job", action="store_true", help="submit each tick as a tracked job")
    a.add_argument("--missed", choices=["skip", "catch_up"], default="skip",
                   help="ticks missed while no scheduler ran: drop them (skip, the default) "
                   "or enqueue the latest --max-catch-up of them")  # fmt: skip
    a.add_argument("--max-catch-up", type=int, default=10, help="default %(default)s")
    a.add_argument("--grace", type=float, default=60.0,
                   help="seconds a tick may be late and still be on time (default 60)")  # fmt: skip
    a.add_argument("--replace", action="store_true", help="replace a schedule of that name")
    add_format(a)
    a.set_defaults(func=_add)

    a = actions.add_parser("remove", help="delete a stored schedule", parents=[leaf_parent()])
    a.add_argument("name", metavar="NAME")
    add_format(a)
    a.set_defaults(func=_remove)

    a = actions.add_parser(
        "run", parents=[leaf_parent()], help="enqueue the ticks of the stored schedules",
        description="Enqueue the ticks of the stored schedules (or of those named) until "
        "SIGTERM/SIGINT, picking up schedules added, changed or removed meanwhile. Run it in "
        "several processes or hosts: each tick is enqueued once.",
    )  # fmt: skip
    a.add_argument("names", metavar="NAME", nargs="*", help="only these schedules")
    a.add_argument("--reload-interval", type=float, default=2.0,
                   help="seconds between reads of the stored schedules (default 2)")  # fmt: skip
    a.set_defaults(func=_run)


def _time(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


async def _list(args: argparse.Namespace) -> int:
    async with Scheduler(redis_url=redis_url(args)) as scheduler:
        schedules = await scheduler.list()
        last = await scheduler.last_ticks()
    rows = [{**s.to_dict(), "last_tick": _time(last.get(s.name))} for s in schedules]
    if args.format == "json":
        print_json(rows)
    else:
        print_table(
            [(r["name"], r["topic"], r["cron"] or f"every {r['every']:g}s", r["timezone"],
              r["missed"], r["last_tick"] or "-") for r in rows],
            ["NAME", "TOPIC", "WHEN", "TIMEZONE", "MISSED", "LAST TICK"],
        )  # fmt: skip
    return EXIT_OK


def _schedule(args: argparse.Namespace) -> Schedule:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None
    try:
        return Schedule(
            args.name, topic=args.topic, cron=args.cron, every=args.every,
            timezone=args.timezone, payload=payload, partition_key=args.partition_key,
            priority=args.priority, job=args.job, missed=args.missed,
            max_catch_up=args.max_catch_up, grace=args.grace,
        )  # fmt: skip
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


async def _add(args: argparse.Namespace) -> int:
    schedule = _schedule(args)
    async with Scheduler(redis_url=redis_url(args)) as scheduler:
        try:
            await scheduler.add(schedule, replace=args.replace)
        except ConfigurationError as exc:
            print(f"redisaq: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.format == "json":
        print_json(schedule.to_dict())
    else:
        print(f"added {schedule.name}")
    return EXIT_OK


async def _remove(args: argparse.Namespace) -> int:
    async with Scheduler(redis_url=redis_url(args)) as scheduler:
        removed = await scheduler.remove(args.name)
    if not removed:
        print(f"redisaq: error: no schedule named {args.name!r}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        print_json({"name": args.name, "removed": True})
    else:
        print(f"removed {args.name}")
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    try:
        scheduler = Scheduler(redis_url=redis_url(args), reload_interval=args.reload_interval)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    async with scheduler:
        install_signal_handlers(scheduler)
        await scheduler.run(args.names or None)
    return EXIT_OK
