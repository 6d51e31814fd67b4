"""``redisaq registry ...``: the service registry from a shell.

Every command of the service registry's shell tool, plus ``run`` (register, heartbeat while a
command runs, deregister when it ends) and ``monitor`` (worker liveness).
``--format json`` prints JSON only; exit codes are 0 (done), 1 (not found or
a failed check) and 2 (bad usage), with a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from .._failures import CALL_FAILURES
from ..errors import ConfigurationError, ServiceNotFoundError
from ..registry import (
    HealthMonitor,
    Keepalive,
    ServiceInfo,
    ServiceRegistry,
    ServiceStatus,
    StatusChange,
)
from .common import (
    EXIT_OK,
    UsageError,
    add_format,
    leaf_parent,
    print_json,
    print_table,
    redis_url,
    utc_time,
)

__all__ = ["add_commands"]

log = logging.getLogger(__name__)

_STATUSES = ", ".join(s.value for s in ServiceStatus)
Action = Callable[[argparse.Namespace, ServiceRegistry], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    """A sub-command parser whose usage errors are one line on stderr (exit code 2).

    With ``takes_command`` set, everything after the first ``--`` is the
    command to run (``args.cmd``), left unparsed.
    """

    takes_command = False

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if not self.takes_command:
            return super().parse_known_args(args, namespace)
        argv = list(sys.argv[1:] if args is None else args)
        cmd: list[str] = []
        if "--" in argv:
            cut = argv.index("--")
            argv, cmd = argv[:cut], argv[cut + 1 :]
        ns, extras = super().parse_known_args(argv, namespace)
        ns.cmd = cmd
        return ns, extras


def add_commands(sub: Any) -> None:
    """Register ``registry`` and its commands."""
    p = sub.add_parser("registry", help="register, discover and watch services")
    commands = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str, action: Action) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[leaf_parent()]
        )
        add_format(a)
        a.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
        a.set_defaults(func=_runner(action))
        return a

    a = command("register", "register a service, or replace its registration", _register)
    a.add_argument("service_id", metavar="ID")
    _service_options(a)
    a.add_argument("--status", default="healthy", help=f"one of {_STATUSES} (healthy)")

    a = command("heartbeat", "record a heartbeat; exit 1 if ID is not registered", _heartbeat)
    a.add_argument("service_id", metavar="ID")

    a = command("update-health", "set a service's status and merge metadata", _update_health)
    a.add_argument("service_id", metavar="ID")
    a.add_argument("--status", required=True, help=f"one of {_STATUSES}")
    a.add_argument("--metadata", help="JSON object merged into the metadata")

    a = command("get", "show one service; exit 1 if it is not registered", _get)
    a.add_argument("service_id", metavar="ID")

    a = command("list", "list services", _list)
    a.add_argument("--service-type", help="only this type")
    a.add_argument("--status", help=f"only this status ({_STATUSES})")

    a = command("list-healthy", "list healthy services with a recent heartbeat", _list_healthy)
    a.add_argument("--timeout", type=float, default=30.0, help="max heartbeat age, s (30)")
    a.add_argument("--service-type", help="only this type")

    a = command("count", "how many services are registered", _count)
    a.add_argument("--service-type", help="only this type")

    command("types", "list the service types", _types)

    a = command("cleanup", "remove services without a recent heartbeat", _cleanup)
    a.add_argument("--timeout", type=float, default=300.0, help="max heartbeat age, s (300)")

    a = command("deregister", "remove a service; exit 1 if it was not registered", _deregister)
    a.add_argument("service_id", metavar="ID")

    a = command("clear", "delete every service of this key prefix (needs --confirm)", _clear)
    a.add_argument("--confirm", action="store_true", help="really delete them")

    a = command(
        "run",
        "register ID, heartbeat while CMD runs (forwarding SIGTERM/SIGINT), deregister after; "
        "exits with CMD's status",
        _run,
    )
    a.add_argument("service_id", metavar="ID")
    _service_options(a)
    a.add_argument("--interval", type=float, default=10.0, help="heartbeat interval, s (10)")
    a.add_argument("--ttl", type=float, help="liveness key expiry, s (3 intervals)")
    assert isinstance(a, _Parser)
    a.takes_command = True
    a.usage = "%(prog)s ID --service-type T [options] -- CMD [ARGS ...]"

    a = command("monitor", "watch worker liveness; print status changes", _monitor)
    a.add_argument("--timeout", type=float, default=15.0, help="not_responding after, s (15)")
    a.add_argument("--disconnect-timeout", type=float, help="disconnected after, s (4 timeouts)")
    a.add_argument("--interval", type=float, help="seconds between checks (timeout / 3)")
    a.add_argument("--service-type", help="only this type")
    a.add_argument("--once", action="store_true", help="check once, print every status, exit")


def _service_options(a: argparse.ArgumentParser) -> None:
    a.add_argument("--service-type", required=True, help="e.g. inference, worker")
    a.add_argument("--host", default=None, help="host name or address (this host's name)")
    a.add_argument("--port", type=int, default=0, help="port (0)")
    a.add_argument("--metadata", help='JSON object, e.g. \'{"model": "llama-3"}\'')


def _runner(action: Action) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def run(args: argparse.Namespace) -> int:
        try:
            registry = ServiceRegistry(redis_url=redis_url(args), key_prefix=args.key_prefix)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        async with registry:
            try:
                return await action(args, registry)
            except ConfigurationError as exc:
                raise UsageError(str(exc)) from None

    return run


# ---- argument parsing helpers ---------------------------------------------------------


def _metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--metadata is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--metadata must be a JSON object, got {text!r}")
    return value


def _status(text: str) -> ServiceStatus:
    try:
        return ServiceStatus(text)
    except ValueError:
        raise UsageError(f"--status must be one of {_STATUSES}; got {text!r}") from None


def _info(args: argparse.Namespace, status: ServiceStatus) -> ServiceInfo:
    return ServiceInfo(
        service_id=args.service_id,
        host=args.host or socket.gethostname() or "localhost",
        port=args.port,
        service_type=args.service_type,
        status=status,
        metadata=_metadata(args.metadata) or {},
    )


# ---- output helpers -------------------------------------------------------------------


def _say(args: argparse.Namespace, text: str, value: Any) -> None:
    if args.quiet:
        return
    if args.format == "json":
        print_json(value)
    else:
        print(text)


def _age(now: float, ts: float | None) -> str:
    return "" if ts is None else f"{max(0.0, now - ts):.1f}s"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _print_services(args: argparse.Namespace, services: Sequence[ServiceInfo], now: float) -> None:
    if args.quiet:
        return
    if args.format == "json":
        print_json([s.as_dict() for s in services])
        return
    rows = [
        (s.service_id, s.host, s.port, s.service_type, s.status, utc_time(s.last_seen),
         _age(now, s.last_seen), _compact(s.metadata))
        for s in services
    ]  # fmt: skip
    print_table(
        rows, ["SERVICE_ID", "HOST", "PORT", "TYPE", "STATUS", "LAST_SEEN", "AGE", "METADATA"]
    )


def _not_registered(service_id: str) -> ServiceNotFoundError:
    return ServiceNotFoundError(f"service {service_id!r} is not registered")


# ---- the commands ---------------------------------------------------------------------


async def _register(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    info = _info(args, _status(args.status))
    await registry.register_service(info)
    _say(args, f"registered {info.service_id}", {"service_id": info.service_id, "registered": True})
    return EXIT_OK


async def _heartbeat(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    if not await registry.heartbeat(args.service_id):
        raise _not_registered(args.service_id)
    _say(args, f"heartbeat {args.service_id}", {"service_id": args.service_id, "heartbeat": True})
    return EXIT_OK


async def _update_health(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    status = _status(args.status)
    if not await registry.update_health(args.service_id, status, _metadata(args.metadata)):
        raise _not_registered(args.service_id)
    _say(
        args,
        f"{args.service_id} is {status.value}",
        {"service_id": args.service_id, "status": status.value, "updated": True},
    )
    return EXIT_OK


async def _get(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    info = await registry.require_service(args.service_id)
    if args.quiet:
        return EXIT_OK
    if args.format == "json":
        print_json(info.as_dict())
        return EXIT_OK
    now = await registry.server_time()
    rows = [
        ("service_id", info.service_id),
        ("host", info.host),
        ("port", info.port),
        ("service_type", info.service_type),
        ("status", info.status),
        ("last_seen", f"{utc_time(info.last_seen)} ({_age(now, info.last_seen)} ago)"),
        ("metadata", _compact(info.metadata)),
    ]
    print_table(rows, ["FIELD", "VALUE"])
    return EXIT_OK


async def _list(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    status = None if args.status is None else _status(args.status)
    services = await registry.list_services(service_type=args.service_type, status_filter=status)
    _print_services(args, services, await registry.server_time())
    return EXIT_OK


async def _list_healthy(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    services = await registry.get_healthy_services(
        service_type=args.service_type, timeout_seconds=args.timeout
    )
    _print_services(args, services, await registry.server_time())
    return EXIT_OK


async def _count(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    n = await registry.get_service_count(service_type=args.service_type)
    _say(args, str(n), {"count": n, "service_type": args.service_type})
    return EXIT_OK


async def _types(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    types = await registry.get_service_types()
    if args.quiet:
        return EXIT_OK
    if args.format == "json":
        print_json(types)
    else:
        for name in types:
            print(name)
    return EXIT_OK


async def _cleanup(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    removed = await registry.cleanup_stale_services(timeout_seconds=args.timeout)
    _say(args, str(removed), {"removed": removed})
    return EXIT_OK


async def _deregister(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    if not await registry.deregister_service(args.service_id):
        raise _not_registered(args.service_id)
    _say(
        args,
        f"deregistered {args.service_id}",
        {"service_id": args.service_id, "deregistered": True},
    )
    return EXIT_OK


async def _clear(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    if not args.confirm:
        raise UsageError("clear deletes every service of this key prefix: add --confirm")
    await registry.clear_all()
    _say(args, "registry cleared", {"cleared": True, "key_prefix": registry.key_prefix})
    return EXIT_OK


async def _try_update(keepalive: Keepalive, **changes: Any) -> None:
    """Update the registration; a Redis failure is logged, never fatal to the command."""
    try:
        await keepalive.update(**changes)
    except CALL_FAILURES as exc:
        log.warning("could not update %s: %s", keepalive.service_id, exc)


async def _run(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    cmd = list(args.cmd)
    if not cmd:
        raise UsageError("run needs a command after --, e.g. registry run ID ... -- ./serve.sh")
    info = _info(args, ServiceStatus.STARTING)
    info.metadata.setdefault("command", cmd)
    keepalive = registry.keepalive(info, interval=args.interval, ttl=args.ttl)
    async with keepalive:
        try:
            proc = await asyncio.create_subprocess_exec(*cmd)
        except OSError as exc:
            sys.stderr.write(f"redisaq: error: cannot run {cmd[0]!r}: {exc.strerror or exc}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[Any]] = set()

        def forward(sig: signal.Signals) -> None:
            if proc.returncode is None:
                proc.send_signal(sig)
            task = asyncio.ensure_future(_try_update(keepalive, status=ServiceStatus.STOPPING))
            pending.add(task)
            task.add_done_callback(pending.discard)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, forward, sig)
        try:
            await _try_update(keepalive, status=ServiceStatus.HEALTHY, metadata={"pid": proc.pid})
            exited = asyncio.ensure_future(proc.wait())
            remote = asyncio.ensure_future(keepalive.wait_shutdown())
            await asyncio.wait({exited, remote}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done() and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # deregistered from outside: stop CMD
            returncode = await exited
            remote.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await asyncio.gather(*pending, return_exceptions=True)
        if not keepalive.shutdown_requested:
            await _try_update(keepalive, status=ServiceStatus.STOPPING)
    return returncode if returncode >= 0 else 128 - returncode


async def _monitor(args: argparse.Namespace, registry: ServiceRegistry) -> int:
    def show(change: StatusChange) -> None:
        if args.quiet:
            return
        if args.format == "json":
            sys.stdout.write(_compact(change.as_dict()) + "\n")
        else:
            old = "-" if change.old is None else change.old.value
            age = "" if change.age is None else f" (last heartbeat {change.age:.1f}s ago)"
            sys.stdout.write(f"{change.service_id}: {old} -> {change.new.value}{age}\n")
        sys.stdout.flush()

    monitor = HealthMonitor(
        registry,
        timeout=args.timeout,
        disconnect_timeout=args.disconnect_timeout,
        interval=args.interval,
        service_type=args.service_type,
        on_change=None if args.once else show,
    )
    if args.once:
        await monitor.check()
        snap = await registry.snapshot(args.service_type)
        statuses = monitor.statuses
        rows = [
            (r.info.service_id, statuses[r.info.service_id].value, r.info.status,
             _age(snap.now, r.info.last_seen))
            for r in snap.records
            if r.info.service_id in statuses
        ]  # fmt: skip
        if args.quiet:
            return EXIT_OK
        if args.format == "json":
            print_json([dict(zip(("service_id", "worker_status", "status", "age"), r, strict=True))
                        for r in rows])  # fmt: skip
        else:
            print_table(rows, ["SERVICE_ID", "WORKER_STATUS", "STATUS", "AGE"])
        return EXIT_OK
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with monitor:
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return EXIT_OK
