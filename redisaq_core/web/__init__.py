"""The web gateway: jobs over HTTP and WebSocket, a worker manager, and a live dashboard.

Install the ``web`` extra (``pip install 'redisaq-core[web]'``) and run
``redisaq web`` (127.0.0.1:8000 by default), or serve :func:`create_app`
with any ASGI server::

    app = create_app(redis_url="redis://localhost:6379/0", token=os.environ["TOKEN"])

Everything the gateway knows lives in Redis (job records, the service
registry, worker statuses, topic metrics), so several gateway processes
behind one load balancer agree; each process holds one Redis client and one
pub/sub connection for its sockets.

HTTP routes (the OpenAPI schema is at ``/openapi.json``)::

    POST /jobs                   submit -> 201 {"job_id", "status": "queued", ...}
    GET  /jobs/{job_id}          the job's status record (404 if none)
    GET  /jobs?status=&topic=&limit=
    POST /register               a worker -> 201 {"worker_id", "status": "registered"}
    GET  /workers, /workers/{worker_id}
    GET  /topics, /topics/{name}  partitions with owner, lag, pending, dead letters
    GET  /topics/{name}/series   the last 15 minutes in 5 s buckets: produced and
                                 handled per second, lag, handler time p50/p99
    GET  /dlq/{topic}?limit=&cursor=  dead letters with origin and error, by pages
                                 (X-Next-Cursor names the next)
    POST /dlq/{topic}/replay     {"ids": [...]} or {"all": true}
    GET  /schedules, /schedules/{name}  stored schedules with last and next tick
    PUT  /schedules/{name}       store or replace one (the fields of ``Schedule``)
    DELETE /schedules/{name}     -> 204 (404 if none)
    GET  /metrics                Prometheus text
    GET  /health
    GET  /                       the dashboard

WebSocket ``/ws/jobs`` (JSON text frames with a ``type``):

* ``{"type": "submit_job", "topic", "payload", "priority"?, "partition_key"?, "delay"?,
  "timeout"?, "request_id"?}`` -> ``{"type": "job_accepted", "job_id",
  "request_id", "status": "queued", "topic", "partition"}``; the socket then
  follows the job.
* ``{"type": "subscribe", "job_id"}`` follows any job; ``unsubscribe`` stops.
* The server sends ``{"type": "job_status", "job_id", "status"}`` for the
  status at the time the job was followed and on every change after it,
  from whichever process made the change; ``completed`` carries ``result``,
  ``failed`` and ``dead`` carry ``error`` and ``error_type``; each progress
  report of a running job (``Message.progress``) gives an ``active`` frame
  with ``progress``. After a final status (``completed``, ``dead``,
  ``cancelled``) the job is no longer followed.
* ``{"type": "ping"}`` -> ``{"type": "pong"}``.
* A frame that is not JSON, has no known ``type`` or has invalid fields gets
  ``{"type": "error", "detail", "request_id"?}`` naming the fields; the
  socket stays open.

WebSocket ``/ws/{worker_id}``: on connect the
worker becomes ``connected`` (the server sends ``{"type": "connected"}``),
every frame it sends is a heartbeat that makes it ``alive`` (answered with
``{"type": "heartbeat_ack"}``), closing the socket makes it
``disconnected``, and ``HEARTBEAT_TIMEOUT`` seconds of silence make it
``not_responding`` (a :class:`~redisaq_core.registry.HealthMonitor` runs in
each gateway). Close codes: **4404** no worker is registered under that id,
**4410** its registration was removed while connected; on every socket
**4401** missing or wrong token, **4403** opened by a web page of another
origin, **4421** a ``Host`` not in ``allowed_hosts``, **4408** the client did
not read its frames (more than ``socket_queue_bytes`` waiting), **1013** the
gateway serves ``max_sockets`` already, **1009** a frame over the size limit.

Security (see ``docs/security.md``): with a token, requests send
``Authorization: Bearer <token>``, and a browser's socket offers the
subprotocols ``redisaq`` and ``redisaq.bearer.<base64url of the token>``
(:func:`~redisaq_core.web.security.token_subprotocol`); a token is never read
from a URL. Every request must name an allowed host (DNS rebinding), and a
browser's request must come from an allowed origin.

WebSocket ``/ws/dashboard``: ``{"type": "snapshot", "topics", "workers",
"dead_letters", "jobs", ...}`` about every second and soon after a change.

:class:`ManagerClient` is the worker side of the manager.
"""

from __future__ import annotations

from .app import (
    DEFAULT_DEAD_LETTER_PAGE_BYTES,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_SOCKETS,
    DEFAULT_SOCKET_QUEUE_BYTES,
    create_app,
)
from .client import ManagerClient
from .models import (
    CLOSE_DEREGISTERED,
    CLOSE_FORBIDDEN_HOST,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNKNOWN_WORKER,
)

__all__ = [
    "CLOSE_DEREGISTERED",
    "CLOSE_FORBIDDEN_HOST",
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_TOO_MANY_SOCKETS",
    "CLOSE_TOO_SLOW",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_UNKNOWN_WORKER",
    "DEFAULT_DEAD_LETTER_PAGE_BYTES",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_SOCKETS",
    "DEFAULT_SOCKET_QUEUE_BYTES",
    "ManagerClient",
    "create_app",
]
