"""``create_app``: the gateway's FastAPI application (routes, sockets, middleware, lifespan)."""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Body, FastAPI, Path, Query, Request, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from .._tracing import detach, remote_parent
from ..connection import AnyRedis
from ..errors import (
    ConfigurationError,
    ConnectionFailedError,
    JobFinishedError,
    JobNotFoundError,
    NotConnectedError,
    RedisaqError,
)
from ..keys import RegistryKeys
from ..metrics.prometheus import CONTENT_TYPE
from ..registry import WorkerStatus
from ..results import JobStatus
from .gateway import Gateway, InvalidField, job_dict, redis_unavailable
from .models import (
    NAME_PATTERN,
    DeadLetterModel,
    ErrorModel,
    HealthModel,
    JobAccepted,
    JobCancelModel,
    JobModel,
    ReplayRequest,
    ReplayResult,
    ScheduleModel,
    SchedulePut,
    SubmitJob,
    TopicSeriesModel,
    TopicSummaryModel,
    TopicViewModel,
    WorkerModel,
    WorkerRegistered,
    WorkerRegistration,
)
from .security import LOOPBACK_HOSTS, BodyLimit, HostCheck, OriginCheck, SocketLimit, TokenAuth
from .sockets import DashboardHub, JobsSession, worker_socket

__all__ = [
    "DEFAULT_DEAD_LETTER_PAGE_BYTES",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_SOCKETS",
    "DEFAULT_SOCKET_QUEUE_BYTES",
    "create_app",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1_048_576
"""Largest request body (and WebSocket frame) the gateway takes by default: 1 MiB."""
DEFAULT_MAX_SOCKETS = 1000
"""WebSockets one gateway process serves at once by default."""
DEFAULT_SOCKET_QUEUE_BYTES = 1_048_576
"""Bytes of frames a ``/ws/jobs`` client may leave unread by default before it is closed."""
DEFAULT_DEAD_LETTER_PAGE_BYTES = 1_048_576
"""Most bytes of dead letters (as JSON) in one page of ``GET /dlq/{topic}`` by default."""

Responses = dict[int | str, dict[str, Any]]
_E401: Responses = {401: {"model": ErrorModel, "description": "Missing or wrong token"}}
_E403: Responses = {403: {"model": ErrorModel, "description": "Cross-origin request refused"}}
_E404: Responses = {404: {"model": ErrorModel, "description": "Not found"}}
_E409: Responses = {409: {"model": ErrorModel, "description": "The job already finished"}}
_E413: Responses = {413: {"model": ErrorModel, "description": "Request body too large"}}
_E503: Responses = {503: {"model": ErrorModel, "description": "Redis unavailable"}}
_PROMETHEUS: Responses = {
    200: {
        "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        "description": "Prometheus text exposition format 0.0.4",
    }
}
_COMMON: Responses = {**_E401, **_E503}
_WITH_BODY: Responses = {**_COMMON, **_E403, **_E413}

_BODY_PARSE_ERROR = "There was an error parsing the body"

ScheduleName = Annotated[
    str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN, description="schedule name")
]

_TAGS = [
    {"name": "jobs", "description": "Submit jobs and read their status records."},
    {"name": "workers", "description": "The worker manager: registration and liveness."},
    {"name": "topics", "description": "Topics, partitions, dead letters and metrics."},
    {"name": "schedules", "description": "Periodic jobs stored in Redis (`redisaq schedule`)."},
    {"name": "gateway", "description": "The gateway itself and its dashboard."},
]

_DESCRIPTION = """\
Jobs over HTTP and WebSocket, a worker manager and a live dashboard, on redisaq-core.

WebSockets (not in this schema; frames are JSON text):

* `/ws/jobs`: send `{"type": "submit_job", "topic", "payload", "priority"?, "partition_key"?,
  "delay"?, "request_id"?}`, get `{"type": "job_accepted", "job_id", "request_id"}` and then
  `{"type": "job_status", "job_id", "status", "result"?, "error"?, "progress"?}` on every
  change and progress report.
  `{"type": "subscribe", "job_id"}` follows any job, `unsubscribe` stops. A bad frame gets
  `{"type": "error", "detail"}`.
* `/ws/{worker_id}`: a registered worker's heartbeat socket; every frame is a heartbeat.
  Close codes: 4404 unknown worker, 4410 registration removed.
* `/ws/dashboard`: snapshots for the dashboard page.

With a token, send `Authorization: Bearer <token>`; a browser's socket offers the
subprotocols `redisaq` and `redisaq.bearer.<base64url of the token>` instead. Otherwise
401, or close code 4401 on a socket. A request whose `Host` is not an allowed host gets 421
(close code 4421); a browser's request or socket from a page of another origin 403 (4403).
Beyond `max_sockets` open sockets a socket is closed with 1013; a `/ws/jobs` client that
leaves more than `socket_queue_bytes` unread is closed with 4408.
"""


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


_PAGE_PARTS = {
    "UPLOT_STYLE": "uplot/uPlot.min.css",
    "STYLE": "dashboard.css",
    "UPLOT": "uplot/uPlot.iife.min.js",
    "SCRIPT": "dashboard.js",
}
"""The page's placeholders (``/*NAME*/``) and the static files put in their place."""


def _page() -> tuple[str, str]:
    """The dashboard as one HTML document (CSS and scripts inline), and its CSP header.

    The charting library (uPlot, MIT) is vendored in ``static/uplot`` beside its license.
    """
    static = resources.files("redisaq_core.web").joinpath("static")
    html = static.joinpath("index.html").read_text(encoding="utf-8")
    parts = {
        name: static.joinpath(path).read_text(encoding="utf-8")
        for name, path in _PAGE_PARTS.items()
    }
    # One pass, so that nothing inserted is searched for placeholders again.
    page = re.sub(r"/\*([A-Z_]+)\*/", lambda m: parts.get(m[1], m[0]), html)
    scripts = " ".join(_csp_hash(parts[name]) for name in ("UPLOT", "SCRIPT"))
    styles = " ".join(_csp_hash(parts[name]) for name in ("UPLOT_STYLE", "STYLE"))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page, policy


def _hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    if isinstance(hosts, str):
        raise ConfigurationError("allowed_hosts must be a list of host names, not one string")
    out = tuple(hosts)
    if not out or not all(isinstance(h, str) and h.strip() for h in out):
        raise ConfigurationError(f"allowed_hosts must be non-empty host names, got {out!r}")
    return out


def _check_token(token: str | None) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token or token != token.strip():
        raise ConfigurationError("token must be a non-empty string without surrounding spaces")
    if not all(" " <= c <= "~" for c in token):
        raise ConfigurationError(
            "token must be printable ASCII, the only characters an Authorization header "
            "carries (redisaq web: REDISAQ_WEB_TOKEN, --token-file or --token)"
        )
    return token


def _validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors as a 422 names them: where, what, which kind.

    Without the input given (it can be what JSON can't hold, such as ``1e400``,
    or large), and with the context's values as text.
    """
    detail = []
    for error in errors:
        item: dict[str, Any] = {
            "loc": [x if isinstance(x, int) else str(x) for x in error.get("loc", ())],
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "value_error")),
        }
        context = error.get("ctx")
        if isinstance(context, dict) and context:
            item["ctx"] = {str(k): str(v) for k, v in context.items()}
        detail.append(item)
    return detail


def create_app(
    *,
    redis_url: str | None = None,
    redis: AnyRedis | None = None,
    key_prefix: str = "",
    token: str | None = None,
    heartbeat_timeout: float = 15.0,
    max_body_size: int = DEFAULT_MAX_BODY,
    allowed_origins: Iterable[str] = (),
    allowed_hosts: Iterable[str] | None = None,
    max_sockets: int = DEFAULT_MAX_SOCKETS,
    socket_queue_bytes: int = DEFAULT_SOCKET_QUEUE_BYTES,
    dead_letter_page_bytes: int = DEFAULT_DEAD_LETTER_PAGE_BYTES,
    heartbeat_min_interval: float | None = None,
) -> FastAPI:
    """The web gateway as a FastAPI app (see :mod:`redisaq_core.web`).

    ``redis``: a client to share (never closed by the app); otherwise the
    lifespan opens one client for ``redis_url`` and closes it on shutdown.
    ``key_prefix``: the service registry's prefix. ``token``: require
    ``Authorization: Bearer <token>`` everywhere. ``heartbeat_timeout``:
    seconds of silence before a worker is ``not_responding``.
    ``max_body_size``: bytes; larger request bodies get 413, larger socket
    frames an error frame (serve with uvicorn's ``ws_max_size`` set to the
    same value, so that the server refuses a larger frame before reading it).
    ``allowed_origins``: web origins (such as ``https://ops.example.com``)
    besides the gateway's own whose pages may open its sockets and send it
    requests; browsers' requests from any other origin are refused (403, or
    close code 4403). ``allowed_hosts``: the names the gateway answers to in
    the ``Host`` header (``.example.com`` for a domain and its subdomains,
    ``*`` for any); default: the loopback names ``localhost``, ``127.0.0.1``
    and ``::1``. Others get 421 (close code 4421), which is what defeats DNS
    rebinding.

    Memory bounds: ``max_sockets`` sockets at once (more are closed with
    1013); ``socket_queue_bytes`` of unread frames per ``/ws/jobs`` client
    (then it is closed with 4408; a larger ``completed`` frame is sent
    without its result); ``dead_letter_page_bytes`` of dead letters per page
    of ``GET /dlq/{topic}``; a worker's heartbeats are written to Redis at
    most once per ``heartbeat_min_interval`` seconds (default: a quarter of
    ``heartbeat_timeout``, at most 1 s).
    """
    if redis is not None and redis_url is not None:
        raise ConfigurationError("pass either redis or redis_url, not both")
    RegistryKeys(key_prefix)
    token = _check_token(token)
    if (
        isinstance(heartbeat_timeout, bool)
        or not isinstance(heartbeat_timeout, (int, float))
        or not math.isfinite(heartbeat_timeout)
        or heartbeat_timeout <= 0
    ):
        raise ConfigurationError(
            f"heartbeat_timeout must be a number of seconds > 0, got {heartbeat_timeout!r}"
        )
    for name, value in (
        ("max_body_size", max_body_size),
        ("max_sockets", max_sockets),
        ("socket_queue_bytes", socket_queue_bytes),
        ("dead_letter_page_bytes", dead_letter_page_bytes),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    if heartbeat_min_interval is not None and (
        isinstance(heartbeat_min_interval, bool)
        or not isinstance(heartbeat_min_interval, (int, float))
        or not 0 <= heartbeat_min_interval < heartbeat_timeout
    ):
        raise ConfigurationError(
            "heartbeat_min_interval must be a number of seconds >= 0 and below "
            f"heartbeat_timeout, got {heartbeat_min_interval!r}"
        )
    hosts = _hosts(LOOPBACK_HOSTS if allowed_hosts is None else allowed_hosts)
    gateway = Gateway(
        redis_url=redis_url,
        redis=redis,
        key_prefix=key_prefix,
        heartbeat_timeout=float(heartbeat_timeout),
        heartbeat_min_interval=heartbeat_min_interval,
    )
    hub = DashboardHub(gateway)
    page, policy = _page()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await hub.aclose()
            await gateway.stop()

    app = FastAPI(
        title="redisaq gateway",
        version="1",
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    # Added innermost first: a request meets HostCheck first, BodyLimit last.
    app.add_middleware(BodyLimit, max_size=max_body_size)
    app.add_middleware(SocketLimit, max_sockets=max_sockets)
    app.add_middleware(TokenAuth, token=token, public=frozenset({"/"}))
    app.add_middleware(OriginCheck, allowed=frozenset(allowed_origins))
    app.add_middleware(HostCheck, allowed=hosts)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_ERROR:  # not UTF-8, say
            detail = [
                {"loc": ["body"], "msg": "the body is not valid JSON", "type": "json_invalid"}
            ]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(InvalidField)
    async def invalid_field(request: Request, exc: InvalidField) -> JSONResponse:
        location = exc.location if exc.location[0] in ("path", "query") else ("body", *exc.location)
        detail = [{"loc": list(location), "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(RedisError)
    @app.exception_handler(OSError)
    @app.exception_handler(RedisaqError)
    async def library_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ConfigurationError):
            detail = [{"loc": ["request"], "msg": str(exc), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        where = f"{request.method} {request.url.path}"
        if isinstance(exc, RedisaqError) and not isinstance(
            exc, (ConnectionFailedError, NotConnectedError)
        ):
            log.error("%s: %s: %s", where, type(exc).__name__, exc)
            return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)
        if not redis_unavailable(exc):
            log.error("%s: Redis refused the call: %s", where, exc)
            code = str(exc).rpartition(" caused error: ")[2].split(" ", 1)[0]
            named = f" ({code})" if code.isalpha() and code.isupper() else ""
            return JSONResponse({"detail": f"Redis refused the call{named}"}, status_code=500)
        log.warning("%s: Redis unavailable: %s: %s", where, type(exc).__name__, exc)
        return JSONResponse({"detail": "Redis unavailable"}, status_code=503)

    # ---- jobs ----------------------------------------------------------------------------

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobAccepted,
        tags=["jobs"],
        summary="Submit a job",
        responses=_WITH_BODY,
    )
    async def submit_job(job: SubmitJob, request: Request) -> dict[str, Any]:
        """Queue a job on a topic (made with one partition if new) through ``Producer.submit``."""
        token = remote_parent(request.headers)  # the job's trace continues the request's
        try:
            return await gateway.submit(job)
        finally:
            detach(token)

    @app.get(
        "/jobs",
        response_model=list[JobModel],  # type: ignore[valid-type]  # built from JobRecord
        tags=["jobs"],
        summary="List jobs",
        responses=_COMMON,
    )
    async def list_jobs(
        status: Annotated[JobStatus | None, Query(description="only this status")] = None,
        topic: Annotated[
            str | None, Query(min_length=1, max_length=200, pattern=NAME_PATTERN)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """Jobs, most recently changed first, of one topic or all."""
        records = await gateway.jobs(status=status, topic=topic, limit=limit)
        return [job_dict(r) for r in records]

    @app.get(
        "/jobs/{job_id:path}",
        response_model=JobModel,
        tags=["jobs"],
        summary="A job's status record",
        responses={**_COMMON, **_E404},
    )
    async def get_job(
        job_id: Annotated[str, Path(description="topic/partition/id")],
    ) -> Any:
        """The job's record: status, timestamps, worker, attempts, error, and its result."""
        record = await gateway.job(job_id)
        if record is None:
            return JSONResponse(
                {"detail": f"job {job_id} has no record (unknown, or expired)"}, status_code=404
            )
        return job_dict(record)

    @app.post(
        "/jobs/{job_id:path}/cancel",
        response_model=JobCancelModel,
        tags=["jobs"],
        summary="Cancel a job",
        responses={**_COMMON, **_E403, **_E404, **_E409},
    )
    async def cancel_job(
        job_id: Annotated[str, Path(description="topic/partition/id")],
    ) -> Any:
        """Cancel a job: one not started never starts, a running one's handler is stopped.

        404 for an unknown (or expired) job, 409 for one already finished
        (``completed``, ``dead`` or ``cancelled``); neither changes anything.
        """
        try:
            status = await gateway.cancel(job_id)
        except JobNotFoundError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)
        except JobFinishedError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return {"job_id": job_id, "status": status}

    # ---- workers -------------------------------------------------------------------------

    @app.post(
        "/register",
        status_code=201,
        response_model=WorkerRegistered,
        tags=["workers"],
        summary="Register a worker",
        responses=_WITH_BODY,
    )
    async def register(worker: WorkerRegistration) -> dict[str, Any]:
        """Register a worker; then open its heartbeat socket at ``/ws/{worker_id}``."""
        worker_id = await gateway.register(worker)
        return {"worker_id": worker_id, "status": WorkerStatus.REGISTERED.value}

    @app.get(
        "/workers",
        response_model=list[WorkerModel],
        tags=["workers"],
        summary="List workers",
        responses=_COMMON,
    )
    async def list_workers(
        status: Annotated[WorkerStatus | None, Query(description="only this status")] = None,
        service_type: Annotated[
            str | None, Query(min_length=1, max_length=200, pattern=r"^\S+$")
        ] = None,
    ) -> list[dict[str, Any]]:
        """Every registered worker (and consumer) with its status and last heartbeat."""
        return await gateway.workers(status=status, service_type=service_type)

    @app.get(
        "/workers/{worker_id:path}",
        response_model=WorkerModel,
        tags=["workers"],
        summary="One worker",
        responses={**_COMMON, **_E404},
    )
    async def get_worker(
        worker_id: Annotated[str, Path(min_length=1, max_length=300)],
    ) -> Any:
        """One worker (or consumer: ``topic/group/name``) with its status, or 404."""
        worker = await gateway.worker(worker_id)
        if worker is None:
            return JSONResponse({"detail": f"no worker {worker_id!r}"}, status_code=404)
        return worker

    # ---- topics, dead letters, metrics ---------------------------------------------------

    @app.get(
        "/topics",
        response_model=list[TopicSummaryModel],
        tags=["topics"],
        summary="List topics",
        responses=_COMMON,
    )
    async def list_topics() -> list[dict[str, Any]]:
        """Every topic with its figures summed over its consumer groups."""
        return await gateway.topics()

    @app.get(
        "/topics/{name}",
        response_model=TopicViewModel,
        tags=["topics"],
        summary="One topic's partitions",
        responses={**_COMMON, **_E404},
    )
    async def get_topic(name: Annotated[str, Path(max_length=200)]) -> Any:
        """Partitions with owner, lag, pending and dead letters, per consumer group."""
        view = await gateway.topic(name)
        if view is None:
            return JSONResponse({"detail": f"no topic {name!r}"}, status_code=404)
        return view

    @app.get(
        "/topics/{name}/series",
        response_model=TopicSeriesModel,
        tags=["topics"],
        summary="One topic's last 15 minutes",
        responses={**_COMMON, **_E404},
    )
    async def get_topic_series(name: Annotated[str, Path(max_length=200)]) -> Any:
        """Produced and handled per second, lag and handler time p50/p99, in 5 s buckets.

        Read from Redis, so every gateway answers the same. Each call also
        samples the groups' lag into the current bucket.
        """
        series = await gateway.topic_series(name)
        if series is None:
            return JSONResponse({"detail": f"no topic {name!r}"}, status_code=404)
        return series

    @app.get(
        "/dlq/{topic}",
        response_model=list[DeadLetterModel],
        tags=["topics"],
        summary="A topic's dead letters",
        responses={**_COMMON, **_E404},
    )
    async def list_dead_letters(
        topic: Annotated[str, Path(max_length=200)],
        response: Response,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[
            str | None, Query(max_length=60, description="X-Next-Cursor of the previous page")
        ] = None,
    ) -> Any:
        """Dead letters with their origin (partition, message id, group) and error, by pages.

        A page holds at most ``limit`` letters and ``dead_letter_page_bytes``
        of them (but at least one). When there are more, the response has an
        ``X-Next-Cursor`` header (and a ``Link`` header with ``rel="next"``):
        pass it as ``cursor`` for the next page.
        """
        if not await gateway.known_topic(topic):
            return JSONResponse({"detail": f"no topic {topic!r}"}, status_code=404)
        items, following = await gateway.dead_letters(
            topic, limit=limit, max_bytes=dead_letter_page_bytes, cursor=cursor
        )
        if following is not None:
            response.headers["X-Next-Cursor"] = following
            query = urlencode({"limit": limit, "cursor": following})
            response.headers["Link"] = f'</dlq/{quote(topic, safe="")}?{query}>; rel="next"'
        return items

    @app.post(
        "/dlq/{topic}/replay",
        response_model=ReplayResult,
        tags=["topics"],
        summary="Replay dead letters",
        responses={**_WITH_BODY, **_E404},
    )
    async def replay_dead_letters(
        topic: Annotated[str, Path(max_length=200)],
        request: Annotated[ReplayRequest, Body()],
    ) -> Any:
        """Put dead letters (``ids``, or ``all: true``) back on their partitions."""
        if not await gateway.known_topic(topic):
            return JSONResponse({"detail": f"no topic {topic!r}"}, status_code=404)
        return {"replayed": await gateway.replay(topic, request)}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["topics"],
        summary="Prometheus metrics",
        responses={**_PROMETHEUS, **_COMMON},
    )
    async def metrics() -> Response:
        """Every topic's metrics in the Prometheus text format."""
        return Response(await gateway.metrics(), media_type=CONTENT_TYPE)

    # ---- schedules -----------------------------------------------------------------------

    @app.get(
        "/schedules",
        response_model=list[ScheduleModel],
        tags=["schedules"],
        summary="List schedules",
        responses=_COMMON,
    )
    async def list_schedules() -> list[dict[str, Any]]:
        """The stored schedules by name, with their last tick handled and their next tick.

        ``redisaq schedule run`` (any number of processes) enqueues their ticks.
        """
        return await gateway.schedules()

    @app.get(
        "/schedules/{name:path}",
        response_model=ScheduleModel,
        tags=["schedules"],
        summary="One schedule",
        responses={**_COMMON, **_E404},
    )
    async def get_schedule(name: ScheduleName) -> Any:
        """A stored schedule with its last and next tick, or 404."""
        found = await gateway.schedules(name)
        if not found:
            return JSONResponse({"detail": f"no schedule {name!r}"}, status_code=404)
        return found[0]

    @app.put(
        "/schedules/{name:path}",
        response_model=ScheduleModel,
        tags=["schedules"],
        summary="Store a schedule",
        responses={**_WITH_BODY, **_E404},  # 404: a name with a line break is no path
    )
    async def put_schedule(name: ScheduleName, schedule: SchedulePut) -> dict[str, Any]:
        """Store the schedule ``name``, or replace it (a replaced schedule keeps its last tick).

        A new schedule starts with its next tick. A bad cron expression, time
        zone or interval gets 422 and stores nothing.
        """
        return await gateway.put_schedule(name, schedule)

    @app.delete(
        "/schedules/{name:path}",
        status_code=204,
        response_class=Response,
        tags=["schedules"],
        summary="Remove a schedule",
        responses={**_COMMON, **_E403, **_E404},
    )
    async def delete_schedule(name: ScheduleName) -> Response:
        """Delete the schedule and its last tick; no more ticks are enqueued (404 if unknown)."""
        if not await gateway.remove_schedule(name):
            return JSONResponse({"detail": f"no schedule {name!r}"}, status_code=404)
        return Response(status_code=204)

    # ---- the gateway ---------------------------------------------------------------------

    @app.get(
        "/health",
        response_model=HealthModel,
        tags=["gateway"],
        summary="Gateway health",
        responses=_COMMON,
    )
    async def health() -> dict[str, Any]:
        """``ok`` when the gateway and its Redis answer (503 when Redis does not)."""
        return {"status": "ok", "redis": await gateway.ping()}

    @app.get(
        "/",
        response_class=HTMLResponse,
        tags=["gateway"],
        summary="The dashboard",
        responses=_E401,
    )
    async def dashboard() -> HTMLResponse:
        """The dashboard page (one static document, updated over ``/ws/dashboard``)."""
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    # ---- sockets -------------------------------------------------------------------------

    @app.websocket("/ws/jobs")
    async def jobs_socket(ws: WebSocket) -> None:
        session = JobsSession(
            ws, gateway, max_frame=max_body_size, max_queue_bytes=socket_queue_bytes
        )
        await session.run()

    @app.websocket("/ws/dashboard")
    async def dashboard_socket(ws: WebSocket) -> None:
        await hub.serve(ws)

    @app.websocket("/ws/{worker_id}")
    async def heartbeat_socket(ws: WebSocket, worker_id: str) -> None:
        await worker_socket(ws, gateway, worker_id)

    return app
