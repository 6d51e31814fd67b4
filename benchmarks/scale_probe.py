"""What ``python -m benchmarks.scale`` observes: group ownership, server counters, processes.

Everything here reads; nothing changes the group:

* :func:`ownership` reads a group's members, instance tokens, assignment and
  every partition's lease in one pipeline, and :meth:`Ownership.complete`
  says whether every partition is assigned, balanced, and leased by its owner;
* :func:`commandstats` / :func:`server_cpu` read ``INFO``;
* :func:`count_requests` watches ``MONITOR`` on a socket of its own and
  counts the commands clients send apart from those Lua scripts run;
* :func:`script_durations` turns on ``SLOWLOG`` for every command for a
  while and returns the durations of one script's calls;
  :func:`warm_heartbeats` times heartbeat calls sent back to back into a
  copy of the group;
* :func:`rss_bytes` and :func:`cpu_seconds` read a process's memory and CPU
  time from ``/proc`` (Linux; NaN elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from redisaq_core._membership import Membership
from redisaq_core._scripts import HEARTBEAT
from redisaq_core.keys import TopicKeys

__all__ = [
    "PROBE",
    "Ownership",
    "commandstats",
    "count_requests",
    "cpu_seconds",
    "ownership",
    "rss_bytes",
    "script_durations",
    "server_cpu",
    "warm_heartbeats",
]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Ownership:
    """One reading of a group: who is in it, who should own what, who holds the leases."""

    partitions: int
    members: set[str] = field(default_factory=set)
    tokens: dict[str, str] = field(default_factory=dict)
    assignment: dict[int, str] = field(default_factory=dict)
    version: int = 0
    leases: list[str | None] = field(default_factory=list)

    def complete(self, expected: set[str]) -> bool:
        """Whether the group has settled on ``expected`` as its members.

        True when the live members are exactly ``expected``; every partition
        is assigned to one of them; the shares differ by at most one (so a
        member that just joined has its share, when there are partitions
        enough); and every partition's lease holds the instance token of the
        member it is assigned to.
        """
        if self.members != expected or len(self.assignment) != self.partitions:
            return False
        counts = dict.fromkeys(expected, 0)
        for p in range(self.partitions):
            owner = self.assignment.get(p)
            if owner not in counts:
                return False
            counts[owner] += 1
            token = self.tokens.get(owner)
            if token is None or self.leases[p] != token:
                return False
        return max(counts.values()) - min(counts.values()) <= 1

    def moved_from(self, before: Ownership) -> int:
        """Partitions whose assigned owner differs from ``before``."""
        return sum(
            1 for p in range(self.partitions) if self.assignment.get(p) != before.assignment.get(p)
        )


async def ownership(client: Redis, keys: TopicKeys, group: str, partitions: int) -> Ownership:
    """Read the group's members, tokens, assignment and leases in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keys.members(group), 0, -1)
    pipe.hgetall(keys.tokens(group))
    pipe.hgetall(keys.assignment(group))
    pipe.mget([keys.lease(p, group) for p in range(partitions)])
    members, tokens, assignment, leases = await pipe.execute()
    owners: dict[int, str] = {}
    version = 0
    for k, v in assignment.items():
        name = _text(k)
        if name == "_v":
            version = int(v)
        elif not name.startswith("_"):  # other bookkeeping fields, e.g. a members version
            owners[int(name)] = _text(v)
    return Ownership(
        partitions=partitions,
        members={_text(m) for m in members},
        tokens={_text(k): _text(v) for k, v in tokens.items()},
        assignment=owners,
        version=version,
        leases=[None if v is None else _text(v) for v in leases],
    )


async def commandstats(client: Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` as ``{command: (calls, usec)}`` (sub-commands as ``a|b``)."""
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in info.items()}


async def server_cpu(client: Redis) -> float:
    """CPU seconds the server process has used (user + system, all its threads)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


_MONITOR_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]*)\] "((?:[^"\\]|\\.)*)"', re.MULTILINE)


async def count_requests(host: str, port: int, seconds: float) -> tuple[Counter[str], int, float]:
    """Watch ``MONITOR`` for ``seconds``: the commands clients sent, by name.

    Returns ``(requests by command, commands run inside Lua scripts, seconds
    watched)``. A raw socket with a regular expression over each chunk keeps
    the watcher cheap enough not to compete with the members for the CPU.
    MONITOR does not show ``AUTH``-like and admin commands, and its output
    makes the server slower while it runs: use it for counts, not timings.
    """
    reader, writer = await asyncio.open_connection(host, port)
    requests: Counter[str] = Counter()
    inner = 0
    try:
        writer.write(b"MONITOR\r\n")
        await writer.drain()
        if not (await reader.readline()).startswith(b"+OK"):
            raise RuntimeError("benchmark: MONITOR was refused")
        start = time.perf_counter()
        deadline = start + seconds
        rest = b""
        while (left := deadline - time.perf_counter()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), left)
            except asyncio.TimeoutError:
                break
            if not chunk:
                raise RuntimeError("benchmark: the server closed the MONITOR connection")
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            for who, command in _MONITOR_LINE.findall(data):
                if who == b"lua":
                    inner += 1
                else:
                    requests[command.decode(errors="replace").upper()] += 1
        watched = time.perf_counter() - start
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return requests, inner, watched


async def script_durations(
    client: Redis,
    sha: str,
    during: Callable[[], Awaitable[object]],
    client_name: str | None = None,
) -> list[int]:
    """The server-side duration (us) of each ``EVALSHA <sha>`` call while ``during()`` runs.

    ``SLOWLOG`` is set to log every command for the window (threshold 0,
    room for 1,000,000 entries), read, then reset and put back as it was.
    Each entry's duration is the time the server spent in the call,
    including the commands the script ran (each of which the slowlog also
    logs: a fraction of a microsecond apiece on top of the script's own
    time). ``client_name``: only the calls of connections of that name.
    """
    old = {_text(k): _text(v) for k, v in (await client.config_get("slowlog-*")).items()}
    threshold, length = old["slowlog-log-slower-than"], old["slowlog-max-len"]
    try:
        await client.config_set("slowlog-max-len", 1_000_000)
        await client.slowlog_reset()
        await client.config_set("slowlog-log-slower-than", 0)
        await during()
        await client.config_set("slowlog-log-slower-than", threshold)
        entries = await client.execute_command("SLOWLOG", "GET", "-1")
    finally:
        await client.config_set("slowlog-log-slower-than", threshold)
        await client.slowlog_reset()
        await client.config_set("slowlog-max-len", length)
    wanted = sha.encode()
    name = None if client_name is None else client_name.encode()
    durations: list[int] = []
    for entry in entries:
        args = entry[3]
        ours = name is None or (len(entry) > 5 and entry[5] == name)
        if ours and len(args) > 1 and args[0].upper() == b"EVALSHA" and args[1] == wanted:
            durations.append(int(entry[2]))
    return durations


PROBE = "scale-probe"
"""Client and member name of :func:`warm_heartbeats` (never a member of the real group)."""


def _prefix(keys: TopicKeys) -> str:
    """The start of every topic-level key name of ``keys`` (``redisaq:{t:<topic>}:``)."""
    return keys.meta.removesuffix("meta")


async def _copy_topic(client: Redis, source: TopicKeys, target: TopicKeys) -> None:
    """Copy every topic-level key of ``source`` (metadata, groups) to ``target``'s names."""
    old, new = _prefix(source), _prefix(target)
    async for key in client.scan_iter(match=f"{old}*", count=1000):
        name = _text(key)
        await client.copy(name, new + name[len(old) :], replace=True)


async def _delete_topic(client: Redis, topic: str) -> None:
    """Delete every key of ``topic``, topic-level and per-partition (names without ``*?[``)."""
    for pattern in (f"*{{t:{topic}}}*", f"*{{p:{topic}:*"):
        async for key in client.scan_iter(match=pattern, count=1000):
            await client.delete(key)


async def warm_heartbeats(
    admin: Redis, url: str, keys: TopicKeys, group: str, calls: int
) -> list[int]:
    """Server time (us) of ``calls`` heartbeat script calls sent back to back.

    The topic's metadata and the group's keys (members, tokens, assignment,
    ...) are copied to a scratch topic, and a probe member heartbeats into
    that copy with the library's own ``Membership.beat`` (whatever the
    heartbeat script takes and returns; renewing the probe's share of the
    leases too where ``beat`` does that), with a TTL so long that nobody
    expires there, on a connection of its own named :data:`PROBE`; the real
    group is not touched. The live members heartbeat once a second each, so
    their calls find the server's caches cold; these calls, back to back,
    show what the script itself costs for a group of this size. The scratch
    topic is deleted afterwards.
    """
    scratch = TopicKeys(f"{keys.topic}-probe")
    await _copy_topic(admin, keys, scratch)
    probe = Redis.from_url(url, decode_responses=False, client_name=PROBE)
    member = Membership(probe, scratch, group, PROBE, uuid.uuid4().hex, ttl=1e6)
    renews = "renew" in inspect.signature(member.beat).parameters

    try:
        # Joins the copy, and commits an assignment with the probe in it.
        view = await member.beat()
        mine = sorted(view.owned_by(PROBE))

        async def run() -> None:
            for _ in range(calls):
                if renews:  # as a consumer does where the heartbeat renews its leases too
                    await member.beat(renew=mine)
                else:
                    await member.beat()

        return await script_durations(admin, HEARTBEAT.sha, run, client_name=PROBE)
    finally:
        await probe.aclose()
        await _delete_topic(admin, scratch.topic)


def rss_bytes(pid: int) -> float:
    """Resident set size of process ``pid`` in bytes (NaN when it can't be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (NaN when it can't be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
