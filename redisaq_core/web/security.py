"""ASGI middleware of the gateway: the bearer token, and the request body size limit.

Both are plain ASGI wrappers, so they see every HTTP request and every
WebSocket handshake before FastAPI does.
"""

from __future__ import annotations

import hmac
import json
import logging
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import CLOSE_FORBIDDEN_ORIGIN, CLOSE_UNAUTHORIZED

__all__ = ["BodyLimit", "OriginCheck", "TokenAuth", "bearer_token"]

log = logging.getLogger(__name__)


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query).get("token")
    return str(values[0]) if values else None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


async def _refuse_socket(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Accept a WebSocket handshake and close it at once with ``code`` (so clients see it)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})


async def _json_response(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenAuth:
    """Require ``Authorization: Bearer <token>`` on every request and socket.

    WebSockets may pass ``?token=`` instead (browsers cannot set headers on
    them), and so may ``GET /``, the dashboard page, which a browser opens by
    its address. A request without the right token gets 401; a socket is
    accepted and closed at once with code 4401. Tokens are compared in
    constant time. With ``token=None`` everything passes.
    """

    def __init__(self, app: ASGIApp, token: str | None, *, page_paths: frozenset[str]) -> None:
        self.app = app
        self._token = None if token is None else token.encode()
        self._pages = page_paths

    def _valid(self, given: str | None) -> bool:
        if given is None or self._token is None:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def allowed(self, scope: Scope) -> bool:
        """Whether the request or socket carries the token."""
        if self._valid(bearer_token(scope)):
            return True
        query_ok = scope["type"] == "websocket" or scope.get("path") in self._pages
        return query_ok and self._valid(_query_token(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or refuse it."""
        if self._token is None or scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        log.info("refused %s %s: missing or wrong token", scope["type"], scope.get("path"))
        if scope["type"] == "http":
            await _json_response(
                send,
                401,
                "missing or wrong token: send Authorization: Bearer <token>",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await _refuse_socket(receive, send, CLOSE_UNAUTHORIZED, "missing or wrong token")


_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OriginCheck:
    """Refuse WebSockets and state-changing requests that a browser sent from another site.

    Browsers let any page open a WebSocket to any address (127.0.0.1
    included) and send the page's ``Origin``; a gateway without a token would
    take jobs from any web page its user visits. A request with an ``Origin``
    header must come from the gateway's own origin (the ``Host`` it was sent
    to) or one of ``allowed``; others get 403, or close code 4403 on a
    socket. Requests without ``Origin`` (programs, not browsers) pass.
    """

    def __init__(self, app: ASGIApp, *, allowed: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed)

    def allowed_origin(self, scope: Scope) -> bool:
        """Whether the request has no ``Origin``, or an accepted one."""
        origin = _header(scope, b"origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed:
            return True
        host = (_header(scope, b"host") or "").lower()
        _, _, rest = origin.partition("://")
        return bool(host) and rest == host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or refuse it."""
        kind = scope["type"]
        checked = kind == "websocket" or (kind == "http" and scope.get("method") in _UNSAFE)
        if not checked or self.allowed_origin(scope):
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s from origin %s", kind, scope.get("path"),
                    _header(scope, b"origin"))  # fmt: skip
        if kind == "http":
            await _json_response(send, 403, "cross-origin request refused", [])
        else:
            await _refuse_socket(receive, send, CLOSE_FORBIDDEN_ORIGIN, "cross-origin socket")


class BodyLimit:
    """Refuse request bodies larger than ``max_size`` bytes with 413.

    A declared ``Content-Length`` over the limit is refused before anything is
    read; a body sent without one is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, max_size: int) -> None:
        self.app = app
        self.max_size = max_size

    def _detail(self) -> str:
        return f"request body is larger than {self.max_size} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted, or refuse it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_size:
                    await _json_response(send, 413, self._detail(), [(b"connection", b"close")])
                    return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_size:
                    raise HTTPException(413, self._detail())
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await _json_response(send, 413, self._detail(), [(b"connection", b"close")])
