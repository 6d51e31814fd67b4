"""Pure functions: which partition a key goes to, and which member owns which partition.

Nothing here talks to Redis, so every member of a group computes the same
answer from the same inputs, and the functions are tested on their own.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigurationError, PartitionKeyError
from .keys import utf8

__all__ = ["assign", "key_value", "moved_partitions", "partition_for_key"]


def partition_for_key(value: Any, partitions: int) -> int:
    """Return the partition for a partition-key value: stable across hosts and Python runs.

    ``bytes`` are hashed as they are, anything else as the UTF-8 of ``str(value)``
    (so ``7`` and ``"7"`` land on the same partition). CRC-32 is used rather
    than ``hash()``, which is salted per process. Text UTF-8 can't encode (a
    lone surrogate) raises ``PartitionKeyError``.
    """
    return zlib.crc32(_key_bytes(value, "a partition-key value")) % partitions


def _key_bytes(value: Any, what: str) -> bytes:
    return value if isinstance(value, bytes) else utf8(str(value), what, PartitionKeyError)


def assign(
    members: Iterable[str],
    partitions: int,
    previous: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """Divide partitions ``0 .. partitions-1`` among ``members``.

    The result is

    * complete: every partition has exactly one owner (none when there are no
      members, giving an empty mapping);
    * balanced: owned counts differ by at most one;
    * sticky: a partition stays with its ``previous`` owner whenever that owner
      is still a member and under its share, so a join or a leave moves the
      fewest partitions possible;
    * deterministic: it depends only on its arguments, never on their order.
    """
    live = sorted(set(members))
    if not live or partitions <= 0:
        return {}
    prev = previous or {}
    held: dict[str, list[int]] = {m: [] for m in live}
    for p in range(partitions):
        owner = prev.get(p)
        if owner in held:
            held[owner].append(p)

    base, extra = divmod(partitions, len(live))
    # Members already holding the most get the larger shares: fewer moves.
    by_load = sorted(live, key=lambda m: (-len(held[m]), m))
    capacity = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_load)}

    result: dict[int, str] = {}
    for m in live:
        for p in held[m][: capacity[m]]:
            result[p] = m
    free = iter([p for p in range(partitions) if p not in result])
    for m in live:
        for _ in range(capacity[m] - min(len(held[m]), capacity[m])):
            result[next(free)] = m
    return dict(sorted(result.items()))


def moved_partitions(before: Mapping[int, str], after: Mapping[int, str]) -> set[int]:
    """Partitions whose owner differs between two assignments (gained, lost or changed)."""
    return {p for p in set(before) | set(after) if before.get(p) != after.get(p)}


def key_value(payload: Any, partition_key: str) -> bytes:
    """Field ``partition_key`` of ``payload``, as the bytes :func:`partition_for_key` hashes."""
    if not isinstance(partition_key, str) or not partition_key:
        raise ConfigurationError(
            f"partition_key must be a non-empty field name, got {partition_key!r}"
        )
    if not isinstance(payload, Mapping):
        raise PartitionKeyError(
            f"partition_key {partition_key!r} needs a mapping payload, got {type(payload).__name__}"
        )
    try:
        value = payload[partition_key]
    except KeyError:
        raise PartitionKeyError(
            f"partition_key {partition_key!r} is not a field of the payload "
            f"(fields: {', '.join(map(str, list(payload)[:10]))})"
        ) from None
    return _key_bytes(value, f"the value of partition_key {partition_key!r}")
