"""The building -> partition hash and the partition -> gateway planner (common/partitions.py): pure, property-tested."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from common.partitions import fnv1a32, partition_of, plan, quotas

NAMES = st.sampled_from([f"gw{i}" for i in range(8)])
MEMBERS = st.lists(NAMES, min_size=1, max_size=8, unique=True)


@st.composite
def situations(draw: st.DrawFn) -> tuple[int, list[str], dict[int, str], dict[int, str]]:
    """Any partition count, live members, and arbitrary (possibly unbalanced, partly dead) current/previous owners."""
    partitions = draw(st.integers(min_value=1, max_value=64))
    members = draw(MEMBERS)
    owners = st.dictionaries(st.integers(min_value=0, max_value=partitions - 1), NAMES, max_size=partitions)
    return partitions, members, draw(owners), draw(owners)


def test_fnv1a_matches_the_reference_vectors() -> None:
    # The published FNV-1a 32 test vectors: the broker computes the same function.
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    assert partition_of("foobar", 16) == 0xBF9CF968 % 16


def test_testkit_uses_the_one_definition() -> None:
    from testkit import nats

    assert nats.partition_of is partition_of


@given(st.text(alphabet="abcXYZ019_-", min_size=1, max_size=64), st.integers(min_value=1, max_value=4096))
def test_partition_is_in_range(building: str, partitions: int) -> None:
    assert 0 <= partition_of(building, partitions) < partitions


@given(situations())
@settings(max_examples=300)
def test_every_partition_gets_one_live_member_within_quota(case: tuple[int, list[str], dict, dict]) -> None:
    partitions, members, current, previous = case
    result = plan(partitions=partitions, members=members, current=current, previous=previous)
    assert sorted(result) == list(range(partitions))
    assert set(result.values()) <= set(members)
    low, high = partitions // len(members), math.ceil(partitions / len(members))
    counts = {m: sum(1 for owner in result.values() if owner == m) for m in members}
    assert all(low <= n <= high for n in counts.values()), counts


@given(situations(), st.randoms(use_true_random=False))
def test_the_plan_is_deterministic_whatever_the_order(case: tuple[int, list[str], dict, dict], rnd) -> None:
    partitions, members, current, previous = case
    shuffled = list(members)
    rnd.shuffle(shuffled)
    first = plan(partitions=partitions, members=members, current=current, previous=previous)
    again = plan(partitions=partitions, members=shuffled, current=dict(current), previous=dict(previous))
    assert first == again


@given(situations())
def test_an_owner_within_quota_keeps_everything(case: tuple[int, list[str], dict, dict]) -> None:
    partitions, members, current, previous = case
    result = plan(partitions=partitions, members=members, current=current, previous=previous)
    floor = partitions // len(members)
    for member in members:
        mine = {p for p, owner in current.items() if owner == member}
        if len(mine) <= floor:
            assert all(result[p] == member for p in mine), (member, mine)


@given(situations())
def test_a_free_partition_goes_back_to_its_previous_owner_when_it_has_room(case) -> None:
    partitions, members, _current, previous = case
    # Nothing is owned (every gateway restarted): each member gets back what it had, up to its quota.
    result = plan(partitions=partitions, members=members, current={}, previous=previous)
    floor = partitions // len(members)
    for member in members:
        before = {p for p, owner in previous.items() if owner == member}
        if len(before) <= floor:
            assert all(result[p] == member for p in before)


@given(situations())
@settings(max_examples=300)
def test_a_stable_membership_moves_nothing(case: tuple[int, list[str], dict, dict]) -> None:
    partitions, members, current, previous = case
    settled = plan(partitions=partitions, members=members, current=current, previous=previous)
    assert plan(partitions=partitions, members=members, current=settled, previous=previous) == settled
    assert plan(partitions=partitions, members=members, current=settled, previous={}) == settled


@given(situations(), NAMES)
@settings(max_examples=300)
def test_one_member_joining_moves_at_most_ceil_p_over_n_plus_one(case, newcomer: str) -> None:
    partitions, members, current, previous = case
    if newcomer in members:
        return
    settled = plan(partitions=partitions, members=members, current=current, previous=previous)
    grown = [*members, newcomer]
    after = plan(partitions=partitions, members=grown, current=settled, previous=previous)
    moved = [p for p in range(partitions) if after[p] != settled[p]]
    assert len(moved) <= math.ceil(partitions / len(grown)) + 1, (settled, after)
    # Whatever moved went to the newcomer: the others keep all they still own.
    assert all(after[p] == newcomer for p in moved)


@given(situations())
def test_one_member_leaving_moves_only_its_partitions(case) -> None:
    partitions, members, current, previous = case
    if len(members) < 2:
        return
    settled = plan(partitions=partitions, members=members, current=current, previous=previous)
    gone = members[0]
    after = plan(partitions=partitions, members=members[1:], current=settled, previous=previous)
    assert all(after[p] == owner for p, owner in settled.items() if owner != gone)


def test_a_restarted_member_gets_its_own_partitions_back() -> None:
    # a, b, c own 16 partitions; c dies and a, b take its five; c restarts: a and b hand back exactly c's.
    members = ["a", "b", "c"]
    first = plan(partitions=16, members=members, current={}, previous={})
    c_had = {p for p, owner in first.items() if owner == "c"}
    without_c = plan(partitions=16, members=["a", "b"], current=first, previous={})
    previous = {p: "c" for p in c_had}
    back = plan(partitions=16, members=members, current=without_c, previous=previous)
    assert {p for p, owner in back.items() if owner == "c"} == c_had
    assert back == first


def test_quotas_favour_who_is_at_ceil_already_then_name() -> None:
    assert quotas(partitions=16, members=["b", "a", "c"], current={}) == {"a": 6, "b": 5, "c": 5}
    six_for_c = {p: "c" for p in range(6)}
    assert quotas(partitions=16, members=["a", "b", "c"], current=six_for_c) == {"c": 6, "a": 5, "b": 5}
    # a and b both over ceil (8 each) while c comes back: a keeps the ceil quota whoever hands over first
    eight_eight = {p: "a" if p < 8 else "b" for p in range(16)}
    assert quotas(partitions=16, members=["a", "b", "c"], current=eight_eight)["a"] == 6
    seven_nine = {p: "a" if p < 6 else "b" for p in range(15)}
    assert quotas(partitions=16, members=["a", "b", "c"], current=seven_nine)["a"] == 6
    assert plan(partitions=4, members=[], current={0: "a"}, previous={}) == {}
