"""Helpers for tests on a Redis Cluster: per-node error counts, where keys live, resharding."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from redis import Redis as SyncRedis
from redis.crc import key_slot

__all__ = ["cluster_nodes", "crossslot_errors", "move_slot", "node_of_key"]


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
                "id": parts[0],
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


async def move_slot(url: str, slot: int, to_port: int, *, step: float = 0.0) -> None:
    """Move ``slot`` to the primary at ``to_port`` as ``redis-cli --cluster reshard`` does.

    The slot is marked IMPORTING and MIGRATING, its keys are moved one MIGRATE per key
    (``step`` seconds apart, so that clients meet ASK and TRYAGAIN while keys of one slot
    sit on two nodes), then every primary is told the slot's new owner.
    """
    nodes: list[Any] = [n for n in cluster_nodes(url) if n["role"] == "master"]
    source = next(n for n in nodes if any(lo <= slot <= hi for lo, hi in n["slots"]))
    target = next(n for n in nodes if n["port"] == to_port)
    if source is target:
        return

    def on(node: Any, *args: Any) -> Any:
        client = SyncRedis(host=node["host"], port=node["port"])
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    on(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source["id"])
    on(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target["id"])
    while keys := on(source, "CLUSTER", "GETKEYSINSLOT", slot, 1):
        on(source, "MIGRATE", target["host"], target["port"], "", 0, 5000, "KEYS", *keys)
        await asyncio.sleep(step)
    for node in [target, source, *(n for n in nodes if n not in (source, target))]:
        on(node, "CLUSTER", "SETSLOT", slot, "NODE", target["id"])
