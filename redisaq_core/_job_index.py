"""Keeping a partition's jobs index to the records that still exist.

A job's record expires ``result_ttl`` after it finished; its entry in the
partition's jobs index (a sorted set scored by its last change) has no expiry
of its own. A listing drops the entries it finds without a record
(``ResultStore.list_jobs``), but only as far as it reads, so with jobs
flowing and no listing the index would only grow. :class:`IndexSweep` walks
the indexes of the partitions where its consumer settled jobs, a slice at a
time from the oldest change on, about once a minute (the consumer's stray
sweep), and drops the entries whose records are gone (``lua/job_index_clean.lua``,
which keeps an entry that changed since it was read).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ._codec import shown_text
from ._scripts import Script, ScriptCall, run_pipelined
from .connection import AnyRedis
from .keys import TopicKeys

__all__ = ["JOB_INDEX_CLEAN", "IndexSweep", "clean_calls"]

JOB_INDEX_CLEAN = Script("job_index_clean")

_CHUNK = 100
"""Entries looked at by one script call."""

_MAX_SLICE = 20_000
"""The most entries of one partition's index one sweep looks at."""


def clean_calls(
    keys: TopicKeys, partition: int, entries: list[tuple[str, float]]
) -> list[ScriptCall]:
    """The calls that drop those of ``entries`` (job id, score read) whose records are gone."""
    calls: list[ScriptCall] = []
    for start in range(0, len(entries), _CHUNK):
        chunk = entries[start : start + _CHUNK]
        args: list[Any] = []
        for job_id, score in chunk:
            args += [job_id, int(score) if math.isfinite(score) else repr(score)]
        job_keys = [keys.job(partition, job_id) for job_id, _ in chunk]
        calls.append((JOB_INDEX_CLEAN, [keys.jobs(partition), *job_keys], args))
    return calls


class IndexSweep:
    """The sweep of one consumer: where it settled jobs, and how far it has looked."""

    def __init__(self, keys: TopicKeys) -> None:
        self.keys = keys
        self._settled: dict[int, int] = {}  # partition -> jobs settled since its last sweep
        self._after: dict[int, float] = {}  # partition -> the last score looked at

    def note(self, partition: int, jobs: int) -> None:
        """``jobs`` jobs of ``partition`` were settled (their index entries will expire)."""
        self._settled[partition] = self._settled.get(partition, 0) + jobs

    async def sweep(self, redis: AnyRedis, partitions: Iterable[int]) -> int:
        """Look at the next slice of each of ``partitions``' indexes where jobs were settled.

        A slice is twice the jobs settled there since the last sweep, and at least 100
        entries; past the newest entry the next sweep starts from the oldest again.
        Returns how many entries were dropped. Redis errors are raised (nothing is lost:
        the next sweep looks again).
        """
        wanted = [p for p in partitions if p in self._settled]
        if not wanted:
            return 0
        pipe: Any = redis.pipeline(transaction=False)
        sizes = {p: min(_MAX_SLICE, 2 * self._settled[p] + _CHUNK) for p in wanted}
        for p in wanted:
            self._settled[p] = 0  # looked at again at every sweep: its records expire later
            after = self._after.get(p, -math.inf)
            start = "-inf" if after == -math.inf else f"({after!r}"
            pipe.zrangebyscore(self.keys.jobs(p), start, "+inf", 0, sizes[p], withscores=True)
        replies = await pipe.execute(raise_on_error=False)
        calls: list[ScriptCall] = []
        for p, reply in zip(wanted, replies, strict=True):
            if isinstance(reply, Exception):  # another client's key of another type
                continue
            entries = [(shown_text(member), float(score)) for member, score in reply]
            self._after[p] = entries[-1][1] if len(entries) >= sizes[p] else -math.inf
            calls += clean_calls(self.keys, p, entries)
        if not calls:
            return 0
        return sum(int(r) for r in await run_pipelined(redis, calls) if isinstance(r, int))
