"""One redis-server child process on a free loopback port (:class:`EmbeddedRedis`)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ..errors import EmbeddedRedisError
from .servers import ServerBinary, find_server, inspect_binary

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    """Return the path of the server binary to run (see :mod:`redisaq_core.embedded.servers`)."""
    return find_server().path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ping(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_S = TypeVar("_S", bound="_LocalServers")


class _LocalServers:
    """``with`` / ``async with`` for servers started by ``start()`` and stopped by ``stop()``."""

    def start(self) -> None:
        """Start the server processes (blocking until they answer)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server processes started here."""
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self: _S) -> _S:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class EmbeddedRedis(_LocalServers):
    """A redis-server child process on a free loopback port, with no persistence.

    Use ``with EmbeddedRedis() as r:`` or ``async with EmbeddedRedis() as r:``,
    or ``start()`` / ``stop()``; ``r.url``, ``r.port`` and ``r.pid`` describe it.
    ``extra_args`` are passed to redis-server as they are (e.g.
    ``["--appendonly", "yes"]``); ``dir`` keeps its working directory across a
    restart instead of a private temporary one.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        extra_args: list[str] | None = None,
        dir: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port or 0
        self._binary = binary
        self._extra = list(extra_args or [])
        self._dir = dir
        self._own_dir = False
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.server: ServerBinary | None = None
        """The binary that runs (product, version, path), set by ``start()``."""

    @property
    def url(self) -> str:
        """``redis://host:port/0`` of the running server."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the server, or ``None`` when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING (idempotent)."""
        if self.running:
            return
        self.server = inspect_binary(self._binary) if self._binary else find_server()
        binary = self.server.path
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="redisaq-redis-")
            self._own_dir = True
        last_error = ""
        for _ in range(5):
            self.port = self._requested_port or free_port(self.host)
            args = [
                binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--daemonize", "no",
                "--logfile", os.path.join(self._dir, f"redis-{self.port}.log"),
                *self._extra,
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the terminal is for us, not the server
            )
            deadline = time.monotonic() + self._timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if _ping(self.host, self.port):
                    return
                time.sleep(0.02)
            last_error = self._failure_text()
            self._kill()
            if self._requested_port:
                break
        raise EmbeddedRedisError(f"redis-server ({binary}) did not start: {last_error}")

    def _failure_text(self) -> str:
        log = Path(self._dir or ".") / f"redis-{self.port}.log"
        try:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            tail = []
        return " | ".join(tail) or "no answer to PING in time"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self) -> None:
        """Stop the server this object started (idempotent) and remove its private directory."""
        self._kill()
        if self._own_dir and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._own_dir = False

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its directory so it can be started again."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._kill()

    def restart(self) -> None:
        """Stop and start again on the same port (and directory)."""
        self._requested_port = self.port
        self._kill()
        self.start()
