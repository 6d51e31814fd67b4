"""Structured logs: one JSON object per line, with the message's fields as fields.

``LOG_FORMAT=json`` (or ``redisaq --log-format json``) makes the CLI write its log
lines through :class:`JsonFormatter`; an application does the same with::

    handler = logging.StreamHandler()
    handler.setFormatter(redisaq_core.logs.JsonFormatter())
    logging.getLogger().addHandler(handler)

Each line holds ``time``, ``level``, ``logger`` and ``message``, then the fields
the library knows where the line was written: ``topic``, ``partition``,
``group``, ``consumer``, ``msg_id`` and ``job_id`` (those that apply), and
``trace_id`` and ``span_id`` while an OpenTelemetry span is current (a
handler's own lines get those of its consumer span). A consumer sets its
``topic``, ``group`` and ``consumer`` for everything logged while it runs,
its handlers included; a log call adds the rest with ``extra=``.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

from .errors import ConfigurationError

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the otel extra is not installed
    _trace = None  # type: ignore[assignment]

__all__ = [
    "FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "configure_logging",
    "log_context",
    "log_format",
    "reset_log_context",
]

LOG_FORMATS = ("text", "json")
"""The values ``LOG_FORMAT`` and ``--log-format`` accept."""

FIELDS = ("topic", "partition", "group", "consumer", "msg_id", "job_id")
"""The fields a line carries when its log call (or the running consumer) gave them."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "redisaq_log_context", default=None
)


def log_context(**fields: Any) -> contextvars.Token[Mapping[str, Any] | None]:
    """Add ``fields`` to every line logged from this task (and tasks it starts) from now on.

    Returns a token for :func:`reset_log_context`.
    """
    return _context.set({**(_context.get() or {}), **fields})


def reset_log_context(token: contextvars.Token[Mapping[str, Any] | None]) -> None:
    """Undo the :func:`log_context` call that returned ``token``."""
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module's text for its fields)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in (_context.get() or {}).items():
            if value is not None:
                out[name] = value
        attrs = record.__dict__
        for name in FIELDS:
            value = attrs.get(name)
            if value is not None:
                out[name] = value
        if _trace is not None:
            ctx = _trace.get_current_span().get_span_context()
            if ctx.is_valid:
                out["trace_id"] = f"{ctx.trace_id:032x}"
                out["span_id"] = f"{ctx.span_id:016x}"
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=str).decode()


def log_format(value: str | None = None) -> str:
    """The log format: ``value``, else ``$LOG_FORMAT``, else ``text``.

    Raises :class:`~redisaq_core.errors.ConfigurationError` naming the allowed values
    when it is none of :data:`LOG_FORMATS`.
    """
    source = "--log-format"
    if value is None:
        value, source = os.environ.get("LOG_FORMAT") or "text", "LOG_FORMAT"
    chosen = value.strip().lower()
    if chosen not in LOG_FORMATS:
        raise ConfigurationError(
            f"{source}={value[:40]!r} is not a log format: use one of {', '.join(LOG_FORMATS)}"
        )
    return chosen


def configure_logging(
    level: int | str, fmt: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) at ``level`` in ``fmt`` (``text`` or ``json``).

    Returns the handler. It goes on the root logger, unless that has handlers already
    (as :func:`logging.basicConfig`).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    return handler
