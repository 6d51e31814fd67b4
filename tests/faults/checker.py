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

    ``late_redeliveries``: a redelivered message whose first completion came after
    that of a newer message of its partition is set aside from the order check and
    counted in ``Report.late_redeliveries``. A member paused past its lease may, in
    the instant it resumes, read new entries of a partition it lost before it
    notices: the owner handles them later, when its stray sweep finds them (README,
    delivery guarantees). Redeliveries that still come in order (a batch left at a
    hand-over, a read cut short) are checked like any other message.
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
    first: dict[int, dict[str, Event]] = defaultdict(dict)
    for e in ends:
        first[e.partition].setdefault(e.msg_id, e)
    for partition, seen in first.items():
        by_time = sorted(seen.values(), key=lambda e: e.time)
        if late_redeliveries:
            kept: list[Event] = []
            newest = (-1, -1)
            for e in by_time:
                if e.deliveries > 1 and _id_key(e.msg_id) < newest:
                    report.late_redeliveries += 1
                    continue
                kept.append(e)
                newest = max(newest, _id_key(e.msg_id))
            by_time = kept
        # Name the first pair out of order: which process completed which, and when.
        for a, b in itertools.pairwise(by_time):
            if _id_key(a.msg_id) > _id_key(b.msg_id):
                report.order_violations.append(
                    f"partition {partition}: {a.msg_id} (pid {a.pid} at {a.time:.3f}) "
                    f"completed before {b.msg_id} (pid {b.pid} at {b.time:.3f})"
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
