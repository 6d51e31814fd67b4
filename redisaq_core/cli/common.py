"""What every ``redisaq`` command shares: Redis options, output formats, exit codes."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ..connection import check_url
from ..errors import ConfigurationError

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
    "read_secret_file",
    "redis_password",
    "redis_url",
    "utc_time",
    "warn_once",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage detected after parsing (bad JSON, missing --confirm, ...): exit code 2."""


_TEXT_FLAGS = ("--redis-url", "--redis-host", "--redis-username", "--redis-password",
                 "--redis-password-file", "--redis-ca-certs", "--redis-cert", "--redis-key",
                 "--key-prefix")  # fmt: skip


def add_redis_options(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """The global Redis connection options (each also read from an environment variable).

    With ``leaf=True`` (a sub-command's own parser) they default to "not given",
    so that ``redisaq --redis-url U registry list`` and ``redisaq registry list
    --redis-url U`` both work.
    """
    g = parser.add_argument_group("Redis connection")
    if leaf:
        for flag in _TEXT_FLAGS:
            g.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for flag in ("--redis-port", "--redis-db"):
            g.add_argument(flag, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        g.add_argument(
            "--redis-tls", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        return
    g.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="full URL, e.g. redis://host:6379/0, rediss://host:6380/0 (TLS), unix:///path "
        "or redis+cluster://host:7000 (env REDIS_URL; overrides host, port and db below)",
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
        "--redis-username",
        default=None,
        help="ACL user name (env REDIS_USERNAME)",
    )
    g.add_argument(
        "--redis-password-file",
        default=None,
        metavar="PATH",
        help="read the password from this file's first line (env REDIS_PASSWORD_FILE); "
        "or set REDIS_PASSWORD",
    )
    g.add_argument(
        "--redis-password",
        default=None,
        help="password: avoid it, other users see command lines in `ps`; use REDIS_PASSWORD "
        "or --redis-password-file",
    )
    g.add_argument(
        "--redis-tls",
        action="store_true",
        default=False,
        help="connect with TLS (rediss://) to --redis-host (env REDIS_TLS=1)",
    )
    g.add_argument(
        "--redis-ca-certs",
        default=None,
        metavar="PATH",
        help="CA certificates to verify the server with (env REDIS_CA_CERTS; implies TLS)",
    )
    g.add_argument(
        "--redis-cert",
        default=None,
        metavar="PATH",
        help="client certificate for TLS (env REDIS_TLS_CERT)",
    )
    g.add_argument(
        "--redis-key",
        default=None,
        metavar="PATH",
        help="client certificate's private key (env REDIS_TLS_KEY)",
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


_warned: set[str] = set()


def warn_once(text: str) -> None:
    """Print ``redisaq: warning: <text>`` on stderr, once per process."""
    if text not in _warned:
        _warned.add(text)
        sys.stderr.write(f"redisaq: warning: {text}\n")


def read_secret_file(path: str, what: str) -> str:
    """The first line of ``path`` (a password or token file), without its line ending."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} file {path!r}: {type(exc).__name__}") from None
    value = line.rstrip("\r\n")
    if not value:
        raise UsageError(f"the {what} file {path!r} is empty")
    return value


def _option(args: argparse.Namespace, name: str, env: str) -> str | None:
    value = getattr(args, name, None)
    return str(value) if value else (os.environ.get(env) or None)


def redis_password(args: argparse.Namespace) -> str | None:
    """The password the options give: ``--redis-password`` (with a warning), a file, the env."""
    given = getattr(args, "redis_password", None)
    if given:
        warn_once(
            "--redis-password is visible to other users of this machine (ps, /proc); "
            "set REDIS_PASSWORD or use --redis-password-file"
        )
        return str(given)
    path = _option(args, "redis_password_file", "REDIS_PASSWORD_FILE")
    if path:
        return read_secret_file(path, "password")
    return os.environ.get("REDIS_PASSWORD") or None


def redis_url(args: argparse.Namespace) -> str:
    """The Redis URL the global options describe (with the password and TLS options in it).

    ``--redis-url`` (or ``REDIS_URL``) is taken as written, except that a
    password, user name or TLS file given separately is added when the URL
    has none. Otherwise the URL is built from host, port and database. A URL
    no client can be made of is a ``UsageError`` (shown redacted).
    """
    username = _option(args, "redis_username", "REDIS_USERNAME")
    password = redis_password(args)
    tls_files = {
        "ssl_ca_certs": _option(args, "redis_ca_certs", "REDIS_CA_CERTS"),
        "ssl_certfile": _option(args, "redis_cert", "REDIS_TLS_CERT"),
        "ssl_keyfile": _option(args, "redis_key", "REDIS_TLS_KEY"),
    }
    tls = bool(getattr(args, "redis_tls", False)) or os.environ.get("REDIS_TLS", "") in (
        "1", "true", "yes",
    ) or any(tls_files.values())  # fmt: skip
    if args.redis_url:
        url = str(args.redis_url)
        scheme = url.split("://", 1)[0].lower()
        if any(tls_files.values()) and scheme not in ("rediss", "rediss+cluster"):
            raise UsageError(
                "--redis-ca-certs, --redis-cert and --redis-key need a rediss:// URL "
                f"(got a {scheme}:// one)"
            )
    else:
        scheme = "rediss" if tls else "redis"
        url = f"{scheme}://{args.redis_host}:{args.redis_port}/{args.redis_db}"
    url = _complete(url, username, password, tls_files)
    try:
        check_url(url)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    return url


def _complete(
    url: str, username: str | None, password: str | None, tls_files: dict[str, str | None]
) -> str:
    """``url`` with credentials and TLS file options added where it has none of its own."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        userinfo, host = "", netloc
    user, colon, own_password = userinfo.partition(":")
    if not user and username:
        user = quote(username, safe="")
    if not colon and password and "password=" not in tail:
        own_password, colon = quote(password, safe=""), ":"
    if user or colon:
        netloc = f"{user}{colon}{own_password}@{host}"
    path, question, query = tail.partition("?")
    extra = [f"{k}={quote(v, safe='/')}" for k, v in tls_files.items() if v and k not in query]
    if extra:
        query = "&".join([q for q in [query] if q] + extra)
        question = "?"
    return f"{scheme}://{netloc}{path}{question}{query}"


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


def _seconds_arg(text: str, *, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text!r}")
    return value


def seconds(text: str) -> float:
    """An ``argparse`` type: a number of seconds > 0."""
    return _seconds_arg(text, zero=False)


def seconds_or_zero(text: str) -> float:
    """An ``argparse`` type: a number of seconds >= 0."""
    return _seconds_arg(text, zero=True)


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def utc_time(ts: float | None) -> str:
    """``ts`` (Unix seconds) as ISO 8601 UTC to the millisecond; one no date can hold as given."""
    if ts is None:
        return ""
    try:
        stamp = datetime.fromtimestamp(ts, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # another client's value, out of any range
        return repr(ts)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
