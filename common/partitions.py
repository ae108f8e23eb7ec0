"""Buildings to partitions, and partitions to gateways: pure functions, no I/O.

Cluster mode (docs/cluster.md) puts every building into a fixed partition, computed by the broker's subject mapping
``{{partition(P,1)}}`` (FNV-1a 32 of the building id, modulo P).  Each partition is owned by one live gateway
through a lease; :func:`plan` says which.  Every gateway computes the plan on its own from the same table rows, so the
plan is a pure, deterministic function of its inputs: two gateways reading the same rows agree without talking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a, the hash NATS's ``partition()`` mapping function uses."""
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of(building: str, partitions: int) -> int:
    """The partition the broker's ``{{partition(P,1)}}`` computes for a building: FNV-1a of the id, modulo P.

    A gateway must compute the same number the broker does to know which buildings a partition lease covers; the
    broker spike's test checks this against a running server (tests/test_cluster_broker.py)."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return fnv1a32(building.encode()) % partitions


def quotas(*, partitions: int, members: Iterable[str], current: Mapping[int, str]) -> dict[str, int]:
    """How many partitions each live member should own: floor(P/N) each, and ceil(P/N) for P mod N of them.

    The ceil quotas go to the members that own at least ceil(P/N) today (then by name), so a balanced assignment is
    its own plan (nobody is over quota, nothing moves), and the choice holds still while owners over quota hand
    partitions over one by one (ranking by the count itself would flip as the counts pass each other)."""
    live = sorted(set(members))
    if not live:
        return {}
    base, extra = divmod(partitions, len(live))
    owned = {m: 0 for m in live}
    for owner in current.values():
        if owner in owned:
            owned[owner] += 1
    ranked = sorted(live, key=lambda m: (owned[m] <= base, m))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}


def plan(
    *,
    partitions: int,
    members: Iterable[str],
    current: Mapping[int, str],
    previous: Mapping[int, str],
) -> dict[int, str]:
    """A balanced, sticky owner for every partition ``0..partitions-1``: ``{partition: member}``.

    * ``members``: the live members (order does not matter); none gives an empty plan.
    * ``current``: today's owners; owners not in ``members`` (dead, stopping) are ignored.
    * ``previous``: who owned a partition before its current (or last) owner, for a free partition's stickiness.

    Rules, in order: a partition keeps its current owner while that owner is within its quota (an over-quota owner
    keeps first the partitions no other live member had before it, then the lowest numbers); a free partition goes
    to its previous owner if that one has room; what is left goes to the member with the fewest, then by name.
    """
    live = sorted(set(members))
    if not live:
        return {}
    quota = quotas(partitions=partitions, members=live, current=current)
    count = {m: 0 for m in live}
    result: dict[int, str] = {}
    # An over-quota owner hands back first what it took over from a member that is live again (a restarted
    # gateway gets its own partitions back), so keep the others first.
    held = sorted(
        (p for p in range(partitions) if current.get(p) in count),
        key=lambda p: (previous.get(p) in count and previous.get(p) != current[p], p),
    )
    for p in held:
        owner = current[p]
        if count[owner] < quota[owner]:
            result[p] = owner
            count[owner] += 1
    free = [p for p in range(partitions) if p not in result]
    rest: list[int] = []
    for p in free:
        before = previous.get(p)
        if before is not None and before in count and count[before] < quota[before]:
            result[p] = before
            count[before] += 1
        else:
            rest.append(p)
    for p in rest:
        chosen = min((m for m in live if count[m] < quota[m]), key=lambda m: (count[m], m))
        result[p] = chosen
        count[chosen] += 1
    return dict(sorted(result.items()))
