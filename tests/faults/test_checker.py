"""The fault checker itself: what it calls lost, duplicated, out of order or late."""

from __future__ import annotations

from tests.faults.checker import Event, check


def _end(n: int, msg_id: str, time: float, deliveries: int = 1, pid: int = 1) -> Event:
    return Event("end", pid, 0, msg_id, n, deliveries, time)


def test_a_redelivery_that_comes_in_order_is_not_late() -> None:
    events = [_end(0, "1-0", 1.0, deliveries=2), _end(1, "1-1", 2.0), _end(2, "2-0", 3.0)]
    report = check(events, {0, 1, 2}, late_redeliveries=True)
    assert report.late_redeliveries == 0 and not report.order_violations and not report.lost


def test_a_redelivery_after_a_newer_entry_is_late_and_set_aside() -> None:
    events = [_end(1, "1-1", 1.0), _end(2, "2-0", 2.0), _end(0, "1-0", 3.0, deliveries=2)]
    report = check(events, {0, 1, 2}, late_redeliveries=True)
    assert report.late_redeliveries == 1 and not report.order_violations
    strict = check(events, {0, 1, 2})
    assert strict.late_redeliveries == 0
    assert strict.order_violations == [
        "partition 0: 2-0 (pid 1 at 2.000) completed before 1-0 (pid 1 at 3.000)"
    ]


def test_a_first_delivery_out_of_order_is_a_violation_even_beside_late_ones() -> None:
    events = [_end(1, "1-1", 1.0), _end(0, "1-0", 2.0), _end(2, "2-0", 3.0, deliveries=3)]
    report = check(events, {0, 1, 2, 3}, late_redeliveries=True)
    assert report.late_redeliveries == 0
    assert report.order_violations == [
        "partition 0: 1-1 (pid 1 at 1.000) completed before 1-0 (pid 1 at 2.000)"
    ]
    assert report.lost == {3}


def test_duplicates_are_completions_past_the_first() -> None:
    events = [_end(0, "1-0", 1.0), _end(0, "1-0", 2.0, deliveries=2, pid=2)]
    assert check(events, {0}).duplicates == 1
