"""``redisaq server``: run an embedded redis-server in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from ..embedded import EmbeddedRedis

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``server``."""
    p = sub.add_parser("server", help="run a redis-server on a loopback port until interrupted")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    """Start the server, print its URL, wait for SIGINT/SIGTERM, stop it."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with EmbeddedRedis(port=args.port) as server:
        print(server.url, flush=True)
        while not done.wait(0.5):
            if not server.running:
                return 1
    return 0
