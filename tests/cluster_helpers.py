"""Helpers for tests on a Redis Cluster: per-node error counts, where keys live."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis import Redis as SyncRedis
from redis.crc import key_slot

__all__ = ["cluster_nodes", "crossslot_errors", "node_of_key"]


def _first_node(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def cluster_nodes(url: str) -> list[dict[str, object]]:
    """Every live node of the cluster at ``url``: host, port, role, slot ranges."""
    host, port = _first_node(url)
    client = SyncRedis(host=host, port=port, decode_responses=True)
    try:
        text: str = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
    finally:
        client.close()
    nodes = []
    for line in text.strip().splitlines():
        parts = line.split()
        flags = parts[2].split(",")
        if "fail" in flags or "fail?" in flags:
            continue
        address = parts[1].split("@", 1)[0]
        node_host, _, node_port = address.rpartition(":")
        ranges = []
        for item in parts[8:]:
            if not item.startswith("["):
                low, _, high = item.partition("-")
                ranges.append((int(low), int(high or low)))
        nodes.append(
            {
                "host": node_host or host,
                "port": int(node_port),
                "role": "master" if "master" in flags else "replica",
                "slots": ranges,
            }
        )
    return nodes


def node_of_key(url: str, key: str) -> int:
    """The port of the primary that serves ``key``."""
    slot = key_slot(key.encode())
    for node in cluster_nodes(url):
        for low, high in node["slots"]:  # type: ignore[attr-defined]
            if low <= slot <= high:
                return int(node["port"])  # type: ignore[call-overload]
    raise AssertionError(f"no node serves slot {slot} of {key!r}")


def crossslot_errors(url: str) -> int:
    """CROSSSLOT errors answered so far by all live nodes of the cluster at ``url``.

    Read from ``INFO errorstats`` (Redis 6.2 and later).
    """
    total = 0
    for node in cluster_nodes(url):
        client = SyncRedis(host=str(node["host"]), port=int(node["port"]))  # type: ignore[call-overload]
        try:
            stats = client.info("errorstats")
        finally:
            client.close()
        total += int(stats.get("errorstat_CROSSSLOT", {}).get("count", 0))
    return total
