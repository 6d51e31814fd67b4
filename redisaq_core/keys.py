"""Every Redis key name the library uses is built here, and only here.

Each key carries a hash tag so that it runs unchanged on Redis Cluster:

* topic-level keys (metadata, group membership, assignment) share the topic's
  tag ``{t:<topic>}``;
* a partition's stream and everything written atomically with it (its
  dead-letter stream, its per-group leases) share the partition's tag
  ``{p:<topic>:<n>}``, so the partitions of one topic spread over the slots.

Layout (``redisaq`` is the fixed namespace)::

    redisaq:{topics}                          set   every known topic
    redisaq:{t:T}:meta                        hash  partitions, created_at
    redisaq:{t:T}:groups                      set   group names of topic T
    redisaq:{t:T}:g:G:members                 zset  member name -> last heartbeat (ms, server time)
    redisaq:{t:T}:g:G:tokens                  hash  member name -> instance token
    redisaq:{t:T}:g:G:assignment              hash  partition -> member name, "_v" -> version
    redisaq:{t:T}:g:G:mv                      string members version: raised by each join,
                                                    leave or expiry (heartbeats send lists
                                                    only when it or "_v" moved)
    redisaq:{t:T}:metrics                     hash  counters and histograms (see metrics.py)
    redisaq:{t:T}:series                      hash  slot -> JSON record of a 5 s bucket, a ring
                                                    of the last 15 minutes (see metrics/_series.py)
    redisaq:{t:T}:flushed:R                   string the number of metrics recorder R's last
                                                    flush (so that one resent after its reply
                                                    was lost is not counted twice); expires
    redisaq:{t:T}:jobs                        pub/sub channel: "<job_id> <status>" on each change
    redisaq:{t:T}:cancels                     pub/sub channel: "<job_id>" of a running job to stop
    redisaq:{t:T}:due                         pub/sub channel: "<partition> <due ms>" when a
                                                    delayed entry becomes its partition's earliest
    redisaq:{p:T:N}:stream                    stream the partition's entries (priority 0)
    redisaq:{p:T:N}:stream:P                  stream the partition's entries of priority P >= 1
    redisaq:{p:T:N}:dlq                       stream the partition's dead letters
    redisaq:{p:T:N}:delayed                   zset  delayed entries (priority 0) -> due time (ms,
                                                    server time), until moved into the stream
    redisaq:{p:T:N}:delayed:P                 zset  the same for priority P >= 1
    redisaq:{p:T:N}:delayed-seq               string counter numbering the delayed entries
    redisaq:{p:T:N}:lease:G                   string owner token of partition N for group G
    redisaq:{p:T:N}:runs:G                    hash  entry id -> handler runs after its first
                                                    delivery, for group G (while unsettled)
    redisaq:{p:T:N}:job:ID                    hash  a job's status record (expires after result_ttl)
    redisaq:{p:T:N}:jobs                      zset  job id -> last change (ms), for listings
    redisaq:{p:T:N}:once:K                    string entry id (and job id) enqueued under
                                                    idempotency key K (expires after the window)
    redisaq:{schedules}:defs                  hash  schedule name -> its definition (JSON),
                                                    for ``redisaq schedule run``
    redisaq:{schedules}:ticks                 zset  schedule name -> its last tick handled
                                                    (ms); a tick's own record is the
                                                    idempotency marker ``once:schedule:NAME:MS``
                                                    in its partition
    redisaq:{p:T:N}:fo:L:S:G:SP:LV:ID         string a fan-out bridge (group G) wrote entry ID of
                                                    partition SP (level LV) of topic S (name length
                                                    L) here (Redis Cluster only; expires)

A job id is ``<topic>/<partition>/<random hex>``: it names the partition, so a
job's record lives in its partition's slot and changes atomically with the
acknowledgement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.crc import key_slot

from .errors import ConfigurationError

__all__ = [
    "MAX_PARTITIONS",
    "MAX_PRIORITIES",
    "NAMESPACE",
    "RegistryKeys",
    "TopicKeys",
    "is_name",
    "job_id",
    "parse_job_id",
    "partition_count",
    "partition_slots",
    "priority_levels",
    "schedule_definitions",
    "schedule_ticks",
    "validate_name",
]

NAMESPACE = "redisaq"
_BAD_NAME = re.compile(r"[{}\s]")

MAX_PRIORITIES = 16
"""The most priority levels a topic can have; a ``priority`` is ``0 .. MAX_PRIORITIES - 1``."""

MAX_PARTITIONS = 65_536
"""The most partitions a topic can have."""

RESULT_TTL = 3600.0
"""Seconds a finished job's record (and result) is kept unless ``result_ttl`` says otherwise."""


def partition_count(stored: object) -> int:
    """A topic's partition count from the one stored in its metadata (``partitions``).

    Another client may have written anything there: what is no whole number from 0 to
    :data:`MAX_PARTITIONS` reads as 0, as if the metadata were gone (a member writes its
    own count back then, and a reader shows no partitions).
    """
    count = _whole(stored)
    return count if count is not None and count <= MAX_PARTITIONS else 0


def priority_levels(stored: object) -> int:
    """A topic's priority levels from the count stored in its metadata (``priorities``).

    Another client may have written anything there: what is no whole number reads as
    1, and a count past :data:`MAX_PRIORITIES` as that.
    """
    levels = _whole(stored)
    return 1 if levels is None else min(max(levels, 1), MAX_PRIORITIES)


def _whole(stored: object) -> int | None:
    """A stored count: an integer reply, or ASCII digits without a leading zero.

    As ``ensure_partitions.lua`` reads it, which writes over anything else; ``int()``
    would also take "+3", " 3", "3_0" and "03" (which scripts compare as text).
    """
    if isinstance(stored, int) and not isinstance(stored, bool):
        return stored if stored >= 0 else None
    text = stored.decode("ascii", "replace") if isinstance(stored, bytes) else stored
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        return None
    if text != "0" and text.startswith("0"):  # written as members write it, or not at all
        return None
    return int(text) if len(text) <= 18 else 2**63  # past any count (int() stops at 4,300)


def validate_name(value: object, argument: str) -> str:
    """Return ``value`` if it is a usable topic or group name, else raise ``ConfigurationError``.

    A name must be a non-empty string without braces (they would break the
    hash tags) or whitespace.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{argument} must be a non-empty string, got {value!r}")
    if _BAD_NAME.search(value):
        raise ConfigurationError(f"{argument} must not contain braces or whitespace, got {value!r}")
    utf8(value, argument)
    return value


def utf8(value: str, argument: str, error: type[ConfigurationError] = ConfigurationError) -> bytes:
    """``value`` UTF-8 encoded; ``error`` for text it can't hold (a lone surrogate)."""
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise error(
            f"{argument} must be text UTF-8 can encode, got {value!r} ({exc.reason})"
        ) from None


def is_name(value: object) -> bool:
    """Whether ``value`` is a usable topic or group name (see :func:`validate_name`).

    For names other clients wrote (the topic index, say): readers skip those that are not.
    """
    try:
        validate_name(value, "name")
    except ConfigurationError:
        return False
    return True


@dataclass(frozen=True)
class TopicKeys:
    """Key names of one topic (and, through ``group``, of one of its consumer groups)."""

    topic: str

    def __post_init__(self) -> None:
        validate_name(self.topic, "topic")

    @staticmethod
    def topic_index() -> str:
        """The set of every topic name."""
        return f"{NAMESPACE}:{{topics}}"

    @property
    def _tag(self) -> str:
        return f"{NAMESPACE}:{{t:{self.topic}}}"

    @property
    def meta(self) -> str:
        """Hash with the topic's partition count."""
        return f"{self._tag}:meta"

    @property
    def groups(self) -> str:
        """Set of the topic's consumer group names."""
        return f"{self._tag}:groups"

    def members(self, group: str) -> str:
        """Sorted set of a group's members scored by last heartbeat (server ms)."""
        return f"{self._tag}:g:{group}:members"

    def tokens(self, group: str) -> str:
        """Hash of a group's member names to their instance tokens."""
        return f"{self._tag}:g:{group}:tokens"

    def assignment(self, group: str) -> str:
        """Hash of partition number to owning member, plus a ``_v`` version field."""
        return f"{self._tag}:g:{group}:assignment"

    def _partition_tag(self, partition: int) -> str:
        return f"{NAMESPACE}:{{p:{self.topic}:{partition}}}"

    def stream(self, partition: int, priority: int = 0) -> str:
        """The stream that holds a partition's entries of one priority level."""
        if priority:
            return f"{self._partition_tag(partition)}:stream:{priority}"
        return f"{self._partition_tag(partition)}:stream"

    def delayed(self, partition: int, priority: int = 0) -> str:
        """Sorted set of a partition's delayed entries of one priority level, scored by due ms.

        A member is the entry's number in the partition (16 hex digits, so that entries due
        at the same time keep the order they were scheduled in) followed by its fields, each
        as 8 hex digits of length and the bytes.
        """
        if priority:
            return f"{self._partition_tag(partition)}:delayed:{priority}"
        return f"{self._partition_tag(partition)}:delayed"

    def delayed_sequence(self, partition: int) -> str:
        """Counter that numbers a partition's delayed entries."""
        return f"{self._partition_tag(partition)}:delayed-seq"

    @property
    def due_channel(self) -> str:
        """Pub/sub channel telling owners ``"<partition> <due ms>"`` of a new earliest entry."""
        return f"{self._tag}:due"

    def dead_letters(self, partition: int) -> str:
        """The dead-letter stream of a partition."""
        return f"{self._partition_tag(partition)}:dlq"

    def lease(self, partition: int, group: str) -> str:
        """The key whose value is the token of the member holding a partition for a group."""
        return f"{self._partition_tag(partition)}:lease:{group}"

    def runs(self, partition: int, group: str) -> str:
        """Hash of entry id to the handler runs of a redelivered entry (see handling.py)."""
        return f"{self._partition_tag(partition)}:runs:{group}"

    def members_version(self, group: str) -> str:
        """Counter raised whenever a member of ``group`` joins, leaves or expires."""
        return f"{self._tag}:g:{group}:mv"

    @property
    def metrics(self) -> str:
        """Hash of the topic's metrics (counters and histogram buckets)."""
        return f"{self._tag}:metrics"

    @property
    def series(self) -> str:
        """Hash of the topic's recent time series: a ring of bucket records (metrics/_series.py)."""
        return f"{self._tag}:series"

    def flushed(self, recorder: str) -> str:
        """String: the number of the last flush metrics recorder ``recorder`` applied."""
        return f"{self._tag}:flushed:{recorder}"

    @property
    def job_channel(self) -> str:
        """Pub/sub channel announcing each job status change as ``"<job_id> <status>"``.

        Also ``"<job_id> progress"``, and ``"<job_id> gone"`` for a job settled without a
        record (deleted while it was pending).
        """
        return f"{self._tag}:jobs"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel naming each running job asked to stop (its record says so too)."""
        return f"{self._tag}:cancels"

    def job(self, partition: int, job_id: str) -> str:
        """Hash with one job's status record."""
        return f"{self._partition_tag(partition)}:job:{job_id}"

    def jobs(self, partition: int) -> str:
        """Sorted set of the partition's job ids scored by their last change (ms)."""
        return f"{self._partition_tag(partition)}:jobs"

    def once(self, partition: int, idempotency_key: str) -> str:
        """Marker of what was enqueued in a partition under an idempotency key."""
        return f"{self._partition_tag(partition)}:once:{idempotency_key}"

    def fanout_record(
        self, partition: int, source: str, group: str, source_partition: int, level: int
    ) -> str:
        """Prefix of the fan-out idempotency records kept in one of this topic's partitions.

        A bridge reading ``source`` with consumer group ``group`` marks each
        entry of ``source_partition`` (priority ``level``) it wrote into
        ``partition`` with the key ``<prefix><entry id>``, in ``partition``'s
        slot. The source name's length comes first, so that no two
        (source, group) pairs share a prefix.
        """
        return (
            f"{self._partition_tag(partition)}:fo:{len(source)}:{source}:{group}:"
            f"{source_partition}:{level}:"
        )


def schedule_definitions() -> str:
    """Hash of the stored schedules: name -> definition (JSON)."""
    return f"{NAMESPACE}:{{schedules}}:defs"


def schedule_ticks() -> str:
    """Sorted set of schedule names scored by their last tick handled (ms since the epoch)."""
    return f"{NAMESPACE}:{{schedules}}:ticks"


def partition_slots(topic: str, partitions: int) -> dict[int, int]:
    """The hash slot of each partition of ``topic`` (partition number -> slot).

    Everything of a partition (its streams, dead letters, leases, job records)
    shares the partition's hash tag, so this is where all of it lives; compare
    with ``CLUSTER SLOTS`` to see which node serves each partition.
    """
    keys = TopicKeys(topic)
    return {p: key_slot(keys.stream(p).encode()) for p in range(partitions)}


def job_id(topic: str, partition: int, random_hex: str) -> str:
    """Build a job id: ``<topic>/<partition>/<random hex>``."""
    return f"{topic}/{partition}/{random_hex}"


def parse_job_id(value: str) -> tuple[str, int]:
    """Return ``(topic, partition)`` of a job id, or raise ``ConfigurationError``."""
    parts = value.rsplit("/", 2) if isinstance(value, str) else []
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or not parts[2]:
        raise ConfigurationError(f"not a job id (expected topic/partition/id): {value!r}")
    return validate_name(parts[0], "job id topic"), int(parts[1])


@dataclass(frozen=True)
class RegistryKeys:
    """Key names of one service registry, i.e. of one ``key_prefix``.

    Every key of a registry starts with its ``prefix`` and shares the hash
    tag ``{<prefix>registry}``, so that the registry's scripts, which touch
    several of its keys at once, run on one Redis Cluster slot; registries
    with different prefixes spread over the slots and never share a key.
    Layout (``B`` is :attr:`base`, ``<prefix>redisaq:{<prefix>registry}``)::

        B:active            zset   service id -> last_seen (server time, seconds)
        B:types             set    service types that have at least one service
        B:type:TYPE         set    ids of the services of one type
        B:service:ID        hash   the service record (fields of ServiceInfo)
        B:alive:ID          string liveness key of a keepalive session (expires)
        B:worker_status     hash   service id -> WorkerStatus, kept by HealthMonitor

    The Lua scripts build the ``service``, ``type`` and ``alive`` names from
    ``base`` the same way as the methods here.
    """

    prefix: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str):
            raise ConfigurationError(f"key_prefix must be a string, got {self.prefix!r}")
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigurationError(
                f"key_prefix must not contain braces (they would break the hash tag), "
                f"got {self.prefix!r}"
            )

    @property
    def base(self) -> str:
        """The start of every key name of this registry, hash tag included."""
        return f"{self.prefix}{NAMESPACE}:{{{self.prefix}registry}}"

    @property
    def active(self) -> str:
        """Sorted set of registered service ids scored by last_seen (server seconds)."""
        return f"{self.base}:active"

    @property
    def types(self) -> str:
        """Set of the service types that have at least one registered service."""
        return f"{self.base}:types"

    @property
    def worker_status(self) -> str:
        """Hash of service id to the worker status a HealthMonitor last gave it."""
        return f"{self.base}:worker_status"

    def service(self, service_id: str) -> str:
        """Hash holding one service's record."""
        return f"{self.base}:service:{service_id}"

    def service_type(self, service_type: str) -> str:
        """Set of the ids of the services of one type."""
        return f"{self.base}:type:{service_type}"

    def alive(self, service_id: str) -> str:
        """Expiring key that exists while a keepalive session of the service renews it."""
        return f"{self.base}:alive:{service_id}"
