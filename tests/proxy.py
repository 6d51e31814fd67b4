"""A TCP proxy on loopback between clients and Redis, for network faults in tests.

``async with FaultProxy(redis_port) as proxy:`` listens on a free loopback port
(``proxy.url``) and forwards every connection to Redis. While it runs:

- ``proxy.delay = 0.2`` holds every chunk for that long, both ways;
- ``proxy.drop_replies = True`` passes requests to Redis but throws its replies
  away (the server did the work; the client never hears of it);
- ``proxy.blackhole = True`` forwards nothing either way, connections stay open;
- ``await proxy.cut()`` closes every open connection (new ones are accepted);
- ``proxy.refuse = True`` closes new connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class FaultProxy:
    """Forward loopback connections to ``127.0.0.1:target_port``, with faults on demand."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.delay = 0.0
        self.drop_replies = False
        self.blackhole = False
        self.refuse = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``redis://`` URL of the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def cut(self) -> None:
        """Close every connection open now."""
        for writer in list(self._open):
            writer.close()
        self._open.clear()
        await asyncio.sleep(0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._open |= {writer, up_writer}
        for task in (
            asyncio.create_task(self._pump(reader, up_writer, replies=False)),
            asyncio.create_task(self._pump(up_reader, writer, replies=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                while self.blackhole:
                    await asyncio.sleep(0.01)
                if replies and self.drop_replies:
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.discard(writer)
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
