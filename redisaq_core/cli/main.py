"""Entry point of the ``redisaq`` command: global options, sub-commands, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from redis.exceptions import RedisClusterException, RedisError

from ..connection import redact_text
from ..errors import ConfigurationError, RedisaqError
from ..logs import LOG_FORMATS, JsonFormatter, configure_logging, log_format
from . import demo, dlq, fanout, jobs, monitor, registry, schedule, server, web, worker
from .common import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    add_redis_options,
    redis_password,
    redis_url,
)

__all__ = ["build_parser", "main"]

# Each module adds its sub-commands; a sub-command's ``func(args)`` returns an exit code
# or an awaitable of one.
COMMAND_MODULES = [server, dlq, demo, registry, worker, monitor, web, fanout, jobs, schedule]


def _version() -> str:
    try:
        return version("redisaq-core")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="redisaq",
        description="Partitioned topics, consumer groups, dead letters and a service "
        "registry on Redis Streams.",
    )
    parser.add_argument("--version", action="version", version=f"redisaq {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug); LOG_LEVEL sets it too")  # fmt: skip
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="log lines as text (the default) or one JSON object each; "
                        "LOG_FORMAT sets it too")  # fmt: skip
    add_redis_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def _setup_logging(verbose: int, fmt: str | None = None) -> str:
    level: int | str = os.environ.get("LOG_LEVEL", "WARNING").upper()
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    chosen = log_format(fmt)
    configure_logging(level, chosen, sys.stderr)
    return chosen


def _error(text: str, fmt: str) -> None:
    """The command's last word on stderr: a line of text, or a JSON log line."""
    if fmt == "json":
        print(JsonFormatter().format(logging.makeLogRecord({
            "name": "redisaq", "levelname": "ERROR", "levelno": logging.ERROR, "msg": text,
        })), file=sys.stderr)  # fmt: skip
    else:
        print(f"redisaq: error: {text}", file=sys.stderr)


def _redis_failure(exc: BaseException, args: argparse.Namespace) -> str:
    """A failed Redis call as one line, with no secret of the connection options in it."""
    text = f"Redis call failed ({type(exc).__name__}): {' '.join(str(exc).split())}"
    try:
        url, password = redis_url(args), redis_password(args)
    except (UsageError, OSError, ValueError):
        return f"Redis call failed ({type(exc).__name__})"
    text = redact_text(text, url)
    return text.replace(password, "***") if password else text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``redisaq`` with ``argv`` and return the exit code (0 ok, 1 failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fmt = _setup_logging(args.verbose, args.log_format)
    except ConfigurationError as exc:
        print(f"redisaq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except UsageError as exc:
        _error(str(exc), fmt)
        return EXIT_USAGE
    except RedisaqError as exc:
        _error(str(exc), fmt)
        return EXIT_FAILED
    except (RedisError, RedisClusterException) as exc:  # a reply no command explains itself
        _error(_redis_failure(exc, args), fmt)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
