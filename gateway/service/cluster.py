"""Cluster mode's wiring of one gateway: leases decide which buildings it judges; everything else follows them.

On a lease acquired for partition NN (``gateway.cluster.LeaseManager``'s ``on_acquire``), in this order:

1. the fence gains NN at its epoch (the manager does it before calling us): from now on every store transaction of
   this gateway renews NN's lease or fails;
2. the engine adopts NN's buildings from the store: each one's last snapshot and the alerts the store holds open, so
   nothing the last owner raised is raised again (``Engine.adopt``);
3. presence re-reads those buildings' devices from the store and starts sweeping them;
4. the commit scope and the notifier's scope gain the buildings; SMS of theirs left ``attempting`` by a crashed owner
   become ``unknown`` (never resent: a reconciliation, not a second text);
5. NN's MQTT session ``<client_id>-p<NN>`` is opened (it takes the session over from a dead owner; queued messages flow
   at once, the dead owner's in-flight ones after the broker's ack wait). The partition that carries the unmapped
   catch-all (partition 0) opens that session too.

On a lease lost (found taken by a peer: this gateway was paused or cut off past the TTL) the session is closed without
acknowledging anything, and the buildings leave the scopes and the engine; commits of work processed before the loss
are refused by the fence (``LeaseLost``), which stops the gateway: its engine state may hold transitions that were
never committed, and only a restart from the store is sure to be right (the service exits; its supervisor restarts
it, and it rejoins with no leases).  On a hand-over (the plan moves NN to a peer; or a graceful stop), the session is
paused first, everything already taken in is committed and acknowledged, and only then is the session closed and
the lease released, so the new owner gets NN's queue at once instead of one ack wait later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from alerts.delivery import Notifier
from alerts.store import AlertStore
from common.db import Cursor
from common.partitions import partition_of
from common.pg import PgCursor
from gateway.cluster import LeaseLost, LeaseManager
from gateway.config import ClusterConfig, FiregridConfig
from gateway.ingest.partitions import PartitionIngest
from gateway.ingest.pipeline import EngineState, Pipeline, active_alerts
from gateway.ingest.unmapped import UnmappedCatchAll
from gateway.metrics import Metrics
from gateway.storage.presence import Presence
from rules.engine import Engine

log = logging.getLogger("firegrid.cluster")

CATCH_ALL_PARTITION = 0  # its owner also holds the catch-all session for publishes that escaped the mapping
SETTLE_TIMEOUT_S = 5.0  # a hand-over waits at most this long for what was taken in to be committed


class ClusterMode:
    """See the module docstring.  Built by the service when the config has a ``cluster:`` section."""

    def __init__(
        self,
        *,
        config: FiregridConfig,
        cluster: ClusterConfig,
        url: str,
        metrics: Metrics,
        engine: Engine,
        engine_lock: asyncio.Lock,
        engine_state: EngineState,
        store: AlertStore,
        presence: Presence,
        notifier: Notifier,
        pipeline: Pipeline,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.engine = engine
        self.engine_lock = engine_lock
        self.engine_state = engine_state
        self.store = store
        self.presence = presence
        self.pipeline = pipeline
        self.buildings_of: dict[int, list[str]] = defaultdict(list)
        for building in config.buildings:
            self.buildings_of[partition_of(building.id, cluster.partitions)].append(building.id)
        # What this gateway may commit for and notify about: the buildings of the partitions it holds.  Read from
        # the commit thread and the notifier's database thread; replaced whole (never mutated) so a reader sees a
        # consistent set.
        self.scope: frozenset[str] = frozenset()
        urls = cluster.brokers or [config.mqtt.url]
        self.ingest = PartitionIngest(
            config=config.mqtt,
            partitions=cluster.partitions,
            client_prefix=config.mqtt.client_id,
            metrics=metrics,
            on_message=pipeline.submit,
            urls=urls,
            owns=lambda p: p in self.leases.owned,
        )
        self.catch_all = UnmappedCatchAll(
            config=config.mqtt,
            metrics=metrics,
            urls=urls,
            client_id=f"{config.mqtt.client_id}-unmapped",
            owns=lambda: CATCH_ALL_PARTITION in self.leases.owned,
        )
        self.leases = LeaseManager.from_config(
            url=url, cluster=cluster, on_acquire=self._acquire, on_lose=self._lose, on_release=self._release
        )
        self.acquired = 0
        self.lost = 0
        self.released = 0
        self.last_change_ms: int | None = None
        self._paused = False
        self._recovery: asyncio.Task[None] | None = None
        store.set_fence(self._fence)
        pipeline.commit_scope = lambda: self.scope
        pipeline.fenced = self._fenced
        notifier.set_scope(lambda: self.scope)
        presence.scope = set()

    # --- the store's fence --------------------------------------------------------------------------------------

    def _fence(self, cursor: Cursor) -> None:
        """Inside every write transaction of this gateway's store: the leases it holds must still be its own, at
        the epochs it holds them with (``LeaseLost`` otherwise, and the transaction rolls back)."""
        if not isinstance(cursor, PgCursor):
            raise TypeError("cluster mode needs the PostgreSQL store (store.url)")
        fence = self.leases.fence
        self.leases.check_fence(cursor.raw)
        if self.cluster.audit_commits and fence.epochs:
            cursor.raw.executemany(
                "INSERT INTO cluster_commits (member, partition, epoch, at) VALUES (%s, %s, %s, now())",
                [(fence.member, p, e) for p, e in fence.epochs.items()],
            )

    def _fenced(self, exc: BaseException) -> bool:
        """The pipeline's question after a failed commit: was it the fence?  Then the pipeline drops the job (and
        those behind it) and carries on, and the partitions this gateway still holds are taken over afresh from the
        store (:meth:`_recover`): their engine state may hold transitions of the dropped jobs."""
        if not isinstance(exc, LeaseLost):
            return False
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="cluster-recover")
        return True

    async def _recover(self) -> None:
        # The failed check made the lease manager renew at once: what it finds lost goes through _lose meanwhile.
        for partition, epoch in sorted(self.leases.owned.items()):
            await self._drop(partition, settle=False)
            if self.leases.owned.get(partition) == epoch:
                await self._acquire(partition, epoch)
        log.warning("after a refused commit: partitions still held taken over afresh from the store")

    # --- lease callbacks ----------------------------------------------------------------------------------------

    async def _acquire(self, partition: int, epoch: int) -> None:
        buildings = sorted(self.buildings_of.get(partition, ()))
        snapshots, active = await asyncio.to_thread(self._read, buildings)
        async with self.engine_lock:
            for building in buildings:
                self.engine.adopt(building, snapshot=snapshots.get(building), active=active)
            # Messages of this partition that this gateway took in before, under an earlier lease, and never
            # committed come again now: the replay window must not drop them.
            self.pipeline.dedup.clear()
        await asyncio.to_thread(self.presence.reload, buildings)
        self.scope = self.scope | frozenset(buildings)
        if buildings:
            recovered = await asyncio.to_thread(self.store.recover, now_ms=_now_ms(), buildings=buildings)
            if recovered:
                log.warning("partition %d: %d SMS left 'attempting' now unknown", partition, recovered)
        await self.ingest.open(partition, connect_timeout_s=None)
        if partition == CATCH_ALL_PARTITION:
            await self.catch_all.open(connect_timeout_s=None)
        self.acquired += 1
        self.last_change_ms = _now_ms()
        log.info("partition %d (epoch %d): %d buildings adopted, session open", partition, epoch, len(buildings))

    def _read(self, buildings: Collection[str]) -> tuple[dict[str, bytes], list[Any]]:
        """The partition's snapshots and open alerts, read for its buildings only (a member takes P/N partitions at
        start: each reads its own rows, not the whole store's open alerts again)."""
        wanted = sorted(buildings)
        open_alerts = self.store.list_alerts(open_only=True, building=wanted, limit=10_000)
        return self.engine_state.load(buildings=wanted), active_alerts(open_alerts)

    async def _lose(self, partition: int) -> None:
        await self._drop(partition, settle=False)
        self.lost += 1
        log.warning("partition %d lost to a peer: its session closed, its buildings dropped", partition)

    async def _release(self, partition: int) -> None:
        await self._drop(partition, settle=True)
        self.released += 1
        log.info("partition %d handed over", partition)

    async def _drop(self, partition: int, *, settle: bool) -> None:
        session = self.ingest.session(partition)
        if settle and session is not None:
            # Take nothing more in for it, commit and acknowledge what was taken in: the next owner then gets the
            # partition's queue at once rather than after the broker's ack wait.
            session.pause()
            await self.pipeline.settle(timeout_s=SETTLE_TIMEOUT_S)
        await self.ingest.close(partition)
        if partition == CATCH_ALL_PARTITION:
            await self.catch_all.close()
        buildings = frozenset(self.buildings_of.get(partition, ()))
        self.scope = self.scope - buildings
        if self.presence.scope is not None:
            self.presence.scope.difference_update(buildings)
        async with self.engine_lock:
            for building in buildings:
                self.engine.release(building)
            self.pipeline.dedup.clear()  # see _acquire
        self.last_change_ms = _now_ms()

    # --- life cycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.leases.start()
        log.info(
            "cluster member %s: %d partitions, %d buildings in the district, brokers %s",
            self.cluster.member,
            self.cluster.partitions,
            sum(len(b) for b in self.buildings_of.values()),
            ", ".join(self.cluster.brokers or [self.config.mqtt.url]),
        )

    async def stop(self) -> None:
        """Graceful: every partition handed over (drained, then released) so peers take them at once."""
        await self.leases.stop()
        await self.ingest.close_all()
        await self.catch_all.close()

    async def watch(self) -> None:
        """Runs while the service does; returns (which stops the service) when the lease manager can no longer hold
        anything: its lock's session died, so peers count this gateway dead and take its partitions.  A restart
        rejoins with a new session."""
        await self.leases.wait_broken()
        log.critical("cluster member %s lost its lease session: stopping so that it restarts", self.cluster.member)

    def pause(self) -> None:
        self.ingest.pause()
        self._paused = True

    def resume(self) -> None:
        self.ingest.resume()
        self._paused = False

    def flow_control(self, backlog: int, *, high_water: int, low_water: int) -> None:
        """The pipeline's backlog hook: every partition session stops reading above ``high_water`` and resumes
        below ``low_water`` (TCP back-pressure, then the broker's session queue keeps the rest)."""
        if backlog >= high_water and not self._paused:
            self.pause()
        elif backlog <= low_water and self._paused:
            self.resume()

    def status(self) -> dict[str, Any]:
        """For ``/readyz``: ready when the lease manager runs and every owned partition's session is connected."""
        owned = self.leases.owned
        disconnected = [p for p in owned if (s := self.ingest.session(p)) is None or not s.connected]
        return {
            "ok": not self.leases.broken and not disconnected,
            "member": self.cluster.member,
            "partitions": sorted(owned),
            "disconnected": sorted(disconnected),
            "buildings": len(self.scope),
        }


def _now_ms() -> int:
    return int(time.time() * 1000)
