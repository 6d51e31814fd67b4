"""``redisaq dlq list|count|replay|purge TOPIC``: a topic's dead letters."""

from __future__ import annotations

import argparse
from typing import Any

from ..dlq import DeadLetters
from .common import (
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
    """Register ``dlq`` and its actions."""
    p = sub.add_parser("dlq", help="list, count, replay or purge a topic's dead letters")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, help_text in (
        ("list", "show dead letters with their origin and error"),
        ("count", "how many dead letters the topic has"),
        ("replay", "put dead letters back on their partitions"),
        ("purge", "delete all dead letters of the topic (needs --confirm)"),
    ):
        a = actions.add_parser(name, help=help_text, parents=[leaf_parent()])
        a.add_argument("topic")
        add_format(a)
        if name == "list":
            a.add_argument("--limit", type=int, default=100, help="at most this many (100)")
        if name == "replay":
            a.add_argument(
                "--id",
                action="append",
                dest="ids",
                help="only this dead-letter id (ID, or PARTITION:ID where partitions share it)",
            )
        if name == "purge":
            a.add_argument("--confirm", action="store_true", help="really delete them")
        a.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Carry out one ``dlq`` action."""
    if args.action == "purge" and not args.confirm:
        raise UsageError("purge deletes every dead letter of the topic: add --confirm")
    async with DeadLetters(args.topic, redis_url=redis_url(args)) as dl:
        if args.action == "list":
            records = await dl.list(limit=args.limit)
            if args.format == "json":
                print_json([r.as_dict() for r in records])
            else:
                rows = [(r.id, r.partition, r.msg_id, r.group, r.deliveries,
                         f"{r.error_type}: {r.error}"[:60]) for r in records]  # fmt: skip
                print_table(rows, ["ID", "PARTITION", "MSG_ID", "GROUP", "DELIVERIES", "ERROR"])
            return EXIT_OK
        if args.action == "count":
            n = await dl.count()
        elif args.action == "replay":
            n = await dl.replay(args.ids)
        else:
            n = await dl.purge()
        if args.format == "json":
            print_json({"topic": args.topic, args.action if args.action != "count" else "count": n})
        else:
            print(n)
        return EXIT_OK
