"""``redisaq monitor ...``: topics, groups, workers, jobs and metrics from a shell.

Commands: ``summary``, ``jobs [--status S] [--topic T] [--limit N]``, ``job ID``,
``workers``, ``worker ID``, ``topics``, ``topic NAME`` and
``serve-metrics --port P [--host H]`` (the Prometheus exposition over HTTP).

``--format table`` (the default; ``text`` is the same) prints aligned
columns; ``--format json`` prints only JSON on stdout, in the shapes
documented on :class:`redisaq_core.monitor.Monitor` (``summary``,
``workers``, ``worker``, ``topics``), :func:`redisaq_core.metrics.topic_metrics`
(``topic``) and :meth:`redisaq_core.results.JobRecord.as_dict` (``jobs`` is a
list of them, ``job`` one). ``--watch SECONDS`` redraws the output every
SECONDS in place (with ``--format json``: one compact JSON document per line
instead) until Ctrl-C or SIGTERM, then exits 0; ``topic NAME --watch`` adds
the topic's produced and handled per second over the last 5 minutes as
sparklines (from the series the dashboard draws).

Exit codes: 0 done, 1 not found (unknown job, worker or topic) or a failed
Redis call, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, NoReturn

from .._failures import CALL_FAILURES
from .._tasks import wait_event
from ..errors import ConfigurationError
from ..metrics.prometheus import CONTENT_TYPE
from ..monitor import Monitor
from ..results import JobRecord, JobStatus
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    leaf_parent,
    positive_int,
    print_table,
    redis_url,
    seconds,
    utc_time,
)

__all__ = ["add_commands"]

log = logging.getLogger(__name__)

_CLEAR = "\x1b[H\x1b[2J"
_STATUSES = ", ".join(s.value for s in JobStatus)


class NotFound(Exception):
    """What was asked for does not exist: exit code 1, the message on stderr."""


Output = tuple[Any, str]
"""A command's result: the JSON value, and the table text."""
Action = Callable[[argparse.Namespace, Monitor], Awaitable[Output]]


class _Parser(argparse.ArgumentParser):
    """A sub-command parser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_commands(sub: Any) -> None:
    """Register ``monitor`` and its commands."""
    p = sub.add_parser("monitor", help="watch topics, consumer groups, workers, jobs and metrics")
    commands = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str, action: Action | None) -> argparse.ArgumentParser:
        a: argparse.ArgumentParser = commands.add_parser(
            name, help=help_text, description=help_text, parents=[leaf_parent()]
        )
        a.add_argument("--stale-after", type=seconds, default=15.0,
                       help="alive: last heartbeat at most this old, s (15)")  # fmt: skip
        if action is not None:
            a.add_argument("--format", choices=["table", "text", "json"], default="table",
                           help="output format (default table; json is JSON only)")  # fmt: skip
            a.add_argument("--watch", type=seconds, metavar="SECONDS",
                           help="redraw every SECONDS until Ctrl-C")  # fmt: skip
            a.set_defaults(func=_runner(action))
        return a

    command("summary", "the whole system at a glance", _summary)
    a = command("jobs", "jobs, most recently changed first", _jobs)
    a.add_argument("--status", help=f"only this status ({_STATUSES})")
    a.add_argument("--topic", help="only this topic")
    a.add_argument("--limit", type=positive_int, default=100, help="at most this many (100)")
    a = command("job", "one job's record; exit 1 if it has none", _job)
    a.add_argument("job_id", metavar="ID")
    a = command("workers", "live group members of every topic, and registered consumers", _workers)
    a.add_argument("--all", action="store_true", help="stale workers too")
    a = command("worker", "one worker (topic/group/name, or a name); exit 1 if unknown", _worker)
    a.add_argument("worker_id", metavar="ID")
    command("topics", "every topic with its totals", _topics)
    a = command("topic", "a topic's partitions: owner, lag, pending, dead letters", _topic)
    a.add_argument("name", metavar="NAME")
    a = command("serve-metrics", "serve the Prometheus exposition over HTTP", None)
    a.add_argument("--port", type=int, required=True, help="port to listen on")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    a.add_argument("--topic", action="append", dest="topics", metavar="T",
                   help="only this topic (repeatable; default every topic)")  # fmt: skip
    a.set_defaults(func=_serve)


def _monitor(args: argparse.Namespace) -> Monitor:
    try:
        return Monitor(
            redis_url=redis_url(args), key_prefix=args.key_prefix, stale_after=args.stale_after
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _runner(action: Action) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def run(args: argparse.Namespace) -> int:
        async with _monitor(args) as monitor:
            if args.watch is not None:
                return await _watch(args, monitor, action)
            try:
                value, text = await action(args, monitor)
            except ConfigurationError as exc:
                raise UsageError(str(exc)) from None
            except NotFound as exc:
                sys.stderr.write(f"redisaq: error: {exc}\n")
                return EXIT_FAILED
            _emit(args, value, text)
            return EXIT_OK

    return run


def _emit(args: argparse.Namespace, value: Any, text: str) -> None:
    if args.format == "json":
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()


def _stop_event() -> tuple[asyncio.Event, Callable[[], None]]:
    """An event set by SIGINT or SIGTERM, and the function that removes the handlers."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    return stop, remove


async def _watch(args: argparse.Namespace, monitor: Monitor, action: Action) -> int:
    stop, remove = _stop_event()
    command = f"monitor {args.action}"  # not the command line: it may carry a password
    try:
        while not stop.is_set():
            try:
                value, text = await action(args, monitor)
            except ConfigurationError as exc:
                raise UsageError(str(exc)) from None
            except NotFound as exc:
                value, text = {"error": str(exc)}, f"{exc}\n"
            except CALL_FAILURES as exc:
                log.warning("monitor %s: %s", args.action, exc)
                value, text = {"error": str(exc)}, f"error: {exc}\n"
            if args.format == "json":
                sys.stdout.write(json.dumps(value, sort_keys=True, default=str) + "\n")
            else:
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                head = f"Every {args.watch:g}s: redisaq {command}    {stamp}\n\n"
                sys.stdout.write(_CLEAR + head + text)
            sys.stdout.flush()
            await wait_event(stop, args.watch)
    finally:
        remove()
    return EXIT_OK


# ---- formatting ------------------------------------------------------------------------


def _table(rows: list[tuple[Any, ...]], headers: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_table(rows, headers)
    return out.getvalue()


def _age(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}s"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _parts(partitions: list[int]) -> str:
    return ",".join(str(p) for p in partitions) or "-"


def _lag(row: dict[str, Any]) -> str:
    return f"{row['lag']}" if row["lag_exact"] else f">={row['lag']}"


# ---- the commands ----------------------------------------------------------------------


async def _summary(args: argparse.Namespace, monitor: Monitor) -> Output:
    s = await monitor.summary()
    m = s["messages"]
    rows: list[tuple[Any, ...]] = [
        ("topics", s["topics"]),
        ("partitions", s["partitions"]),
        ("groups", s["groups"]),
        ("workers", f"{s['workers']['alive']} alive, {s['workers']['stale']} stale"),
        *((key, m[key]) for key in m),
        ("jobs tracked", s["jobs"]["tracked"]),
    ]
    return s, _table(rows, ["FIELD", "VALUE"])


def _job_rows(records: list[JobRecord]) -> str:
    rows = [
        (r.id, r.status.value, r.topic, r.partition, r.priority, r.attempts, r.worker or "",
         utc_time(r.updated_at), f"{r.error_type}: {r.error}"[:60] if r.error else "")
        for r in records
    ]  # fmt: skip
    headers = ["ID", "STATUS", "TOPIC", "PARTITION", "PRIORITY", "ATTEMPTS", "WORKER", "UPDATED"]
    return _table(rows, [*headers, "ERROR"])


async def _jobs(args: argparse.Namespace, monitor: Monitor) -> Output:
    records = await monitor.jobs(topic=args.topic, status=args.status, limit=args.limit)
    return [r.as_dict() for r in records], _job_rows(records)


async def _job(args: argparse.Namespace, monitor: Monitor) -> Output:
    record = await monitor.job(args.job_id)
    if record is None:
        raise NotFound(f"job {args.job_id!r} has no record (unknown, or expired)")
    data = record.as_dict()
    rows: list[tuple[Any, ...]] = []
    for key, value in data.items():
        if key.endswith("_at") or key == "updated_at":
            value = utc_time(value)
        elif (key == "result" and record.has_result) or (key == "progress" and value is not None):
            value = _compact(value)
        rows.append((key, "" if value is None else value))
    return data, _table(rows, ["FIELD", "VALUE"])


def _worker_rows(workers: list[dict[str, Any]]) -> str:
    rows = [
        (w["id"], "yes" if w["alive"] else "no", _age(w["age"]), _parts(w["partitions"]),
         w["pending"], w["in_flight"], (w["service"] or {}).get("host", ""),
         "member" if w["member"] else "registry")
        for w in workers
    ]  # fmt: skip
    headers = ["ID", "ALIVE", "AGE", "PARTITIONS", "PENDING", "IN_FLIGHT", "HOST", "SOURCE"]
    return _table(rows, headers)


async def _workers(args: argparse.Namespace, monitor: Monitor) -> Output:
    workers = await monitor.workers(include_stale=args.all)
    return workers, _worker_rows(workers)


async def _worker(args: argparse.Namespace, monitor: Monitor) -> Output:
    w = await monitor.worker(args.worker_id)
    if w is None:
        raise NotFound(f"no worker {args.worker_id!r} (not a group member nor registered)")
    rows: list[tuple[Any, ...]] = [
        ("id", w["id"]),
        ("name", w["name"]),
        ("topic", w["topic"]),
        ("group", w["group"]),
        ("alive", "yes" if w["alive"] else "no"),
        ("last_heartbeat", f"{utc_time(w['last_heartbeat'])} ({_age(w['age'])} ago)"),
        ("partitions", _parts(w["partitions"])),
        ("pending", w["pending"]),
        ("in_flight", w["in_flight"]),
        ("member", "yes" if w["member"] else "no"),
    ]
    if w["service"] is not None:
        s = w["service"]
        rows += [
            ("host", s["host"]),
            ("status", s["status"]),
            ("metadata", _compact(s["metadata"])),
        ]
    text = _table(rows, ["FIELD", "VALUE"])
    if w["owned"]:
        owned = [(o["partition"], o["pending"], _lag(o), o["in_flight"]) for o in w["owned"]]
        text += "\n" + _table(owned, ["PARTITION", "PENDING", "LAG", "IN_FLIGHT"])
    return w, text


async def _topics(args: argparse.Namespace, monitor: Monitor) -> Output:
    topics = await monitor.topics()
    rows = [
        (t["topic"], t["partitions"], ",".join(t["groups"]) or "-", t["members"], t["length"],
         t["scheduled"], t["pending"], t["lag"], t["in_flight"], t["dead_letters"],
         t["produced"], t["handled"], t["failed"])
        for t in topics
    ]  # fmt: skip
    headers = ["TOPIC", "PARTITIONS", "GROUPS", "MEMBERS", "LENGTH", "SCHEDULED", "PENDING",
               "LAG", "IN_FLIGHT", "DLQ", "PRODUCED", "HANDLED", "FAILED"]  # fmt: skip
    return topics, _table(rows, headers)


async def _topic(args: argparse.Namespace, monitor: Monitor) -> Output:
    view = await monitor.topic(args.name)
    if view is None:
        raise NotFound(f"no topic {args.name!r}")
    stats = {s["partition"]: s for s in view["partition_stats"]}
    text = (
        f"topic {view['topic']}: {view['partitions']} partition(s), "
        f"{view['priorities']} priority level(s), length {view['length']}, "
        f"dead letters {view['dead_letters']}, scheduled {view.get('scheduled', 0)}, "
        f"produced {view['produced']}\n"
    )
    if view.get("maxlen") is not None:
        text += (
            f"retention: maxlen {view['maxlen']}, trim {view['trim']}, "
            f"held past maxlen by lagging groups {view['over_maxlen']}\n"
        )
    if args.watch is not None and args.format != "json":
        text += _throughput(await monitor.topic_series(args.name, view))
    if not view["groups"]:
        rows: list[tuple[Any, ...]] = [
            (p, s["length"], s["dead_letters"], s["produced"]) for p, s in stats.items()
        ]
        return view, text + "\n" + _table(rows, ["PARTITION", "LENGTH", "DLQ", "PRODUCED"])
    for g in view["groups"]:
        names = ", ".join(m["name"] for m in g["members"]) or "none"
        text += f"\ngroup {g['group']} (members: {names})\n"
        rows = [
            (r["partition"], r["owner"] or "-", _lag(r), r["pending"], r["in_flight"],
             stats[r["partition"]]["dead_letters"] if r["partition"] in stats else "",
             stats[r["partition"]]["length"] if r["partition"] in stats else "",
             r["handled"], r["failed"], r["retried"], r["dead_lettered"],
             "?" if r["trimmed_unread"] is None else r["trimmed_unread"])
            for r in g["partitions"]
        ]  # fmt: skip
        headers = ["PARTITION", "OWNER", "LAG", "PENDING", "IN_FLIGHT", "DLQ", "LENGTH",
                   "HANDLED", "FAILED", "RETRIED", "DEAD_LETTERED", "TRIMMED_UNREAD"]  # fmt: skip
        text += _table(rows, headers)
    return view, text


_SPARK = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"
_SPARK_ASCII = "_.-:=+*#"
SPARK_BUCKETS = 60
"""Buckets in a ``--watch`` sparkline (5 minutes of 5 s buckets)."""


def sparkline(values: list[float], chars: str = _SPARK) -> str:
    """``values`` as one line of block characters, the tallest for the largest.

    Zero is the lowest block; any value above zero is at least the second.
    """
    top = max(values, default=0.0)
    last = len(chars) - 1
    return "".join(
        chars[0] if v <= 0 or top <= 0 else chars[max(1, min(last, round(v / top * last)))]
        for v in values
    )


def _spark_chars() -> str:
    try:
        _SPARK.encode(sys.stdout.encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return _SPARK_ASCII
    return _SPARK


def _throughput(series: dict[str, Any] | None) -> str:
    """The lines ``--watch`` adds to ``topic``: produced and handled per second, as sparklines."""
    if series is None:
        return ""
    chars = _spark_chars()
    handled = [sum(g["handled"][i] for g in series["groups"]) for i in range(len(series["times"]))]
    minutes = SPARK_BUCKETS * series["step"] / 60
    text = f"\nthroughput, last {minutes:g} min ({series['step']} s buckets):\n"
    for label, values in (("produced/s", series["produced"]), ("handled/s ", handled)):
        shown = values[-SPARK_BUCKETS:]
        text += f"  {label} {sparkline(shown, chars)} now {shown[-1]:.1f}, peak {max(shown):.1f}\n"
    return text


# ---- serve-metrics ---------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    async with _monitor(args) as monitor:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await _respond(reader, writer, monitor, args.topics)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("metrics request dropped: %s", exc)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            server = await asyncio.start_server(handle, args.host, args.port)
        except OSError as exc:
            sys.stderr.write(f"redisaq: error: cannot listen on {args.host}:{args.port}: {exc}\n")
            return EXIT_FAILED
        port = server.sockets[0].getsockname()[1]
        sys.stderr.write(f"serving metrics on http://{args.host}:{port}/metrics\n")
        sys.stderr.flush()
        stop, remove = _stop_event()
        try:
            async with server:
                await stop.wait()
        finally:
            remove()
    return EXIT_OK


async def _respond(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    monitor: Monitor,
    topics: list[str] | None,
) -> None:
    request = await asyncio.wait_for(reader.readline(), 10)
    while True:  # skip the headers
        line = await asyncio.wait_for(reader.readline(), 10)
        if line in (b"\r\n", b"\n", b""):
            break
    parts = request.decode("latin-1").split()
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
    path = path.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET\n"
    elif path not in ("/", "/metrics"):
        status, ctype, body = "404 Not Found", "text/plain", b"try /metrics\n"
    else:
        try:
            body = (await monitor.prometheus(topics)).encode()
            status, ctype = "200 OK", CONTENT_TYPE
        except CALL_FAILURES as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            status, ctype, body = "503 Service Unavailable", "text/plain", b"Redis unavailable\n"
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + (b"" if method == "HEAD" else body))
    await writer.drain()
