"""Dead letters: entries that failed ``max_deliveries`` times or could not be decoded.

Each partition has its own dead-letter stream, in the partition's hash slot,
so that moving an entry there and acknowledging it is one atomic script. A
dead-letter entry keeps the original entry's fields (prefixed ``f:``) beside
its origin record: ``topic``, ``partition``, ``priority``, ``group``, ``msg_id``,
``deliveries``, ``error``, ``error_type``, ``consumer`` and ``failed_at``. An entry
of thousands of fields, more than one script command can carry, is recorded with
their count (``omitted_fields``) instead of their contents (not replayable); the
entry itself then stays in its stream, even on a ``delete-acked`` topic.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._codec import Deserializer, decode_payload, default_deserializer, shown_text
from ._failures import foreign_type, unless_foreign
from ._scripts import REPLAY
from .connection import AnyRedis, RedisComponent
from .errors import ConfigurationError, SerializationError
from .keys import RESULT_TTL, TopicKeys, partition_count, priority_levels

__all__ = ["DeadLetter", "DeadLetters", "dead_letter_fields", "parse_dead_letter"]

log = logging.getLogger(__name__)

_ENTRY_ID = re.compile(r"^(\d+:)?\d+-\d+$")
_MAX_REPLAY_FIELDS = 3499
"""The most original fields a replay's XADD carries: 7,000 values with its key and id, the
count dead_letter.lua writes at most (replay.lua leaves wider entries in place too)."""
_ORIGIN = ("topic", "group", "msg_id", "error", "error_type", "consumer")


def _wanted(ids: Iterable[str]) -> set[str]:
    """The dead-letter ids asked for (``ID`` or ``PARTITION:ID``), checked."""
    if isinstance(ids, (str, bytes)):
        raise ConfigurationError(f"ids must be a list of dead-letter ids, got {ids!r}")
    wanted = set(ids)
    for i in wanted:
        if not isinstance(i, str) or not _ENTRY_ID.match(i):
            raise ConfigurationError(
                "ids must be dead-letter ids like 1700000000000-0, or 3:1700000000000-0 for "
                f"the one in partition 3, got {i!r}"
            )
    return wanted


def dead_letter_fields(
    *,
    topic: str,
    partition: int,
    group: str,
    msg_id: str,
    deliveries: int,
    error: BaseException | str,
    consumer: str,
    original: dict[bytes, bytes] | None,
    priority: int = 0,
) -> list[Any]:
    """Flat field/value list of a dead-letter entry (the origin record and original fields)."""
    if isinstance(error, BaseException):
        error_type, text = type(error).__name__, str(error)
    else:
        error_type, text = "Error", error
    out: list[Any] = [
        "topic", topic,
        "partition", partition,
        "priority", priority,
        "group", group,
        "msg_id", msg_id,
        "deliveries", deliveries,
        "error", text[:4000],
        "error_type", error_type,
        "consumer", consumer,
        "failed_at", repr(time.time()),
    ]  # fmt: skip
    for name, value in (original or {}).items():
        out += [b"f:" + name, value]
    return out


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record, with where it came from and why it failed.

    ``id`` is unique within its ``partition`` (the partition whose dead-letter stream holds it
    and that a replay puts it back on): ``f"{partition}:{id}"`` names it within the topic.
    """

    id: str
    topic: str
    partition: int
    group: str
    msg_id: str
    deliveries: int
    error: str
    error_type: str
    consumer: str
    failed_at: float
    fields: dict[bytes, bytes] = field(repr=False)
    payload: Any = None
    payload_error: str | None = None
    priority: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the payload as decoded, or the decoding error)."""
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "priority": self.priority,
            "group": self.group,
            "msg_id": self.msg_id,
            "deliveries": self.deliveries,
            "error": self.error,
            "error_type": self.error_type,
            "consumer": self.consumer,
            "failed_at": self.failed_at,
            "payload": self.payload,
            "payload_error": self.payload_error,
        }


def parse_dead_letter(
    partition: int, entry_id: bytes, raw: dict[bytes, bytes], deserializer: Deserializer
) -> DeadLetter:
    """The letter ``entry_id`` of ``partition``'s dead-letter stream.

    Its ``partition`` is that stream's, where a replay puts it back, whatever the record says
    (another client's entry may name none, or another).
    """
    text = {
        k.decode(errors="replace"): v.decode(errors="replace")
        for k, v in raw.items()
        if not k.startswith(b"f:")
    }
    original = {k[2:]: v for k, v in raw.items() if k.startswith(b"f:")}
    payload, payload_error = None, None
    try:
        payload = decode_payload(deserializer, original)
    except SerializationError as exc:
        payload_error = str(exc)

    def number(name: str, kind: type[int] | type[float]) -> Any:
        try:
            return kind(text.get(name, 0))
        except ValueError:
            return kind(0)

    return DeadLetter(
        id=entry_id.decode(),
        partition=partition,
        priority=number("priority", int),
        deliveries=number("deliveries", int),
        failed_at=number("failed_at", float),
        fields=original,
        payload=payload,
        payload_error=payload_error,
        **{name: text.get(name, "") for name in _ORIGIN},
    )


class DeadLetters(RedisComponent):
    """Read, count, replay and purge a topic's dead letters (all partitions)."""

    def __init__(
        self,
        topic: str,
        *,
        redis: AnyRedis | None = None,
        redis_url: str | None = None,
        deserializer: Deserializer | None = None,
    ) -> None:
        super().__init__(redis=redis, redis_url=redis_url)
        self.topic = topic
        self.keys = TopicKeys(topic)
        self.deserializer = deserializer or default_deserializer

    async def _partitions(self) -> int:
        redis = await self._ensure()
        return partition_count(await unless_foreign(redis.hget(self.keys.meta, "partitions")))

    async def _read(self, partition: int, count: int | None = None) -> Any:
        """The entries of a partition's dead-letter stream (none for a key of another type)."""
        redis = await self._ensure()
        key = self.keys.dead_letters(partition)
        entries = await unless_foreign(redis.xrange(key, count=count))
        if entries is None:
            log.warning("%s is no stream (another client's key): skipped", key)
        return entries or []

    async def count(self) -> int:
        """How many dead letters the topic has."""
        redis = await self._ensure()
        n = await self._partitions()
        if not n:
            return 0
        pipe = redis.pipeline(transaction=False)
        for p in range(n):
            pipe.xlen(self.keys.dead_letters(p))
        replies = await pipe.execute(raise_on_error=False)  # another type's key counts none
        for reply in replies:
            if isinstance(reply, Exception) and not foreign_type(reply):
                raise reply
        return sum(int(x) for x in replies if not isinstance(x, Exception))

    async def list(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first within each partition, partitions in order."""
        out: list[DeadLetter] = []
        for p in range(await self._partitions()):
            remaining = None if limit is None else limit - len(out)
            if remaining is not None and remaining <= 0:
                break
            entries = await self._read(p, remaining)
            out += [parse_dead_letter(p, i, f, self.deserializer) for i, f in entries]
        return out

    async def replay(self, ids: Iterable[str] | None = None) -> int:
        """Put dead letters (all, or those with the given ids) back on their partitions.

        Each replayed entry is appended to its original partition stream (and
        priority level) as a new entry and removed from the dead-letter stream
        in one atomic step. Returns how many were replayed. Dead-letter ids are
        unique within a partition only: an id is ``1700000000000-0``, or
        ``3:1700000000000-0`` for the one in partition 3; an id without a
        partition that names letters in several partitions raises
        ``ConfigurationError`` naming them, before anything is replayed. An
        entry this library did not write (no original fields, more than a
        command carries, or a priority the topic doesn't have) stays where it
        is: asked for by id, it raises ``ConfigurationError`` naming it and why,
        after the others were replayed; in a replay of everything it is skipped
        with a warning.
        """
        redis = await self._ensure()
        wanted = None if ids is None else _wanted(ids)
        levels = await self._levels()
        refused: list[str] = []
        plan: dict[int, dict[int, list[tuple[str, bytes | None]]]] = {}  # (letter, job id)
        found: dict[str, list[int]] = {}
        for p in range(await self._partitions()):
            for entry_id, raw in await self._read(p):
                letter = entry_id.decode()
                if wanted is not None and not ({letter, f"{p}:{letter}"} & wanted):
                    continue
                found.setdefault(letter, []).append(p)
                level, problem = _replay_level(raw, levels)
                if problem is not None:
                    refused.append(f"{p}:{letter} ({problem})")
                    continue
                plan.setdefault(p, {}).setdefault(level, []).append((letter, raw.get(b"f:j")))
        ambiguous = [
            f"{letter} (partitions {', '.join(map(str, parts))})"
            for letter, parts in found.items()
            if len(parts) > 1 and wanted is not None and letter in wanted
        ]
        if ambiguous:
            raise ConfigurationError(
                f"topic {self.topic!r}: dead-letter id(s) in more than one partition: "
                f"{', '.join(ambiguous[:5])}; name one as PARTITION:ID (nothing replayed)"
            )
        total = 0
        for p, by_level in plan.items():
            for level, letters in by_level.items():
                keys = [self.keys.dead_letters(p), self.keys.stream(p, level), self.keys.jobs(p)]
                # A record made again (it had expired) keeps its result the default time.
                args: list[Any] = [self.keys.job_channel, self.topic, p, level, int(RESULT_TTL)]
                for letter, job in letters:
                    if job:
                        keys.append(self.keys.job(p, shown_text(job)))
                    args += [letter, "1" if job else "0"]
                total += int(await REPLAY(redis, keys, args))
        if refused:
            shown = ", ".join(refused[:5]) + (
                f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            )
            if wanted is not None:
                raise ConfigurationError(
                    f"topic {self.topic!r}: cannot replay dead letter(s) {shown}; "
                    f"{total} other(s) replayed"
                )
            log.warning(
                "topic %s: dead letters left in place, not replayable: %s", self.topic, shown
            )
        return total

    async def _levels(self) -> int:
        redis = await self._ensure()
        return priority_levels(await unless_foreign(redis.hget(self.keys.meta, "priorities")))

    async def purge(self) -> int:
        """Delete every dead letter of the topic; return how many there were."""
        redis = await self._ensure()
        n = await self.count()
        for p in range(await self._partitions()):
            await redis.delete(self.keys.dead_letters(p))
        return n


def _replay_level(raw: dict[bytes, bytes], levels: int) -> tuple[int, str | None]:
    """The priority level to replay an entry to, or why it can't be replayed."""
    fields = sum(1 for k in raw if k.startswith(b"f:"))
    if not fields:
        return 0, "it holds no original fields"
    if fields > _MAX_REPLAY_FIELDS:
        return 0, f"its {fields} original fields are more than one command carries"
    text = raw.get(b"priority", b"0") or b"0"
    try:
        level = int(text)
    except ValueError:
        return 0, f"priority {text[:20]!r} is not an integer"
    if not 0 <= level < levels:
        return 0, f"priority {level} is not a level of the topic (0..{levels - 1})"
    return level, None
