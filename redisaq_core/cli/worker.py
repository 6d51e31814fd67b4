"""``redisaq worker MODULE:FUNCTION --topic T``: run a consumer with a handler from a module."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .._delivery import POLL_INTERVAL
from ..consumer import Consumer
from ..errors import ConfigurationError, RedisaqError
from ..keys import validate_name
from ..signals import install_signal_handlers
from .common import EXIT_OK, UsageError, leaf_parent, redis_url, seconds
from .supervisor import EXIT_CANNOT_START, Supervisor, watch_supervisor

__all__ = [
    "MAX_PROCESSES",
    "add_commands",
    "child_command",
    "drain_deadline",
    "load_handler",
    "run_worker",
]

MAX_PROCESSES = 256
"""The most ``--processes`` accepts."""

# The options a supervised child gets as given to the supervisor (--name gets a suffix).
_PASSED_ON = ("topic", "group", "batch_size", "concurrency", "heartbeat_interval",
              "heartbeat_ttl", "max_deliveries", "retry_backoff", "poll_interval",
              "shutdown_timeout", "start")  # fmt: skip
_FLAGS_PASSED_ON = ("batch", "static")


def add_commands(sub: Any) -> None:
    """Register ``worker``."""
    p = sub.add_parser(
        "worker",
        parents=[leaf_parent()],
        help="consume a topic with a handler function until SIGTERM/SIGINT",
        description="Run a consumer whose handler is MODULE:FUNCTION (an async function taking "
        "a Message, or a list of them with --batch). The first SIGTERM/SIGINT stops it "
        "gracefully (in-flight handlers finish, partitions are released), a second at once. "
        "With --processes N, a supervisor runs N such consumers, each its own process, in the "
        "same group (--name X names them X-0 to X-<N-1>). It forwards SIGTERM/SIGINT to them, "
        "kills any still running --shutdown-timeout plus the heartbeat TTL later, and restarts "
        "one that crashes. It exits 0 when every process stopped cleanly after the signal; 1 "
        "when a process could not load the handler (nothing is restarted then), had to be "
        "killed, failed while stopping, or was down after a crash (any exit not asked for); "
        "2 on bad usage.",
    )
    p.add_argument("handler", metavar="MODULE:FUNCTION",
                   help="an importable module (dotted, like app.tasks) and an async function "
                   "in it")  # fmt: skip
    p.add_argument("--topic", type=_name, required=True)
    p.add_argument("--group", type=_name, default="default",
                   help="consumer group (default %(default)s)")  # fmt: skip
    p.add_argument("--name", type=_name, default=None,
                   help="consumer name (default: host-pid-random)")  # fmt: skip
    p.add_argument("--batch", action="store_true", help="the handler takes a list of messages")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--heartbeat-interval", type=float, default=3.0)
    p.add_argument("--heartbeat-ttl", type=float, default=None)
    p.add_argument("--max-deliveries", type=int, default=5)
    p.add_argument("--retry-backoff", type=float, default=0.5)
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL)
    p.add_argument("--shutdown-timeout", type=float, default=30.0)
    p.add_argument("--static", action="store_true", help="static membership (needs --name)")
    p.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    g = p.add_argument_group("several processes")
    g.add_argument("--processes", type=_process_count, default=1, metavar="N",
                   help=f"run N consumer processes (1-{MAX_PROCESSES}) under a supervisor "
                   "(default 1: this process consumes, no supervisor)")  # fmt: skip
    g.add_argument("--restart-delay", type=seconds, default=1.0, metavar="SECONDS",
                   help="delay before restarting a crashed process, doubled on each crash "
                   "(default %(default)s)")  # fmt: skip
    g.add_argument("--restart-delay-max", type=seconds, default=60.0, metavar="SECONDS",
                   help="longest restart delay; a process that ran this long (at least 60 s) "
                   "restarts after --restart-delay again (default %(default)s)")  # fmt: skip
    g.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_worker)


def _process_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_PROCESSES}, got {text!r}")
    return value


def _name(text: str) -> str:
    try:
        return validate_name(text, "the name")
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _split_spec(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"handler must look like module:function, got {spec!r}")
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise UsageError(
            f"handler module {module_name!r} (in {spec!r}) is not a module name: identifiers "
            "joined by dots, with no leading dot"
        )
    if not attr.isidentifier():
        raise UsageError(f"handler function {attr!r} (in {spec!r}) is not an identifier")
    return module_name, attr


def load_handler(spec: str) -> Callable[[Any], Any]:
    """Import ``module:function`` and return the function."""
    module_name, attr = _split_spec(spec)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import handler module {module_name!r}: {exc}") from None
    func = getattr(module, attr, None)
    if func is None or not inspect.iscoroutinefunction(func):
        raise UsageError(f"{spec!r} is not an async function")
    return func  # type: ignore[no-any-return]


async def run_worker(args: argparse.Namespace) -> int:
    """Consume until a signal, then shut down gracefully (or supervise ``--processes``)."""
    if getattr(args, "processes", 1) > 1:
        return await _supervise(args)
    if getattr(args, "supervisor_fd", None) is not None:
        return await _run_child(args, args.supervisor_fd)
    handler = load_handler(args.handler)
    if args.static and not args.name:
        raise UsageError("--static needs --name (a static member keeps its name across restarts)")
    consumer = _consumer(args, redis_url(args), args.name)
    stop = _Stop(consumer)
    install_signal_handlers(stop)
    await _consume(consumer, handler, batch=args.batch, stop=stop)
    return EXIT_OK


def _consumer(args: argparse.Namespace, url: str, name: str | None) -> Consumer:
    return Consumer(
        args.topic,
        group_name=args.group,
        consumer_name=name,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_ttl=args.heartbeat_ttl,
        max_deliveries=args.max_deliveries,
        retry_backoff=args.retry_backoff,
        poll_interval=args.poll_interval,
        shutdown_timeout=args.shutdown_timeout,
        static=args.static,
        start=args.start,
        redis_url=url,
    )


class _Stop:
    """Stops the worker's consumer, and remembers a stop that came before it ran.

    ``Consumer.stop`` does nothing to a consumer not running yet: a signal that
    arrives while the worker starts (connecting to Redis) would be lost, and the
    worker would run on.
    """

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.requested = False

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the consumer (gracefully, or within ``timeout`` seconds)."""
        self.requested = True
        await self.consumer.stop(timeout)


async def _consume(
    consumer: Consumer, handler: Callable[[Any], Any], *, batch: bool, stop: _Stop
) -> None:
    async with consumer:
        if stop.requested:
            return
        # No await from the check to the start: process() is running once it first waits.
        await (consumer.process_batch(handler) if batch else consumer.process(handler))


async def _run_child(args: argparse.Namespace, fd: int) -> int:
    """One of the supervisor's processes: a failure to start exits ``EXIT_CANNOT_START``."""
    try:
        handler = load_handler(args.handler)
        consumer = _consumer(args, redis_url(args), args.name)
    except (UsageError, RedisaqError) as exc:
        print(f"redisaq: error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except Exception:  # the handler's module raised while being imported
        traceback.print_exc()
        return EXIT_CANNOT_START
    except SystemExit as exc:  # ... or called sys.exit(): restarting would only do it again
        module = args.handler.partition(":")[0]
        print(f"redisaq: error: handler module {module!r} called sys.exit({exc.code!r}) while "
              "being imported", file=sys.stderr)  # fmt: skip
        return EXIT_CANNOT_START
    stop = _Stop(consumer)
    install_signal_handlers(stop)
    unwatch = watch_supervisor(fd, stop, drain_deadline(args))
    try:
        await _consume(consumer, handler, batch=args.batch, stop=stop)
    finally:
        unwatch()
    return EXIT_OK


def drain_deadline(args: argparse.Namespace) -> float:
    """Seconds a process may take to stop: ``--shutdown-timeout`` plus the heartbeat TTL.

    A process lets running handlers finish for ``--shutdown-timeout``, then
    leaves the group; what it could not do by then expires with its heartbeat.
    """
    ttl = args.heartbeat_ttl if args.heartbeat_ttl is not None else 3.0 * args.heartbeat_interval
    return float(args.shutdown_timeout + ttl)


def child_command(args: argparse.Namespace, slot: int) -> list[str]:
    """The command line of the supervisor's child number ``slot`` (Redis URL not included).

    The child gets the Redis URL in its environment (``REDIS_URL``), out of
    sight of ``ps``; a ``--name`` gets the suffix ``-<slot>``.
    """
    command = [sys.executable, "-m", "redisaq_core.cli.main"]
    command += ["-v"] * int(getattr(args, "verbose", 0) or 0)
    if getattr(args, "log_format", None):
        command += ["--log-format", args.log_format]
    command += ["worker", args.handler]
    for dest in _PASSED_ON:
        value = getattr(args, dest)
        if value is not None:
            command += [_flag(dest), str(value)]
    command += [_flag(dest) for dest in _FLAGS_PASSED_ON if getattr(args, dest)]
    if args.name:
        command += ["--name", f"{args.name}-{slot}"]
    return command


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


async def _supervise(args: argparse.Namespace) -> int:
    """Run ``--processes`` children; the options are checked here, before any of them starts."""
    _split_spec(args.handler)
    if args.static and not args.name:
        raise UsageError("--static needs --name (a static member keeps its name across restarts)")
    if args.restart_delay_max < args.restart_delay:
        raise UsageError("--restart-delay-max must be at least --restart-delay")
    url = redis_url(args)
    _consumer(args, url, args.name and f"{args.name}-0")  # raises on a bad setting
    supervisor = Supervisor(
        [child_command(args, slot) for slot in range(args.processes)],
        grace=drain_deadline(args),
        restart_delay=args.restart_delay,
        restart_delay_max=args.restart_delay_max,
        env=dict(os.environ, REDIS_URL=url),
    )
    return await supervisor.run()
