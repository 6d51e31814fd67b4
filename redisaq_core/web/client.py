"""``ManagerClient``: the worker side of the gateway's worker manager.

::

    async with ManagerClient("http://127.0.0.1:8000", name="worker-1",
                             host="127.0.0.1", port=8001) as manager:
        ...                                   # registered; heartbeats every 5 s

It registers the worker (``POST /register``), keeps the heartbeat socket
``/ws/{worker_id}`` open and sends a heartbeat frame every ``interval``
seconds. A lost connection is opened again after an exponential backoff with
jitter; a manager that no longer knows the worker (close code 4404) gets it
registered again first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .._checks import number
from .._retry import backoff_delay
from ..connection import redact_url
from ..errors import ConfigurationError, GatewayError
from .models import CLOSE_DEREGISTERED, CLOSE_UNAUTHORIZED, CLOSE_UNKNOWN_WORKER

__all__ = ["ManagerClient"]

log = logging.getLogger(__name__)


class ManagerClient:
    """Register with a gateway's worker manager and heartbeat to it while in use.

    ``manager_url``: the gateway's base URL (``http://`` or ``https://``).
    ``name``, ``host``, ``port``: what ``GET /workers`` shows. ``interval``:
    seconds between heartbeats. ``worker_id``: a stable id (default: the
    manager makes one). ``token``: the gateway's bearer token.
    ``backoff`` / ``backoff_max``: reconnection delays in seconds.

    :meth:`start` registers once and raises :class:`~redisaq_core.errors.GatewayError`
    if the manager refuses (bad token, invalid fields); an unreachable manager
    is retried in the background, like a lost heartbeat socket.
    """

    def __init__(
        self,
        manager_url: str,
        *,
        name: str,
        host: str,
        port: int,
        interval: float = 5.0,
        worker_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        token: str | None = None,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if not isinstance(manager_url, str) or not manager_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"manager_url must start with http:// or https://, got {manager_url!r}"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be an integer from 0 to 65535, got {port!r}")
        self.manager_url = manager_url.rstrip("/")
        self._shown = redact_url(self.manager_url)
        self.name = name
        self.host = host
        self.port = port
        self.interval = number(interval, "interval", above=0, seconds=True)
        self.backoff = number(backoff, "backoff", above=0, seconds=True)
        self.backoff_max = number(backoff_max, "backoff_max", above=0, seconds=True)
        self.metadata = dict(metadata or {})
        self._token = token
        self._worker_id = worker_id
        self._registered = False
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: ClientConnection | None = None
        self._stopped = False
        self.connected = asyncio.Event()
        """Set while the heartbeat socket is open."""
        self.heartbeats = 0
        """Heartbeat frames sent so far."""
        self.reconnects = 0
        """Times the heartbeat socket was opened again after a loss."""

    @property
    def worker_id(self) -> str | None:
        """The worker's id (known once registered)."""
        return self._worker_id

    @property
    def running(self) -> bool:
        """Whether the heartbeat loop runs."""
        return self._task is not None and not self._task.done()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def register(self) -> str:
        """``POST /register``; return the worker id. ``GatewayError`` if the manager refuses."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.manager_url, headers=self._headers(), timeout=10.0
            )
        body: dict[str, Any] = {
            "name": self.name, "host": self.host, "port": self.port, "metadata": self.metadata,
        }  # fmt: skip
        if self._worker_id is not None:
            body["worker_id"] = self._worker_id
        response = await self._http.post("/register", json=body)
        if response.status_code != 201:
            raise GatewayError(
                "the manager refused the registration: "
                f"{response.status_code} {response.text[:500]}"
            )
        worker_id = str(response.json()["worker_id"])
        self._worker_id = worker_id
        self._registered = True
        log.info("registered with %s as %s", self._shown, worker_id)
        return worker_id

    async def start(self) -> None:
        """Register and start heartbeating in the background (idempotent)."""
        if self._stopped:
            raise GatewayError("this ManagerClient was stopped; make a new one")
        if self.running:
            return
        try:
            await self.register()
        except httpx.TransportError as exc:
            log.warning("manager %s unreachable (%s); retrying in the background",
                        self._shown, exc)  # fmt: skip
        self._task = asyncio.create_task(self._run(), name="redisaq-manager-client")

    def _socket_url(self) -> str:
        assert self._worker_id is not None
        base = "ws" + self.manager_url[len("http") :]
        return f"{base}/ws/{self._worker_id}"

    async def _run(self) -> None:
        failures = 0
        while not self._stopped:
            code: int | None = None
            try:
                if not self._registered:
                    await self.register()
                code = await self._session()
                failures = 0
            except (OSError, httpx.TransportError, InvalidHandshake, InvalidURI,
                    asyncio.TimeoutError) as exc:  # fmt: skip
                log.warning("manager %s: %s: %s", self._shown, type(exc).__name__, exc)
            except GatewayError as exc:
                log.error("%s", exc)
                failures = max(failures, 30)
            self.connected.clear()
            if self._stopped:
                return
            if code in (CLOSE_UNKNOWN_WORKER, CLOSE_DEREGISTERED):
                log.warning("the manager does not know worker %s any more; registering again",
                            self._worker_id)  # fmt: skip
                self._registered = False
            elif code == CLOSE_UNAUTHORIZED:
                log.error("the manager refused the token")
                failures = max(failures, 30)
            failures += 1
            await asyncio.sleep(backoff_delay(failures, self.backoff, self.backoff_max))
            self.reconnects += 1

    async def _session(self) -> int | None:
        """One heartbeat socket, until it closes; return its close code."""
        async with connect(
            self._socket_url(), additional_headers=self._headers(), open_timeout=10.0
        ) as ws:
            self._socket = ws
            reader = asyncio.create_task(self._drain(ws))
            try:
                self.connected.set()
                log.info("heartbeat socket to %s open", self._shown)
                while True:
                    await ws.send(
                        json.dumps({"type": "heartbeat", "worker_id": self._worker_id,
                                    "name": self.name, "time": time.time()})
                    )  # fmt: skip
                    self.heartbeats += 1
                    done, _ = await asyncio.wait({reader}, timeout=self.interval)
                    if done:
                        break
            except ConnectionClosed:
                pass
            finally:
                self._socket = None
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
        return ws.close_code

    @staticmethod
    async def _drain(ws: ClientConnection) -> None:
        """Read (and drop) the manager's frames until the socket closes."""
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    async def stop(self) -> None:
        """Stop heartbeating and close the socket (idempotent). The registration stays."""
        if self._stopped:
            return
        self._stopped = True
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._socket.close(), 5.0)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.connected.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def aclose(self) -> None:
        """Alias of :meth:`stop`."""
        await self.stop()

    async def __aenter__(self) -> ManagerClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
