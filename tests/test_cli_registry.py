"""``redisaq registry ...`` through real subprocesses against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from redisaq_core import ServiceInfo, ServiceRegistry, ServiceStatus, WorkerStatus
from redisaq_core.embedded import free_port
from tests.helpers import eventually

BIN = Path(sys.executable).parent
SHELL_EXAMPLE = Path(__file__).with_name("test_registry_shell.sh")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "REDISAQ_")) and k != "LOG_LEVEL"}  # fmt: skip
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redisaq_core.cli.main", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else _env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def prefix() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def registry(redis_url: str, prefix: str) -> AsyncIterator[ServiceRegistry]:
    async with ServiceRegistry(redis_url=redis_url, key_prefix=prefix) as reg:
        yield reg
        await reg.clear_all()


@pytest.fixture
def reg_cli(redis_url: str, prefix: str) -> Any:
    """``await reg_cli("list")`` runs ``redisaq --redis-url U --key-prefix P registry list``."""

    async def call(*args: str, **kw: Any) -> Result:
        return await run_cli("--redis-url", redis_url, "--key-prefix", prefix, "registry",
                             *args, **kw)  # fmt: skip

    return call


def _one_line_error(r: Result, *needles: str) -> None:
    assert r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- the seed's CLI lines ------------------------------------------------------------------


async def test_every_seed_cli_line(reg_cli: Any, registry: ServiceRegistry) -> None:
    r = await reg_cli("register", "vllm-node-001", "--host", "10.0.0.1", "--port", "8000",
                      "--service-type", "inference",
                      "--metadata", '{"model": "llama-3", "gpu": "A100"}')  # fmt: skip
    assert (r.rc, r.out, r.err) == (0, "registered vllm-node-001\n", "")
    got = await registry.get_service("vllm-node-001")
    assert got == ServiceInfo("vllm-node-001", "10.0.0.1", 8000, "inference", "healthy",
                              got.last_seen if got else None,
                              {"model": "llama-3", "gpu": "A100"})  # fmt: skip

    assert (await reg_cli("heartbeat", "vllm-node-001")).rc == 0
    r = await reg_cli("update-health", "vllm-node-001", "--status", "healthy")
    assert (r.rc, r.out) == (0, "vllm-node-001 is healthy\n")

    r = await reg_cli("get", "vllm-node-001")
    assert r.rc == 0
    rows = dict(line.split(None, 1) for line in r.out.splitlines()[1:])
    assert rows["host"] == "10.0.0.1" and rows["port"] == "8000" and rows["status"] == "healthy"
    assert json.loads(rows["metadata"]) == {"model": "llama-3", "gpu": "A100"}
    r = await reg_cli("get", "vllm-node-001", "--format", "json")
    assert r.rc == 0 and r.json()["metadata"] == {"model": "llama-3", "gpu": "A100"}
    assert r.json()["last_seen"] == pytest.approx(
        (await registry.get_service("vllm-node-001")).last_seen  # type: ignore[union-attr]
    )

    for args in ([], ["--service-type", "inference"], ["--status", "healthy"]):
        r = await reg_cli("list", *args)
        assert r.rc == 0 and r.out.splitlines()[1].startswith("vllm-node-001 "), args
    assert (await reg_cli("list", "--service-type", "worker")).out.count("\n") == 1  # header
    assert [s["service_id"] for s in (await reg_cli("list", "--format", "json")).json()] == [
        "vllm-node-001"
    ]
    r = await reg_cli("list-healthy", "--timeout", "30")
    assert r.rc == 0 and "vllm-node-001" in r.out
    assert (await reg_cli("count")).out == "1\n"
    assert (await reg_cli("count", "--service-type", "inference")).out == "1\n"
    assert (await reg_cli("types")).out == "inference\n"
    assert (await reg_cli("cleanup", "--timeout", "300")).out == "0\n"
    r = await reg_cli("deregister", "vllm-node-001")
    assert (r.rc, r.out) == (0, "deregistered vllm-node-001\n")
    assert await registry.get_service("vllm-node-001") is None

    await registry.register_service(ServiceInfo("x", "h", 1, "t"))
    r = await reg_cli("clear", "--confirm")
    assert r.rc == 0 and await registry.get_service_count() == 0


@pytest.mark.single_node
async def test_seed_connection_options_environment_and_leaf_options(
    redis_url: str, prefix: str, registry: ServiceRegistry
) -> None:
    await registry.register_service(ServiceInfo("env-1", "h", 1, "t"))
    url = urlsplit(redis_url)
    host, port = url.hostname or "", str(url.port)
    r = await run_cli("--redis-host", host, "--redis-port", port, "--key-prefix", prefix,
                      "registry", "list")  # fmt: skip
    assert r.rc == 0 and "env-1" in r.out
    env = _env(REDIS_HOST=host, REDIS_PORT=port, REDIS_DB="0", REDISAQ_KEY_PREFIX=prefix)
    r = await run_cli("registry", "count", env=env)
    assert (r.rc, r.out) == (0, "1\n")
    r = await run_cli("registry", "count", env=_env(REDIS_URL=redis_url, REDISAQ_KEY_PREFIX=prefix))
    assert (r.rc, r.out) == (0, "1\n")
    r = await run_cli("registry", "get", "env-1", "--redis-url", redis_url, "--key-prefix", prefix)
    assert r.rc == 0 and "env-1" in r.out
    r = await run_cli("registry", "count", env=_env(REDIS_URL=redis_url, REDISAQ_KEY_PREFIX="x:"))
    assert r.out == "0\n"  # another prefix sees nothing


# ---- formats -------------------------------------------------------------------------------


async def test_json_format_prints_only_json(reg_cli: Any, registry: ServiceRegistry) -> None:
    await registry.register_service(ServiceInfo("j1", "h", 1, "inference", metadata={"a": [1]}))
    expected: list[tuple[list[str], Any]] = [
        (["register", "j2", "--service-type", "worker", "--host", "h2"],
         {"service_id": "j2", "registered": True}),
        (["heartbeat", "j1"], {"service_id": "j1", "heartbeat": True}),
        (["update-health", "j1", "--status", "unhealthy", "--metadata", '{"b": 2}'],
         {"service_id": "j1", "status": "unhealthy", "updated": True}),
        (["count"], {"count": 2, "service_type": None}),
        (["count", "--service-type", "worker"], {"count": 1, "service_type": "worker"}),
        (["types"], ["inference", "worker"]),
        (["cleanup", "--timeout", "300"], {"removed": 0}),
    ]  # fmt: skip
    for args, value in expected:
        r = await reg_cli(*args, "--format", "json")
        assert (r.rc, r.err, r.json()) == (0, "", value), args
    r = await reg_cli("get", "j1", "--format", "json")
    assert r.json()["metadata"] == {"a": [1], "b": 2} and r.json()["status"] == "unhealthy"
    r = await reg_cli("list", "--format", "json", "--status", "unhealthy")
    assert [s["service_id"] for s in r.json()] == ["j1"]
    r = await reg_cli("list-healthy", "--format", "json", "--service-type", "worker")
    assert [s["service_id"] for s in r.json()] == ["j2"]
    # A long timeout: on a loaded machine the calls above may take longer than the default.
    r = await reg_cli("monitor", "--once", "--format", "json", "--timeout", "600")
    assert sorted((s["service_id"], s["worker_status"]) for s in r.json()) == [
        ("j1", "alive"), ("j2", "registered"),
    ]  # fmt: skip
    assert (await reg_cli("deregister", "j2", "--format", "json")).json() == {
        "service_id": "j2", "deregistered": True,
    }  # fmt: skip
    assert (await reg_cli("clear", "--confirm", "--format", "json")).json()["cleared"] is True


async def test_text_table_columns_are_aligned(reg_cli: Any, registry: ServiceRegistry) -> None:
    await registry.register_service(ServiceInfo("a", "10.0.0.100", 8000, "inference"))
    await registry.register_service(ServiceInfo("long-service-name", "h", 1, "w", "starting"))
    lines = (await reg_cli("list")).out.splitlines()
    assert len(lines) == 3
    header = lines[0]
    starts = [header.index(col) for col in ("HOST", "PORT", "TYPE", "STATUS", "LAST_SEEN")]
    for line in lines[1:]:
        for start in starts:
            assert line[start - 2 : start] == "  " and line[start] != " ", (line, start)


async def test_quiet_prints_nothing(reg_cli: Any, registry: ServiceRegistry) -> None:
    await registry.register_service(ServiceInfo("q", "h", 1, "t"))
    for args in (["heartbeat", "q"], ["list"], ["get", "q"], ["count"], ["deregister", "q"]):
        r = await reg_cli(*args, "--quiet")
        assert (r.rc, r.out, r.err) == (0, "", ""), args


# ---- errors and exit codes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "rc", "needles"),
    [
        (["get", "ghost"], 1, ["'ghost'", "not registered"]),
        (["get", "ghost", "--format", "json"], 1, ["'ghost'"]),
        (["heartbeat", "ghost", "--quiet"], 1, ["'ghost'", "not registered"]),
        (["deregister", "ghost"], 1, ["'ghost'"]),
        (["update-health", "ghost", "--status", "healthy"], 1, ["'ghost'"]),
        (["register", "x", "--service-type", "t", "--metadata", "{bad"], 2, ["--metadata"]),
        (["register", "x", "--service-type", "t", "--metadata", "[1]"], 2, ["JSON object"]),
        (["register", "x", "--service-type", "t", "--port", "99999"], 2, ["port"]),
        (["register", "x y", "--service-type", "t"], 2, ["service_id"]),
        (["register", "x"], 2, ["--service-type"]),
        (["update-health", "x", "--status", "groovy"], 2, ["--status", "groovy"]),
        (["list", "--status", "groovy"], 2, ["--status"]),
        (["clear"], 2, ["--confirm"]),
        (["cleanup", "--timeout", "soon"], 2, ["--timeout"]),
        (["cleanup", "--timeout", "-1"], 2, ["timeout_seconds"]),
        (["run", "x", "--service-type", "t"], 2, ["command after --"]),
        (["monitor", "--timeout", "0", "--once"], 2, ["timeout"]),
    ],
)
async def test_failures_exit_with_a_one_line_message(
    reg_cli: Any, registry: ServiceRegistry, args: list[str], rc: int, needles: list[str]
) -> None:
    await registry.register_service(ServiceInfo("keep", "h", 1, "t"))
    r = await reg_cli(*args)
    assert r.rc == rc, r
    _one_line_error(r, *needles)
    assert await registry.get_service("keep") is not None  # e.g. clear without --confirm


async def test_unreachable_redis_exits_1_without_showing_the_password() -> None:
    port = str(free_port())
    for args in (
        ["--redis-url", f"redis://:pa55-w0rd@127.0.0.1:{port}/0"],
        ["--redis-host", "127.0.0.1", "--redis-port", port, "--redis-password", "pa55-w0rd"],
    ):
        r = await run_cli(*args, "-v", "registry", "list")
        assert r.rc == 1
        assert "pa55-w0rd" not in r.err and "cannot connect" in r.err
    r = await run_cli(
        "registry", "list", env=_env(REDIS_URL=f"redis://:pa55-w0rd@127.0.0.1:{port}")
    )
    _one_line_error(r, "cannot connect")
    assert "pa55-w0rd" not in r.err


async def test_malformed_record_is_an_error_for_get_and_skipped_by_list(
    reg_cli: Any, registry: ServiceRegistry
) -> None:
    await registry.register_service(ServiceInfo("ok", "h", 1, "t"))
    await registry.register_service(ServiceInfo("junk", "h", 1, "t"))
    assert registry.redis is not None
    await registry.redis.hset(registry.keys.service("junk"), "port", "many")
    r = await reg_cli("get", "junk")
    assert r.rc == 1
    _one_line_error(r, "'junk'", "malformed")
    r = await reg_cli("list", "--format", "json")
    assert r.rc == 0 and [s["service_id"] for s in r.json()] == ["ok"]
    assert "junk" in r.err  # the warning goes to stderr, stdout stays JSON


async def test_a_type_that_is_no_utf8_is_skipped(reg_cli: Any, registry: ServiceRegistry) -> None:
    # Another client's member of the types set. Before, get_service_types raised
    # UnicodeDecodeError and `registry types` printed a traceback.
    await registry.register_service(ServiceInfo("w", "h", 1, "worker"))
    assert registry.redis is not None
    await registry.redis.sadd(registry.keys.types, b"\xffother")
    assert await registry.get_service_types() == ["worker"]
    r = await reg_cli("types")
    assert (r.rc, r.out, r.err) == (0, "worker\n", "")
    r = await reg_cli("types", "--format", "json")
    assert r.rc == 0 and r.json() == ["worker"]


# ---- the seed's shell example ----------------------------------------------------------------


async def test_seed_shell_example(
    redis_url: str, prefix: str, registry: ServiceRegistry, tmp_path: Path
) -> None:
    service = tmp_path / "start_vllm.sh"
    service.write_text("#!/bin/sh\nwhile [ ! -e stop ]; do sleep 0.05; done\n")
    service.chmod(0o755)
    env = _env(REDIS_URL=redis_url, REDISAQ_KEY_PREFIX=prefix, HEARTBEAT_INTERVAL="0.1")
    proc = await asyncio.create_subprocess_exec(
        "bash", str(SHELL_EXAMPLE), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        sid = f"vllm-{socket.gethostname()}-{proc.pid}"
        first = await eventually(lambda: registry.get_service(sid), timeout=15, message=sid)
        assert (first.port, first.service_type) == (8000, "inference")
        assert first.metadata == {"model": "llama-3"}
        await eventually(lambda: _heartbeat_after(registry, sid, first.last_seen), timeout=15)
    finally:
        (tmp_path / "stop").touch()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == [f"registered {sid}", f"deregistered {sid}"]
    assert await registry.get_service(sid) is None


async def _heartbeat_after(registry: ServiceRegistry, sid: str, ts: float) -> bool:
    got = await registry.get_service(sid)
    return got is not None and got.last_seen is not None and got.last_seen > ts


# ---- run -------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, pathlib, signal, sys, time
    d = pathlib.Path(sys.argv[1])
    def stop(sig, frame):
        (d / "got").write_text(str(sig))
        while not (d / "go").exists():
            time.sleep(0.01)
        sys.exit(int(sys.argv[2]))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    (d / "ready").write_text(str(os.getpid()))
    while not (d / "exit").exists():
        time.sleep(0.01)
    sys.exit(int(sys.argv[3]))
    """
)


async def _start_run(
    redis_url: str, prefix: str, tmp_path: Path, sid: str, *, on_signal: int = 5, on_exit: int = 3
) -> asyncio.subprocess.Process:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
        "--key-prefix", prefix, "registry", "run", sid, "--service-type", "worker",
        "--interval", "0.1", "--port", "9000", "--metadata", '{"role": "test"}', "--",
        sys.executable, str(script), str(tmp_path), str(on_signal), str(on_exit),
        env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _healthy_with_pid(
    registry: ServiceRegistry, sid: str, tmp_path: Path
) -> ServiceInfo | None:
    """The record once it says healthy with the pid and the child has set its signal handlers."""
    if not (tmp_path / "ready").exists():
        return None
    got = await registry.get_service(sid)
    if got is not None and got.status == "healthy" and "pid" in got.metadata:
        return got
    return None


async def test_run_registers_heartbeats_and_exits_with_the_command_status(
    redis_url: str, prefix: str, registry: ServiceRegistry, tmp_path: Path
) -> None:
    proc = await _start_run(redis_url, prefix, tmp_path, "runner-1", on_exit=3)
    try:
        info = await eventually(
            lambda: _healthy_with_pid(registry, "runner-1", tmp_path), timeout=15
        )
        assert info.metadata["pid"] == int((tmp_path / "ready").read_text())
        assert info.metadata["role"] == "test" and info.port == 9000
        assert info.metadata["command"][0] == sys.executable
        assert registry.redis is not None
        assert await registry.redis.exists(registry.keys.alive("runner-1")) == 1
        await eventually(lambda: _heartbeat_after(registry, "runner-1", info.last_seen or 0))
    finally:
        (tmp_path / "exit").touch()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3, err
    assert await registry.get_service("runner-1") is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_forwards_signals_and_marks_stopping(
    redis_url: str, prefix: str, registry: ServiceRegistry, tmp_path: Path, sig: signal.Signals
) -> None:
    proc = await _start_run(redis_url, prefix, tmp_path, "runner-2", on_signal=5)
    try:
        await eventually(lambda: _healthy_with_pid(registry, "runner-2", tmp_path), timeout=15)
        proc.send_signal(sig)
        await eventually(lambda: (tmp_path / "got").exists(), timeout=10, message="forwarded")
        assert (tmp_path / "got").read_text() == str(int(sig))
        await eventually(lambda: _has_status(registry, "runner-2", "stopping"), timeout=10)
    finally:
        (tmp_path / "go").touch()
        (tmp_path / "exit").touch()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 5, err
    assert await registry.get_service("runner-2") is None


async def _has_status(registry: ServiceRegistry, sid: str, status: str) -> bool:
    got = await registry.get_service(sid)
    return got is not None and got.status == status


async def test_run_stops_the_command_when_deregistered_from_outside(
    redis_url: str, prefix: str, reg_cli: Any, registry: ServiceRegistry, tmp_path: Path
) -> None:
    proc = await _start_run(redis_url, prefix, tmp_path, "runner-3", on_signal=0)
    try:
        await eventually(lambda: _healthy_with_pid(registry, "runner-3", tmp_path), timeout=15)
        assert (await reg_cli("deregister", "runner-3")).rc == 0
        await eventually(lambda: (tmp_path / "got").exists(), timeout=10, message="SIGTERM")
        assert (tmp_path / "got").read_text() == str(int(signal.SIGTERM))
    finally:
        (tmp_path / "go").touch()
        (tmp_path / "exit").touch()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert await registry.get_service("runner-3") is None


async def test_run_of_a_missing_command(reg_cli: Any, registry: ServiceRegistry) -> None:
    r = await reg_cli("run", "nothing", "--service-type", "t", "--", "/nonexistent/cmd")
    assert r.rc == 127
    _one_line_error(r, "/nonexistent/cmd")
    assert await registry.get_service("nothing") is None


async def test_run_reports_a_killed_command_like_a_shell(
    reg_cli: Any, registry: ServiceRegistry
) -> None:
    r = await reg_cli("run", "k", "--service-type", "t", "--", "sh", "-c", "kill -KILL $$")
    assert r.rc == 128 + signal.SIGKILL
    assert await registry.get_service("k") is None


# ---- monitor ---------------------------------------------------------------------------------


async def test_monitor_streams_status_changes_until_sigterm(
    redis_url: str, prefix: str, registry: ServiceRegistry
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", redis_url,
        "--key-prefix", prefix, "registry", "monitor", "--format", "json",
        "--timeout", "0.3", "--disconnect-timeout", "30", "--interval", "0.05",
        env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await registry.register_service(ServiceInfo("m1", "h", 1, "worker"))

        async def next_change() -> dict[str, Any]:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            return dict(json.loads(line))

        first = await next_change()
        assert (first["service_id"], first["old"]) == ("m1", None)
        # A monitor that starts slowly (a loaded machine) may first see the service
        # already silent for longer than --timeout: then it goes straight to not_responding.
        if first["new"] == "registered":
            second = await next_change()
            assert (second["old"], second["new"]) == ("registered", "not_responding")
        else:
            assert first["new"] == "not_responding"
        assert await registry.get_worker_statuses() == {"m1": WorkerStatus.NOT_RESPONDING}
        await registry.update_health("m1", ServiceStatus.HEALTHY)
        assert (await next_change())["new"] == "alive"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err


async def test_monitor_once_text(reg_cli: Any, registry: ServiceRegistry) -> None:
    await registry.register_service(ServiceInfo("t1", "h", 1, "worker"))
    r = await reg_cli("monitor", "--once")
    assert r.rc == 0
    assert r.out.splitlines()[0].split() == ["SERVICE_ID", "WORKER_STATUS", "STATUS", "AGE"]
    assert r.out.splitlines()[1].split()[:3] == ["t1", "registered", "healthy"]


async def test_a_last_seen_no_date_can_hold_is_shown_as_stored(
    reg_cli: Any, registry: ServiceRegistry, redis_url: str
) -> None:
    # Another client wrote a last_seen past any date: list and get ended in a traceback
    # (OverflowError: timestamp out of range).
    from redis.asyncio import Redis

    await registry.register_service(ServiceInfo("svc-far", "h", 1, "w"))
    client = Redis.from_url(redis_url)
    try:
        await client.hset(registry.keys.service("svc-far"), "last_seen", "1e20")
    finally:
        await client.aclose()
    for args in (("list",), ("get", "svc-far")):
        result = await reg_cli(*args)
        assert result.rc == 0 and "Traceback" not in result.err, (args, result.err)
        assert "1e+20" in result.out, (args, result.out)
