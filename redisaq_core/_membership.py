"""Group membership: heartbeats, the shared assignment, and partition leases.

The protocol, run by every member on each heartbeat:

1. The heartbeat script records the member in the group's sorted set with
   the Redis server's time, drops members silent for longer than the TTL, and
   returns the live members, the partition count and the stored assignment.
2. The member computes :func:`~redisaq_core._assignment.assign` from those
   inputs. Every member computes the same result; when it differs from the
   stored one, it is written with a compare-and-set on its version.
3. The member takes or renews the lease of each partition assigned to it. A
   partition is read only while its lease is held, and acknowledgements check
   the lease in the same script, so a member that lost its lease (paused
   longer than the TTL) can no longer acknowledge for that partition. A held
   lease is renewed only when :func:`lease_due` says so (about every other
   heartbeat), and while the member still holds it by its own clock, with
   one GETEX that renews it and reads its holder (``docs/design.md``, Leases).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._assignment import assign
from ._codec import as_str
from ._failures import REDIS_FAILURES
from ._scripts import (
    COMMIT_ASSIGNMENT,
    HEARTBEAT,
    LEASE,
    LEAVE,
    RELEASE,
    ScriptCall,
    node_of,
    run_pipelined,
)
from ._tracing import mark
from .connection import AnyRedis, is_cluster
from .errors import DuplicateConsumerError
from .keys import TopicKeys, partition_count, priority_levels

__all__ = ["LEASE_VALIDITY", "GroupView", "LeaseState", "Membership", "lease_due"]

log = logging.getLogger(__name__)

NAME_CHECK_EVERY = 10
"""Heartbeats between two checks of the member's name on a steady heartbeat without leases."""

LEASE_VALIDITY = 0.8
"""Fraction of the lease's TTL during which a member takes a lease it renewed as its own."""


def lease_due(valid_until: float, now: float, interval: float, ttl: float) -> bool:
    """Whether a held lease (locally valid until ``valid_until``) is renewed on this heartbeat.

    It is renewed once ``min(ttl / 2, 1.5 * interval)`` has passed since it was
    last renewed, so at most every other heartbeat and before half of it is used,
    and earlier when its local deadline would come less than 1.1 intervals after
    this heartbeat. All times are the member's monotonic clock, in seconds.
    """
    renewed = valid_until - LEASE_VALIDITY * ttl
    limit = min(ttl / 2, 1.5 * interval, LEASE_VALIDITY * ttl - 1.1 * interval)
    return now - renewed >= limit


class LeaseState:
    """What the lease script reports for one partition."""

    LOST = 0
    RENEWED = 1
    ACQUIRED = 2


@dataclass(frozen=True)
class GroupView:
    """One heartbeat's view of the group."""

    now_ms: int
    partitions: int
    members: tuple[str, ...]
    assignment: dict[int, str] = field(default_factory=dict)
    priorities: int = 1

    def owned_by(self, member: str) -> set[int]:
        """Partitions the assignment gives to ``member``."""
        return {p for p, m in self.assignment.items() if m == member}


class Membership:
    """One member's side of the group protocol (heartbeat, assignment, leases)."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: TopicKeys,
        group: str,
        name: str,
        token: str,
        ttl: float,
        *,
        static: bool = False,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.name = name
        self.token = token
        self.ttl = ttl
        self.ttl_ms = max(1, int(ttl * 1000))
        self.static = static
        self.previous_token = ""
        self._joined = False
        self._known = ""  # "<version> <members version> <partitions> <members>" of the view
        self._view: GroupView | None = None
        self._beats = 0
        self.renewed: dict[int, int] = {}  # lease states of what the last beat() renewed
        self.lease_error: BaseException | None = None  # of the last leases(): see check_leases()
        self._members: tuple[tuple[str, ...], int] | None = None  # names, members version
        self._members_told: tuple[tuple[str, ...], int] | None = None  # as moved() last told

    async def beat(self, renew: list[int] | None = None, blind: int = 0) -> GroupView:
        """Heartbeat, then return the group's view with an up-to-date assignment.

        ``renew``: partitions whose leases to take or renew in the same script (one server
        only: on a cluster the leases live in other slots); their states are in
        :attr:`renewed` afterwards. The first ``blind`` of them are held by this member's
        own reckoning: renewed with one GETEX, not checked first.
        """
        k, g = self.keys, self.group
        keys = [k.members(g), k.tokens(g), k.meta, k.assignment(g), k.members_version(g)]
        renew = [] if renew is None or is_cluster(self.redis) else renew
        keys += [k.lease(p, g) for p in renew]
        mode = "beat" if self._joined else ("static-join" if self.static else "join")
        self.renewed = {}
        self._beats += 1
        check = "check" if self._beats % NAME_CHECK_EVERY == 0 else ""
        if mode == "static-join" and not self.previous_token:
            await self._read_previous_token()
        for _ in range(5):
            known = self._known if self._view is not None else ""
            args = [self.name, self.token, self.ttl_ms, mode, known, self.previous_token, blind]
            args.append(check)
            reply = await HEARTBEAT(self.redis, keys, args)
            now, partitions, members, flat, version, other, levels, members_version, states = reply
            if isinstance(partitions, int) and partitions < 0:  # a stored count is text
                if self._joined:
                    raise DuplicateConsumerError(
                        f"consumer {self.name!r} of group {g!r} on topic {k.topic!r} was "
                        "replaced by a newer instance with the same name"
                    )
                raise DuplicateConsumerError(
                    f"consumer name {self.name!r} is already used by a live member of group "
                    f"{g!r} on topic {k.topic!r}; pick another consumer_name"
                    + ("" if self.static else " or pass static=True for a restart")
                )
            self._joined = True
            mode = "beat"
            self.renewed = {p: int(state) for p, state in zip(renew, states, strict=True)}
            if other:
                self.previous_token = as_str(other)
            count, priorities = partition_count(partitions), priority_levels(levels)
            if self._view is not None and not members and not flat and known:
                # Nothing changed since the last view: the script sent no lists.
                self._view = replace(self._view, now_ms=int(now), priorities=priorities)
                self._members = (self._view.members, int(members_version))
                return self._view
            stored = _assignment(flat)
            live = tuple(name for name in map(_text, members) if name is not None)
            self._members = (live, int(members_version))
            wanted = assign(live, count, stored)
            view = GroupView(int(now), count, live, wanted, priorities)
            if wanted == stored:
                return self._keep(view, int(version), int(members_version), len(members))
            pairs: list[object] = [version]
            for p, m in wanted.items():
                pairs += [p, m]
            if await COMMIT_ASSIGNMENT(self.redis, [k.assignment(g)], pairs):
                log.info(
                    "group %s of %s: %d member(s), %d partition(s), assignment v%d",
                    g, k.topic, len(live), count, int(version) + 1,
                )  # fmt: skip
                return self._keep(view, int(version) + 1, int(members_version), len(members))
            self._view = None
        # Members keep racing to commit; they all computed from fresh inputs, so use ours.
        self._view = None
        return view

    async def _read_previous_token(self) -> None:
        """Note the token the name holds before a static join takes it over.

        The join's reply names it too; but a join whose reply was lost and that ran again
        finds the name already this instance's, and without that token the earlier
        instance's leases would only be taken once they expire.
        """
        try:
            holder = await self.redis.hget(self.keys.tokens(self.group), self.name)
            if holder is not None and as_str(holder) != self.token:
                self.previous_token = as_str(holder)
        except (ResponseError, UnicodeDecodeError):
            pass  # a tokens key of another type, or another client's value: no instance's token

    def moved(self) -> bool:
        """Whether the members changed since the last call: their names or the members version.

        The version also moves when an earlier instance of a member's name, replaced by a
        static restart, heartbeats again: it may have read entries pending under that name.
        """
        moved = self._members != self._members_told
        self._members_told = self._members
        return moved

    def _keep(self, view: GroupView, version: int, members_version: int, stored: int) -> GroupView:
        """Cache ``view`` as of these versions: the next heartbeat sends only what changed.

        ``stored``: the members in the group's set, those whose names were skipped included.
        """
        self._view = view
        self._known = f"{version} {members_version} {view.partitions} {stored}"
        return view

    def due(
        self, deadlines: Mapping[int, float], now: float, interval: float
    ) -> tuple[list[int], list[int]]:
        """Held leases (partition -> local deadline) to renew on this heartbeat.

        Returns ``(due, held)``: the due ones, those still held by this member's own clock
        (before their local deadline) first, and those held ones alone.
        """
        due = [p for p, until in deadlines.items() if lease_due(until, now, interval, self.ttl)]
        held = [p for p in due if deadlines[p] > now]
        return held + [p for p in due if deadlines[p] <= now], held

    async def leases(self, partitions: list[int], held: Collection[int] = ()) -> dict[int, int]:
        """Take or renew the leases of ``partitions``; map each to a :class:`LeaseState`.

        ``held``: those this member holds by its own reckoning (renewed with one GETEX).
        A partition whose call failed (an error reply, its node unreachable or too slow) is
        left out: whether its lease was renewed is not known, so it may have lapsed, and
        its local deadline must stay as it was. The first such error is kept for
        :meth:`check_leases`; the other partitions' states stand. On a cluster each node's
        calls go in their own pipeline, and a node that has not answered within
        ``(1 - LEASE_VALIDITY) * ttl`` is given up on, so that a node down or failing over
        holds up no other node's renewals.
        """
        self.lease_error = None
        if not partitions:
            return {}
        args = [self.token, self.ttl_ms, self.previous_token]
        calls: dict[int, ScriptCall] = {
            p: (LEASE, [self.keys.lease(p, self.group)], [*args, "renew" if p in held else ""])
            for p in partitions
        }
        groups = _by_node(self.redis, {p: call[1][0] for p, call in calls.items()})
        tasks = {
            asyncio.ensure_future(run_pipelined(self.redis, [calls[p] for p in group])): group
            for group in groups
        }
        limit = self.ttl * (1 - LEASE_VALIDITY) if len(tasks) > 1 else None
        try:
            await asyncio.sleep(0)  # sent before the time starts: a busy loop is no slow node
            await asyncio.wait(tasks, timeout=limit)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        states: dict[int, int] = {}
        errors: list[BaseException] = []
        for task, group in tasks.items():
            if task.cancelled():
                errors.append(
                    RedisTimeoutError(
                        f"no reply within {limit or 0:.3g}s to the lease calls of partitions "
                        f"{group}"
                    )
                )
                continue
            if (exc := task.exception()) is not None:
                errors.append(exc)
                continue
            for p, reply in zip(group, task.result(), strict=True):
                if isinstance(reply, Exception):
                    errors.append(reply)
                else:
                    states[p] = int(reply)
        self.lease_error = errors[0] if errors else None
        return states

    def lease_failure(self) -> BaseException | None:
        """The first error of the last :meth:`leases` call, taken: it is reported once."""
        error, self.lease_error = self.lease_error, None
        return error

    def check_leases(self) -> None:
        """Raise the first error of the last :meth:`leases` call, if one of its calls failed."""
        if (error := self.lease_failure()) is not None:
            raise error

    async def release(self, partitions: list[int]) -> None:
        """Give up the leases of ``partitions`` (those still ours).

        Every release is sent; if one failed, the first error is raised once all replies
        are in. Such a lease lapses on its own within the TTL.
        """
        if not partitions:
            return
        results = await run_pipelined(
            self.redis,
            [(RELEASE, [self.keys.lease(p, self.group)], [self.token]) for p in partitions],
        )
        errors = [r for r in results if isinstance(r, Exception)]
        released = [
            p for p, r in zip(partitions, results, strict=True) if not isinstance(r, Exception)
        ]
        if released:
            mark(
                "release", self.keys.topic, self.group, self.name,
                **{"redisaq.partitions": released},
            )  # fmt: skip
        if errors:
            raise errors[0]

    async def leave(self, owned: list[int] | None = None) -> None:
        """Give up the leases of ``owned``, then leave the group at once.

        Peers rebalance on their next heartbeat. The member leaves even if a release
        failed; that error is raised afterwards.
        """
        failed: BaseException | None = None
        try:
            await self.release(owned or [])
        except REDIS_FAILURES as exc:
            failed = exc
        k, g = self.keys, self.group
        await LEAVE(
            self.redis, [k.members(g), k.tokens(g), k.members_version(g)], [self.name, self.token]
        )
        if failed is not None:
            raise failed


def _by_node(redis: AnyRedis, keys: Mapping[int, str]) -> list[list[int]]:
    """The partitions of ``keys`` grouped by the cluster node serving each key.

    One group on one server; on a cluster, keys whose node is not known yet go together
    (redis-py routes them).
    """
    if not isinstance(redis, RedisCluster):
        return [list(keys)]
    groups: dict[str, list[int]] = {}
    for p, key in keys.items():
        node = node_of(redis, key)
        groups.setdefault("" if node is None else node.name, []).append(p)
    return list(groups.values())


def _text(value: bytes | str) -> str | None:
    """A member name, or ``None`` for one that is no UTF-8 (another client's)."""
    try:
        return as_str(value)
    except UnicodeDecodeError:
        return None


def _assignment(flat: list[bytes | str]) -> dict[int, str]:
    """The stored assignment, but for fields another client wrote that name no partition.

    Those are left out (a partition no member owns yet): the next commit writes over them.
    """
    stored: dict[int, str] = {}
    for partition, owner in zip(flat[::2], flat[1::2], strict=True):
        try:
            stored[int(partition)] = as_str(owner)
        except (ValueError, UnicodeDecodeError):
            continue
    return stored
