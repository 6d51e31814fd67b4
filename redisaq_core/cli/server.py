"""``redisaq server``: run an embedded redis-server, or a Redis Cluster, in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from ..embedded import EmbeddedCluster, EmbeddedRedis
from .common import UsageError

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``server``."""
    p = sub.add_parser(
        "server",
        help="run a redis-server (or a Redis Cluster) on loopback ports until interrupted",
        description="Print the URL to connect to, then run until SIGINT/SIGTERM. With "
        "--cluster N: a Redis Cluster of N primaries (and --replicas R replicas each) on "
        "free ports; the URL is redis+cluster://127.0.0.1:PORT.",
    )
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="run a Redis Cluster of N primaries instead of one server")  # fmt: skip
    p.add_argument("--replicas", type=int, default=0, metavar="R",
                   help="replicas per primary, with --cluster (default 0)")  # fmt: skip
    p.set_defaults(func=run_server)


def run_server(args: argparse.Namespace) -> int:
    """Start the server or cluster, print its URL, wait for SIGINT/SIGTERM, stop it."""
    if args.cluster < 0 or args.replicas < 0:
        raise UsageError("--cluster and --replicas must be >= 0")
    if args.replicas and not args.cluster:
        raise UsageError("--replicas needs --cluster N")
    if args.cluster and args.port is not None:
        raise UsageError("--port applies to a single server; a cluster takes free ports")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    if args.cluster:
        with EmbeddedCluster(masters=args.cluster, replicas=args.replicas) as cluster:
            print(cluster.url, flush=True)
            while not done.wait(0.5):
                if not cluster.running:
                    return 1
        return 0
    with EmbeddedRedis(port=args.port) as server:
        print(server.url, flush=True)
        while not done.wait(0.5):
            if not server.running:
                return 1
    return 0
