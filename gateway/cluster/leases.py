"""The lease manager: this gateway's membership, its partition leases, and the hand-overs between gateways.

One asyncio task does, every ``probe_interval_s`` (or at once when a peer NOTIFYs ``firegrid_leases``):

1. every ``renew_interval_s``: the heartbeat (``cluster_members.heartbeat_at = now()``) and the renewal of every held
   lease (compare-and-set on owner and epoch); a lease the renewal no longer finds is lost (``on_lose``).
2. the probe: which members are live (heartbeat younger than the TTL, not stopping, and their advisory lock still
   held by a live session), the plan (:func:`common.partitions.plan`), then: acquire what the plan gives this member
   and nobody holds (free, expired, or held by a member whose session died) by compare-and-set with
   ``epoch = epoch + 1`` (``on_acquire``); hand over what the plan gives a peer (``on_release``, then release).

A crashed member's PostgreSQL session ends with its process, which frees its session-level advisory lock: a peer's
``pg_try_advisory_lock_shared`` on the member's key then succeeds, and its leases are taken at once.  A hung member
keeps its session (and its lock) but stops renewing: its leases expire after the TTL, by the database's clock.  A
member that wakes after its leases expired drops them all (``on_lose``) before it does anything else, and acquires again
only what a fresh plan gives it, under new epochs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common.partitions import plan
from gateway.cluster.fence import Fence, LeaseLost
from gateway.config import ClusterConfig

log = logging.getLogger(__name__)

OnAcquire = Callable[[int, int], Awaitable[None]]
OnPartition = Callable[[int], Awaitable[None]]

CHANNEL = "firegrid_leases"
"""LISTEN/NOTIFY channel: a member that registers, stops or releases says so, and peers probe at once."""


class MemberBusy(Exception):
    """Another live session holds this member id's advisory lock: two gateways are configured with one id."""


class PartitionCountMismatch(Exception):
    """The lease table has partitions beyond this gateway's P: members (or the broker mapping) disagree on P."""


def member_key(member: str) -> int:
    """The 64-bit advisory-lock key of a member id (a hash: advisory locks take integers)."""
    digest = hashlib.blake2b(b"firegrid-member:" + member.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _noop_acquire(partition: int, epoch: int) -> None:
    return None


async def _noop(partition: int) -> None:
    return None


@dataclass(frozen=True)
class _Lease:
    partition: int
    owner: str | None
    epoch: int
    expired: bool
    previous_owner: str | None


class LeaseManager:
    """Owns this member's partitions; see the module docstring.  ``start()``, then ``stop()`` (graceful release).

    Callbacks are awaited on the manager's task: ``on_acquire(partition, epoch)`` after a lease is won;
    ``on_lose(partition)`` after one was found taken (stop its session, drop in-flight work: its commits are fenced
    off until the callback returns); ``on_release(partition)`` before a hand-over (stop the session and drain: the
    lease is released when it returns)."""

    def __init__(
        self,
        *,
        url: str,
        member: str,
        partitions: int,
        lease_ttl_s: float = 10.0,
        renew_interval_s: float = 2.0,
        probe_interval_s: float = 1.0,
        on_acquire: OnAcquire = _noop_acquire,
        on_lose: OnPartition = _noop,
        on_release: OnPartition = _noop,
        clock: Callable[[], float] = time.monotonic,
        register_timeout_s: float | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not (0 < probe_interval_s <= renew_interval_s <= lease_ttl_s / 3):
            raise ValueError("need 0 < probe_interval_s <= renew_interval_s <= lease_ttl_s / 3")
        self.url = url
        self.member = member
        self.partitions = partitions
        self.ttl_s = lease_ttl_s
        self.renew_interval_s = renew_interval_s
        self.probe_interval_s = probe_interval_s
        self._on_acquire = on_acquire
        self._on_lose = on_lose
        self._on_release = on_release
        self._clock = clock
        self._register_timeout_s = register_timeout_s if register_timeout_s is not None else 2 * lease_ttl_s
        self._connect_timeout_s = connect_timeout_s
        self._held: dict[int, int] = {}
        self._losing: dict[int, int] = {}  # lost, but still fenced until on_lose returns
        self._releasing: dict[int, asyncio.Task[None]] = {}
        self._fence = Fence(member=member, ttl_s=lease_ttl_s)
        self._last_renewal: float | None = None
        self._next_renewal = 0.0
        self._stopping = False
        self._broken = False  # the lock's session died: this incarnation may hold nothing any more
        self._broken_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._db_lock = asyncio.Lock()  # one statement or transaction at a time on the work connection
        self._lock_conn: psycopg.AsyncConnection[Any] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls,
        *,
        url: str,
        cluster: ClusterConfig,
        on_acquire: OnAcquire = _noop_acquire,
        on_lose: OnPartition = _noop,
        on_release: OnPartition = _noop,
    ) -> LeaseManager:
        return cls(
            url=url,
            member=cluster.member,
            partitions=cluster.partitions,
            lease_ttl_s=cluster.lease_ttl_s,
            renew_interval_s=cluster.renew_interval_s,
            probe_interval_s=cluster.probe_interval_s,
            on_acquire=on_acquire,
            on_lose=on_lose,
            on_release=on_release,
        )

    # -- what the service reads ------------------------------------------------------------------------------------

    @property
    def fence(self) -> Fence:
        """The leases a commit must still hold: the owned ones and those being lost (until ``on_lose`` returns)."""
        return self._fence

    def check_fence(self, cursor: psycopg.Cursor[Any]) -> None:
        """The store's commit hook (``core.set_fence(manager.check_fence)``): the current fence's check.  Callable
        from any thread; a failed check makes the manager renew at once, so ``on_lose`` follows without waiting for
        the next renewal."""
        try:
            self._fence.check(cursor)
        except LeaseLost:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._renew_now)
            raise

    def _renew_now(self) -> None:
        self._next_renewal = 0.0
        self._wake.set()

    @property
    def broken(self) -> bool:
        """The advisory lock's connection died: this manager dropped every lease and does nothing more; the service
        must stop it and start a new one (a new session, a new lock) to rejoin."""
        return self._broken

    async def wait_broken(self) -> None:
        """Returns once :attr:`broken` is true."""
        await self._broken_event.wait()

    @property
    def owned(self) -> dict[int, int]:
        """``{partition: epoch}`` held now."""
        return dict(self._held)

    # -- life cycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the member's advisory lock, create the partition rows if missing, register, and start the task."""
        self._loop = asyncio.get_running_loop()
        self._lock_conn = await self._connect()
        await self._take_member_lock()
        self._conn = await self._connect()
        await self._prepare_rows()
        await self._register()
        await self._lock_conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        self._listen_task = asyncio.create_task(self._listen(), name=f"leases-listen-{self.member}")
        self._loop_task = asyncio.create_task(self._run(), name=f"leases-{self.member}")

    async def stop(self) -> None:
        """Release everything gracefully: mark the member stopping, drain every partition (``on_release``), release
        them with this member as ``previous_owner`` (so a restart brings them back here), NOTIFY, close."""
        self._stopping = True
        self._wake.set()
        if self._conn is None:  # never started
            await self.close()
            return
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        try:
            await self._execute("UPDATE cluster_members SET stopping = true WHERE member = %s", (self.member,))
            await self._notify()
            if self._releasing:
                await asyncio.gather(*self._releasing.values(), return_exceptions=True)
            await self._release_all()
        except psycopg.Error as exc:
            log.warning("graceful lease release failed (peers take the leases when they expire): %s", exc)
        finally:
            await self.close()

    async def _release_all(self) -> None:
        # Drain every partition in parallel, then free them all in one statement: peers then see one snapshot with
        # all of them free and compute the same plan, rather than racing for them one at a time (which can leave
        # a share the planner later moves again, and costs the partitions their way back here on restart).
        held = dict(self._held)
        for result in await asyncio.gather(*(self._on_release(p) for p in held), return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("on_release failed during stop: %r", result)
        for p in held:
            self._held.pop(p, None)
        self._publish_fence()
        partitions = sorted(held)
        await self._execute(
            "UPDATE partition_leases AS l SET owner = NULL, expires_at = NULL, previous_owner = l.owner"
            " FROM unnest(%s::int[], %s::bigint[]) AS h(partition, epoch)"
            " WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = %s",
            (partitions, [held[p] for p in partitions], self.member),
        )
        log.info("released partitions %s for a graceful stop", partitions)
        await self._notify()

    async def close(self) -> None:
        """Stop the tasks and close the connections without releasing anything (what a crash amounts to)."""
        self._stopping = True
        for task in (self._loop_task, self._listen_task, *self._releasing.values()):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for conn in (self._conn, self._lock_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._conn = self._lock_conn = None

    # -- connections -----------------------------------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout_s))
        )

    async def _take_member_lock(self) -> None:
        # Session level, on a connection of its own that runs nothing else: the lock lives exactly as long as this
        # process's session, which is what lets peers tell a crashed member from a live one.
        assert self._lock_conn is not None
        deadline = self._clock() + self._register_timeout_s
        while True:
            cur = await self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (member_key(self.member),))
            row = await cur.fetchone()
            if row is not None and row[0]:
                return
            if self._clock() >= deadline:
                raise MemberBusy(f"member {self.member!r} is held by another live session")
            await asyncio.sleep(self.probe_interval_s)

    async def _prepare_rows(self) -> None:
        cur = await self._execute("SELECT max(partition) FROM partition_leases")
        row = await cur.fetchone()
        if row is not None and row[0] is not None and row[0] != self.partitions - 1:
            # Another member started with another P: the broker's mapping has one P, so one of them is wrong.
            raise PartitionCountMismatch(
                f"partition_leases holds {row[0] + 1} partitions, but this gateway has cluster.partitions "
                f"{self.partitions}"
            )
        await self._execute(
            "INSERT INTO partition_leases (partition, owner, epoch) SELECT p, NULL, 0 FROM generate_series(0, %s) p"
            " ON CONFLICT (partition) DO NOTHING",
            (self.partitions - 1,),
        )

    async def _register(self) -> None:
        await self._execute(
            "INSERT INTO cluster_members (member, heartbeat_at, started_at, stopping) VALUES (%s, now(), now(), false)"
            " ON CONFLICT (member) DO UPDATE SET heartbeat_at = now(), started_at = now(), stopping = false",
            (self.member,),
        )
        self._last_renewal = self._clock()
        self._next_renewal = self._last_renewal + self.renew_interval_s
        await self._notify()

    async def _execute(self, query: str, params: tuple[Any, ...] | dict[str, Any] | None = None) -> Any:
        assert self._conn is not None, "not started"
        async with self._db_lock:
            return await self._conn.execute(query, params)

    async def _notify(self) -> None:
        await self._execute("SELECT pg_notify(%s, %s)", (CHANNEL, self.member))

    async def _listen(self) -> None:
        assert self._lock_conn is not None
        try:
            async for _ in self._lock_conn.notifies():
                self._wake.set()
        except psycopg.Error as exc:
            # The lock's session is gone: peers will count this member dead and take its leases; the renewals and
            # the fence find out which.  Rejoining needs a restart of the manager (a new session, a new lock).
            log.error("lease lock connection lost (%s); this member's leases will be taken by its peers", exc)
            self._broken = True
            self._broken_event.set()
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            if self._broken:
                await self._lose({**self._held})
                return
            try:
                if self._clock() >= self._next_renewal:
                    await self._renew()
                if not self._stopping and self._renewed_recently():
                    await self._probe()
            except psycopg.Error as exc:
                log.warning("lease tick failed: %s", exc)
            except Exception:  # a callback's failure must not end the renewals of every other lease
                log.exception("lease tick failed")
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.probe_interval_s)
            self._wake.clear()

    def _renewed_recently(self) -> bool:
        return self._last_renewal is not None and self._clock() - self._last_renewal < self.ttl_s

    async def _renew(self) -> None:
        if not self._renewed_recently() and (self._held or self._losing):
            # Asleep (SIGSTOP, a stalled host) or cut off for longer than the TTL: peers may have taken every
            # lease already, so stop consuming before anything else; a fresh plan decides what comes back.
            log.warning("no renewal for more than the lease TTL: dropping every lease")
            await self._lose(dict(self._held))
        started = self._clock()
        assert self._conn is not None
        async with self._db_lock, self._conn.transaction():
            cur = await self._conn.execute(
                "UPDATE cluster_members SET heartbeat_at = now() WHERE member = %s RETURNING stopping", (self.member,)
            )
            if await cur.fetchone() is None:  # the row was removed under us: register again
                await self._conn.execute(
                    "INSERT INTO cluster_members (member, heartbeat_at, started_at, stopping)"
                    " VALUES (%s, now(), now(), false)",
                    (self.member,),
                )
            held = dict(self._held)
            matched: set[int] = set()
            if held:
                partitions = sorted(held)
                cur = await self._conn.execute(
                    "UPDATE partition_leases AS l SET expires_at = now() + %s * interval '1 second'"
                    " FROM unnest(%s::int[], %s::bigint[]) AS h(partition, epoch)"
                    " WHERE l.partition = h.partition AND l.epoch = h.epoch AND l.owner = %s RETURNING l.partition",
                    (self.ttl_s, partitions, [held[p] for p in partitions], self.member),
                )
                matched = {row[0] for row in await cur.fetchall()}
        self._last_renewal = started
        self._next_renewal = started + self.renew_interval_s
        lost = {p: e for p, e in held.items() if p not in matched and self._held.get(p) == e}
        if lost:
            log.warning("leases taken by a peer: %s", sorted(lost))
            await self._lose(lost)

    async def _lose(self, lost: dict[int, int]) -> None:
        for p in lost:
            self._held.pop(p, None)
        self._losing.update(lost)
        self._publish_fence()
        try:
            for p in sorted(lost):
                await self._on_lose(p)
        finally:
            for p in lost:
                self._losing.pop(p, None)
            self._publish_fence()

    def _publish_fence(self) -> None:
        self._fence = Fence(member=self.member, epochs={**self._losing, **self._held}, ttl_s=self.ttl_s)

    async def _live_members(self) -> tuple[list[str], set[str]]:
        """(live members, members whose session is gone).  Live: fresh heartbeat, not stopping, lock held."""
        cur = await self._execute(
            "SELECT member, heartbeat_at > now() - %s * interval '1 second', coalesce(stopping, false)"
            " FROM cluster_members",
            (self.ttl_s,),
        )
        live: list[str] = []
        dead: set[str] = set()
        for member, fresh, stopping in await cur.fetchall():
            if member == self.member:
                if fresh and not stopping and not self._stopping:
                    live.append(member)
            elif not fresh:
                continue  # dead for planning; its leases expired with its heartbeat (one transaction renews both)
            elif not await self._session_alive(member):
                dead.add(member)
            elif not stopping:
                live.append(member)
        return live, dead

    async def _session_alive(self, member: str) -> bool:
        # Shared: a member holds its key exclusively, so the shared lock is granted only when that session is
        # gone, and peers probing the same member at the same moment do not make each other see it alive.
        key = member_key(member)
        cur = await self._execute("SELECT pg_try_advisory_lock_shared(%s)", (key,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            await self._execute("SELECT pg_advisory_unlock_shared(%s)", (key,))  # at once: it was only a question
            return False
        return True

    async def _leases(self) -> list[_Lease]:
        cur = await self._execute(
            "SELECT partition, owner, epoch, coalesce(expires_at < now(), true), previous_owner"
            " FROM partition_leases WHERE partition < %s ORDER BY partition",
            (self.partitions,),
        )
        return [_Lease(*row) for row in await cur.fetchall()]

    async def _probe(self) -> None:
        live, dead = await self._live_members()
        leases = await self._leases()
        target = plan(
            partitions=self.partitions,
            members=live,
            current={lease.partition: lease.owner for lease in leases if lease.owner is not None},
            previous={lease.partition: lease.previous_owner for lease in leases if lease.previous_owner is not None},
        )
        for lease in leases:
            p = lease.partition
            goes_to = target.get(p)
            if p in self._held:
                if goes_to is not None and goes_to != self.member and p not in self._releasing:
                    self._releasing[p] = asyncio.create_task(self._hand_over(p), name=f"leases-release-{p}")
                continue
            if goes_to != self.member or p in self._losing or p in self._releasing or self._stopping:
                continue
            if lease.owner is None or lease.owner == self.member or lease.owner in dead:
                condition = ""  # free, ours from before, or its owner's session is gone
            elif lease.expired:
                condition = " AND expires_at < now()"  # re-checked under the row lock: a fenced commit renews it
            else:
                continue  # a live owner over its quota hands it over; wait for the release
            await self._acquire(lease, condition)

    async def _acquire(self, lease: _Lease, condition: str) -> None:
        takeover = lease.owner is not None and lease.owner != self.member
        cur = await self._execute(
            "UPDATE partition_leases SET owner = %s, epoch = epoch + 1,"
            " expires_at = now() + %s * interval '1 second',"
            # previous_owner names the member that wants the partition back: the one it was taken from, or the
            # one that stopped; cleared when that member has it again (see plan(): it is only a preference).
            " previous_owner = CASE WHEN %s THEN owner WHEN previous_owner = %s THEN NULL ELSE previous_owner END"
            " WHERE partition = %s AND epoch = %s AND owner IS NOT DISTINCT FROM %s" + condition + " RETURNING epoch",
            (self.member, self.ttl_s, takeover, self.member, lease.partition, lease.epoch, lease.owner),
        )
        row = await cur.fetchone()
        if row is None:
            return  # someone else moved first; the next probe sees the new state
        epoch = int(row[0])
        self._held[lease.partition] = epoch
        self._publish_fence()
        log.info("acquired partition %d epoch %d (from %s)", lease.partition, epoch, lease.owner or "nobody")
        await self._on_acquire(lease.partition, epoch)

    async def _hand_over(self, partition: int) -> None:
        try:
            await self._release(partition)
        except Exception:
            log.exception("hand-over of partition %d failed", partition)
        finally:
            self._releasing.pop(partition, None)

    async def _release(self, partition: int) -> None:
        """A hand-over: drain (``on_release``), stop fencing the partition, then free the row.  ``previous_owner``
        stays as it was: the releaser does not want it back (a graceful stop, :meth:`_release_all`, does)."""
        if partition not in self._held:
            return
        await self._on_release(partition)
        epoch = self._held.pop(partition, None)
        self._publish_fence()
        if epoch is None:
            return
        await self._execute(
            "UPDATE partition_leases SET owner = NULL, expires_at = NULL WHERE partition = %s AND owner = %s"
            " AND epoch = %s",
            (partition, self.member, epoch),
        )
        log.info("released partition %d epoch %d", partition, epoch)
        await self._notify()
