"""``redisaq web``: serve the web gateway (jobs, worker manager, dashboard) with uvicorn.

Needs the ``web`` extra. Binds 127.0.0.1:8000 unless told otherwise and prints
the dashboard's URL once it accepts connections. Environment:
``HEARTBEAT_TIMEOUT`` (seconds, default 15), ``REDISAQ_WEB_TOKEN`` (the bearer
token; ``--token-file`` and ``--token`` override it) and
``REDISAQ_WEB_ALLOWED_HOSTS`` (comma-separated).

It refuses to serve a non-loopback address without a token unless
``--insecure-no-token`` is given, and answers only to the host names of
``--allowed-host`` (default: the loopback names when bound to loopback, the
bound address and the loopback names when bound to another address, any name
when bound to all addresses).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import signal
import sys
from typing import Any

from ..registry import ServiceRegistry
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    leaf_parent,
    positive_int,
    read_secret_file,
    redis_url,
    seconds,
    seconds_or_zero,
    warn_once,
)

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


def add_commands(sub: Any) -> None:
    """Register ``web``."""
    p = sub.add_parser(
        "web",
        parents=[leaf_parent()],
        help="serve the web gateway: jobs over HTTP and WebSocket, worker manager, dashboard",
        description="Serve the web gateway (needs the web extra) until SIGINT/SIGTERM. Prints "
        "the dashboard URL once ready. Env: HEARTBEAT_TIMEOUT (seconds, default 15), "
        "REDISAQ_WEB_TOKEN (bearer token), REDISAQ_WEB_ALLOWED_HOSTS (comma-separated).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port, 0 for a free one (8000)")
    p.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="require Authorization: Bearer TOKEN, TOKEN being this file's first line",
    )
    p.add_argument(
        "--token",
        default=None,
        help="the token itself (visible in ps: prefer REDISAQ_WEB_TOKEN or --token-file)",
    )
    p.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="serve a non-loopback address without a token (anyone who reaches it can "
        "submit jobs, register workers and replay dead letters)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a host name clients may use (Host header), repeatable; .example.com for a "
        "domain and its subdomains, * for any (env REDISAQ_WEB_ALLOWED_HOSTS)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://ops.example.com) whose pages may use the gateway, repeatable",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=seconds,
        default=None,
        help="seconds without a heartbeat before a worker is not_responding "
        "(env HEARTBEAT_TIMEOUT, default 15)",
    )
    p.add_argument(
        "--heartbeat-min-interval",
        type=seconds_or_zero,
        default=None,
        help="seconds between two heartbeats of a worker written to Redis "
        "(default a quarter of the timeout, at most 1)",
    )
    p.add_argument(
        "--max-body-size",
        type=positive_int,
        default=None,
        help="bytes of a request body or WebSocket frame (default 1 MiB); a larger frame is "
        "refused by the server before it is read (close code 1009)",
    )
    p.add_argument(
        "--max-sockets",
        type=positive_int,
        default=None,
        help="WebSockets served at once (default 1000); more are closed with 1013",
    )
    p.add_argument(
        "--socket-queue-bytes",
        type=positive_int,
        default=None,
        help="bytes of frames a /ws/jobs client may leave unread (default 1 MiB); then it is "
        "closed with 4408",
    )
    p.add_argument(
        "--dead-letter-page-bytes",
        type=positive_int,
        default=None,
        help="bytes of dead letters in one page of GET /dlq/{topic} (default 1 MiB)",
    )
    p.set_defaults(func=run_web)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(args: argparse.Namespace) -> list[str]:
    """The Host names the gateway answers to: the options, else the default for the address."""
    given = list(args.allowed_host or [])
    if not given:
        env = os.environ.get("REDISAQ_WEB_ALLOWED_HOSTS", "")
        given = [h.strip() for h in env.split(",") if h.strip()]
    if given:
        return given
    if _is_loopback(args.host):
        return list(_LOOPBACK_NAMES)
    if _is_wildcard(args.host):
        return ["*"]
    return [args.host, *_LOOPBACK_NAMES]


def gateway_token(args: argparse.Namespace) -> str | None:
    """The token: ``--token-file``, ``--token`` (with a warning), else ``REDISAQ_WEB_TOKEN``."""
    if args.token_file:
        return read_secret_file(args.token_file, "token")
    if args.token:
        warn_once(
            "--token is visible to other users of this machine (ps, /proc); "
            "set REDISAQ_WEB_TOKEN or use --token-file"
        )
        return str(args.token)
    return os.environ.get("REDISAQ_WEB_TOKEN") or None


def _settings(args: argparse.Namespace) -> tuple[str | None, float]:
    token = gateway_token(args)
    timeout = args.heartbeat_timeout
    if timeout is None:
        raw = os.environ.get("HEARTBEAT_TIMEOUT", "15")
        try:
            timeout = seconds(raw)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"HEARTBEAT_TIMEOUT: {exc}") from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    if token is None and not _is_loopback(args.host) and not args.insecure_no_token:
        raise UsageError(
            f"refusing to serve {args.host} without a token: anyone who can reach it could "
            "submit jobs, register workers and replay dead letters. Set REDISAQ_WEB_TOKEN "
            "or --token-file, or pass --insecure-no-token"
        )
    if args.heartbeat_min_interval is not None and args.heartbeat_min_interval >= timeout:
        raise UsageError("--heartbeat-min-interval must be below the heartbeat timeout")
    return token, timeout


async def run_web(args: argparse.Namespace) -> int:
    """Serve until a signal; print the URL when ready."""
    token, timeout = _settings(args)
    try:
        import uvicorn

        from ..web import app as web_app
    except ImportError as exc:
        sys.stderr.write(
            f"redisaq: error: redisaq web needs the web extra ({exc.name} is missing): "
            "pip install 'redisaq-core[web]'\n"
        )
        return EXIT_FAILED
    url = redis_url(args)
    async with ServiceRegistry(redis_url=url, key_prefix=args.key_prefix):
        pass  # fail early, with a clear message, when Redis can't be reached
    hosts = allowed_hosts(args)
    max_body = args.max_body_size or web_app.DEFAULT_MAX_BODY
    max_sockets = args.max_sockets or web_app.DEFAULT_MAX_SOCKETS
    app = web_app.create_app(
        redis_url=url,
        key_prefix=args.key_prefix,
        token=token,
        heartbeat_timeout=timeout,
        heartbeat_min_interval=args.heartbeat_min_interval,
        max_body_size=max_body,
        allowed_origins=args.allowed_origin,
        allowed_hosts=hosts,
        max_sockets=max_sockets,
        socket_queue_bytes=args.socket_queue_bytes or web_app.DEFAULT_SOCKET_QUEUE_BYTES,
        dead_letter_page_bytes=(
            args.dead_letter_page_bytes or web_app.DEFAULT_DEAD_LETTER_PAGE_BYTES
        ),
    )
    if token is None and not _is_loopback(args.host):
        warn_once(
            f"serving {args.host} without a token (--insecure-no-token): anyone who can reach "
            "it can submit jobs, register workers and replay dead letters"
        )
    if "*" in hosts and token is None:
        warn_once("any Host name is accepted without a token: set --allowed-host")
    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactTokens())
    level = logging.getLogger().getEffectiveLevel()
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=None,
        log_config=None,
        ws_max_size=max_body,
        # Every connection counts here, sockets being closed included, so this bounds the
        # ones a client keeps open after the gateway gave up on them (HTTP 503 beyond).
        limit_concurrency=max_sockets + 100,
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
