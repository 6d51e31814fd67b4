"""``redisaq web``: serve the web gateway (jobs, worker manager, dashboard) with uvicorn.

Needs the ``web`` extra. Binds 127.0.0.1:8000 unless told otherwise and prints
the dashboard's URL once it accepts connections. Environment:
``HEARTBEAT_TIMEOUT`` (seconds, default 15) and ``REDISAQ_WEB_TOKEN`` (the
bearer token; ``--token`` overrides it).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import re
import signal
import sys
from typing import Any

from ..registry import ServiceRegistry
from .common import EXIT_FAILED, EXIT_OK, UsageError, leaf_parent, redis_url

__all__ = ["add_commands", "run_web"]

log = logging.getLogger(__name__)

_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Hide ``token=...`` query values in log lines (uvicorn logs request paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with the token values replaced by ``***``."""
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "token=" in message:
            record.msg = _TOKEN_IN_TEXT.sub(r"\1***", message)
            record.args = ()
        return True


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def add_commands(sub: Any) -> None:
    """Register ``web``."""
    p = sub.add_parser(
        "web",
        parents=[leaf_parent()],
        help="serve the web gateway: jobs over HTTP and WebSocket, worker manager, dashboard",
        description="Serve the web gateway (needs the web extra) until SIGINT/SIGTERM. Prints "
        "the dashboard URL once ready. Env: HEARTBEAT_TIMEOUT (seconds, default 15), "
        "REDISAQ_WEB_TOKEN (bearer token).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port, 0 for a free one (8000)")
    p.add_argument(
        "--token",
        default=None,
        help="require Authorization: Bearer TOKEN (env REDISAQ_WEB_TOKEN)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=_timeout,
        default=None,
        help="seconds without a heartbeat before a worker is not_responding "
        "(env HEARTBEAT_TIMEOUT, default 15)",
    )
    p.set_defaults(func=run_web)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _settings(args: argparse.Namespace) -> tuple[str | None, float]:
    token = args.token if args.token is not None else os.environ.get("REDISAQ_WEB_TOKEN")
    token = token or None
    timeout = args.heartbeat_timeout
    if timeout is None:
        raw = os.environ.get("HEARTBEAT_TIMEOUT", "15")
        try:
            timeout = _timeout(raw)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"HEARTBEAT_TIMEOUT: {exc}") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    return token, timeout


async def run_web(args: argparse.Namespace) -> int:
    """Serve until a signal; print the URL when ready."""
    token, timeout = _settings(args)
    try:
        import uvicorn

        from ..web import DEFAULT_MAX_BODY, create_app
    except ImportError as exc:
        sys.stderr.write(
            f"redisaq: error: redisaq web needs the web extra ({exc.name} is missing): "
            "pip install 'redisaq-core[web]'\n"
        )
        return EXIT_FAILED
    url = redis_url(args)
    async with ServiceRegistry(redis_url=url, key_prefix=args.key_prefix):
        pass  # fail early, with a clear message, when Redis can't be reached
    app = create_app(
        redis_url=url, key_prefix=args.key_prefix, token=token, heartbeat_timeout=timeout
    )
    if not _is_loopback(args.host) and token is None:
        sys.stderr.write(
            f"redisaq: warning: serving on {args.host} without a token: anyone who can reach "
            "it can submit jobs and replay dead letters (set --token or REDISAQ_WEB_TOKEN)\n"
        )
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    level = logging.getLogger().getEffectiveLevel()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=None,
        log_config=None,
        ws_max_size=DEFAULT_MAX_BODY,
        access_log=level <= logging.INFO,
    )
    server = uvicorn.Server(config)
    # uvicorn stops on SIGINT/SIGTERM and then raises the signal again for the handler it
    # found: let that be a no-op, so that a signal means a clean stop and exit code 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return await _serve(server, args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    """A signal handler that does nothing (uvicorn has already handled the signal)."""


async def _serve(server: Any, args: argparse.Namespace) -> int:
    async def announce() -> None:
        while not server.started:  # noqa: ASYNC110 (uvicorn has no event for it)
            await asyncio.sleep(0.05)
        port = args.port
        for s in server.servers:
            for sock in s.sockets:
                port = sock.getsockname()[1]
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(f"http://{shown}:{port}/", flush=True)

    announcing = asyncio.create_task(announce())
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when the app fails to start or the port is taken
        sys.stderr.write(f"redisaq: error: the gateway did not start on {args.host}:{args.port}\n")
        return EXIT_FAILED
    finally:
        announcing.cancel()
        await asyncio.gather(announcing, return_exceptions=True)
    return EXIT_OK
