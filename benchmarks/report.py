"""Results, versions and the printed table."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import hiredis
import orjson
import redis
import redis.asyncio.connection
from redis.asyncio import Redis

import redisaq_core

from .common import Run, median, percentile
from .idle import IdleCost

__all__ = ["CaseResult", "environment", "render_json", "render_table"]


@dataclass
class CaseResult:
    """One line of the table: the library's runs beside raw redis-py's."""

    key: str
    name: str
    runs: list[Run]
    raw_runs: list[Run]
    min_ratio: float | None = None
    max_p99_ms: float | None = None
    unit: str = "msg/s"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """The best rate of the library's runs."""
        return max(r.rate for r in self.runs)

    @property
    def raw_rate(self) -> float | None:
        """The best rate of raw redis-py's runs (``None`` when there is no raw side)."""
        return max(r.rate for r in self.raw_runs) if self.raw_runs else None

    @property
    def ratio(self) -> float | None:
        """Library rate over raw rate."""
        raw = self.raw_rate
        return self.rate / raw if raw else None

    def cpu_us(self, *, raw: bool = False) -> float | None:
        """CPU microseconds per message of the fastest run."""
        runs = self.raw_runs if raw else self.runs
        if not runs:
            return None
        return max(runs, key=lambda r: r.rate).cpu_us

    def latency(self, q: float, *, raw: bool = False) -> float | None:
        """The median over runs of each run's ``q``-th latency percentile, in ms."""
        runs = self.raw_runs if raw else self.runs
        values = [percentile(r.latencies_ms, q) for r in runs if r.latencies_ms]
        return median(values) if values else None

    @property
    def met(self) -> bool | None:
        """Whether the target (a minimum ratio and/or a maximum p99) was met."""
        if self.min_ratio is None and self.max_p99_ms is None:
            return None
        ok = True
        if self.min_ratio is not None:
            ok = ok and (self.ratio or 0.0) >= self.min_ratio
        if self.max_p99_ms is not None:
            p99 = self.latency(99)
            ok = ok and p99 is not None and p99 <= self.max_p99_ms
        return ok

    @property
    def target(self) -> str:
        """The target as text, e.g. ``>= 0.8x`` or ``p99 <= 10 ms``."""
        parts = []
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:g}x")
        if self.max_p99_ms is not None:
            parts.append(f"p99 <= {self.max_p99_ms:g} ms")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary with every run's rate."""
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "rate": self.rate,
            "raw_rate": self.raw_rate,
            "ratio": self.ratio,
            "runs": [r.rate for r in self.runs],
            "raw_runs": [r.rate for r in self.raw_runs],
            "cpu_us_per_msg": self.cpu_us(),
            "raw_cpu_us_per_msg": self.cpu_us(raw=True),
            "p50_ms": self.latency(50),
            "p99_ms": self.latency(99),
            "raw_p50_ms": self.latency(50, raw=True),
            "raw_p99_ms": self.latency(99, raw=True),
            "target": self.target or None,
            "met": self.met,
            **self.extra,
        }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    where = Path(redisaq_core.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _git_commit() -> str | None:
    """The library's commit, with ``+dirty`` when its files differ from it."""
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + ("+dirty" if _git("status", "--porcelain", "--", ".") else "")


async def environment(client: Redis) -> dict[str, Any]:
    """Versions of everything that decides the figures, and the machine."""
    server = await client.info("server")
    try:
        core = metadata.version("redisaq-core")
    except metadata.PackageNotFoundError:
        core = "unknown"
    return {
        "redisaq_core": core,
        "git_commit": _git_commit(),
        "redis_py": redis.__version__,
        "hiredis": hiredis.__version__,
        "parser": redis.asyncio.connection.DefaultParser.__name__,
        "orjson": orjson.__version__,
        "python": platform.python_version(),
        "redis_server": str(server.get("redis_version")),
        "redis_server_binary": str(server.get("executable", "")),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
    }


def render_json(
    settings: dict[str, Any],
    env: dict[str, Any],
    results: list[CaseResult],
    idle: IdleCost | None,
) -> str:
    """Everything measured, as JSON."""
    rows = [r.as_dict() for r in results]
    if idle is not None:
        rows.append(
            {
                "key": "idle",
                "name": "idle consumer",
                "unit": "requests/s",
                "rate": idle.requests_per_s,
                "raw_rate": None,
                "ratio": None,
                **asdict(idle),
            }
        )
    doc = {"settings": settings, "environment": env, "results": rows}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(
    settings: dict[str, Any],
    env: dict[str, Any],
    results: list[CaseResult],
    idle: IdleCost | None,
) -> str:
    """The results as a fixed-width table, followed by the idle cost and the versions."""
    head = (
        f"{'measurement':<32} {'msgs':>6} {'msgs/s':>9} {'raw msgs/s':>10} {'ratio':>6}  "
        f"{'target':<22} {'cpu us':>6} {'raw':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'raw p50':>7} {'raw p99':>7}"
    )
    lines = [
        f"redisaq-core benchmarks: --n {settings['n']}, best of {settings['repeat']} run(s), "
        f"batch {settings['batch']}, {settings['partitions']} partition(s)",
        "",
        head,
        "-" * len(head),
    ]
    for r in results:
        met = r.met
        target = r.target + ("" if met is None else (" ok" if met else " MISSED"))
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"{r.name:<32} {r.extra.get('n', 0):>6} {r.rate:>9,.0f} "
            f"{_num(r.raw_rate, ',.0f'):>10} {ratio:>6}  "
            f"{target:<22} {_num(r.cpu_us(), '.1f'):>6} {_num(r.cpu_us(raw=True), '.1f'):>5} "
            f"{_num(r.latency(50), '.2f'):>7} {_num(r.latency(99), '.2f'):>7} "
            f"{_num(r.latency(50, raw=True), '.2f'):>7} {_num(r.latency(99, raw=True), '.2f'):>7}"
        )
    if idle is not None:
        requests = ", ".join(f"{k} {v / idle.seconds:.2f}/s" for k, v in idle.requests.items())
        lines += [
            "",
            f"idle consumer: {idle.requests_per_s:.2f} requests/s ({requests});",
            f"  {idle.server_commands_per_s:.2f} server commands/s counting those inside Lua "
            f"scripts; over {idle.seconds:.1f} s, heartbeat_interval "
            f"{idle.heartbeat_interval:g} s, poll_interval {idle.poll_interval:g} s",
        ]
    lines += [
        "",
        *environment_lines(env),
    ]
    return "\n".join(lines)


def environment_lines(env: dict[str, Any]) -> list[str]:
    """The versions and machine lines that end every benchmark table."""
    return [
        f"versions: redis-py {env['redis_py']} ({env['parser']}), hiredis {env['hiredis']}, "
        f"orjson {env['orjson']}, Python {env['python']}, redis-server {env['redis_server']}, "
        f"redisaq-core {env['redisaq_core']} ({env['git_commit'] or 'no git'})",
        f"machine: {env['cores']} cores, {env['cpu']}, {env['os']}",
    ]
