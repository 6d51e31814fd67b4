"""Serialization of payloads and the layout of one stream entry.

An entry has one required field and a few optional ones, kept short because
they are written and parsed for every message:

* ``p``: the payload as bytes (the serializer returned bytes), or
* ``s``: the payload as UTF-8 text (the serializer returned ``str``); the
  deserializer then gets it back as ``str``;
* ``k``: the name of the payload field that picked the partition;
* ``c``: ``created_at`` (float seconds), only for ``Message`` objects;
* ``o``: the handler timeout in seconds;
* ``j``: the job id, for messages sent with ``Producer.submit``;
* ``t``: the W3C ``traceparent`` of the producer's span, only when that span was
  recording (see :mod:`redisaq_core._tracing`); readers that don't trace ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .errors import SerializationError

__all__ = [
    "Deserializer",
    "Serializer",
    "as_str",
    "decode_payload",
    "default_deserializer",
    "default_serializer",
    "encode_payload",
    "optional_text",
    "shown_text",
]

Serializer = Callable[[Any], "bytes | str"]
Deserializer = Callable[["bytes | str"], Any]

F_BYTES = b"p"
F_TEXT = b"s"
F_KEY = b"k"
F_CREATED = b"c"
F_TIMEOUT = b"o"
F_JOB = b"j"
F_TRACE = b"t"


def default_serializer(value: Any) -> bytes:
    """Serialize with orjson (dataclasses, datetimes and numpy arrays included)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def default_deserializer(data: bytes | str) -> Any:
    """Deserialize JSON produced by :func:`default_serializer`."""
    return orjson.loads(data)


def encode_payload(serializer: Serializer, payload: Any) -> tuple[bytes, bytes]:
    """Return the field name and value for ``payload``; raise ``SerializationError`` on failure."""
    try:
        data = serializer(payload)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize payload of type {type(payload).__name__}: {exc}"
        ) from exc
    if isinstance(data, bytes):
        return F_BYTES, data
    if isinstance(data, str):
        return F_TEXT, data.encode()
    raise SerializationError(
        f"serializer must return bytes or str, got {type(data).__name__} "
        f"for a payload of type {type(payload).__name__}"
    )


def decode_payload(deserializer: Deserializer, fields: dict[bytes, bytes]) -> Any:
    """Return the payload stored in an entry's ``fields``; raise ``SerializationError`` if bad."""
    raw = fields.get(F_BYTES)
    data: bytes | str
    if raw is not None:
        data = raw
    else:
        text = fields.get(F_TEXT)
        if text is None:
            raise SerializationError("entry has no payload field ('p' or 's')")
        try:
            data = text.decode()
        except UnicodeDecodeError as exc:
            raise SerializationError(f"text payload is not valid UTF-8: {exc}") from exc
    try:
        return deserializer(data)
    except Exception as exc:
        raise SerializationError(f"cannot deserialize payload: {exc}") from exc


def as_str(value: bytes | str) -> str:
    """A reply value as ``str`` (strict UTF-8: a bad byte raises ``UnicodeDecodeError``)."""
    return value.decode() if isinstance(value, bytes) else value


def shown_text(value: Any) -> str:
    """A reply value as text to show (bad bytes replaced, anything else through ``str``)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def optional_text(value: bytes | str | None) -> str | None:
    """Like :func:`shown_text`, keeping ``None`` (a missing field) as ``None``."""
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else value
