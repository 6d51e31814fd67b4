"""Checks a fault test's records: nothing lost, duplicates bounded, order and exclusivity kept."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Event:
    kind: str
    pid: int
    partition: int
    msg_id: str
    n: int
    deliveries: int
    time: float


def load(path: Path) -> list[Event]:
    """Events of a record file (a line cut short by a SIGKILL is skipped)."""
    events = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 7:
            continue
        kind, pid, partition, msg_id, n, deliveries, t = parts
        events.append(
            Event(kind, int(pid), int(partition), msg_id, int(n), int(deliveries), float(t))
        )
    return events


def _id_key(msg_id: str) -> tuple[int, int]:
    ms, seq = msg_id.split("-")
    return int(ms), int(seq)


@dataclass
class Report:
    """What the records say about a run."""

    handled: dict[int, int] = field(default_factory=dict)  # n -> completed handler calls
    lost: set[int] = field(default_factory=set)
    duplicates: int = 0
    order_violations: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    late_redeliveries: int = 0  # left out of the order check (see ``check``)


def check(events: list[Event], expected: set[int], *, late_redeliveries: bool = False) -> Report:
    """Compare completed handler calls with the ``n`` values that were produced.

    ``late_redeliveries``: leave out of the order check the messages whose first
    completion was a redelivery (counted in ``Report.late_redeliveries``). A member
    paused past its lease may, in the instant it resumes, read new entries of a
    partition it lost before it notices: the owner handles them later, when its stray
    sweep finds them (README, delivery guarantees).
    """
    report = Report()
    ends = [e for e in events if e.kind == "end"]
    counts: dict[int, int] = defaultdict(int)
    for e in ends:
        counts[e.n] += 1
    report.handled = dict(counts)
    report.lost = expected - set(counts)
    report.duplicates = sum(c - 1 for c in counts.values())

    # Per partition, each message's first completion comes in stream order.
    first: dict[int, dict[str, float]] = defaultdict(dict)
    by: dict[tuple[int, str], int] = {}
    for e in ends:
        if e.msg_id not in first[e.partition]:
            if late_redeliveries and e.deliveries > 1:
                first[e.partition][e.msg_id] = -1.0  # known, left out below
                report.late_redeliveries += 1
                continue
            first[e.partition][e.msg_id] = e.time
            by[e.partition, e.msg_id] = e.pid
    for partition in first:
        first[partition] = {i: t for i, t in first[partition].items() if t >= 0}
    for partition, seen in first.items():
        by_time = sorted(seen, key=lambda i: seen[i])
        if by_time != sorted(by_time, key=_id_key):
            # Name the first pair out of order: which process completed which, and when.
            for a, b in itertools.pairwise(by_time):
                if _id_key(a) > _id_key(b):
                    report.order_violations.append(
                        f"partition {partition}: {a} (pid {by[partition, a]} at {seen[a]:.3f}) "
                        f"completed before {b} (pid {by[partition, b]} at {seen[b]:.3f})"
                    )
                    break

    # Per partition, no two processes run handlers at overlapping times.
    for partition in first:
        calls = _calls(events, partition)
        for i, (_, end, pid) in enumerate(calls):
            for start2, _, pid2 in calls[i + 1 :]:
                if start2 >= end:
                    break
                if pid2 != pid:
                    report.overlaps.append(f"partition {partition}: pid {pid} and {pid2}")
    return report


def _calls(events: list[Event], partition: int) -> list[tuple[float, float, int]]:
    """(start, end, pid) of each completed handler call on a partition, by start time."""
    starts: dict[tuple[int, str, int], float] = {}
    out = []
    for e in events:
        if e.partition != partition:
            continue
        key = (e.pid, e.msg_id, e.deliveries)
        if e.kind == "start":
            starts[key] = e.time
        elif key in starts:
            out.append((starts.pop(key), e.time, e.pid))
    return sorted(out)
