"""Giving back entries a consumer was delivered but never handed to a handler.

Every read or claim of a stream entry adds one to its delivery count, and
``max_deliveries`` holds that count against the entry as handler runs that ended
without a result. Some deliveries never reach a handler:

- a read ahead brings entries for a partition that can't take them when it is
  taken (``_read_ahead.py``);
- entries held behind a failed message are still waiting when the partition is
  given up, or when the consumer leaves;
- a batch is cut off at the lease's local deadline, and the rest of it is left
  pending (``_handling.py``);
- a read of a cluster is cancelled (a stop, a rebalance) after some nodes
  answered it (``Reader.cut_off``);
- a retry's reply was lost, and the partition is given up before the retry is
  sent again (``OwnedPartition.retry_sent``): its claim and its count of runs
  are given back should it have been made.

:class:`GiveBack` keeps those entries owed and gives them back
(``lua/give_back.lua``): each entry still pending with this member gets back the
delivery count it had before that delivery, so that the claim that brings it again,
by this member or the partition's next owner, counts as the delivery that never
ran. A run counted for it in the ``runs`` hash is taken back with it. While the
member holds the lease, that is all. A run counted just before the lease is found
gone (marking a job active, a redelivery's count, a retry's claim) is given back
too, without the lease, if the entry's counts are still the ones this member's
delivery left: no one claimed it since, not even another instance of the same
member name (whose claim leaves it pending with that name). Owed entries are given
back before the consumer retries or claims anything, and before it releases a
lease; a failed attempt keeps them owed for the next. Only entries that a member
leaving with Redis unreachable could not give back, or that the partition's next
owner claimed first, stay counted, as those of a member that dies with a batch
read do.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

from ._delivery import ConsumerStats, OwnedPartition
from ._scripts import GIVE_BACK, ScriptCall, run_pipelined
from .connection import AnyRedis
from .keys import TopicKeys
from .message import Received

__all__ = ["GiveBack"]

log = logging.getLogger(__name__)


class GiveBack:
    """The entries one consumer (``name``) owes a give-back, per partition.

    ``token``: the consumer's lease token (with the lease, no count is compared).
    """

    def __init__(
        self, keys: TopicKeys, group: str, name: str, token: str, stats: ConsumerStats
    ) -> None:
        self._keys = keys
        self._group = group
        self._name = name
        self._token = token
        self._stats = stats
        self._owed: dict[int, list[Received]] = {}
        # (level, id) -> (runs before, runs now) as give_back.lua takes them
        self._runs: dict[int, dict[tuple[int, str], tuple[bytes, bytes]]] = {}

    @property
    def owed(self) -> bool:
        """Whether any entry waits to be given back."""
        return bool(self._owed)

    def owe(self, partition: int, messages: Iterable[Received]) -> None:
        """Owe a give-back of ``messages`` of ``partition``: delivered, never handed on."""
        owed = self._owed.setdefault(partition, [])
        known = {(m.priority, m.msg_id) for m in owed}  # ids repeat across priority levels
        owed += [m for m in messages if (m.priority, m.msg_id) not in known]
        if not owed:
            del self._owed[partition]

    def owe_each(self, messages: Iterable[Received]) -> None:
        """Owe a give-back of ``messages``, of any partitions."""
        by_partition: dict[int, list[Received]] = {}
        for m in messages:
            by_partition.setdefault(m.partition, []).append(m)
        for number, msgs in by_partition.items():
            self.owe(number, msgs)

    def owe_run(self, m: Received, before: int | None) -> None:
        """Owe ``m`` (never run) a give-back of the run counted for it in the ``runs`` hash.

        ``before``: the runs counted there before that one; None when the count's reply
        was lost (taken back if it was made for this delivery, see ``count_run.lua``).
        """
        self.owe(m.partition, [m])
        runs = (b"?", b"%d" % m.deliveries) if before is None else (
            b"%d" % max(before, 0), b"%d" % (max(before, 0) + 1)
        )  # fmt: skip
        self._runs.setdefault(m.partition, {})[(m.priority, m.msg_id)] = runs

    def owes(self, m: Received) -> bool:
        """Whether ``m`` is owed a give-back."""
        return any(
            x.msg_id == m.msg_id and x.priority == m.priority
            for x in self._owed.get(m.partition, ())
        )

    def owe_held(self, parts: Iterable[OwnedPartition]) -> None:
        """Owe the entries ``parts`` hold behind a failure that never ran (being given up).

        They leave the partition's memory: should it stay ours after all, it claims them
        back once its failure is settled, as it does any entries given back.
        """
        for part in parts:
            self._owe_retry(part)
            if not part.unrun:
                continue
            unrun = [m for m in part.held if (m.priority, m.msg_id) in part.unrun]
            part.held = [m for m in part.held if (m.priority, m.msg_id) not in part.unrun]
            part.unrun.clear()
            if not part.held:
                part.head_failed = part.isolate = False
            part.reclaim()
            self.owe(part.number, unrun)

    def _owe_retry(self, part: OwnedPartition) -> None:
        """Owe a give-back of the retry of ``part`` whose reply was lost, should it be made.

        Its claim and its count of runs go back (no handler ran after them); if it was not
        made, the counts are those already there, and nothing changes.
        """
        sent, part.retry_sent = part.retry_sent, None
        if (
            sent is None
            or sent[3] < 0  # its runs before are not known: left counted
            or not part.held
            or (part.held[0].priority, part.held[0].msg_id) != sent[:2]
        ):
            return
        claimed = copy.copy(part.held[0])
        claimed.deliveries = sent[2] + 1
        self.owe_run(claimed, sent[3])

    def drop(self) -> None:
        """Forget what is owed (the consumer leaves; those entries stay counted)."""
        self._owed, self._runs = {}, {}

    async def make(self, redis: AnyRedis) -> None:
        """Give back what is owed: the entries still pending with this member.

        Raises what Redis raised (as a pipeline does, or in place of a reply);
        what was not given back stays owed.
        """
        if not self._owed:
            return
        keys, group = self._keys, self._group
        calls: list[ScriptCall] = []
        where: list[int] = []
        for number, messages in self._owed.items():
            by_level: dict[int, list[Any]] = {}
            runs = self._runs.get(number, {})
            for m in messages:
                by_level.setdefault(m.priority, []).extend(
                    (m.msg_id, b"%d" % m.deliveries, b"%d" % max(m.deliveries - 1, 0))
                )
            for level, triples in by_level.items():
                taken = [x for (lv, i), n in runs.items() if lv == level for x in (i, *n)]
                calls.append((
                    GIVE_BACK,
                    [keys.stream(number, level), keys.lease(number, group),
                     keys.runs(number, group)],
                    [group, self._token, self._name, len(taken) // 3, *taken, *triples],
                ))  # fmt: skip
                where.append(number)
        # What is owed meanwhile (a heartbeat) stays owed.
        (owed, self._owed), (runs_owed, self._runs) = (self._owed, {}), (self._runs, {})
        try:
            replies = await run_pipelined(redis, calls)  # raises, or an error for a reply
        except BaseException:
            for number in owed:
                self._owe_again(number, owed, runs_owed)
            raise
        failure = None
        for number, reply in zip(where, replies, strict=True):
            if isinstance(reply, Exception):  # kept owed (giving back twice is harmless)
                failure = failure or reply
                self._owe_again(number, owed, runs_owed)
            elif int(reply[1]):
                self._stats.add_trimmed(number, int(reply[1]))
                log.warning(
                    "consumer %s: %d entries of partition %d delivered but never handled were "
                    "trimmed meanwhile", self._name, int(reply[1]), number,
                    extra={"partition": number},
                )  # fmt: skip
        if failure is not None:
            raise failure

    def _owe_again(
        self,
        number: int,
        owed: dict[int, list[Received]],
        runs: dict[int, dict[tuple[int, str], tuple[bytes, bytes]]],
    ) -> None:
        self.owe(number, owed[number])
        if number in runs:
            self._runs.setdefault(number, {}).update(runs[number])
