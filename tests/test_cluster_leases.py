"""Partition leases against a real PostgreSQL (gateway/cluster): exclusive ownership, an even and sticky spread, the
commit fence, and the takeover limits that are cluster mode's acceptance criteria:

* a crashed (SIGKILLed) member's partitions are owned by the others within 5 s,
* a hung (SIGSTOPped) member's within 15 s, and when it wakes its fence refuses its commit,
* a gracefully stopped member's within 3 s.

The fault tests run each member in its own process (testkit/lease_member.py) with the production timings (TTL 10 s,
renew 2 s, probe 1 s); the others run in this process with short ones.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest

from gateway.cluster import LEASE_DDL, LeaseLost, LeaseManager, MemberBusy, PartitionCountMismatch
from testkit.lease_member import LeaseMember

P = 16
FAST = {"lease_ttl_s": 3.0, "renew_interval_s": 1.0, "probe_interval_s": 0.2}


@pytest.fixture
def db(pg_url: str) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(LEASE_DDL)
        conn.execute("CREATE TABLE fence_probe (tag TEXT PRIMARY KEY)")
    return pg_url


def _rows(url: str) -> dict[int, tuple[str | None, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {p: (o, e) for p, o, e in conn.execute("SELECT partition, owner, epoch FROM partition_leases")}


def _probes(url: str) -> set[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {tag for (tag,) in conn.execute("SELECT tag FROM fence_probe")}


class Recorder:
    """One in-process member and what its callbacks saw."""

    def __init__(self, url: str, member: str, **timings: float) -> None:
        self.events: list[tuple[str, int]] = []
        self.manager = LeaseManager(
            url=url,
            member=member,
            partitions=P,
            on_acquire=self._acquire,
            on_lose=self._lose,
            on_release=self._release,
            **{**FAST, **timings},
        )

    async def _acquire(self, partition: int, epoch: int) -> None:
        self.events.append(("acquire", partition))

    async def _lose(self, partition: int) -> None:
        self.events.append(("lose", partition))

    async def _release(self, partition: int) -> None:
        self.events.append(("release", partition))

    @property
    def owned(self) -> dict[int, int]:
        return self.manager.owned


class Exclusive:
    """Samples the members' holdings every 10 ms and records any partition two of them held at once."""

    def __init__(self, members: list[Recorder]) -> None:
        self.members = members
        self.overlaps: list[tuple[int, list[str]]] = []
        self.samples = 0

    async def run(self) -> None:
        while True:
            holders: dict[int, list[str]] = {}
            for r in self.members:
                for p in r.owned:
                    holders.setdefault(p, []).append(r.manager.member)
            self.overlaps += [(p, who) for p, who in holders.items() if len(who) > 1]
            self.samples += 1
            await asyncio.sleep(0.01)


async def _until(check: Callable[[], bool], *, within: float) -> bool:
    """Poll ``check`` until it holds or ``within`` seconds pass; whether it held."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _settled(members: list[Recorder], *, within: float = 20.0) -> None:
    """Until the members own every partition between them, each floor(P/N) or ceil(P/N)."""
    low, high = P // len(members), math.ceil(P / len(members))

    def settled() -> bool:
        sizes = [len(r.owned) for r in members]
        return sum(sizes) == P and all(low <= n <= high for n in sizes)

    if not await _until(settled, within=within):
        raise AssertionError(f"not settled in {within} s: {[(r.manager.member, sorted(r.owned)) for r in members]}")


@pytest.fixture
async def started(db: str) -> AsyncIterator[list[Recorder]]:
    members: list[Recorder] = []
    yield members
    for r in members:
        await r.manager.close()


async def _start(members: list[Recorder], url: str, name: str) -> Recorder:
    r = Recorder(url, name)
    await r.manager.start()
    members.append(r)
    return r


async def test_two_then_three_members_share_every_partition_exclusively(db: str, started: list[Recorder]) -> None:
    a = await _start(started, db, "a")
    b = await _start(started, db, "b")
    watch = Exclusive(started)
    sampler = asyncio.create_task(watch.run())
    try:
        await _settled([a, b])
        assert sorted(len(r.owned) for r in (a, b)) == [8, 8]
        before = {**a.owned, **b.owned}
        seen = {r.manager.member: len(r.events) for r in (a, b)}
        c = await _start(started, db, "c")
        await _settled([a, b, c])
        # 6/5/5; the newcomer got its five from the others, nothing else moved (ceil(16/3)+1 at most)
        assert sorted(len(r.owned) for r in (a, b, c)) == [5, 5, 6]
        after = {**a.owned, **b.owned}
        moved = [p for p, epoch in before.items() if after.get(p) != epoch]
        assert sorted(moved) == sorted(c.owned) and len(moved) <= math.ceil(P / 3) + 1
    finally:
        sampler.cancel()
    assert watch.samples > 10 and not watch.overlaps, watch.overlaps
    # The database agrees with every member: owner and epoch of each partition.
    rows = _rows(db)
    for r in (a, b, c):
        assert all(rows[p] == (r.manager.member, e) for p, e in r.owned.items())
    # A hand-over is on_release then release, never a loss.
    assert not [e for r in (a, b) for e in r.events if e[0] == "lose"]
    handed = [p for r in (a, b) for kind, p in r.events[seen[r.manager.member] :] if kind == "release"]
    assert sorted(handed) == sorted(c.owned)


async def test_three_members_starting_together_spread_evenly(db: str, started: list[Recorder]) -> None:
    recorders = [Recorder(db, name) for name in ("x", "y", "z")]
    started.extend(recorders)
    watch = Exclusive(recorders)
    sampler = asyncio.create_task(watch.run())
    try:
        await asyncio.gather(*(r.manager.start() for r in recorders))
        await _settled(recorders)
    finally:
        sampler.cancel()
    assert sorted(len(r.owned) for r in recorders) == [5, 5, 6]
    assert not watch.overlaps, watch.overlaps


async def test_a_restarted_member_gets_its_partitions_back_under_new_epochs(db: str, started: list[Recorder]) -> None:
    a, b = await _start(started, db, "a"), await _start(started, db, "b")
    c = await _start(started, db, "c")
    await _settled([a, b, c])
    c_had = dict(c.owned)
    await c.manager.stop()
    assert sorted(p for kind, p in c.events if kind == "release") == sorted(c_had)
    await _settled([a, b])
    assert set(a.owned) | set(b.owned) >= set(c_had)
    again = await _start(started, db, "c")
    await _settled([a, b, again])
    history = {f"{r.manager.member}{i}": r.events for i, r in enumerate(started)}
    assert set(again.owned) == set(c_had), history  # sticky: the same partitions, not just as many
    assert all(again.owned[p] > c_had[p] + 1 for p in c_had)  # c -> (a or b) -> c: two acquisitions later
    assert {p: o for p, (o, _e) in _rows(db).items() if o == "c"}.keys() == c_had.keys()


async def test_the_fence_refuses_a_commit_after_a_takeover_and_the_renewal_reports_it(
    db: str, started: list[Recorder]
) -> None:
    a = await _start(started, db, "a")
    await _settled([a])
    fence = a.manager.fence
    assert dict(fence.epochs) == a.owned and len(fence.epochs) == P

    with psycopg.connect(db) as conn, conn.cursor() as cur:  # a fenced write commits while the leases hold
        cur.execute("INSERT INTO fence_probe (tag) VALUES ('kept')")
        fence.check(cur)
    with psycopg.connect(db, autocommit=True) as conn:  # a peer takes partition 3 (as after an expiry)
        conn.execute("UPDATE partition_leases SET owner = 'b', epoch = epoch + 1 WHERE partition = 3")
    with pytest.raises(LeaseLost) as lost, psycopg.connect(db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO fence_probe (tag) VALUES ('refused')")
        fence.check(cur)
    assert lost.value.partitions == (3,)
    assert _probes(db) == {"kept"}  # the refused write rolled back

    assert await _until(lambda: ("lose", 3) in a.events, within=5)
    assert 3 not in a.owned and 3 not in a.manager.fence.epochs


async def test_a_refused_commit_makes_the_manager_renew_at_once(db: str, started: list[Recorder]) -> None:
    slow = Recorder(db, "a", lease_ttl_s=30.0, renew_interval_s=10.0, probe_interval_s=0.2)
    await slow.manager.start()
    started.append(slow)
    await _settled([slow])
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE partition_leases SET owner = 'b', epoch = epoch + 1 WHERE partition = 5")
    refused = time.monotonic()
    with pytest.raises(LeaseLost), psycopg.connect(db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO fence_probe (tag) VALUES ('refused')")
        slow.manager.check_fence(cur)  # the store's hook
    assert await _until(lambda: ("lose", 5) in slow.events, within=5)
    assert time.monotonic() - refused < 3  # not the next renewal, 10 s away


async def test_a_member_whose_lock_session_dies_drops_everything_and_peers_take_it(
    db: str, started: list[Recorder]
) -> None:
    a, b = await _start(started, db, "a"), await _start(started, db, "b")
    await _settled([a, b])
    had = dict(a.owned)
    assert a.manager._lock_conn is not None
    with psycopg.connect(db, autocommit=True) as conn:  # as a network cut of that one connection would
        conn.execute("SELECT pg_terminate_backend(%s)", (a.manager._lock_conn.info.backend_pid,))
    assert await _until(lambda: a.manager.broken and set(b.owned) >= set(had), within=10)
    assert a.manager.broken and not a.owned and not a.manager.fence.epochs
    assert sorted(p for kind, p in a.events if kind == "lose") == sorted(had)
    assert set(b.owned) == set(range(P)) and all(b.owned[p] > e for p, e in had.items())


def test_a_takeover_waits_for_a_fenced_commit(db: str) -> None:
    """The fence's row locks: a takeover of an expired lease started during a fenced transaction waits for its
    commit, then finds the lease renewed by it and takes nothing."""
    from gateway.cluster import Fence

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO partition_leases VALUES (0, 'a', 7, now() - interval '1 second', NULL)"
        )  # expired: a peer may take it
    fence = Fence(member="a", epochs={0: 7}, ttl_s=10)
    outcome: dict[str, float | int] = {}

    def takeover() -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            cur = conn.execute(
                "UPDATE partition_leases SET owner = 'b', epoch = epoch + 1"
                " WHERE partition = 0 AND owner = 'a' AND epoch = 7 AND expires_at < now()"
            )
            outcome["rows"], outcome["done"] = cur.rowcount, time.monotonic()

    with psycopg.connect(db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO fence_probe (tag) VALUES ('first')")
        fence.check(cur)
        peer = threading.Thread(target=takeover)
        peer.start()
        peer.join(timeout=1.0)
        assert peer.is_alive(), "the takeover did not wait for the fenced transaction"
        committed = time.monotonic()
    peer.join(timeout=10)
    assert outcome["done"] >= committed and outcome["rows"] == 0
    assert _rows(db)[0] == ("a", 7) and _probes(db) == {"first"}


async def test_a_member_with_another_partition_count_or_a_taken_id_does_not_start(
    db: str, started: list[Recorder]
) -> None:
    await _settled([await _start(started, db, "a")])
    for partitions in (P - 1, P + 1):
        other = LeaseManager(url=db, member="b", partitions=partitions, **FAST)
        with pytest.raises(PartitionCountMismatch):
            await other.start()
        await other.close()
    twin = LeaseManager(url=db, member="a", partitions=P, register_timeout_s=0.5, **FAST)
    with pytest.raises(MemberBusy):
        await twin.start()
    await twin.close()
    assert {o for o, _e in _rows(db).values()} == {"a"}  # neither touched a lease


def test_the_manager_refuses_bad_timings() -> None:
    with pytest.raises(ValueError):
        LeaseManager(url="postgresql://x/y", member="a", partitions=P, lease_ttl_s=3, renew_interval_s=2)
    with pytest.raises(ValueError):
        LeaseManager(url="postgresql://x/y", member="a", partitions=P, renew_interval_s=1, probe_interval_s=2)


# -- faults on member processes, production timings ---------------------------------------------------------------


@pytest.fixture
def cluster(db: str) -> Iterator[list[LeaseMember]]:
    members = [LeaseMember(url=db, member=name, partitions=P) for name in ("a", "b", "c")]
    try:
        for m in members:
            m.start()
        _wait_settled(members)
        yield members
    finally:
        for m in members:
            m.close()


def _wait_settled(members: list[LeaseMember], *, timeout: float = 30.0) -> None:
    low, high = P // len(members), math.ceil(P / len(members))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [len(m.owned()) for m in members]
        if sum(sizes) == P and all(low <= n <= high for n in sizes):
            return
        time.sleep(0.1)
    raise AssertionError(f"not settled: {[(m.member, sorted(m.owned())) for m in members]}")


def _taken_over(survivors: list[LeaseMember], partitions: dict[int, int], *, since: float, timeout: float) -> float:
    """Seconds from ``since`` until the survivors hold every one of ``partitions`` under a newer epoch."""
    deadline = time.monotonic() + timeout + 10  # wait past the limit, so a slow takeover reports its time
    while time.monotonic() < deadline:
        holders = {p: (m, e) for m in survivors for p, e in m.owned().items()}
        if all(p in holders and holders[p][1] > e for p, e in partitions.items()):
            times = [
                max(ev["t"] for ev in m.events("acquire") if ev["partition"] == p) for p, (m, _e) in holders.items()
            ]
            return max(t for t in times) - since
        time.sleep(0.05)
    raise AssertionError(f"not taken over: {[(m.member, sorted(m.owned())) for m in survivors]}")


def test_a_crashed_member_is_replaced_within_5_s(cluster: list[LeaseMember]) -> None:
    a, *others = cluster
    held = a.owned()
    fault = time.time()
    a.kill()
    took = _taken_over(others, held, since=fault, timeout=5)
    print(f"crash (SIGKILL) -> {len(held)} partitions owned elsewhere in {took:.2f} s")
    assert took <= 5.0
    _wait_settled(others)


def test_a_hung_member_is_replaced_within_15_s_and_its_fence_then_fails(db: str, cluster: list[LeaseMember]) -> None:
    a, *others = cluster
    a.send("snapshot")
    snapshot = a.wait_for(lambda e: e["event"] == "snapshot", timeout=10)
    held = {int(p): e for p, e in snapshot["epochs"].items()}
    assert held == a.owned() and held
    woke_at = len(a.events())
    fault = time.time()
    a.pause()
    took = _taken_over(others, held, since=fault, timeout=15)
    print(f"hang (SIGSTOP) -> {len(held)} partitions owned elsewhere in {took:.2f} s")
    assert took <= 15.0

    a.resume()
    a.send("write after-wake")  # a commit under the epochs it held when it hung
    written = a.wait_for(lambda e: e["event"] == "write", timeout=10)
    assert written["committed"] is False and written["lost"] == sorted(held)
    assert "after-wake" not in _probes(db)

    # It drops every lease, and takes partitions again only when the plan gives them back, under new epochs.
    for p in held:
        a.wait_for(lambda e, p=p: e["event"] == "lose" and e["partition"] == p, timeout=10)
    back = a.wait_for(lambda e: e["event"] == "acquire" and e["t"] > fault, timeout=20)
    after_wake = a.events()[woke_at:]
    first_acquire = next(i for i, e in enumerate(after_wake) if e["event"] == "acquire")
    assert {e["partition"] for e in after_wake[:first_acquire] if e["event"] == "lose"} == set(held)
    assert back["epoch"] > held.get(back["partition"], 0)
    _wait_settled(cluster)
    rows = _rows(db)
    assert all(rows[p] == ("a", e) for p, e in a.owned().items())


def test_a_stopped_member_hands_over_within_3_s(cluster: list[LeaseMember]) -> None:
    a, *others = cluster
    held = a.owned()
    fault = time.time()
    a.send("stop")
    took = _taken_over(others, held, since=fault, timeout=3)
    print(f"graceful stop -> {len(held)} partitions owned elsewhere in {took:.2f} s")
    assert took <= 3.0
    a.wait_for(lambda e: e["event"] == "stopped", timeout=10)
    assert sorted(e["partition"] for e in a.events("release") if e["t"] >= fault) == sorted(held)
    assert not a.events("lose")
