"""What every ``redisaq`` command shares: Redis options, output formats, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "add_format",
    "add_redis_options",
    "leaf_parent",
    "print_json",
    "print_table",
    "redis_url",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage detected after parsing (bad JSON, missing --confirm, ...): exit code 2."""


def add_redis_options(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """The global Redis connection options (each also read from an environment variable).

    With ``leaf=True`` (a sub-command's own parser) they default to "not given",
    so that ``redisaq --redis-url U registry list`` and ``redisaq registry list
    --redis-url U`` both work.
    """
    g = parser.add_argument_group("Redis connection")
    if leaf:
        for flag in ("--redis-url", "--redis-host", "--redis-password", "--key-prefix"):
            g.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for flag in ("--redis-port", "--redis-db"):
            g.add_argument(flag, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return
    g.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="full URL, e.g. redis://host:6379/0 or redis+cluster://host:7000 "
        "(env REDIS_URL; overrides the options below)",
    )
    g.add_argument(
        "--redis-host",
        default=os.environ.get("REDIS_HOST", "localhost"),
        help="host (env REDIS_HOST, default localhost)",
    )
    g.add_argument(
        "--redis-port",
        type=int,
        default=int(os.environ.get("REDIS_PORT", "6379")),
        help="port (env REDIS_PORT, default 6379)",
    )
    g.add_argument(
        "--redis-db",
        type=int,
        default=int(os.environ.get("REDIS_DB", "0")),
        help="database number (env REDIS_DB, default 0)",
    )
    g.add_argument(
        "--redis-password",
        default=os.environ.get("REDIS_PASSWORD"),
        help="password (env REDIS_PASSWORD)",
    )
    g.add_argument(
        "--key-prefix",
        default=os.environ.get("REDISAQ_KEY_PREFIX", ""),
        help="prefix of the service registry's keys (env REDISAQ_KEY_PREFIX)",
    )


def leaf_parent() -> argparse.ArgumentParser:
    """A parent parser giving a sub-command the Redis options too (pass as ``parents=[...]``)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_redis_options(parent, leaf=True)
    return parent


def redis_url(args: argparse.Namespace) -> str:
    """The Redis URL the global options describe."""
    if args.redis_url:
        return str(args.redis_url)
    auth = f":{quote(args.redis_password, safe='')}@" if args.redis_password else ""
    return f"redis://{auth}{args.redis_host}:{args.redis_port}/{args.redis_db}"


def add_format(
    parser: argparse.ArgumentParser, *, choices: Sequence[str] = ("text", "json")
) -> None:
    """Add ``--format`` (``text`` is an aligned table, ``json`` is JSON only on stdout)."""
    parser.add_argument("--format", choices=list(choices), default=choices[0],
                        help="output format (default %(default)s)")  # fmt: skip


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print rows as a table with aligned columns."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
