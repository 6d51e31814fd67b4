"""A worker service that reports to the gateway's worker manager (seed 002's worker).

A FastAPI app with ``GET /health``. While it runs, a
:class:`~redisaq_core.web.ManagerClient` keeps it registered with the manager
(``redisaq web``) and sends a heartbeat every ``HEARTBEAT_INTERVAL`` seconds
over a WebSocket, reconnecting with backoff if the manager goes away.

Run (the manager first: ``redisaq web``)::

    WORKER_NAME="Worker 1" WORKER_PORT=8001 python examples/fastapi/worker.py

Environment: ``WORKER_NAME`` (default: a name from host and pid),
``WORKER_HOST`` (the address the manager shows, default 127.0.0.1),
``WORKER_PORT`` (8001), ``MANAGER_HOST`` (localhost), ``MANAGER_PORT``
(8000), ``HEARTBEAT_INTERVAL`` (5 seconds), ``REDISAQ_WEB_TOKEN`` (the
manager's token, if it has one).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from redisaq_core.web import ManagerClient

WORKER_NAME = os.environ.get("WORKER_NAME") or f"worker-{socket.gethostname()}-{os.getpid()}"
WORKER_HOST = os.environ.get("WORKER_HOST", "127.0.0.1")
WORKER_PORT = int(os.environ.get("WORKER_PORT", "8001"))
MANAGER_HOST = os.environ.get("MANAGER_HOST", "localhost")
MANAGER_PORT = int(os.environ.get("MANAGER_PORT", "8000"))
HEARTBEAT_INTERVAL = float(os.environ.get("HEARTBEAT_INTERVAL", "5"))
TOKEN = os.environ.get("REDISAQ_WEB_TOKEN") or None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with ManagerClient(
        f"http://{MANAGER_HOST}:{MANAGER_PORT}",
        name=WORKER_NAME,
        host=WORKER_HOST,
        port=WORKER_PORT,
        interval=HEARTBEAT_INTERVAL,
        token=TOKEN,
        metadata={"pid": os.getpid()},
    ) as manager:
        app.state.manager = manager
        yield


app = FastAPI(title=f"redisaq example worker: {WORKER_NAME}", lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, Any]:
    """This worker is up; and whether its heartbeat socket to the manager is open."""
    manager: ManagerClient = app.state.manager
    return {
        "status": "healthy",
        "name": WORKER_NAME,
        "worker_id": manager.worker_id,
        "manager_connected": manager.connected.is_set(),
        "heartbeats_sent": manager.heartbeats,
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=WORKER_PORT)
