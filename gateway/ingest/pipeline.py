"""The ingest pipeline: MQTT message -> contract -> dedup -> presence + rules engine -> group commit -> PUBACK.

Other sources (UITD panels, HTTP pushes) submit the same :class:`Incoming` with a synthetic topic and an
``on_commit`` callback, called where MQTT's PUBACK is sent: after the group commit.

Two stages, so that decoding the next batch overlaps with making the previous one durable:

1. **process** (on the event loop, under the engine lock): take a batch from the inbox (``event`` channel first),
   decode and judge each message, update presence, run the engine, encode line protocol, snapshot the engine state
   of the buildings the batch touched.  The batch is cut right after a message that caused an alert transition, so
   a fire never waits for the rest of a telemetry batch.
2. **commit** (a worker thread, in order): append to the spool (fsync), ``AlertStore.apply`` the transitions (one
   SQLite transaction with their outbox rows), save the engine snapshots.  Only then are the batch's MQTT messages
   acknowledged, rejected and duplicate ones included (acknowledging those earlier could overtake the commit of an
   earlier copy).

   A job made only of the fast lane's messages (``mqtt.event_lane``) may **overtake** the telemetry jobs waiting
   for their commit, on a second commit path, when that cannot reorder anything that must stay in order:

   * no older job still to commit holds a transition of one of its buildings (a building's transitions reach the
     store in the order the engine made them) or an acknowledgement of the fast lane's session (its PUBACKs go out
     in the order of its PUBLISHes);
   * its engine snapshots of buildings an older uncommitted job also touched are **not** written with it: they
     hold that older job's effects, which are not durable yet (after a crash its messages come again and would be
     judged on top of themselves).  Those snapshots are committed on the ordered path right behind the older jobs,
     so a building's snapshot is only ever replaced by a newer one.  Until then the store holds the overtaking
     job's alerts, which a restart seeds into the engine (``restore_engine``): an alarm is neither lost nor raised
     twice;
   * an ordered job never commits before an overtaking job made before it.

The InfluxDB writer reads the spool on its own time: it is never on the acknowledgement path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from alerts.inspections.deadlines import RULES as DEADLINE_RULES
from alerts.records import AlertRecord
from alerts.store import AlertStore
from common.db import Connection, Cursor, open_database
from gateway.ingest.contract import Decoder, Reason, Rejected
from gateway.ingest.dedup import Dedup
from gateway.ingest.mqtt import EVENT_LANE, MAIN_LANE, Incoming
from gateway.ingest.rejections import Rejections
from gateway.metrics import Metrics
from gateway.storage.influx import alert_line, reading_line
from gateway.storage.presence import Presence
from gateway.storage.spool import Spool
from rules.engine import Engine
from rules.types import ActiveAlert, AlertTransition, DeviceEvent, Reading, Severity, StatusChange

log = logging.getLogger("firegrid.pipeline")

MAX_BATCH = 2000  # messages per group commit; bigger amortizes the commit, smaller bounds what a fire waits behind
# Engine timers per tick: a district whose deadlines coincide is judged in slices, with MQTT intake (and any fire) in
# between (docs/performance.md).
TICK_SLICE = 2000
# Telemetry jobs waiting for the ordered commit (besides the one committing): enough to overlap stage 1 with the
# commit, few enough that the inbox, not the commit queue, holds the backlog (flow control counts only the inbox).
MAX_WAITING = 3
# The inbox's flow control (``on_backlog``) is asked when its length is a multiple of this (a power of two), and on
# every urgent message: the high-water mark is overshot by less than this.
FLOW_EVERY = 64
FLOW_EVERY_MASK = FLOW_EVERY - 1
# While an urgent message waits (``Pipeline.hurry``), stage 1 looks every this many messages and cuts its batch.
HURRY_EVERY = 64


def now_ms() -> int:
    return int(time.time() * 1000)


class EngineState:
    """Per-building engine snapshots in the store (table ``gateway_engine_state``): the SQLite file at ``path``, or
    with ``url`` the PostgreSQL store (cluster mode; ``path`` is then the local file the alert store was given too,
    so that the pipeline still sees the two share one store and writes the snapshots in the alert transaction)."""

    def __init__(self, path: Path, *, url: str | None = None) -> None:
        self.path = Path(path)
        self._db = open_database(url or self.path)

    def load(self, *, buildings: Collection[str] | None = None) -> dict[str, bytes]:
        """Every building's snapshot, or only ``buildings``' (cluster mode: a partition just taken over)."""
        if buildings is None:
            return {b: bytes(d) for b, d in self._db.execute("SELECT building, data FROM gateway_engine_state")}
        wanted = sorted(buildings)
        if not wanted:
            return {}
        rows = self._db.execute(
            f"SELECT building, data FROM gateway_engine_state WHERE building IN ({','.join('?' * len(wanted))})",
            wanted,
        )
        return {b: bytes(d) for b, d in rows}

    def save(self, snapshots: Mapping[str, bytes], *, at_ms: int) -> None:
        self._db.execute("BEGIN")
        try:
            self.write(self._db, snapshots, at_ms=at_ms)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @staticmethod
    def write(db: Connection | Cursor, snapshots: Mapping[str, bytes], *, at_ms: int) -> None:
        """Inside a transaction someone else commits (the alert store's, when both live in one store)."""
        db.executemany(
            "INSERT INTO gateway_engine_state (building, data, updated_ms) VALUES (?, ?, ?) ON CONFLICT (building)"
            " DO UPDATE SET data = excluded.data, updated_ms = excluded.updated_ms",
            [(b, bytes(d), at_ms) for b, d in snapshots.items()],
        )

    def close(self) -> None:
        self._db.close()


@dataclass(slots=True)
class Job:
    """One group commit: what to make durable, then which messages to acknowledge."""

    acks: list[tuple[int, int]] = field(default_factory=list)
    event_acks: list[tuple[int, int]] = field(default_factory=list)  # the fast lane's session (mqtt.event_lane)
    # any other session's, by its lane (cluster mode: one session per partition, gateway/ingest/partitions.py)
    lane_acks: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    # other sources' acknowledgements, each with the contract's verdict on its message
    callbacks: list[tuple[Callable[[Rejected | None], None], Rejected | None]] = field(default_factory=list)
    telemetry: list[bytes] = field(default_factory=list)
    alerts: list[bytes] = field(default_factory=list)
    transitions: list[AlertTransition] = field(default_factory=list)
    snapshots: dict[str, bytes] = field(default_factory=dict)
    device_ts: list[int] = field(default_factory=list)  # for the end-to-end lag histogram
    first_ts_ms: int = 0
    readings: int = 0
    messages: int = 0
    seq: int = 0  # the order stage 1 made the jobs in (and so the order of the engine states they snapshot)
    buildings: set[str] = field(default_factory=set)  # whose engine state the job's messages changed, snapshot or not
    fast: bool = False  # only the fast lane's MQTT messages: may overtake the telemetry jobs waiting for a commit


class Pipeline:
    def __init__(
        self,
        *,
        decoder: Decoder,
        dedup: Dedup,
        rejections: Rejections,
        presence: Presence,
        metrics: Metrics,
        engine: Engine,
        engine_lock: asyncio.Lock,
        alert_store: AlertStore,
        engine_state: EngineState,
        spool: Spool | None,
        on_committed: Callable[[Job], None],
        ack: Callable[[list[tuple[int, int]]], int],
        ack_events: Callable[[list[tuple[int, int]]], int] | None = None,
        ack_lanes: Callable[[Mapping[int, list[tuple[int, int]]]], int] | None = None,
        tick_interval_s: float = 1.0,
        gateway_topics: str = "firegrid/_gateway/",
    ) -> None:
        self.decoder = decoder
        # Gateways' own retained status topics match the status subscription; they are not devices.
        self._gateway_topics = gateway_topics
        self.dedup = dedup
        self.rejections = rejections
        self.presence = presence
        self.metrics = metrics
        self.engine = engine
        self.engine_lock = engine_lock
        self.alert_store = alert_store
        self.engine_state = engine_state
        # One file for both (as the service opens them): the engine snapshots commit in the alert store's
        # transaction, one fsync per group commit instead of two.
        self._snapshots_with_alerts = engine_state.path.resolve() == alert_store.path.resolve()
        # Cluster mode (gateway/service/cluster.py): the buildings this gateway may commit for, asked at each commit.
        # A job's transitions and snapshots of a building whose partition was lost or handed over since the job was
        # processed are dropped (the new owner judges the redelivered messages from the store's last snapshot), and
        # every snapshot is written in the alert store's transaction, so that the lease fence checks it too.
        self.commit_scope: Callable[[], Collection[str]] | None = None
        # Cluster mode: whether a failed commit was refused by the lease fence (then it is dropped, see _discard,
        # and the gateway carries on) rather than a failure that stops the gateway.
        self.fenced: Callable[[BaseException], bool] | None = None
        self.fenced_jobs = 0
        self.spool = spool
        self._on_committed = on_committed
        self._ack = ack
        self._ack_events = ack_events
        self._ack_lanes = ack_lanes
        self.tick_interval_s = tick_interval_s
        self.inbox: collections.deque[Incoming] = collections.deque()
        self.priority: collections.deque[Incoming] = collections.deque()
        self._work = asyncio.Event()
        # Commit scheduling (module docstring): the ordered path's waiting jobs and the one it is committing; the
        # overtaking path's jobs, first one committing.  ``_moved`` is set whenever either path takes or finishes a
        # job.
        self._ordered: collections.deque[Job] = collections.deque()
        self._ordered_busy: Job | None = None
        self._fast: collections.deque[Job] = collections.deque()
        self._moved = asyncio.Event()
        self._draining = False
        self._seq = 0
        # the two paths' threads may commit at once: the spool and the snapshots' own connection are one writer each
        self._spool_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self.overtaken = 0  # jobs committed ahead of older ones (for tests and /metrics-minded readers)
        # Set by the service: True while an urgent message waits to be read (the fast lane's socket has data):
        # stage 1 then cuts its telemetry batch short so that the reader runs sooner.
        self.hurry: Callable[[], bool] | None = None
        self._stopping = False
        self.closed = False
        self.on_backlog: Callable[[int], None] | None = None  # flow control hook (pause the MQTT reader)
        self.committed_messages = 0
        self.submitted_messages = 0
        self._committed = asyncio.Event()  # set after each commit: what settle() waits on
        self.last_commit_ms: int | None = None
        self.commit_error: str | None = None
        self._counts: collections.Counter[str] = collections.Counter()

    # --- intake (called from the MQTT reader callback) ---------------------------------------------------------

    def submit(self, message: Incoming) -> None:
        if self.closed:
            return  # shutting down: never processed, never acknowledged, redelivered after the restart
        self.submitted_messages += 1
        channel = message.topic.rpartition("/")[2]
        self._counts[channel if channel in ("telemetry", "event", "status") else "other"] += 1
        # Events (a call point pressed) jump the queue; their relative order per device is kept.
        if channel == "event":
            self.priority.append(message)
        else:
            self.inbox.append(message)
            if len(self.inbox) & FLOW_EVERY_MASK:
                self._work.set()
                return  # flow control looks every FLOW_EVERY messages of the inbox (per message: 5-7 % of a burst)
        self._work.set()
        if self.on_backlog is not None:
            self.on_backlog(len(self.inbox) + len(self.priority))

    async def submit_transitions(self, transitions: list[AlertTransition]) -> None:
        """Transitions made outside a batch (the API setting a maintenance window) go through the same commit."""
        async with self.engine_lock:
            job = Job(transitions=list(transitions))
            self._finish(job)
            if job.transitions or job.snapshots:
                self._enqueue(job)  # under the lock: jobs are queued in the order their snapshots were taken

    @property
    def backlog(self) -> int:
        return len(self.inbox) + len(self.priority)

    # --- stage 1 -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        committers = [
            asyncio.create_task(self._commit_loop(fast=False), name="firegrid-commit"),
            asyncio.create_task(self._commit_loop(fast=True), name="firegrid-commit-fast"),
        ]
        next_tick = time.monotonic() + self.tick_interval_s
        try:
            while True:
                if not self._ready():
                    if self._stopping and not self.backlog:
                        break
                    self._work.clear()
                    timeout = max(0.0, next_tick - time.monotonic())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._work.wait(), timeout)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_interval_s
                    await self._tick()
                    if self.engine.behind():
                        # the next slice right after the messages that arrive meanwhile (nothing above yields to
                        # the event loop when it has nothing to wait for)
                        next_tick = time.monotonic()
                        await asyncio.sleep(0)
                if self._ready():
                    await self._process()
                    await asyncio.sleep(0)  # the readers' turn (an urgent message may be waiting in a socket)
                for committer in committers:
                    if committer.done():
                        committer.result()  # a failed commit is fatal: re-raise it here
        finally:
            self._draining = True
            self._moved.set()
            failed = any(c.done() and not c.cancelled() and c.exception() is not None for c in committers)
            for committer in committers:
                if failed:
                    committer.cancel()  # after a failed commit nothing later may commit (its order is broken)
                with contextlib.suppress(asyncio.CancelledError):
                    await committer

    def _ready(self) -> bool:
        """Stage 1 has a batch to make: an urgent message, or telemetry and room in the ordered commit's queue."""
        return bool(self.priority) or (bool(self.inbox) and len(self._ordered) < MAX_WAITING)

    async def settle(self, *, timeout_s: float) -> bool:
        """Wait until every message submitted so far has been committed and acknowledged (or ``timeout_s``
        passed: False).  Cluster mode's hand-over: a paused partition's messages taken in are settled before its
        session closes, so its next owner need not wait for the broker to redeliver them."""
        target = self.submitted_messages
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.committed_messages < target:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self.commit_error is not None:
                return False
            self._committed.clear()
            self._work.set()  # a batch may be waiting for the next tick: take it now
            try:
                await asyncio.wait_for(self._committed.wait(), timeout=left)
            except TimeoutError:
                return False
        return True

    def stop(self) -> None:
        """Finish what is in the inbox, commit it, then return from :meth:`run`."""
        self._stopping = True
        self._work.set()

    def _take(self) -> list[Incoming]:
        # An urgent batch holds urgent messages only: small, and (from the fast lane) able to overtake.
        queue = self.priority or self.inbox
        batch: list[Incoming] = []
        while queue and len(batch) < MAX_BATCH:
            batch.append(queue.popleft())
        return batch

    async def _process(self) -> None:
        async with self.engine_lock:
            urgent = bool(self.priority)
            job = self._process_sync(self._take(), hurry=None if urgent else self.hurry)
            self._enqueue(job)

    def _process_sync(self, batch: list[Incoming], *, hurry: Callable[[], bool] | None = None) -> Job:
        """``hurry`` (a telemetry batch only): asked every :data:`HURRY_EVERY` messages whether to cut it short."""
        job = Job(fast=bool(batch) and all(m.lane == EVENT_LANE and m.on_commit is None for m in batch))
        decode = self.decoder.decode
        engine = self.engine
        presence = self.presence
        for index, message in enumerate(batch):
            if hurry is not None and index and not index % HURRY_EVERY and index + 1 < len(batch) and hurry():
                # an urgent message waits to be read: commit what is done, the rest goes back to the inbox's front
                self.inbox.extendleft(reversed(batch[index:]))
                break
            job.messages += 1
            if message.qos:
                lane = message.lane
                if lane == MAIN_LANE:
                    job.acks.append((message.generation, message.mid))
                elif lane == EVENT_LANE:
                    job.event_acks.append((message.generation, message.mid))
                else:
                    job.lane_acks.setdefault(lane, []).append((message.generation, message.mid))
            if message.topic.startswith(self._gateway_topics):
                if message.on_commit is not None:
                    job.callbacks.append((message.on_commit, None))
                continue
            try:
                decoded = decode(message.topic, message.payload, received_ms=message.received_ms)
            except Rejected as exc:
                self.rejections.record(exc, topic=message.topic, now_ms=message.received_ms)
                if message.on_commit is not None:
                    job.callbacks.append((message.on_commit, exc))
                continue
            except Exception:
                log.exception("decoder failed on a message from %s", message.topic[:200])
                internal = Rejected(Reason.WRONG_SHAPE, "internal decoder error")
                self.rejections.record(internal, topic=message.topic, now_ms=message.received_ms)
                if message.on_commit is not None:
                    job.callbacks.append((message.on_commit, internal))
                continue
            if message.on_commit is not None:
                job.callbacks.append((message.on_commit, None))
            job.buildings.add(decoded.topic.building)
            if decoded.clock_skew:
                self.metrics.clock_skew.inc(decoded.clock_skew)
            duplicates = 0
            before = len(job.transitions)
            for item in decoded.inputs:
                if isinstance(item, Reading):
                    if item.seq is not None and self.dedup.seen(
                        item.ref.device, item.seq, item.values, now_ms=message.received_ms
                    ):
                        duplicates += 1
                        continue
                    presence.reading(item)
                    line = reading_line(item)
                    if line is not None:
                        if not job.telemetry:
                            job.first_ts_ms = item.ts_ms
                        job.telemetry.append(line)
                    job.readings += 1
                    job.device_ts.append(item.ts_ms)
                elif isinstance(item, StatusChange):
                    presence.status(item)
                elif isinstance(item, DeviceEvent):
                    presence.seen(item.ref, item.ts_ms)
                try:
                    job.transitions.extend(engine.process(item))
                except Exception:
                    # A rules bug must not turn one odd reading into a crash loop; the reading is still stored.
                    self.metrics.engine_errors.inc()
                    log.exception("rules engine failed on a reading of %s", item.ref.device)
            if duplicates:
                self.rejections.record(
                    Rejected(
                        Reason.DUPLICATE,
                        f"{duplicates} sample(s) repeat a seq seen in the replay window",
                        building=decoded.topic.building,
                        device=decoded.topic.device,
                    ),
                    topic=message.topic,
                    now_ms=message.received_ms,
                )
            if len(job.transitions) > before and index + 1 < len(batch):
                # An alert is waiting: commit now; the rest of the batch goes back to the front of the inbox.
                rest = batch[index + 1 :]
                self.inbox.extendleft(reversed([m for m in rest if not m.topic.endswith("/event")]))
                self.priority.extendleft(reversed([m for m in rest if m.topic.endswith("/event")]))
                break
        self._finish(job)
        return job

    async def _tick(self) -> None:
        async with self.engine_lock:
            transitions = list(self.engine.tick(now_ms(), limit=TICK_SLICE))
            job = Job(transitions=transitions)
            self._finish(job)
            if job.transitions or job.snapshots:
                self._enqueue(job)

    def _finish(self, job: Job) -> None:
        """Sort fire first, encode the alert points, snapshot what the engine touched."""
        if job.transitions:
            job.transitions.sort(key=lambda t: -int(t.severity))
            job.alerts = [alert_line(t) for t in job.transitions]
            for t in job.transitions:
                self.metrics.transitions.labels(t.transition, Severity(t.severity).label).inc()
                log.info(
                    "alert %s: %s %s in %s (%s)",
                    t.transition,
                    Severity(t.severity).label,
                    t.rule,
                    t.building,
                    t.reason,
                    extra={"key": t.key, "device": t.device, "floor": t.floor, "transition": t.transition},
                )
        job.snapshots.update(self.engine.dirty_snapshots())
        self._seq += 1
        job.seq = self._seq

    def _enqueue(self, job: Job) -> None:
        """Queue a job for its commit: on the overtaking path when it may go there (module docstring)."""
        older = [*self._ordered, *((self._ordered_busy,) if self._ordered_busy is not None else ())]
        if job.fast and self._may_overtake(job, older):
            # what the older jobs changed, snapshot or not (a reading's time is in the state without making a snapshot)
            touched = {b for o in older for b in (*o.buildings, *o.snapshots, *(t.building for t in o.transitions))}
            held = {b: d for b, d in job.snapshots.items() if b in touched}
            if held:
                # committed right behind the older jobs that touched those buildings (same seq: after this job)
                job.snapshots = {b: d for b, d in job.snapshots.items() if b not in touched}
                self._ordered.append(Job(snapshots=held, seq=job.seq))
            if older:
                self.overtaken += 1
            self._fast.append(job)
        else:
            self._ordered.append(job)
        self._moved.set()

    @staticmethod
    def _may_overtake(job: Job, older: list[Job]) -> bool:
        """Neither a building's transitions nor the fast lane's acknowledgements would change their order."""
        buildings = {t.building for t in job.transitions}
        return not any(o.event_acks or any(t.building in buildings for t in o.transitions) for o in older)

    # --- stage 2 -----------------------------------------------------------------------------------------------

    def _next(self, *, fast: bool) -> Job | None:
        """The job this path may commit now, if any."""
        if fast:
            return self._fast[0] if self._fast else None
        if self._ordered_busy is not None or not self._ordered:
            return None
        job = self._ordered[0]
        if self._fast and self._fast[0].seq <= job.seq:
            return None  # an overtaking job made before this one commits first
        return job

    async def _commit_loop(self, *, fast: bool) -> None:
        while True:
            job = self._next(fast=fast)
            if job is None:
                if self._draining and not self._fast and not self._ordered:
                    return
                self._moved.clear()
                await self._moved.wait()
                continue
            if not fast:
                self._ordered.popleft()
                self._ordered_busy = job
                self._work.set()  # room in the queue: stage 1 may make the next batch
            try:
                await self._commit(job)
            except BaseException:
                self._work.set()  # stage 1 re-raises it; the job stays queued, so that nothing behind it commits
                raise
            if fast:
                self._fast.popleft()
            else:
                self._ordered_busy = None
            self._moved.set()
            self._work.set()

    def _discard(self, job: Job, exc: BaseException) -> None:
        """Cluster mode: the lease fence refused this job's commit (the gateway lost a partition while it was paused
        or cut off).  The job and every job queued behind it are dropped unacknowledged, not retried: they were
        judged on an engine state the new owner has replaced, and the broker gives their messages to whoever owns
        each partition now.  Jobs already being committed on the other path finish or are refused in turn.  The
        messages count as settled (:meth:`settle`)."""
        # The head of the overtaking path is this job or one being committed now: everything behind it goes.
        dropped = [job, *list(self._fast)[1:], *self._ordered]
        while len(self._fast) > 1:
            self._fast.pop()
        self._ordered.clear()
        messages = sum(j.messages for j in dropped)
        self.fenced_jobs += len(dropped)
        self.committed_messages += messages
        self._committed.set()
        log.warning(
            "commit refused by the lease fence (%s): %d jobs, %d messages dropped unacknowledged for their owners",
            exc,
            len(dropped),
            messages,
        )

    async def _commit(self, job: Job) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._commit_sync, job)
        except Exception as exc:
            if self.fenced is not None and self.fenced(exc):
                self._discard(job, exc)
                return
            # Nothing of this job is acknowledged; the broker redelivers it after we restart.
            self.commit_error = f"{exc.__class__.__name__}: {exc}"
            log.critical("group commit failed, acknowledging nothing: %s", self.commit_error)
            raise
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.commits.inc()
        self.last_commit_ms = now = now_ms()
        if job.acks:
            self.metrics.acks.inc(self._ack(job.acks))
        if job.event_acks and self._ack_events is not None:
            self.metrics.acks.inc(self._ack_events(job.event_acks))
        if job.lane_acks and self._ack_lanes is not None:
            self.metrics.acks.inc(self._ack_lanes(job.lane_acks))
        for callback, verdict in job.callbacks:
            try:
                callback(verdict)
            except Exception:  # one source's broken connection must not stop the commits of the others
                log.exception("acknowledging a committed message failed")
        self.committed_messages += job.messages
        self._committed.set()
        if job.readings:
            self.metrics.readings.inc(job.readings)
            lag = self.metrics.lag
            for ts in job.device_ts:
                lag.observe(max(0.0, (now - ts) / 1000))
        counts, self._counts = self._counts, collections.Counter()
        for channel, n in counts.items():
            self.metrics.messages_in.labels(channel).inc(n)
        self._on_committed(job)
        if self.on_backlog is not None:
            self.on_backlog(self.backlog)

    def _commit_sync(self, job: Job) -> None:
        # Every part is durable before anything of the job is acknowledged, in whatever order; the alert store goes
        # first because its COMMIT hands a fire's pages to the notifier, which sends them while the spool syncs.
        at = now_ms()
        snapshots = job.snapshots
        fenced = self.commit_scope is not None
        if self.commit_scope is not None:
            scope = self.commit_scope()
            job.transitions = [t for t in job.transitions if t.building in scope]
            snapshots = {b: data for b, data in snapshots.items() if b in scope}
        # Only with transitions: a telemetry-only commit keeps to its own connection, clear of the store's lock
        # (which the notifier and the API take), with the same number of syncs.
        together = bool(snapshots) and (bool(job.transitions) or fenced) and self._snapshots_with_alerts
        if job.transitions or together:
            self.alert_store.apply(
                job.transitions,
                now_ms=at,
                also=(lambda cur: EngineState.write(cur, snapshots, at_ms=at)) if together else None,
            )
        if self.spool is not None and (job.telemetry or job.alerts):
            with self._spool_lock:
                dropped = self.spool.append(
                    telemetry=job.telemetry, alerts=job.alerts, first_ts_ms=job.first_ts_ms or at
                )
            if dropped:  # the oldest telemetry made room under spool_max_mb: count it, as /metrics promises
                self.metrics.spool_dropped.inc(dropped)
        if snapshots and not together:
            with self._state_lock:
                self.engine_state.save(snapshots, at_ms=at)


def restore_engine(
    engine: Engine, *, state: EngineState, alert_store: AlertStore, owns: Callable[[str], bool] = lambda _: True
) -> tuple[int, int]:
    """Put the engine back where it was: per-building snapshots, then the store's open alerts (so an alarm that
    was raised is neither forgotten nor raised a second time).  Returns (buildings, active alerts).

    Buildings this gateway no longer owns (``mqtt.buildings``) are left out: their new owner judges them now.  Their
    open alerts stay in this store (and in the API) until resolved here; docs/gateway.md says how to move one."""
    restored = 0
    foreign: set[str] = set()
    for building, data in state.load().items():
        if not owns(building):
            foreign.add(building)
            continue
        try:
            engine.restore(building, data)
            restored += 1
        except Exception:
            log.exception("could not restore the engine state of building %s; starting it fresh", building)
    alerts = []
    for alert in active_alerts(alert_store.active_alerts()):
        if owns(alert.building):
            alerts.append(alert)
        else:
            foreign.add(alert.building)
    engine.seed_active(alerts)
    if foreign:
        log.warning(
            "state of %d buildings this gateway no longer owns (mqtt.buildings) was not restored: %s",
            len(foreign),
            ", ".join(sorted(foreign)[:20]),
        )
    return restored, len(alerts)


def active_alerts(rows: Iterable[AlertRecord]) -> list[ActiveAlert]:
    """The store's open alerts as the engine holds them (those it must not raise again)."""
    out = []
    for row in rows:
        if row.condition == "cleared":
            continue  # open for the operator, but the condition itself is over: the engine must not hold it
        if row.rule in DEADLINE_RULES:
            continue  # an overdue inspection or rectification: the deadline check judges it, not the engine
        out.append(
            ActiveAlert(
                key=row.key,
                rule=row.rule,
                building=row.building,
                floor=row.floor,
                device=row.device,
                since_ms=row.raised_ms or row.ts_ms,
                severity=row.severity,
                value=row.value,
                confirmed=row.confirmed,
                test=row.test,
                drill=row.drill,
            )
        )
    return out
