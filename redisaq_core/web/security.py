"""ASGI middleware of the gateway: Host allow-list, Origin, token, socket and body limits.

All are plain ASGI wrappers, so they see every HTTP request and every
WebSocket handshake before FastAPI does. From the outside in: the Host
allow-list (so a DNS-rebound page never reaches anything), the Origin check,
the token, the socket limit, the body limit.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import (
    CLOSE_FORBIDDEN_HOST,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHORIZED,
)

__all__ = [
    "LOOPBACK_HOSTS",
    "SUBPROTOCOL",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "BodyLimit",
    "HostCheck",
    "OriginCheck",
    "SocketLimit",
    "TokenAuth",
    "bearer_token",
    "host_name",
    "is_loopback",
    "subprotocol_token",
    "token_subprotocol",
]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a gateway bound to a loopback address answers to by default."""
SUBPROTOCOL = "redisaq"
"""The WebSocket subprotocol the gateway selects when a client offers it."""
TOKEN_SUBPROTOCOL_PREFIX = "redisaq.bearer."
"""Offered subprotocol ``redisaq.bearer.<base64url of the token, no padding>`` carries the token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The host name of a ``Host`` header (``name[:port]`` or ``[v6][:port]``), lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:  # a bare IPv6 address, which no client should send
        return value
    return value.partition(":")[0].rstrip(".")


def token_subprotocol(token: str) -> str:
    """The subprotocol that carries ``token`` (offer it beside :data:`SUBPROTOCOL`)."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return TOKEN_SUBPROTOCOL_PREFIX + encoded


def subprotocol_token(scope: Scope) -> str | None:
    """The token a socket offered as a ``redisaq.bearer.<base64url>`` subprotocol, if any."""
    for offered in scope.get("subprotocols") or ():
        if isinstance(offered, str) and offered.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            encoded = offered[len(TOKEN_SUBPROTOCOL_PREFIX) :]
            try:
                padded = encoded + "=" * (-len(encoded) % 4)
                raw = base64.b64decode(padded, altchars=b"-_", validate=True)
                return raw.decode() or None
            except (binascii.Error, ValueError):
                return None
    return None


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


def _with_subprotocol(scope: Scope, send: Send) -> Send:
    """``send`` that selects :data:`SUBPROTOCOL` on accepting a socket that offered it.

    Browsers fail a handshake that offered subprotocols and got none back, so
    a socket offering the token subprotocol must be answered with this one
    (never with the token's).
    """
    if scope["type"] != "websocket" or SUBPROTOCOL not in (scope.get("subprotocols") or ()):
        return send

    async def selecting(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": SUBPROTOCOL}
        await send(message)

    return selecting


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


class HostCheck:
    """Refuse requests and sockets whose ``Host`` header names a host not in ``allowed``.

    This is what stops DNS rebinding: a web page whose own domain was made to
    resolve to 127.0.0.1 talks to the gateway "same-origin", but its requests
    carry that domain in ``Host``. An entry is a host name or address
    (``localhost``, ``10.0.0.5``, ``::1``), ``.example.com`` for that domain
    and its subdomains, or ``*`` for any host. Ports are not compared.
    Refused: HTTP 421, or close code 4421 on a socket. Every socket is also
    answered with the ``redisaq`` subprotocol when it offered it.
    """

    def __init__(self, app: ASGIApp, *, allowed: Iterable[str]) -> None:
        self.app = app
        names = {host_name(h) if not h.startswith(".") else h.lower() for h in allowed}
        self.any = "*" in names
        self.exact = frozenset(n for n in names if not n.startswith("."))
        self.suffixes = tuple(n for n in names if n.startswith("."))

    def allowed_host(self, scope: Scope) -> bool:
        """Whether the request's ``Host`` is on the allow-list."""
        if self.any:
            return True
        header = _header(scope, b"host")
        if not header:
            return False
        name = host_name(header)
        return name in self.exact or any(name.endswith(s) or name == s[1:] for s in self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or refuse it."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = _with_subprotocol(scope, send)
        if self.allowed_host(scope):
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s for host %.100r (not in allowed_hosts)",
                    kind, scope.get("path"), _header(scope, b"host"))  # fmt: skip
        if kind == "http":
            await _json_response(send, 421, "host not allowed (see allowed_hosts)", [])
        else:
            await _refuse_socket(receive, send, CLOSE_FORBIDDEN_HOST, "host not allowed")


class TokenAuth:
    """Require the token on every request and socket.

    Requests send ``Authorization: Bearer <token>``. Sockets send the same
    header, or (browsers cannot set headers on a WebSocket) offer the
    subprotocols ``redisaq`` and ``redisaq.bearer.<base64url of the token>``;
    the server selects ``redisaq``. No token ever needs to be in a URL, where
    proxies and access logs would keep it. The paths in ``public`` (the
    dashboard page, a static document with no data in it) need no token.
    A request without the right token gets 401; a socket is accepted and
    closed at once with code 4401. Tokens are compared in constant time.
    With ``token=None`` everything passes.
    """

    def __init__(
        self, app: ASGIApp, token: str | None, *, public: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self._token = None if token is None else token.encode()
        self._public = public

    def _valid(self, given: str | None) -> bool:
        if given is None or self._token is None:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def allowed(self, scope: Scope) -> bool:
        """Whether the request or socket carries the token (or needs none)."""
        if scope["type"] == "http" and scope.get("path") in self._public:
            return True
        if self._valid(bearer_token(scope)):
            return True
        return scope["type"] == "websocket" and self._valid(subprotocol_token(scope))

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


class OriginCheck:
    """Refuse requests and sockets that a browser sent from a page of another site.

    Browsers let any page open a WebSocket to any address (127.0.0.1
    included) and send requests there, with the page's ``Origin``; a gateway
    without a token would take jobs from any web page its user visits. A
    request with an ``Origin`` header, whatever its method, must come from
    the gateway's own origin (the ``Host`` it was sent to, itself checked by
    :class:`HostCheck`) or one of ``allowed``; others get 403, or close code
    4403 on a socket. Requests without ``Origin`` (programs, and browsers'
    plain page loads) pass.
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
        if kind not in ("http", "websocket") or self.allowed_origin(scope):
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s from origin %.100r", kind, scope.get("path"),
                    _header(scope, b"origin"))  # fmt: skip
        if kind == "http":
            await _json_response(send, 403, "cross-origin request refused", [])
        else:
            await _refuse_socket(receive, send, CLOSE_FORBIDDEN_ORIGIN, "cross-origin socket")


class SocketLimit:
    """Serve at most ``max_sockets`` WebSockets at once; refuse more with close code 1013.

    1013 is the standard "try again later". Only sockets the application
    serves count; a socket refused earlier (host, origin, token) never does.
    """

    def __init__(self, app: ASGIApp, *, max_sockets: int) -> None:
        self.app = app
        self.max_sockets = max_sockets
        self.open = 0
        """Sockets being served now."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the socket within the limit, or refuse it."""
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.open >= self.max_sockets:
            log.warning("refused a socket on %s: %d sockets open (max_sockets)",
                        scope.get("path"), self.open)  # fmt: skip
            await _refuse_socket(
                receive, send, CLOSE_TOO_MANY_SOCKETS, f"too many sockets (max {self.max_sockets})"
            )
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


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
