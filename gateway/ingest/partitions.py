"""Cluster mode's intake: one persistent MQTT session per partition this gateway owns (docs/cluster.md).

The broker (a NATS cluster) maps every device topic ``<prefix>/<building>/<device>/<channel>`` to
``fgp/<NN>/<building>/<device>/<channel>``, NN being the building's partition.  The owner of partition NN consumes it
through the session ``<client_prefix>-p<NN>``, subscribed to ``fgp/<NN>/+/+/+``, MQTT 3.1.1 (NATS speaks nothing
else), acknowledging each message after the group commit as the single gateway does.  The client id is the same
whichever gateway owns the partition: a new owner takes the session over, and what waited in it (or was in flight at
the old owner, after the broker's ``ack_wait``) comes to it.

Each message is handed on with the device's own topic (``fgp/<NN>/`` stripped, ``<prefix>/`` put back), so the
contract decoder and the pipeline are those of the single gateway.  A message whose NN is not its building's
partition (a gateway configured with another P than the broker) is refused, counted and acknowledged.

Who opens and closes partitions is the lease's business (gateway/cluster/).  Here: a closed partition's session is
never reconnected, and an open one reconnects after a connection loss only while ``owns(partition)`` still says so:
two processes reconnecting the same client id take the session from each other, back and forth (docs/cluster.md,
finding 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.partitions import partition_of
from gateway.config import MqttConfig
from gateway.ingest.mqtt import Incoming, MqttIngest
from gateway.metrics import Metrics

log = logging.getLogger("firegrid.partitions")

MAPPED_PREFIX = "fgp"  # the broker's mapping writes fgp.<NN>.<building>.<device>.<channel>
PARTITION_LANE_BASE = 2  # lanes 0 and 1 are the single gateway's main and event sessions
WRONG_PARTITION = "wrong_partition"  # the rejection reason counted in firegrid_rejections
CLOSE_TIMEOUT_S = 10.0


class PartitionUnavailable(Exception):
    """A partition's session did not connect in time (it keeps trying while the partition stays open)."""


def session_client_id(prefix: str, partition: int) -> str:
    return f"{prefix}-p{partition}"


def partition_filter(partition: int) -> str:
    """``+/+/+`` rather than ``#``: a ``#`` filter costs NATS two subscriptions and twice ``max_ack_pending``."""
    return f"{MAPPED_PREFIX}/{partition}/+/+/+"


def partition_lane(partition: int) -> int:
    """The ``Incoming.lane`` of a partition's messages: the key their acknowledgements are routed by."""
    return PARTITION_LANE_BASE + partition


@dataclass(slots=True)
class _Session:
    ingest: MqttIngest
    task: asyncio.Task[None]


class PartitionIngest:
    """Opens and closes partition sessions on demand; routes the pipeline's acknowledgements to them.

    ``urls``: the broker's nodes (default ``config.url`` alone), tried in turn when one refuses or drops a
    connection, since any node can serve any session.  ``owns(partition)``: asked before every reconnect of an open
    partition (wire it to the lease); default: open means owned."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        partitions: int,
        client_prefix: str,
        metrics: Metrics,
        on_message: Callable[[Incoming], None],
        urls: Sequence[str] | None = None,
        owns: Callable[[int], bool] | None = None,
        backoff_max_s: float = 5.0,
        high_water: int | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        # NATS refuses MQTT 5, and only QoS 1 is acknowledged after the commit
        self.config = config.model_copy(update={"protocol": "v311", "qos": 1, "buildings": None, "shared_group": None})
        self.partitions = partitions
        self.client_prefix = client_prefix
        self.metrics = metrics
        self._on_message = on_message
        self._urls = list(urls) if urls else [config.url]
        self._owns = owns
        self._backoff_max_s = backoff_max_s
        self._high_water = high_water
        self._sessions: dict[int, _Session] = {}
        # a reopened partition's session starts above its predecessor's generations, so a late acknowledgement
        # meant for the old connection's message ids is skipped instead of acknowledging someone else's message
        self._next_generation: dict[int, int] = {}
        self.rejected: Counter[int] = Counter()  # wrong-partition refusals, by partition
        self.ended: Counter[int] = Counter()  # sessions that stopped reconnecting because owns() said no

    # --- opening and closing -----------------------------------------------------------------------------------

    @property
    def open_partitions(self) -> list[int]:
        return sorted(self._sessions)

    def is_open(self, partition: int) -> bool:
        return partition in self._sessions

    def session(self, partition: int) -> MqttIngest | None:
        found = self._sessions.get(partition)
        return found.ingest if found is not None else None

    async def open(self, partition: int, *, connect_timeout_s: float | None = 30.0) -> None:
        """Connect and subscribe the partition's session; returns once subscribed (messages may flow already).

        Idempotent.  Raises :class:`PartitionUnavailable` when no node answered within ``connect_timeout_s``; the
        session keeps trying in the background until :meth:`close`."""
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} is not in 0..{self.partitions - 1}")
        found = self._sessions.get(partition)
        if found is None:
            found = self._start(partition)
        connected = asyncio.ensure_future(found.ingest.wait_connected())
        try:
            done, _ = await asyncio.wait(
                {connected, found.task}, timeout=connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
        if connected not in done or not found.ingest.connected:
            raise PartitionUnavailable(
                f"partition {partition}: no broker node answered within {connect_timeout_s}s"
                f" ({found.ingest.last_error})"
            )

    def _start(self, partition: int) -> _Session:
        ingest = MqttIngest(
            config=self.config,
            metrics=self.metrics,
            on_message=self._on_message,
            high_water=self._high_water,
            backoff_max_s=self._backoff_max_s,
            lane=partition_lane(partition),
            client_id=session_client_id(self.client_prefix, partition),
            topics=[partition_filter(partition)],
            topic_rewrite=self._rewriter(partition),
            # partition NN starts at node NN mod N: the sessions, and the consumers' delivery work, spread over nodes
            urls=self._urls[partition % len(self._urls) :] + self._urls[: partition % len(self._urls)],
            may_reconnect=lambda: self._may_reconnect(partition),
            generation=self._next_generation.get(partition, 0),
        )
        task = asyncio.create_task(ingest.run(), name=f"partition-{partition}")
        session = _Session(ingest=ingest, task=task)
        self._sessions[partition] = session
        task.add_done_callback(lambda done: self._ended(partition, session, done))
        self.metrics.partition_sessions.set(len(self._sessions))
        log.info("partition %d: session %s opening", partition, ingest.config.client_id)
        return session

    def _may_reconnect(self, partition: int) -> bool:
        return partition in self._sessions and (self._owns is None or self._owns(partition))

    def _ended(self, partition: int, session: _Session, task: asyncio.Task[None]) -> None:
        """The session's supervisor returned: closed here, or it gave up reconnecting (no longer owned)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("partition %d: session failed", partition, exc_info=task.exception())
        self._next_generation[partition] = session.ingest.generation + 1
        if self._sessions.get(partition) is session:
            del self._sessions[partition]
            self.ended[partition] += 1
            self.metrics.partition_sessions.set(len(self._sessions))
            log.warning("partition %d: session lost and not reconnected (no longer owned)", partition)

    async def close(self, partition: int) -> None:
        """Disconnect the partition's session WITHOUT acknowledging what it has pending: those messages belong to the
        next owner (queued ones at once, in-flight ones after the broker's ``ack_wait``).  Acknowledgements that come
        later from the pipeline for this session are dropped.  Never reconnects afterwards."""
        session = self._sessions.pop(partition, None)
        if session is None:
            return
        self.metrics.partition_sessions.set(len(self._sessions))
        session.ingest.stop()
        session.ingest.resume()  # a paused reader still has to see the DISCONNECT through
        try:
            await asyncio.wait_for(asyncio.shield(session.task), CLOSE_TIMEOUT_S)
        except TimeoutError:
            session.task.cancel()
            with contextlib.suppress(BaseException):
                await session.task
        except Exception:
            log.exception("partition %d: session ended with an error", partition)
        self._next_generation[partition] = session.ingest.generation + 1
        log.info("partition %d: session closed", partition)

    async def close_all(self) -> None:
        for partition in list(self._sessions):
            await self.close(partition)

    # --- the messages ------------------------------------------------------------------------------------------

    def _rewriter(self, partition: int) -> Callable[[str], str | None]:
        """``fgp/<NN>/<b>/<d>/<c>`` -> ``<prefix>/<b>/<d>/<c>``, or None (refused) when NN is not b's partition."""
        prefix = f"{self.config.topic_prefix}/"
        head = f"{MAPPED_PREFIX}/{partition}/"
        partitions = self.partitions
        known: dict[str, bool] = {}  # building -> in this partition (computed once per building)

        def rewrite(topic: str) -> str | None:
            if not topic.startswith(head):
                self._refuse(partition, topic, "not this session's partition prefix")
                return None
            rest = topic[len(head) :]
            building = rest.partition("/")[0]
            ours = known.get(building)
            if ours is None:
                ours = partition_of(building, partitions) == partition
                if len(known) < 100_000:
                    known[building] = ours
            if not ours:
                self._refuse(
                    partition,
                    topic,
                    f"building {building[:64]!r} is in partition {partition_of(building, partitions)} of {partitions},"
                    f" not {partition}: is P the broker's?",
                )
                return None
            return prefix + rest

        return rewrite

    def _refuse(self, partition: int, topic: str, why: str) -> None:
        self.rejected[partition] += 1
        self.metrics.reject(WRONG_PARTITION)
        count = self.rejected[partition]
        if count == 1 or count % 1000 == 0:  # a mis-configured P refuses everything: log it, not every message
            log.warning("partition %d: refused %s (%s; %d so far)", partition, topic[:200], why, count)

    # --- acknowledgement and flow control ----------------------------------------------------------------------

    def ack(self, acks: Mapping[int, list[tuple[int, int]]]) -> int:
        """The pipeline's ``ack_lanes``: ``(generation, mid)`` pairs by lane, each sent to its partition's session
        if it is still open and on the same connection; returns how many were sent."""
        sent = 0
        for lane, items in acks.items():
            session = self._sessions.get(lane - PARTITION_LANE_BASE)
            if session is not None:
                sent += session.ingest.ack(items)
        return sent

    def pause(self) -> None:
        for session in self._sessions.values():
            session.ingest.pause()

    def resume(self) -> None:
        for session in self._sessions.values():
            session.ingest.resume()
