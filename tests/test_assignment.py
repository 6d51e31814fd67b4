"""Property tests of the pure parts: assignment, key routing, backoff."""

from __future__ import annotations

import random
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from redisaq_core._assignment import assign, moved_partitions, partition_for_key
from redisaq_core._retry import backoff_delay

names = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
member_sets = st.sets(names, min_size=1, max_size=12)
counts = st.integers(min_value=1, max_value=64)


def _loads(result: dict[int, str], members: set[str]) -> list[int]:
    return [sum(1 for m in result.values() if m == member) for member in members]


@given(member_sets, counts)
def test_every_partition_has_one_live_owner_and_loads_are_balanced(
    members: set[str], n: int
) -> None:
    result = assign(members, n)
    assert sorted(result) == list(range(n))
    assert set(result.values()) <= members
    loads = _loads(result, members)
    assert max(loads) - min(loads) <= 1


@given(member_sets, counts, st.randoms())
def test_deterministic_whatever_the_order(members: set[str], n: int, rnd: random.Random) -> None:
    shuffled = list(members)
    rnd.shuffle(shuffled)
    previous = assign(members, n)
    assert assign(shuffled, n) == assign(sorted(members), n)
    assert assign(shuffled, n, previous) == assign(sorted(members), n, previous)


@given(member_sets, counts, names)
def test_join_moves_only_what_the_newcomer_takes(members: set[str], n: int, newcomer: str) -> None:
    before = assign(members, n)
    after = assign(members | {newcomer}, n, before)
    moved = moved_partitions(before, after)
    if newcomer in members:
        assert moved == set()
        return
    # The fewest moves: exactly the partitions the newcomer now owns.
    assert moved == {p for p, m in after.items() if m == newcomer}
    assert len(moved) == n // (len(members) + 1)


@given(st.sets(names, min_size=2, max_size=12), counts, st.data())
def test_leave_moves_only_the_leavers_partitions(
    members: set[str], n: int, data: st.DataObject
) -> None:
    before = assign(members, n)
    leaver = data.draw(st.sampled_from(sorted(members)))
    after = assign(members - {leaver}, n, before)
    moved = moved_partitions(before, after)
    assert moved == {p for p, m in before.items() if m == leaver}


@given(member_sets, counts, st.dictionaries(st.integers(0, 80), names, max_size=40))
def test_result_is_stable_once_reached(members: set[str], n: int, previous: dict[int, str]) -> None:
    first = assign(members, n, previous)
    assert assign(members, n, first) == first
    loads = _loads(first, members)
    assert max(loads) - min(loads) <= 1


@given(member_sets, counts, st.integers(1, 32))
def test_partition_increase_keeps_existing_owners_where_balanced(
    members: set[str], n: int, extra: int
) -> None:
    before = assign(members, n)
    after = assign(members, n + extra, before)
    kept = sum(1 for p, m in before.items() if after.get(p) == m)
    # Nobody's share shrinks when partitions are added, so nobody gives one up.
    assert kept == n


def test_no_members_no_assignment() -> None:
    assert assign([], 8) == {}
    assert assign(["a"], 0) == {}


def test_more_members_than_partitions_leaves_some_idle() -> None:
    result = assign([f"m{i}" for i in range(5)], 3)
    assert len(result) == 3
    assert len(set(result.values())) == 3


USER_1_OF_8 = 4  # zlib.crc32(b"user-1") % 8, fixed once and for all
ORDER_42_OF_16 = 14


def test_partition_for_key_is_stable_across_runs() -> None:
    # Known values: CRC-32 does not depend on the process, unlike hash().
    assert partition_for_key("user-1", 8) == USER_1_OF_8
    assert partition_for_key("order-42", 16) == ORDER_42_OF_16
    assert partition_for_key(7, 5) == partition_for_key("7", 5)
    assert partition_for_key(b"raw", 3) == zlib.crc32(b"raw") % 3


@settings(max_examples=200)
@given(st.text(), st.integers(1, 100))
def test_partition_for_key_in_range(value: str, n: int) -> None:
    assert 0 <= partition_for_key(value, n) < n


@given(st.integers(1, 100), st.floats(0.001, 10), st.floats(0.01, 100))
def test_backoff_grows_and_is_capped(attempt: int, base: float, cap: float) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(attempt))
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_zero_base_is_immediate() -> None:
    assert backoff_delay(3, 0.0, 10.0) == 0.0
