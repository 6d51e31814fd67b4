"""The gateway's WebSockets: jobs (``/ws/jobs``), worker heartbeats (``/ws/{id}``), dashboards.

Frames are JSON text; their shapes are documented in :mod:`redisaq_core.web`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .._failures import CALL_FAILURES
from .._tasks import wait_event
from ..errors import ConfigurationError, MalformedServiceError
from ..results import JobRecord, JobStatus
from .feed import RECORD_STATUSES
from .gateway import Gateway, InvalidField, redis_unavailable, shown
from .models import (
    CLOSE_DEREGISTERED,
    CLOSE_TOO_SLOW,
    CLOSE_UNKNOWN_WORKER,
    SubmitJob,
)

__all__ = ["DashboardHub", "JobsSession", "dumps", "worker_socket"]

log = logging.getLogger(__name__)

FINAL = frozenset({JobStatus.COMPLETED.value, JobStatus.DEAD.value, JobStatus.CANCELLED.value})
PROGRESS = "progress"
"""The announcement of a running job's progress: a ``job_status`` frame with ``progress``."""
FRAME_TYPES = ("submit_job", "subscribe", "unsubscribe", "ping")


def dumps(value: Any) -> str:
    """JSON text of a frame (values JSON can't hold are written as strings).

    Records other clients wrote may hold what orjson refuses (an integer past
    64 bits, nesting past its depth): such values are written as text, so that
    one record never stops a frame.
    """
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        return orjson.dumps(_encodable(value), default=str).decode()


_DEEPEST = 200
"""Levels of nesting a frame keeps in :func:`_encodable` (orjson's limit is 254)."""


def _encodable(value: Any, depth: int = 0) -> Any:
    """``value`` with what orjson refuses replaced by text."""
    if isinstance(value, (dict, list, tuple)) and depth >= _DEEPEST:
        return "(nested too deep to show)"
    if isinstance(value, dict):
        return {str(k): _encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v, depth + 1) for v in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        try:
            return str(value)
        except ValueError:  # past Python's digits limit for int to text
            return "(an integer too long to show)"
    return value


def _errors_text(exc: ValidationError) -> tuple[str, list[str]]:
    """A one-line description of a validation error, naming the fields; and the field names."""
    fields: list[str] = []
    parts: list[str] = []
    for error in exc.errors():
        name = ".".join(str(x) for x in error["loc"]) or "frame"
        fields.append(name)
        parts.append(f"{name}: {error['msg']}")
    return "; ".join(parts), fields


class _Outgoing:
    """A frame waiting in a socket's queue: ready bytes, or a job status still being read."""

    __slots__ = ("data", "future", "job_id", "queued", "size", "status")

    def __init__(
        self,
        *,
        data: bytes | None = None,
        job_id: str | None = None,
        status: str | None = None,
        future: asyncio.Future[JobRecord | None] | None = None,
    ) -> None:
        self.data = data
        self.job_id = job_id
        self.status = status
        self.future = future
        self.queued = False
        self.size = _ITEM_OVERHEAD + (len(data) if data is not None else len(job_id or ""))


_ITEM_OVERHEAD = 128
"""Bytes counted per queued frame besides its text (the queue entry and its objects)."""
_shared: weakref.WeakKeyDictionary[asyncio.Future[Any], dict[tuple[str, str, int], bytes]] = (
    weakref.WeakKeyDictionary()
)
"""Encoded status frames per record read: one copy for every socket following the job."""


def encode_status(
    job_id: str,
    status: str,
    record: JobRecord | None,
    max_bytes: int,
    future: asyncio.Future[Any] | None = None,
) -> bytes:
    """The ``job_status`` frame as JSON bytes, shared by the sockets given the same ``future``.

    A frame longer than ``max_bytes`` is sent without its ``result``, with
    ``result_omitted`` saying so (read it with ``GET /jobs/{job_id}``).
    """
    key = (job_id, status, max_bytes)
    cache = _shared.get(future) if future is not None else None
    if cache is not None and key in cache:
        return cache[key]
    frame = status_frame(job_id, status, record)
    data = orjson.dumps(frame, default=str)
    if len(data) > max_bytes and "result" in frame:
        del frame["result"]
        frame["result_omitted"] = (
            f"the result makes a frame larger than {max_bytes} bytes; GET /jobs/{job_id}"
        )
        data = orjson.dumps(frame, default=str)
    if future is not None:
        _shared.setdefault(future, {})[key] = data
    return data


class JobsSession:
    """One client on ``/ws/jobs``: submits, follows jobs, receives their status changes.

    Every outgoing frame goes through one queue, written by one task, so a
    job's ``job_accepted`` comes before its ``job_status`` frames and those
    come in the order of the changes. The queue is bounded in bytes: a client
    that lets more than ``max_queue_bytes`` pile up is disconnected (close
    code 4408), and a ``job_status`` frame whose result alone would be larger
    is sent without it (``result_omitted``). A client that does not even read
    its close frame within ``close_timeout`` seconds is dropped.
    """

    max_followed = 10_000
    max_in_flight = 64
    close_timeout = 5.0

    def __init__(
        self, ws: WebSocket, gateway: Gateway, *, max_frame: int, max_queue_bytes: int
    ) -> None:
        self.ws = ws
        self.gateway = gateway
        assert gateway.feed is not None
        self.feed = gateway.feed
        self.max_frame = max_frame
        self.max_queue_bytes = max_queue_bytes
        self.queued_bytes = 0
        """Bytes waiting in this socket's queue (frames, and the frame being sent)."""
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue()
        self._following: dict[str, str | None] = {}
        self._sent: dict[str, str] = {}
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._main: asyncio.Task[Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._dropping = False
        self._finished = False

    # ---- the Follower side (called by the feed) ------------------------------------------

    def push(
        self,
        job_id: str,
        status: str | None,
        record: asyncio.Future[JobRecord | None] | None,
    ) -> None:
        """Queue a status change of a followed job."""
        if job_id not in self._following or self._closing:
            return
        if status is not None:
            self._following[job_id] = status
        self._queue_status(job_id, status, record)

    def _queue_status(
        self, job_id: str, status: str | None, future: asyncio.Future[JobRecord | None] | None
    ) -> None:
        item = _Outgoing(job_id=job_id, status=status, future=future)
        if future is None or future.done():
            self._encode(item, _outcome(future))
        self._put(item)
        if item.data is None and item.status != "" and future is not None:
            future.add_done_callback(lambda _: self._resolve(item))

    def _encode(self, item: _Outgoing, record: JobRecord | None) -> None:
        """Give a status item its bytes (and count them)."""
        assert item.job_id is not None
        if item.status is None:
            if record is None:
                item.status = ""  # no record: nothing to send
                return
            item.status = record.status.value
        item.data = encode_status(
            item.job_id, item.status, record, self.max_queue_bytes, item.future
        )
        size = _ITEM_OVERHEAD + len(item.data)
        if item.queued:
            self.queued_bytes += size - item.size
        item.size = size

    def _resolve(self, item: _Outgoing) -> None:
        """The record of a queued status item was read: encode it now, so it is counted."""
        if item.data is not None or item.status == "" or self._closing:
            return
        self._encode(item, _outcome(item.future))
        self._check()

    def _put(self, item: _Outgoing) -> None:
        if self._closing:
            return
        item.queued = True
        self.queued_bytes += item.size
        self._queue.put_nowait(item)
        self._check()

    def _check(self) -> None:
        if self.queued_bytes > self.max_queue_bytes and not self._closing:
            log.warning("jobs socket: client too slow (%d bytes waiting, max_queue_bytes %d); "
                        "closing", self.queued_bytes, self.max_queue_bytes)  # fmt: skip
            self._closing = True
            while not self._queue.empty():
                self._queue.get_nowait().queued = False
            self.queued_bytes = 0
            self._spawn(self._drop(CLOSE_TOO_SLOW, "too many bytes waiting to be read"))

    def _frame(self, frame: dict[str, Any]) -> None:
        self._put(_Outgoing(data=orjson.dumps(frame, default=str)))

    def _error(self, detail: str, request_id: Any = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": "error", "detail": detail, **extra}
        if request_id is not None:
            frame["request_id"] = request_id
        self._frame(frame)

    # ---- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the socket until it closes (or the client is dropped for not reading)."""
        self._main = asyncio.current_task()
        await self.ws.accept()
        self._writer = asyncio.create_task(self._write(), name="redisaq-ws-jobs-writer")
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    data = message.get("bytes") or b""
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        self._error("frames must be JSON text (UTF-8)")
                        continue
                await self._handle(text)
        except asyncio.CancelledError:
            if not self._dropping:
                raise
        finally:
            self._finished = True
            self._closing = True
            for job_id in list(self._following):
                self.feed.unfollow(job_id, self)
            self._following.clear()
            self._writer.cancel()
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
            await asyncio.gather(self._writer, *self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drop(self, code: int, reason: str) -> None:
        """Close the socket with ``code``; if the client does not take the close, stop serving."""
        if self._writer is not None:
            self._writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code, reason), self.close_timeout)
            return
        except Exception as exc:
            log.info("jobs socket: the close frame was not taken (%s); dropping the client",
                     type(exc).__name__)  # fmt: skip
        if self._main is not None and not self._finished:
            self._dropping = True
            self._main.cancel()

    async def _handle(self, text: str) -> None:
        if len(text) > self.max_frame:
            self._error(f"frame larger than {self.max_frame} bytes")
            return
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._error(f"invalid JSON: {exc}")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self._error('a frame must be a JSON object with a "type" field')
            return
        kind = frame["type"]
        request_id = frame.get("request_id")
        if request_id is not None and not (
            isinstance(request_id, (int, str)) and not isinstance(request_id, bool)
            and len(str(request_id)) <= 200
        ):  # fmt: skip
            self._error("request_id must be a string (at most 200 characters) or an integer")
            return
        if kind == "ping":
            self._frame({"type": "pong", "request_id": request_id})
        elif kind == "submit_job":
            await self._slots.acquire()
            self._spawn(self._submit(frame, request_id))
        elif kind in ("subscribe", "unsubscribe"):
            job_id = frame.get("job_id")
            if not isinstance(job_id, str) or not job_id:
                self._error("job_id: a non-empty string is required", request_id, field="job_id")
            elif kind == "unsubscribe":
                self._unfollow(job_id)
            else:
                await self._slots.acquire()
                self._spawn(self._follow(job_id, request_id))
        else:
            self._error(
                f"unknown frame type {kind!r}; expected one of {', '.join(FRAME_TYPES)}",
                request_id,
            )

    async def _submit(self, frame: dict[str, Any], request_id: Any) -> None:
        try:
            try:
                job = SubmitJob.model_validate(
                    {k: v for k, v in frame.items() if k not in ("type", "request_id")}
                )
            except ValidationError as exc:
                detail, fields = _errors_text(exc)
                self._error(detail, request_id, fields=fields)
                return
            try:
                accepted = await self.gateway.submit(job)
            except InvalidField as exc:
                name = ".".join(exc.location)
                self._error(f"{name}: {exc.message}", request_id, fields=[name])
                return
            except CALL_FAILURES as exc:
                log.warning("jobs socket: submit failed: %s", exc)
                self._error("Redis unavailable; the job was not queued", request_id)
                return
            self._frame({"type": "job_accepted", "request_id": request_id, **accepted})
            await self._follow(accepted["job_id"], request_id, release=False)
        finally:
            self._slots.release()

    async def _follow(self, job_id: str, request_id: Any, *, release: bool = True) -> None:
        try:
            if job_id in self._following:
                return
            if len(self._following) >= self.max_followed:
                self._error(f"a socket follows at most {self.max_followed} jobs", request_id)
                return
            self._following[job_id] = None
            try:
                record = await self.feed.follow(job_id, self)
            except ConfigurationError as exc:
                self._following.pop(job_id, None)
                self._error(f"job_id: {exc}", request_id, field="job_id")
                return
            except CALL_FAILURES as exc:
                self._following.pop(job_id, None)
                log.warning("jobs socket: cannot follow %s: %s", job_id, exc)
                self._error("Redis unavailable", request_id, job_id=job_id)
                return
            if record is None:
                self._following.pop(job_id, None)
                self._error(
                    f"job {job_id} has no record (unknown, or expired)", request_id, job_id=job_id
                )
                return
            if job_id in self._following and self._following[job_id] is None:
                done: asyncio.Future[JobRecord | None] = asyncio.get_running_loop().create_future()
                done.set_result(record)
                self._queue_status(job_id, None, done)
        finally:
            if release:
                self._slots.release()

    def _unfollow(self, job_id: str) -> None:
        self._following.pop(job_id, None)
        self._sent.pop(job_id, None)
        self.feed.unfollow(job_id, self)

    async def _write(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._send(item)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return  # the socket is gone; the reader sees it too
            except Exception:
                log.exception("jobs socket: cannot send a frame of job %s", item.job_id)
            finally:
                if item.queued:
                    item.queued = False
                    self.queued_bytes -= item.size

    async def _send(self, item: _Outgoing) -> None:
        if item.job_id is None:
            assert item.data is not None
            await self.ws.send_text(item.data.decode())
            return
        if item.data is None and item.status != "":
            assert item.future is not None
            with contextlib.suppress(Exception):
                await item.future
            if item.data is None:
                self._encode(item, _outcome(item.future))
                self._check()
        job_id, status = item.job_id, item.status
        if item.data is None or status is None or self._closing:
            return
        if job_id not in self._following or (
            status != PROGRESS and self._sent.get(job_id) == status
        ):
            return
        await self.ws.send_text(item.data.decode())
        self._sent[job_id] = status
        if status in FINAL:
            self._unfollow(job_id)


def _outcome(future: asyncio.Future[JobRecord | None] | None) -> JobRecord | None:
    """The record a finished read gave (``None`` for no future, or a failed read)."""
    if future is None or not future.done() or future.cancelled() or future.exception():
        return None
    return future.result()


def status_frame(job_id: str, status: str, record: JobRecord | None) -> dict[str, Any]:
    """The ``job_status`` frame of a change to ``status`` (with what ``record`` adds).

    A progress announcement gives an ``active`` frame with the record's ``progress``.
    """
    frame: dict[str, Any] = {"type": "job_status", "job_id": job_id, "status": status}
    record = None if record is None else shown(record)
    if status == PROGRESS:
        frame["status"] = JobStatus.ACTIVE.value
        if record is not None:
            frame["progress"] = record.progress
        return frame
    if record is None or status not in RECORD_STATUSES:
        return frame
    frame["attempts"] = record.attempts
    if status == JobStatus.COMPLETED.value and record.status is JobStatus.COMPLETED:
        frame["result"] = record.result
        if record.result_error is not None:
            frame["result_error"] = record.result_error
    elif status != JobStatus.COMPLETED.value:
        frame["error"] = record.error
        frame["error_type"] = record.error_type
    return frame


async def worker_socket(ws: WebSocket, gateway: Gateway, worker_id: str) -> None:
    """Serve a worker's heartbeat socket until it closes.

    Every frame is answered; a frame is written to Redis as a heartbeat only
    when the worker's last one is ``gateway.heartbeat_min_interval`` seconds
    old (see :meth:`Gateway.heartbeat_due`), so a chatty or hostile client
    costs Redis nothing more than a well-behaved one.
    """
    await ws.accept()
    try:
        connection = await gateway.worker_connected(worker_id)
    except (MalformedServiceError, ConfigurationError) as exc:
        log.warning("worker socket %s refused: %s", worker_id, exc)
        await ws.close(CLOSE_UNKNOWN_WORKER, "unknown or unreadable worker")
        return
    except CALL_FAILURES as exc:
        log.warning("worker socket %s: %s", worker_id, exc)
        await ws.close(1011, "Redis unavailable")
        return
    if connection is None:
        await ws.close(CLOSE_UNKNOWN_WORKER, "unknown worker: register it with POST /register")
        return
    log.info("worker %s connected", worker_id)
    try:
        await ws.send_text(
            dumps({"type": "connected", "worker_id": worker_id, "status": "connected",
                   "heartbeat_timeout": gateway.heartbeat_timeout})
        )  # fmt: skip
        first = True
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if gateway.heartbeat_due(worker_id) and not await gateway.worker_heartbeat(worker_id):
                await ws.close(CLOSE_DEREGISTERED, "the worker's registration was removed")
                break
            if first:
                first = False
                gateway.changed()
            await ws.send_text(
                dumps({"type": "heartbeat_ack", "worker_id": worker_id, "status": "alive"})
            )
    except CALL_FAILURES as exc:
        log.warning("worker socket %s: %s", worker_id, exc)
        if ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(1011, "Redis unavailable")
    finally:
        log.info("worker %s disconnected", worker_id)
        try:
            await asyncio.shield(gateway.worker_disconnected(worker_id, connection))
        except CALL_FAILURES as exc:
            log.warning("worker %s: cannot record the disconnection: %s", worker_id, exc)


class DashboardHub:
    """Sends the dashboard's snapshot to every open ``/ws/dashboard`` socket of this process.

    One snapshot is read per ``interval`` (or soon after a change this
    process saw: a worker's socket, a replay, a health monitor change) while
    at least one dashboard is open, and the same frame goes to all of them.
    A dashboard that does not take a frame within ``send_timeout`` seconds is
    closed with 4408 (or dropped, if it does not take the close either).
    """

    send_timeout = 5.0

    def __init__(self, gateway: Gateway, *, interval: float = 1.0) -> None:
        self.gateway = gateway
        self.interval = interval
        self._sockets: dict[WebSocket, asyncio.Task[Any]] = {}
        self._dropped: set[WebSocket] = set()
        self._drops: set[asyncio.Task[None]] = set()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        gateway.listen(self.poke)

    def poke(self) -> None:
        """Send a fresh snapshot soon."""
        self._poke.set()

    async def serve(self, ws: WebSocket) -> None:
        """Serve a dashboard socket until it closes (or the client is dropped for not reading)."""
        await ws.accept()
        task = asyncio.current_task()
        assert task is not None
        self._sockets[ws] = task
        self.poke()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="redisaq-dashboard")
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                self.poke()
        except asyncio.CancelledError:
            if ws not in self._dropped:
                raise
        finally:
            self._sockets.pop(ws, None)
            self._dropped.discard(ws)

    async def _run(self) -> None:
        while self._sockets:
            self._poke.clear()
            try:
                frame = dumps(await self.gateway.snapshot())
            except Exception as exc:  # Redis failed, or records of other clients spoilt a read
                unknown = not isinstance(exc, CALL_FAILURES)
                log.warning("dashboard: cannot read the snapshot: %r", exc, exc_info=unknown)
                down = redis_unavailable(exc)
                detail = "Redis unavailable" if down else "cannot read the snapshot"
                frame = dumps({"type": "error", "detail": detail})
            await asyncio.gather(*(self._send(ws, frame) for ws in list(self._sockets)))
            await asyncio.sleep(0.2)
            await wait_event(self._poke, self.interval)

    async def _send(self, ws: WebSocket, frame: str) -> None:
        try:
            await asyncio.wait_for(ws.send_text(frame), self.send_timeout)
        except Exception as exc:
            log.info("dashboard socket dropped: %s", type(exc).__name__)
            task = self._sockets.pop(ws, None)
            if task is not None:
                drop = asyncio.ensure_future(self._drop(ws, task))
                self._drops.add(drop)
                drop.add_done_callback(self._drops.discard)

    async def _drop(self, ws: WebSocket, task: asyncio.Task[Any]) -> None:
        """Close a dashboard that did not read its frames (4408), or stop serving it."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(CLOSE_TOO_SLOW, "frames not read"), self.send_timeout)
            return
        if not task.done():
            self._dropped.add(ws)
            task.cancel()

    async def aclose(self) -> None:
        """Stop sending snapshots."""
        self._sockets.clear()
        for drop in list(self._drops):
            drop.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
