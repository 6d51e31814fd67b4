"""Cost as the work grows: ``python -m benchmarks.scale``.

For each number of partitions P and of group members M (by default P in
{4, 64, 1024} x M in {1, 8, 64}) it starts, on one redis-server of its own
(``EmbeddedRedis``, Valkey 8.1 unless ``REDISAQ_SERVER`` says otherwise):

* M members, each a ``Consumer`` with ``heartbeat_interval=1`` and otherwise
  default settings, spread over up to 4 member processes
  (``benchmarks.scale_worker``; M/4 consumers each, at least 1), on a fresh
  topic of P partitions;
* ``--rebalances`` (3) more processes, each holding a single member ready
  to join (imported, not started),

and measures, in this order:

1. **start**: from telling the M members to start until the group has
   settled (see below) and a marker message on every partition was handled;
   then **mark**: the same marker round again, twice, with nothing else
   going on (what the "read" times below include besides the rebalance);
2. **idle load**, once the members have been idle for 4 heartbeats:
   ``INFO commandstats`` over ``--idle-seconds`` (every command the server
   ran, Lua scripts' inner calls included), the server's CPU time and the
   member processes' CPU time and memory; then ``MONITOR`` over as long a
   window (requests, i.e. commands clients sent, told apart from those Lua
   ran; a member's stray sweep and delayed-entry check come about once a
   minute, so a 10 s window holds about a sixth of them); then ``SLOWLOG`` at threshold 0 over
   ``--slowlog-seconds`` (the duration of each heartbeat script call of the
   members), and once more while a probe sends 200 heartbeats back to back
   into a copy of the group (see ``scale_probe.warm_heartbeats``);
3. **join**: one extra member starts; the time until the group has settled
   with M + 1 members ("owned"), and until a marker then written to every
   partition has been handled ("read");
4. **kill**: that member's process gets SIGKILL; the same two times, until
   the group has settled on the M members again. Steps 3 and 4 run once per
   joining process; the table shows medians, the JSON every round.

"Settled" is read from Redis: the group's live members (its sorted set) are
exactly the expected ones, the assignment hash gives every partition to one
of them with shares differing by at most one, and every partition's lease key
holds the instance token of the member it is assigned to. Handlers record
each marker's partition in a Redis set, which the benchmark counts.

It prints a table (or ``--json``; ``--save FILE`` keeps the JSON too, and
``--from-json FILE`` prints and plots a saved run again) and writes
``benchmarks/scale.png`` (``--plot``): rebalance times, idle load and
heartbeat cost against the size. Every process and the server it starts are
stopped by pid before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from redisaq_core import EmbeddedRedis, Producer
from redisaq_core._scripts import HEARTBEAT
from redisaq_core.keys import TopicKeys

from .common import FIELD, raw_client
from .report import environment, environment_lines
from .scale_probe import (
    Ownership,
    commandstats,
    count_requests,
    cpu_seconds,
    ownership,
    rss_bytes,
    script_durations,
    server_cpu,
    warm_heartbeats,
)
from .scale_worker import HANDLER_FAILED

__all__ = [
    "CellResult",
    "Rebalance",
    "Settings",
    "main",
    "measure_cell",
    "render_table",
    "spread",
    "write_plot",
]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLOT = Path(__file__).resolve().parent / "scale.png"
GROUP = "scale"
MiB = 1024.0 * 1024.0
QUICK_PARTITIONS = [4, 64]
QUICK_MEMBERS = [1, 8]


@dataclass
class Settings:
    """What one run measures and how long each window lasts."""

    partitions: list[int] = field(default_factory=lambda: [4, 64, 1024])
    members: list[int] = field(default_factory=lambda: [1, 8, 64])
    processes: int = 4
    heartbeat_interval: float = 1.0
    idle_seconds: float = 10.0
    slowlog_seconds: float = 4.0
    settle_timeout: float = 60.0
    warm_beats: int = 4
    rebalances: int = 3
    """Join-then-kill rounds per cell (each with a fresh joining process); medians shown."""
    warm_calls: int = 200


@dataclass
class Rebalance:
    """One join or kill: seconds until settled, until read again; partitions moved."""

    owned_s: float
    read_s: float
    moved: int


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass
class CellResult:
    """Everything measured for one (partitions, members) pair. Times in seconds."""

    partitions: int
    members: int
    processes: int
    start_s: float = math.nan
    marker_s: float = math.nan
    """Median of 2 rounds: a marker on every partition of the settled group, until all were
    handled (no rebalance under way; the ``read`` times include this much)."""
    joins: list[Rebalance] = field(default_factory=list)
    kills: list[Rebalance] = field(default_factory=list)
    idle_seconds: float = 0.0
    server_commands_per_s: float = math.nan
    """Every command the server ran per second, Lua scripts' inner calls included."""
    commands_per_s: dict[str, float] = field(default_factory=dict)
    evalsha_per_s: float = math.nan
    evalsha_usec_per_call: float = math.nan
    """``cmdstat_evalsha`` usec/calls: every script (heartbeat, leases, ...) together."""
    hgetall_usec_per_call: float = math.nan
    """``cmdstat_hgetall``: in an idle group only the heartbeat script's read of the assignment."""
    server_cpu_pct: float = math.nan
    client_cpu_pct: float = math.nan
    """CPU time of the member processes over the idle window, in % of one core."""
    monitor_seconds: float = 0.0
    requests_per_s: float = math.nan
    """Commands clients sent per second (MONITOR lines not run by Lua)."""
    requests: dict[str, float] = field(default_factory=dict)
    lua_commands_per_s: float = math.nan
    heartbeat_calls: int = 0
    heartbeat_usec_mean: float = math.nan
    heartbeat_usec_p50: float = math.nan
    heartbeat_usec_max: float = math.nan
    heartbeat_server_ms_per_s: float = math.nan
    """Server time spent in heartbeat scripts per second of wall time, in ms."""
    heartbeat_warm_calls: int = 0
    heartbeat_warm_usec_p50: float = math.nan
    """Median server time of heartbeat calls sent back to back (see ``warm_heartbeats``)."""
    handler_failures: int = 0
    """Marker handler calls that failed (retried later): the read times then include that."""
    rss_mib: float = math.nan
    """Resident memory of the M members' processes together."""
    empty_rss_mib: float = math.nan
    """Resident memory of a member process before its consumer starts (imports only)."""

    @property
    def join_read_s(self) -> float:
        """Median seconds from a join until every partition is read again."""
        return _median([r.read_s for r in self.joins])

    @property
    def join_owned_s(self) -> float:
        """Median seconds from a join until the group has settled."""
        return _median([r.owned_s for r in self.joins])

    @property
    def kill_read_s(self) -> float:
        """Median seconds from a SIGKILL until every partition is read again."""
        return _median([r.read_s for r in self.kills])

    @property
    def kill_owned_s(self) -> float:
        """Median seconds from a SIGKILL until the group has settled."""
        return _median([r.owned_s for r in self.kills])

    @property
    def rss_mib_per_member(self) -> float:
        """The members' processes' memory divided by the members."""
        return self.rss_mib / self.members

    @property
    def added_mib_per_member(self) -> float:
        """Memory above that of the empty processes, per member."""
        return (self.rss_mib - self.processes * self.empty_rss_mib) / self.members

    def as_dict(self) -> dict[str, Any]:
        """The result with its derived figures, for JSON."""
        out = dataclasses.asdict(self)
        for name in ("join_owned_s", "join_read_s", "kill_owned_s", "kill_read_s"):
            out[name] = getattr(self, name)
        out["rss_mib_per_member"] = self.rss_mib_per_member
        out["added_mib_per_member"] = self.added_mib_per_member
        return out


# ---- member processes -----------------------------------------------------------------


class Worker:
    """A ``benchmarks.scale_worker`` child process, stopped and killed by its pid only."""

    def __init__(
        self, url: str, topic: str, seen: str, prefix: str, members: int, heartbeat: float
    ) -> None:
        self.prefix = prefix
        self.members = members
        self.args = [
            sys.executable, "-m", "benchmarks.scale_worker", "--url", url, "--topic", topic,
            "--group", GROUP, "--members", str(members), "--prefix", prefix,
            "--heartbeat-interval", str(heartbeat), "--seen", seen,
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def names(self) -> set[str]:
        """The consumer names of this process's members."""
        return {f"{self.prefix}-{i:03d}" for i in range(self.members)}

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Whether the process was started and has not been reaped."""
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float) -> None:
        """Start the process and wait until it says it is ready."""
        # Open for the life of the process, closed by stop().
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,  # a Ctrl-C at the terminal is for the benchmark only
        )
        await self._expect("ready", timeout)

    async def go(self, timeout: float) -> None:
        """Tell the process to start its consumers; return once they are started."""
        await self._send("go")
        await self._expect("started", timeout)

    def kill(self) -> None:
        """SIGKILL the process (by its pid)."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask the process to stop its consumers; SIGTERM, then SIGKILL, if it does not."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                await self._send("stop")
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None and self.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, sig)
                try:
                    await asyncio.wait_for(self.proc.wait(), timeout)
                    break
                except asyncio.TimeoutError:
                    continue
        await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        """What the process wrote to its standard error so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the process wrote to its standard error."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _expect(self, word: str, timeout: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while True:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
                if not line:
                    raise RuntimeError(f"member process {self.prefix} ended before {word!r}")
                if line.decode().strip() == word:
                    return
        except (asyncio.TimeoutError, RuntimeError) as exc:
            raise RuntimeError(
                f"benchmark: member process {self.prefix} did not say {word!r}: {exc!r}\n"
                f"{self.log_tail()}"
            ) from None


def spread(members: int, processes: int) -> list[int]:
    """Members per process: ``members`` over at most ``processes``, at least 1 each."""
    n = max(1, min(processes, members))
    return [members // n + (1 if i < members % n else 0) for i in range(n)]


# ---- one cell -------------------------------------------------------------------------


@dataclass
class _Cell:
    """The live state of one measurement: server, topic, processes."""

    url: str
    host: str
    port: int
    admin: Redis
    settings: Settings
    partitions: int
    keys: TopicKeys
    seen: str
    base: list[Worker]
    rounds: Iterator[int] = field(default_factory=lambda: iter(range(1_000_000)))

    @property
    def base_names(self) -> set[str]:
        return set().union(*(w.names for w in self.base))

    async def settle(self, expected: set[str]) -> Ownership:
        """Wait until the group has settled on ``expected``; return that reading."""
        deadline = time.monotonic() + self.settings.settle_timeout
        while True:
            seen = await ownership(self.admin, self.keys, GROUP, self.partitions)
            if seen.complete(expected):
                return seen
            if time.monotonic() > deadline:
                raise TimeoutError(_unsettled(seen, expected, self.settings.settle_timeout))
            await asyncio.sleep(0.02)

    async def read_round(self) -> None:
        """Write a marker to every partition; return once every one was handled."""
        number = next(self.rounds)
        data = orjson.dumps({"round": number})
        pipe = self.admin.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xadd(self.keys.stream(p), {FIELD: data})
        await pipe.execute()
        key = f"{self.seen}:{number}"
        deadline = time.monotonic() + self.settings.settle_timeout
        while await self.admin.scard(key) < self.partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"benchmark: markers of round {number} handled on "
                    f"{await self.admin.scard(key)} of {self.partitions} partitions within "
                    f"{self.settings.settle_timeout:.0f}s"
                )
            await asyncio.sleep(0.01)

    async def rebalance(
        self, event: Callable[[], Awaitable[None]], expected: set[str]
    ) -> Rebalance:
        """Run ``event``; the seconds until settled on ``expected``, until read; moves."""
        before = await ownership(self.admin, self.keys, GROUP, self.partitions)
        start = time.perf_counter()
        await event()
        after = await self.settle(expected)
        owned = time.perf_counter() - start
        await self.read_round()
        return Rebalance(owned, time.perf_counter() - start, after.moved_from(before))


def _unsettled(seen: Ownership, expected: set[str], timeout: float) -> str:
    tokens = seen.tokens
    unleased = sum(
        1
        for p in range(seen.partitions)
        if p not in seen.assignment or seen.leases[p] != tokens.get(seen.assignment[p])
    )
    return (
        f"benchmark: the group did not settle within {timeout:.0f}s: "
        f"{len(seen.members)} live member(s) of {len(expected)} expected "
        f"(missing {sorted(expected - seen.members)[:3]}, "
        f"extra {sorted(seen.members - expected)[:3]}), "
        f"{len(seen.assignment)} of {seen.partitions} partitions assigned, "
        f"{unleased} not leased by their owner"
    )


async def _idle(cell: _Cell, result: CellResult) -> None:
    """The idle windows: commandstats + CPU + memory, then MONITOR, then SLOWLOG twice."""
    settings, admin = cell.settings, cell.admin
    pids = [w.pid for w in cell.base]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    stats_before = await commandstats(admin)
    server_before = await server_cpu(admin)
    start = time.perf_counter()
    await asyncio.sleep(settings.idle_seconds)
    stats_after = await commandstats(admin)
    server_after = await server_cpu(admin)
    elapsed = time.perf_counter() - start
    cpu_after = sum(cpu_seconds(pid) for pid in pids)
    result.rss_mib = sum(rss_bytes(pid) for pid in pids) / MiB

    delta: dict[str, tuple[int, int]] = {}
    for name, (calls, usec) in stats_after.items():
        was_calls, was_usec = stats_before.get(name, (0, 0))
        if name != "info" and calls > was_calls:
            delta[name] = (calls - was_calls, usec - was_usec)
    result.idle_seconds = elapsed
    result.server_commands_per_s = sum(c for c, _ in delta.values()) / elapsed
    result.commands_per_s = {k: c / elapsed for k, (c, _) in sorted(delta.items())}
    if "evalsha" in delta:
        calls, usec = delta["evalsha"]
        result.evalsha_per_s = calls / elapsed
        result.evalsha_usec_per_call = usec / calls
    if "hgetall" in delta:
        calls, usec = delta["hgetall"]
        result.hgetall_usec_per_call = usec / calls
    result.server_cpu_pct = 100.0 * (server_after - server_before) / elapsed
    result.client_cpu_pct = 100.0 * (cpu_after - cpu_before) / elapsed

    requests, inner, watched = await count_requests(cell.host, cell.port, settings.idle_seconds)
    result.monitor_seconds = watched
    result.requests_per_s = sum(requests.values()) / watched
    result.requests = {k: v / watched for k, v in sorted(requests.items())}
    result.lua_commands_per_s = inner / watched

    window = time.perf_counter()
    durations = await script_durations(
        admin, HEARTBEAT.sha, lambda: asyncio.sleep(settings.slowlog_seconds)
    )
    window = time.perf_counter() - window
    result.heartbeat_calls = len(durations)
    if durations:
        result.heartbeat_usec_mean = statistics.fmean(durations)
        result.heartbeat_usec_p50 = statistics.median(durations)
        result.heartbeat_usec_max = float(max(durations))
        result.heartbeat_server_ms_per_s = sum(durations) / window / 1000.0
    try:
        warm = await warm_heartbeats(admin, cell.url, cell.keys, GROUP, settings.warm_calls)
    except RedisError as exc:  # e.g. a heartbeat script that changed under way: go on
        print(f"benchmarks.scale: back-to-back heartbeats failed: {exc}", file=sys.stderr)
        warm = []
    result.heartbeat_warm_calls = len(warm)
    result.heartbeat_warm_usec_p50 = _median([float(d) for d in warm])


async def measure_cell(
    server: EmbeddedRedis, admin: Redis, settings: Settings, partitions: int, members: int
) -> CellResult:
    """Measure one (partitions, members) pair on a flushed server; stop its processes."""
    await admin.flushall()
    topic = f"scale-{partitions}p-{members}m-{uuid.uuid4().hex[:8]}"
    async with Producer(topic, redis_url=server.url, init_partitions=partitions, metrics=False):
        pass  # creates the topic and its partition count; nothing is sent
    seen = f"bench:scale:{topic}:seen"
    counts = spread(members, settings.processes)
    hb = settings.heartbeat_interval
    base = [Worker(server.url, topic, seen, f"m{i}", n, hb) for i, n in enumerate(counts)]
    joiners = [Worker(server.url, topic, seen, f"j{i}", 1, hb) for i in range(settings.rebalances)]
    cell = _Cell(
        server.url, server.host, server.port, admin, settings, partitions, TopicKeys(topic),
        seen, base,
    )  # fmt: skip
    result = CellResult(partitions, members, len(base))
    timeout = settings.settle_timeout
    try:
        await asyncio.gather(*(w.start(timeout) for w in [*base, *joiners]))
        result.empty_rss_mib = rss_bytes(joiners[0].pid) / MiB

        async def start_members() -> None:
            await asyncio.gather(*(w.go(timeout) for w in base))

        result.start_s = (await cell.rebalance(start_members, cell.base_names)).read_s
        marks = []
        for _ in range(2):
            began = time.perf_counter()
            await cell.read_round()
            marks.append(time.perf_counter() - began)
        result.marker_s = _median(marks)
        # Past the start-up: hand-overs, and the sweeps for strays after each gain.
        await asyncio.sleep(settings.warm_beats * hb)
        await _idle(cell, result)

        for joiner in joiners:

            async def join(joiner: Worker = joiner) -> None:
                await joiner.go(timeout)

            async def kill(joiner: Worker = joiner) -> None:
                joiner.kill()

            everyone = cell.base_names | joiner.names
            result.joins.append(await cell.rebalance(join, everyone))
            result.kills.append(await cell.rebalance(kill, cell.base_names))
        # A marker handler that failed (its message then waits for a retry) would skew the
        # "read" times: say so.
        for worker in [*base, *joiners]:
            result.handler_failures += worker.log_text().count(HANDLER_FAILED)
        if result.handler_failures:
            print(
                f"benchmarks.scale: P={partitions} M={members}: {result.handler_failures} "
                f"handler call(s) failed; the read times include retries:\n"
                f"{base[0].log_tail(3)}",
                file=sys.stderr,
            )
    finally:
        await asyncio.gather(*(w.stop() for w in [*base, *joiners]), return_exceptions=True)
    return result


# ---- output ---------------------------------------------------------------------------


def _f(value: float, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, fmt)


COLUMNS = [
    ("P", 5), ("M", 3), ("start s", 7), ("mark s", 6), ("join s", 6), ("read s", 6), ("moved", 5),
    ("kill s", 6), ("read s", 6), ("moved", 5), ("req/s", 7), ("cmds/s", 7),
    ("evalsha us", 10), ("hb us", 7), ("hb warm", 7), ("hb ms/s", 7), ("srv cpu%", 8),
    ("cli cpu%", 8),
    ("MiB/mbr", 7), ("+MiB/mbr", 8),
]  # fmt: skip


def _moved(rounds: list[Rebalance]) -> str:
    values = sorted({r.moved for r in rounds})
    return "-" if not values else "/".join(str(v) for v in values)


def _row(r: CellResult) -> list[str]:
    return [
        str(r.partitions), str(r.members), _f(r.start_s, ".2f"), _f(r.marker_s, ".2f"),
        _f(r.join_owned_s, ".2f"), _f(r.join_read_s, ".2f"), _moved(r.joins),
        _f(r.kill_owned_s, ".2f"), _f(r.kill_read_s, ".2f"), _moved(r.kills),
        _f(r.requests_per_s, ",.0f"), _f(r.server_commands_per_s, ",.0f"),
        _f(r.evalsha_usec_per_call, ".1f"), _f(r.heartbeat_usec_mean, ".1f"),
        _f(r.heartbeat_warm_usec_p50, ".1f"), _f(r.heartbeat_server_ms_per_s, ".2f"),
        _f(r.server_cpu_pct, ".1f"), _f(r.client_cpu_pct, ".1f"), _f(r.rss_mib_per_member, ".1f"),
        _f(r.added_mib_per_member, ".2f"),
    ]  # fmt: skip


def render_table(settings: Settings, env: dict[str, Any], results: list[CellResult]) -> str:
    """The results as a fixed-width table with a legend, versions and machine."""
    head = " ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [
        f"redisaq-core scale: heartbeat_interval {settings.heartbeat_interval:g} s, "
        f"members over up to {settings.processes} processes, idle window "
        f"{settings.idle_seconds:g} s (commandstats, then MONITOR), SLOWLOG window "
        f"{settings.slowlog_seconds:g} s",
        "",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(_row(r), COLUMNS, strict=True))
        )
    lines += [
        "",
        "P partitions, M members; start s: start of the M members until settled and read;",
        "mark s: a marker on every partition of the settled group until all were handled;",
        "join s / kill s: a member joins / is SIGKILLed until the group has settled (Redis:",
        "  members, assignment, leases), read s: until a marker then written to every partition",
        f"  was handled (includes about mark s; medians of {settings.rebalances} rounds); moved:",
        "  partitions whose assigned owner changed;",
        "req/s: commands clients sent (MONITOR); cmds/s: commands the server ran, inner Lua",
        "  calls included (commandstats); evalsha us: usec per EVALSHA, every script together;",
        "hb us: mean server time of one heartbeat script call (SLOWLOG); hb warm: the median",
        "  of calls sent back to back on a copy of the group; hb ms/s: server time in heartbeat",
        "  scripts per second; srv/cli cpu%: server / member processes CPU, % of one core;",
        "MiB/mbr: RSS of the member processes / M; +MiB/mbr: the same above the RSS of as many",
        "  processes with nothing started.",
        "",
        *environment_lines(env),
        f"server: {env.get('server') or env['redis_server']}; load average "
        f"{env.get('load_average_before')} before, {env.get('load_average_after')} after; "
        f"wall clock {env.get('wall_seconds', 0):.0f} s",
    ]
    return "\n".join(lines)


def render_json(settings: Settings, env: dict[str, Any], results: list[CellResult]) -> str:
    """Everything measured, as JSON."""
    doc = {
        "settings": dataclasses.asdict(settings),
        "environment": env,
        "results": [r.as_dict() for r in results],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def write_plot(results: list[CellResult], path: Path, title: str = "") -> None:
    """Rebalance time, idle load and heartbeat cost against the size, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted({r.members for r in results})
    colors = {m: f"C{i}" for i, m in enumerate(members)}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (rebalance, load), (beat, product) = axes

    def lines(ax: Any, value: Callable[[CellResult], float], style: str, label: str) -> None:
        for m in members:
            rows = sorted((r for r in results if r.members == m), key=lambda r: r.partitions)
            ax.plot(
                [r.partitions for r in rows], [value(r) for r in rows], style,
                color=colors[m], label=f"M={m} {label}".strip(),
            )  # fmt: skip

    def spans(
        ax: Any, rounds: Callable[[CellResult], list[Rebalance]], style: str, label: str
    ) -> None:
        for m in members:
            rows = sorted((r for r in results if r.members == m), key=lambda r: r.partitions)
            times = [[x.read_s for x in rounds(r)] or [math.nan] for r in rows]
            mid = [_median(t) for t in times]
            low = [y - min(t) for y, t in zip(mid, times, strict=True)]
            high = [max(t) - y for y, t in zip(mid, times, strict=True)]
            ax.errorbar(
                [r.partitions for r in rows], mid, yerr=[low, high], fmt=style, capsize=3,
                color=colors[m], label=f"M={m} {label}",
            )  # fmt: skip

    spans(rebalance, lambda r: r.kills, "o-", "kill")
    spans(rebalance, lambda r: r.joins, "s--", "join")
    rebalance.set_title("Rebalance: until every partition is read again (median, min-max)")
    rebalance.set_ylabel("seconds")
    rebalance.set_ylim(bottom=0)

    lines(load, lambda r: r.server_commands_per_s, "o-", "server commands")
    lines(load, lambda r: r.requests_per_s, "s--", "requests")
    load.set_title("Idle load on the server")
    load.set_ylabel("per second")
    load.set_yscale("log")

    lines(beat, lambda r: r.heartbeat_usec_mean, "o-", "live")
    lines(beat, lambda r: r.heartbeat_warm_usec_p50, "s--", "back to back")
    beat.set_title("Heartbeat script: server time per call")
    beat.set_ylabel("microseconds")
    beat.set_yscale("log")

    sizes = sorted({r.partitions for r in results})
    for ax in (rebalance, load, beat):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(p) for p in sizes])
        ax.minorticks_off()
        ax.set_xlabel("partitions")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)

    for m in members:
        rows = [r for r in results if r.members == m]
        product.plot(
            [r.partitions * r.members for r in rows],
            [r.heartbeat_server_ms_per_s for r in rows],
            "o", color=colors[m], label=f"M={m}",
        )  # fmt: skip
    known = [
        (r.partitions * r.members, r.heartbeat_server_ms_per_s)
        for r in results
        if r.heartbeat_server_ms_per_s > 0
    ]
    if len(known) > 1:
        x0, y0 = max(known)
        xs = [min(x for x, _ in known), x0]
        product.plot(xs, [y0 * x / x0 for x in xs], ":", color="grey", label="proportional")
    product.set_xscale("log")
    product.set_yscale("log")
    product.set_title("Heartbeat server time per second vs partitions x members")
    product.set_xlabel("partitions x members")
    product.set_ylabel("ms of server time per s")
    product.grid(True, which="both", alpha=0.3)
    product.legend(fontsize=7)

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------


def _load() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages (others' work skews the figures)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Rebalance time, idle load, heartbeat cost and memory against partitions "
        "and members, on a redis-server started for the run.",
    )
    p.add_argument("--partitions", type=_sizes, help="partition counts (default 4,64,1024)")
    p.add_argument("--members", type=_sizes, help="member counts (default 1,8,64)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="partitions 4,64 x members 1,8, shorter windows (about 2 minutes)",
    )
    p.add_argument("--processes", type=int, default=4, help="member processes (default 4)")
    p.add_argument(
        "--heartbeat-interval", type=float, default=1.0, help="members' heartbeat (default 1 s)"
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        help="commandstats window, then as long a MONITOR window (default 10; --quick 5)",
    )
    p.add_argument("--slowlog-seconds", type=float, help="SLOWLOG window (default 4; --quick 2)")
    p.add_argument(
        "--settle-timeout", type=float, default=60.0, help="longest wait for a rebalance (60 s)"
    )
    p.add_argument(
        "--rebalances", type=int, default=3, help="join-then-kill rounds per cell (default 3)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG to write (default {DEFAULT_PLOT})"
    )
    p.add_argument("--no-plot", action="store_true", help="write no plot")
    p.add_argument("--save", type=Path, help="also write the JSON report to this file")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: print the table and write the plot of a run saved with --save",
    )
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    """The run's settings from the command line (``--quick`` fills in what is not given)."""
    s = Settings()
    if args.quick:
        s.partitions, s.members = list(QUICK_PARTITIONS), list(QUICK_MEMBERS)
        s.idle_seconds, s.slowlog_seconds = 5.0, 2.0
    if args.partitions:
        s.partitions = args.partitions
    if args.members:
        s.members = args.members
    if args.idle_seconds is not None:
        s.idle_seconds = args.idle_seconds
    if args.slowlog_seconds is not None:
        s.slowlog_seconds = args.slowlog_seconds
    s.processes = args.processes
    s.heartbeat_interval = args.heartbeat_interval
    s.settle_timeout = args.settle_timeout
    s.rebalances = args.rebalances
    return s


async def _run(settings: Settings, args: argparse.Namespace) -> str:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    verbose = not args.json
    began = time.perf_counter()
    async with EmbeddedRedis() as server, raw_client(server.url) as admin:
        env = await environment(admin)
        binary = server.server
        if binary is not None:
            env["server"] = f"{binary.product.capitalize()} {'.'.join(map(str, binary.version))}"
        env["load_average_before"] = _load()
        results: list[CellResult] = []
        for partitions in settings.partitions:
            for members in settings.members:
                cell_began = time.perf_counter()
                results.append(await measure_cell(server, admin, settings, partitions, members))
                if verbose:
                    r = results[-1]
                    print(
                        f"P={partitions} M={members}: kill {r.kill_read_s:.2f} s, join "
                        f"{r.join_read_s:.2f} s, {r.server_commands_per_s:,.0f} cmds/s, "
                        f"heartbeat {r.heartbeat_usec_mean:.1f} us "
                        f"({time.perf_counter() - cell_began:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    env["wall_seconds"] = round(time.perf_counter() - began, 1)
    env["load_average_after"] = _load()
    if not args.no_plot:
        write_plot(
            results,
            args.plot,
            _plot_title(settings, env),
        )
    if args.save is not None:
        args.save.write_text(render_json(settings, env, results) + "\n")
    if args.json:
        return render_json(settings, env, results)
    return render_table(settings, env, results)


def _plot_title(settings: Settings, env: dict[str, Any]) -> str:
    return (
        f"redisaq-core {env.get('git_commit') or ''}: heartbeat_interval "
        f"{settings.heartbeat_interval:g} s, {env.get('server') or env['redis_server']}, "
        f"members in up to {settings.processes} processes, {env['cores']} cores"
    )


def load_saved(path: Path) -> tuple[Settings, dict[str, Any], list[CellResult]]:
    """Settings, environment and results of a run saved with ``--save`` (or ``--json``)."""
    doc = orjson.loads(path.read_bytes())
    settings = Settings(**doc["settings"])
    names = {f.name for f in dataclasses.fields(CellResult)}
    results = []
    for row in doc["results"]:
        values: dict[str, Any] = {
            k: (math.nan if v is None else v) for k, v in row.items() if k in names
        }
        values["joins"] = [Rebalance(**r) for r in row["joins"]]
        values["kills"] = [Rebalance(**r) for r in row["kills"]]
        results.append(CellResult(**values))
    return settings, doc["environment"], results


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print the results; the exit code is 0 unless something failed."""
    parser = _parser()
    args = parser.parse_args(argv)
    settings = settings_from(args)
    if settings.processes < 1 or settings.rebalances < 1:
        parser.error("--processes and --rebalances must be >= 1")
    if settings.heartbeat_interval <= 0 or settings.idle_seconds <= 0:
        parser.error("--heartbeat-interval and --idle-seconds must be > 0")
    if settings.slowlog_seconds <= 0 or settings.settle_timeout <= 0:
        parser.error("--slowlog-seconds and --settle-timeout must be > 0")
    if args.from_json is not None:
        saved, env, results = load_saved(args.from_json)
        if not args.no_plot:
            write_plot(results, args.plot, _plot_title(saved, env))
        print(render_json(saved, env, results) if args.json else render_table(saved, env, results))
        return 0
    try:
        print(asyncio.run(_run(settings, args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("benchmarks.scale: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
