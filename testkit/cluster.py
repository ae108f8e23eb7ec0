"""The cluster-mode acceptance harness: every server of a cluster on loopback, the gateways as real processes, a city's
devices as real MQTT connections, and the recorders the acceptance test judges by.

What it starts (:class:`ClusterHarness`):

* a private PostgreSQL (its own :class:`~testkit.postgres.PostgresServer`: the test reads its tables while the
  gateways run), a private InfluxDB, the three-node NATS cluster of docs/cluster.md (``ack_wait`` 3 s), the webhook
  receiver (:class:`~testkit.webhooks.WebhookCounter`) and the Aliyun SMS emulator, each on its own thread;
* one config file per gateway (``gw-a``, ``gw-b``, ``gw-c``) and one for the console, all with the same registry;
* ``firegrid run`` / ``firegrid console`` as processes it can SIGKILL, SIGSTOP, SIGCONT and SIGTERM.

What it records:

* :class:`LoadGenerator`: 120 buildings x 10 devices, one MQTT 3.1.1 connection per building (a building's
  detectors share one uplink, as the NB-IoT and LoRa concentrators of a real building do), spread over the three
  NATS nodes, QoS 1 at a set total rate.  Every reading carries its device's ``seq`` and is recorded as
  ``(device, seq, ts)`` when its PUBACK arrives.  A connection that drops reconnects (to the next node if its own
  refuses) and paho resends what was not acknowledged, as devices do.  Every fourth building reconnects every few
  seconds and publishes right after its CONNECT, before the CONNACK: the publishes that can escape the subject
  mapping (docs/cluster.md finding 1), which the gateways' catch-all session must bring back.  Alarms (one detector,
  or two on a floor: a double knock) are published on demand with their wall-clock publish time.
* :class:`LeaseWatcher`: ``partition_leases`` every 100 ms, every change of a partition's live owner with its time.
* :class:`ConsolePoller`: every second, the console's buildings and active alerts against PostgreSQL's open alerts.

The checks read PostgreSQL (alerts, audit, cluster_commits), InfluxDB (every acknowledged reading) and the
receivers' records (SMS once, one webhook-id per event).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN, WEBHOOK_SECRET, sms_section
from testkit.faults import ThreadedApp
from testkit.gateway import ROOT, wait_for
from testkit.nats import MQTT_MSGS_STREAM, NatsCluster, NatsNode, partition_of
from testkit.postgres import PostgresServer
from testkit.services import InfluxServer, ManagedProcess, free_port
from testkit.webhooks import WebhookCounter

TOKEN = "cluster-admin-token"
MEMBERS = ("gw-a", "gw-b", "gw-c")
CLIENT_ID = "fgc"  # partition sessions fgc-p<NN>, the catch-all fgc-unmapped
SMOKE_PAIRS = 4  # devices 0..7 are smoke detectors, two per floor on floors 1..4; 8 and 9 are heat detectors


class HarnessError(RuntimeError):
    """The harness itself could not do what was asked (a server did not start, a process would not stop)."""


# --------------------------------------------------------------------------------------------------------------------
# The city


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    id: str
    building: str
    kind: str
    floor: int


@dataclass(frozen=True, slots=True)
class Layout:
    """120 buildings in three grids, ten devices each: eight smoke detectors (two per floor on floors 1-4, so a
    floor can double-knock) and two heat detectors."""

    buildings: int = 120
    devices_per_building: int = 10
    partitions: int = 16
    grids: int = 3

    def building_ids(self) -> list[str]:
        return [f"b{n:03d}" for n in range(self.buildings)]

    def grid_of(self, building: str) -> str:
        return f"g{int(building[1:]) % self.grids}"

    def devices(self) -> list[DeviceSpec]:
        out: list[DeviceSpec] = []
        for building in self.building_ids():
            for k in range(self.devices_per_building):
                smoke = k < 2 * SMOKE_PAIRS
                floor = k // 2 + 1 if smoke else 5
                out.append(DeviceSpec(f"{building}-d{k}", building, "smoke" if smoke else "heat", floor))
        return out

    def partition(self, building: str) -> int:
        return partition_of(building, self.partitions)

    def buildings_in(self, partitions: Iterable[int]) -> list[str]:
        wanted = set(partitions)
        return [b for b in self.building_ids() if self.partition(b) in wanted]

    def smoke_pair(self, building: str, floor: int) -> tuple[str, str]:
        """The two smoke detectors of ``floor`` (1..4) of ``building``."""
        if not 1 <= floor <= SMOKE_PAIRS:
            raise ValueError(f"floor {floor} has no smoke pair")
        return f"{building}-d{2 * floor - 2}", f"{building}-d{2 * floor - 1}"


def registry(layout: Layout) -> dict[str, Any]:
    return {
        "buildings": [
            {"id": b, "name": f"Building {b}", "grid": layout.grid_of(b), "floors": 10} for b in layout.building_ids()
        ],
        "devices": [{"id": d.id, "building": d.building, "kind": d.kind, "floor": d.floor} for d in layout.devices()],
    }


def grid_worker_phone(grid: int) -> str:
    return f"+86138000001{grid:02d}"


# --------------------------------------------------------------------------------------------------------------------
# Load generator


@dataclass(frozen=True, slots=True)
class Ack:
    """A reading the broker acknowledged: it is the broker's (and then the cluster's) responsibility."""

    device: str
    seq: int
    ts_ms: int
    published_ms: int  # wall clock of the first publish
    published_mono: float
    acked_mono: float


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    device: str
    building: str
    floor: int
    seq: int
    ts_ms: int
    published_ms: int  # wall clock when handed to the connection
    published_mono: float


@dataclass
class _DeviceState:
    spec: DeviceSpec
    link: DeviceLink
    seq: int = 0
    last_ts: int = 0
    alarming: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class _Pending:
    device: str
    seq: int
    ts_ms: int
    published_ms: int
    published_mono: float


class DeviceLink:
    """One building's MQTT 3.1.1 connection, driven by its own thread (``loop()`` and reconnect by hand, so the
    harness decides where it reconnects and when it pipelines a publish behind the CONNECT)."""

    CONNACK_TIMEOUT_S = 5.0

    def __init__(
        self,
        generator: LoadGenerator,
        *,
        building: str,
        nodes: Sequence[NatsNode],
        home: int,
        pipelined: bool,
        reconnect_every_s: float,
    ) -> None:
        self.generator = generator
        self.building = building
        self.nodes = list(nodes)
        self.node_index = home
        self.pipelined = pipelined
        self.reconnect_every_s = reconnect_every_s
        self.devices: list[_DeviceState] = []
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"dev-{building}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.max_inflight_messages_set(0)  # unbounded: a stall must not turn into client-side queueing
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.sock_ok = False
        self.connect_started = 0.0
        self.next_cycle = 0.0
        self.connects = 0
        self.drops = 0  # connections lost without our asking (a node died, the server dropped us)
        self.cycles = 0  # voluntary reconnects (pipelined links)
        self.pipelined_before_connack = 0
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._early: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"link-{building}", daemon=True)

    # paho callbacks (loop thread)
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        # Runs under paho's outgoing-message lock: take only our own small lock, never call into paho here.
        now = time.monotonic()
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early.add(mid)  # acknowledged before publish() returned to the thread that sent it
                return
        self.generator._acked(pending, now)

    def track(self, mid: int, pending: _Pending) -> None:
        now = time.monotonic()
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending[mid] = pending
                return
        self.generator._acked(pending, now)

    def unacknowledged(self) -> list[_Pending]:
        with self._lock:
            return list(self._pending.values())

    @property
    def node(self) -> NatsNode:
        return self.nodes[self.node_index % len(self.nodes)]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _connect(self) -> bool:
        self.connected.clear()
        try:
            # connect() closes any previous socket, sends CONNECT and returns without waiting for the CONNACK;
            # paho resends every unacknowledged publish once the CONNACK arrives.
            self.client.connect("127.0.0.1", self.node.mqtt_port, keepalive=10)
        except OSError:
            self.node_index += 1  # a device with a list of brokers tries the next one
            return False
        self.sock_ok = True
        self.connects += 1
        self.connect_started = time.monotonic()
        if self.pipelined and not self.generator.paused:
            self.next_cycle = self.connect_started + self.reconnect_every_s * random.uniform(0.7, 1.3)
            # Right behind the CONNECT, before the CONNACK: the publish that may escape the mapping.
            device = random.choice(self.devices)
            if not self.connected.is_set():
                self.pipelined_before_connack += 1
            self.generator.publish_next(device)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock_ok:
                if not self._connect():
                    self._stop.wait(0.2)
                continue
            rc = self.client.loop(timeout=0.05)
            now = time.monotonic()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self.drops += 1
                self.sock_ok = False
                self.connected.clear()
                self._stop.wait(0.05)
                continue
            if not self.connected.is_set() and now - self.connect_started > self.CONNACK_TIMEOUT_S:
                self.drops += 1
                self.sock_ok = False  # no CONNACK: the node is in trouble, try the next one
                self.node_index += 1
                continue
            if self.pipelined and not self.generator.paused and self.connected.is_set() and now >= self.next_cycle:
                self.cycles += 1
                self.sock_ok = False  # reconnect at once (the socket is closed by connect())


@dataclass
class LoadStats:
    published: int
    acked: int
    unacknowledged: int
    connects: int
    drops: int
    pipelined_cycles: int
    pipelined_before_connack: int


class LoadGenerator:
    """The city's devices at ``rate`` readings/s in total, recorded as acknowledged readings.

    Readings are paced by one thread (every 50 ms, round robin over a shuffled device list); a pipelined
    connection's publish behind its CONNECT and :meth:`alarm` publish from their own threads (a device's seq and
    ts are taken under its lock, so they never repeat)."""

    def __init__(
        self,
        nodes: Sequence[NatsNode],
        *,
        layout: Layout = Layout(),
        rate: float = 300.0,
        pipelined_every: int = 4,
        reconnect_every_s: float = 8.0,
        seed: int = 7,
    ) -> None:
        self.layout = layout
        self.rate = rate
        self._random = random.Random(seed)
        self.links: list[DeviceLink] = []
        self.devices: dict[str, _DeviceState] = {}
        by_building: dict[str, list[DeviceSpec]] = defaultdict(list)
        for spec in layout.devices():
            by_building[spec.building].append(spec)
        for i, building in enumerate(layout.building_ids()):
            link = DeviceLink(
                self,
                building=building,
                nodes=nodes,
                home=i % len(nodes),
                pipelined=pipelined_every > 0 and i % pipelined_every == 0,
                reconnect_every_s=reconnect_every_s,
            )
            for spec in by_building[building]:
                state = _DeviceState(spec=spec, link=link)
                link.devices.append(state)
                self.devices[spec.id] = state
            self.links.append(link)
        self._lock = threading.Lock()
        self.acks: dict[tuple[str, int], Ack] = {}
        self.published = 0
        self.alarms: list[AlarmRecord] = []
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="load-ticker", daemon=True)
        self.started_ms = 0

    # recording
    def _acked(self, pending: _Pending, now: float) -> None:
        key = (pending.device, pending.seq)
        with self._lock:
            if key not in self.acks:
                self.acks[key] = Ack(
                    pending.device, pending.seq, pending.ts_ms, pending.published_ms, pending.published_mono, now
                )

    def acked(self) -> list[Ack]:
        with self._lock:
            return list(self.acks.values())

    def stats(self) -> LoadStats:
        return LoadStats(
            published=self.published,
            acked=len(self.acks),
            unacknowledged=sum(len(link.unacknowledged()) for link in self.links),
            connects=sum(link.connects for link in self.links),
            drops=sum(link.drops for link in self.links),
            pipelined_cycles=sum(link.cycles for link in self.links),
            pipelined_before_connack=sum(link.pipelined_before_connack for link in self.links),
        )

    # publishing
    def _payload(self, device: _DeviceState, seq: int, ts: int) -> bytes:
        body: dict[str, Any] = {"ts": ts, "seq": seq, "battery": 90}
        if device.spec.kind == "smoke":
            body["obscuration"] = round(0.1 + (seq % 5) * 0.05, 2)
            if device.alarming:
                body["alarm"] = True  # a detector keeps reporting its alarm while the smoke lasts
        else:
            body["celsius"] = round(21.0 + (seq % 7) * 0.2, 1)
        return json.dumps(body, separators=(",", ":")).encode()

    def publish_next(self, device: _DeviceState, *, alarm: bool = False) -> _Pending:
        with device.lock:
            if alarm:
                device.alarming = True
            device.seq += 1
            now_ms = int(time.time() * 1000)
            device.last_ts = max(now_ms, device.last_ts + 1)
            seq, ts = device.seq, device.last_ts
            payload = self._payload(device, seq, ts)
        pending = _Pending(device.spec.id, seq, ts, int(time.time() * 1000), time.monotonic())
        topic = f"firegrid/{device.spec.building}/{device.spec.id}/telemetry"
        info = device.link.client.publish(topic, payload, qos=1)
        with self._lock:
            self.published += 1
        device.link.track(info.mid, pending)
        return pending

    def _tick(self) -> None:
        order = list(self.devices.values())
        self._random.shuffle(order)
        index = 0
        carry = 0.0
        interval = 0.05
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += interval
            if not self._paused.is_set():
                carry += self.rate * interval
                while carry >= 1.0:
                    carry -= 1.0
                    self.publish_next(order[index % len(order)])
                    index += 1
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    def start(self, *, connected_timeout: float = 60.0) -> LoadGenerator:
        for link in self.links:
            link.start()
        wait_for(
            lambda: all(link.connected.is_set() for link in self.links),
            timeout=connected_timeout,
            what="every building's connection to have its CONNACK",
            interval=0.1,
            error=HarnessError,
        )
        self.started_ms = int(time.time() * 1000)
        self._ticker.start()
        return self

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def pause(self) -> None:
        """No paced readings and no pipelined reconnects until :meth:`resume` (alarms still go out)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def drain(self, *, timeout: float = 60.0) -> None:
        """Stop the paced load and wait until every reading published so far has its PUBACK (paho resends across
        reconnects); what is still unacknowledged at the deadline stays so and is not required anywhere."""
        self._paused.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(link.unacknowledged() for link in self.links):
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=10)
        for link in self.links:
            link.stop()

    # alarms
    def alarm(self, device: str) -> AlarmRecord:
        """The detector goes into alarm now: this reading and every later one carry ``alarm: true``."""
        state = self.devices[device]
        pending = self.publish_next(state, alarm=True)
        record = AlarmRecord(
            device,
            state.spec.building,
            state.spec.floor,
            pending.seq,
            pending.ts_ms,
            pending.published_ms,
            pending.published_mono,
        )
        with self._lock:
            self.alarms.append(record)
        return record

    def double_knock(self, building: str, floor: int) -> tuple[AlarmRecord, AlarmRecord]:
        """Both smoke detectors of a floor in alarm, one right after the other: a confirmed fire."""
        first, second = self.layout.smoke_pair(building, floor)
        return self.alarm(first), self.alarm(second)


class AlarmPlan:
    """Hands out alarm sites so that no detector alarms twice and a single alarm never shares a floor with another
    alarm (which would make it a double knock).  Floors 1..4 of each building."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._free: dict[str, list[int]] = {b: list(range(1, SMOKE_PAIRS + 1)) for b in layout.building_ids()}
        self._lock = threading.Lock()

    def take(self, buildings: Sequence[str]) -> tuple[str, int] | None:
        with self._lock:
            for building in sorted(buildings, key=lambda b: -len(self._free[b])):
                if self._free[building]:
                    return building, self._free[building].pop(0)
        return None


@dataclass(frozen=True, slots=True)
class ScheduledAlarm:
    """One alarm the test raised: single (``records`` has one) or double knock (two), and what it was aimed at."""

    kind: str  # "single" or "double"
    building: str
    floor: int
    records: tuple[AlarmRecord, ...]
    label: str  # which fault it was placed around, or "background"

    @property
    def published_ms(self) -> int:
        return self.records[-1].published_ms  # a fire is confirmed by the second detector


# --------------------------------------------------------------------------------------------------------------------
# PostgreSQL readers


def _connect_pg(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def pg_rows(url: str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts; an absent table reads as no rows (the gateways create the schema when they start)."""
    import psycopg
    from psycopg.rows import dict_row

    with _connect_pg(url) as conn, conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(sql, params)
        except psycopg.errors.UndefinedTable:
            return []
        return list(cur.fetchall())


def _norm_partition(value: Any) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _live(expires_at: Any, db_now: dt.datetime) -> bool:
    """Whether a lease is live by the database's clock: ``expires_at`` a timestamp, or epoch seconds/milliseconds."""
    if expires_at is None:
        return False
    if isinstance(expires_at, dt.datetime):
        return bool(expires_at > db_now)
    value = float(expires_at)
    return (value / 1000 if value > 1e11 else value) > db_now.timestamp()


@dataclass(frozen=True, slots=True)
class LeaseChange:
    partition: int | str
    before: str | None
    after: str | None  # None: nobody holds a live lease
    epoch: int | None
    at: float  # time.time() of the poll that saw it
    at_mono: float


class LeaseWatcher:
    """Polls ``partition_leases`` every ``interval`` seconds; a partition's owner is the lease's owner while
    ``expires_at`` is in the future (by PostgreSQL's clock), else nobody.  Every change is recorded."""

    def __init__(self, url: str, *, interval: float = 0.1, partitions: int | None = None) -> None:
        self.url = url
        self.interval = interval
        self.partitions = partitions  # the data partitions 0..P-1; a lease row beyond (the catch-all's) is recorded too
        self.changes: list[LeaseChange] = []
        self.owners: dict[int | str, str | None] = {}
        self.epochs: dict[int | str, int | None] = {}
        self.polls = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-watcher", daemon=True)

    def start(self) -> LeaseWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg

        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = _connect_pg(self.url)
                try:
                    rows = conn.execute(
                        "SELECT partition, owner, epoch, expires_at, clock_timestamp() FROM partition_leases"
                    ).fetchall()
                except psycopg.errors.UndefinedTable:
                    rows = []
                self._observe(rows)
            except psycopg.Error as exc:
                self.errors.append(str(exc)[:200])
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _observe(self, rows: Sequence[Sequence[Any]]) -> None:
        now, mono = time.time(), time.monotonic()
        with self._lock:
            self.polls += 1
            for partition, owner, epoch, expires_at, db_now in rows:
                p = _norm_partition(partition)
                live = _live(expires_at, db_now)
                current = str(owner) if owner is not None and live else None
                if p not in self.owners or self.owners[p] != current:
                    self.changes.append(
                        LeaseChange(p, self.owners.get(p), current, None if epoch is None else int(epoch), now, mono)
                    )
                self.owners[p] = current
                self.epochs[p] = None if epoch is None else int(epoch)

    def snapshot(self) -> dict[int | str, str | None]:
        with self._lock:
            return dict(self.owners)

    def owned_by(self, member: str) -> list[int]:
        """The data partitions ``member`` holds a live lease on (not the catch-all's, which commits nothing)."""
        return sorted(
            p
            for p, o in self.snapshot().items()
            if o == member and isinstance(p, int) and (self.partitions is None or 0 <= p < self.partitions)
        )

    def history(self) -> list[LeaseChange]:
        with self._lock:
            return list(self.changes)

    def wait_polls(self, n: int = 2, *, timeout: float = 5.0) -> None:
        """Wait for ``n`` more polls: after it, the snapshot reflects the table as of now."""
        target = self.polls + n
        wait_for(lambda: self.polls >= target, timeout=timeout, what="the lease watcher to poll", error=HarnessError)


# --------------------------------------------------------------------------------------------------------------------
# Console poller


def http_json(url: str, *, token: str = TOKEN, timeout: float = 5.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, str(exc)


def _items(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict):
        return list(body.get("items") or [])
    return list(body) if isinstance(body, list) else []


@dataclass(frozen=True, slots=True)
class ConsoleMiss:
    at: float
    what: str


class ConsolePoller:
    """Every ``interval`` s: PostgreSQL's open alerts first, then the console's ``/api/v1/buildings`` (must list
    every building) and ``/api/v1/alerts?active=true`` (must list every alert PostgreSQL had open just before;
    nothing is resolved during the test, so an alert open in PostgreSQL must still be active at the console)."""

    def __init__(self, *, pg_url: str, base_url: str, buildings: Iterable[str], interval: float = 1.0) -> None:
        self.pg_url = pg_url
        self.base_url = base_url
        self.buildings = set(buildings)
        self.interval = interval
        self.polls = 0
        self.misses: list[ConsoleMiss] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-poller", daemon=True)

    def start(self) -> ConsolePoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def poll_once(self) -> list[str]:
        problems: list[str] = []
        try:
            open_ids = {int(r["id"]) for r in pg_rows(self.pg_url, "SELECT id FROM alerts WHERE open::int = 1")}
        except Exception as exc:  # the store is not what is judged here; say why this poll cannot judge
            return [f"PostgreSQL: {exc!s:.200}"]
        status, body = http_json(f"{self.base_url}/api/v1/buildings")
        if status != 200:
            problems.append(f"/api/v1/buildings answered {status}: {body!s:.200}")
        else:
            listed = {str(b.get("id")) for b in _items(body)}
            missing = self.buildings - listed
            if missing:
                problems.append(f"/api/v1/buildings lacks {len(missing)} buildings, e.g. {sorted(missing)[:5]}")
        status, body = http_json(f"{self.base_url}/api/v1/alerts?active=true&limit=1000")
        if status != 200:
            problems.append(f"/api/v1/alerts answered {status}: {body!s:.200}")
        else:
            listed_ids = {int(a["id"]) for a in _items(body) if "id" in a}
            missing_ids = open_ids - listed_ids
            if missing_ids:
                problems.append(f"/api/v1/alerts lacks {len(missing_ids)} open alerts, e.g. {sorted(missing_ids)[:5]}")
        return problems

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            problems = self.poll_once()
            self.polls += 1
            now = time.time()
            self.misses.extend(ConsoleMiss(now, p) for p in problems)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


# --------------------------------------------------------------------------------------------------------------------
# Processes


class Process(ManagedProcess):
    """A server process the test can SIGKILL, SIGSTOP, SIGCONT and SIGTERM; ready once its HTTP port answers."""

    def __init__(self, *, name: str, argv: list[str], http_port: int, workdir: Path) -> None:
        super().__init__(workdir=workdir)
        self.name = name
        self.argv = argv
        self.http_port = http_port
        self.log_path = workdir / f"{name}.log"
        self.paused = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.name} is not running")
        return self.proc.pid

    def start(self, *, timeout: float = 60.0) -> Process:
        self.launch()
        return self.wait_answers(timeout=timeout)

    def launch(self) -> Process:
        """Spawn without waiting (several processes that must start together: :meth:`wait_answers` after)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn(self.argv, self.log_path, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.paused = False
        return self

    def wait_answers(self, *, timeout: float = 60.0) -> Process:
        wait_for(self._answers, timeout=timeout, what=f"{self.name} to answer HTTP", interval=0.1, error=HarnessError)
        return self

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on ``/metrics`` (0 when absent or the process does not answer)."""
        request = urllib.request.Request(f"{self.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return 0.0
        total = 0.0
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] == name:
                with contextlib.suppress(ValueError):
                    total += float(value)
        return total

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise HarnessError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        status, _ = http_json(f"{self.base_url}/healthz", timeout=1.0)
        return status != 0

    def sigstop(self) -> None:
        """A hung process: its sockets stay open, nothing is read, no lease is renewed."""
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def sigcont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def sigterm(self) -> None:
        """A graceful stop, without waiting for it (the test times the takeover from this moment)."""
        os.kill(self.pid, signal.SIGTERM)

    def sigkill(self) -> None:
        if self.paused:
            self.sigcont()
        self.kill()

    def wait_exit(self, *, timeout: float = 30.0) -> int:
        if self.proc is None:
            raise HarnessError(f"{self.name} is not running")
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{self.name} did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}") from exc
        self.proc = None
        return code

    def stop(self, *, timeout: float = 30.0) -> int | None:
        if self.paused and self.running:
            self.sigcont()
        return super().stop(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def firegrid_argv(command: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.tools.cli", command, "--config", str(config)]


def check_config(config: Path) -> tuple[int, str]:
    """``firegrid check-config FILE``: exit status and output."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.tools.cli", "check-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


CLUSTER_MODE_KEYS = ("cluster", "store.url")


def cluster_section_rejected(output: str) -> bool:
    """True when check-config refused the config *only* for the cluster-mode keys (the build predates the wiring):
    every problem line names ``cluster`` or ``store.url`` as unknown, and ``cluster`` is among them."""
    problems = [line.strip() for line in output.splitlines() if ":" in line and not line.startswith("ok:")]
    if not problems:
        return False
    unknown = [p for p in problems if "unknown key" in p or "not permitted" in p]
    if len(unknown) != len(problems):
        return False
    named = [p.split(":", 1)[0].strip() for p in unknown]
    return "cluster" in named and all(n.split("[")[0] in CLUSTER_MODE_KEYS for n in named)


# --------------------------------------------------------------------------------------------------------------------
# The harness


@dataclass(frozen=True, slots=True)
class Takeover:
    partition: int
    lease_moved_s: float | None  # the lease watcher saw another live owner
    committed_s: float | None  # first cluster_commits row by another member at or after the fault
    new_owner: str | None


class ClusterHarness:
    """Everything a cluster acceptance run needs, started by :meth:`start_services` and torn down by
    :meth:`close` (which never raises).  The gateway configs follow the interface of docs/cluster.md's
    cluster mode; ``config_for(None)`` is the console's."""

    def __init__(
        self,
        workdir: Path,
        *,
        layout: Layout = Layout(),
        members: Sequence[str] = MEMBERS,
        lease_ttl_s: float = 10,
        renew_interval_s: float = 2,
        probe_interval_s: float = 1,
        ack_wait_s: int = 3,
    ) -> None:
        self.workdir = workdir
        self.layout = layout
        self.members = list(members)
        self.cluster_settings = {
            "partitions": layout.partitions,
            "lease_ttl_s": lease_ttl_s,
            "renew_interval_s": renew_interval_s,
            "probe_interval_s": probe_interval_s,
            "ack_wait_s": ack_wait_s,
            "audit_commits": True,  # cluster_commits: when a partition commits again, and under which epoch
        }
        self.postgres = PostgresServer(workdir=workdir / "pg")
        self.influx = InfluxServer(workdir=workdir / "influx")
        self.nats = NatsCluster(workdir / "nats", partitions=layout.partitions, mqtt_ack_wait=f"{ack_wait_s}s")
        self.webhooks = WebhookCounter(WEBHOOK_SECRET)
        self.sms = AliyunSms(
            access_key_id=ALIYUN["access_key_id"],
            access_key_secret=ALIYUN["access_key_secret"],
            sign_name=ALIYUN["sign_name"],
            templates={"SMS_100001", "SMS_100002"},
        )
        self._sms_app = ThreadedApp(self.sms.app)
        self.sms.port = self._sms_app.port
        self.pg_url = self.postgres.url("firegrid")  # the database start_services() creates
        self.gateways: dict[str, Process] = {}
        self.console: Process | None = None
        self.http_ports = {m: free_port() for m in [*self.members, "console"]}
        self.watcher: LeaseWatcher | None = None
        self.poller: ConsolePoller | None = None
        self.load: LoadGenerator | None = None
        self._started: list[Callable[[], object]] = []

    # services
    def start_services(self) -> ClusterHarness:
        self.postgres.start()
        self._started.append(self.postgres.remove)
        self.pg_url = self.postgres.create_database("firegrid")
        self.influx.start()
        self._started.append(self.influx.stop)
        self.nats.start()
        self._started.append(self.nats.stop)
        self.webhooks.start()
        self._started.append(self.webhooks.stop)
        self._sms_app.start()
        self._started.append(self._sms_app.stop)
        return self

    def broker_urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{node.mqtt_port}" for node in self.nats.nodes]

    def config_for(self, member: str | None) -> dict[str, Any]:
        """A gateway's config (``member``) or the console's (None): same registry, store and notify sections."""
        name = member or "console"
        home = self.workdir / name
        # the console needs no cluster section: it owns nothing, and reads the store every gateway writes
        cluster = (
            {"cluster": {"member": member, **self.cluster_settings, "brokers": self.broker_urls()}} if member else {}
        )
        roster = [
            {"name": f"网格员{g}", "phone": grid_worker_phone(g), "role": "grid_worker", "grids": [f"g{g}"]}
            for g in range(self.layout.grids)
        ]
        return {
            "mqtt": {"url": self.broker_urls()[0], "protocol": "v311", "client_id": CLIENT_ID, "max_inflight": 1000},
            "store": {"url": self.pg_url, "path": str(home / "local.sqlite")},
            **cluster,
            "influx": {
                "url": self.influx.url,
                "batch_size": 2000,
                "flush_interval_s": 0.2,
                "spool_dir": str(home / "spool"),
                "timeout_s": 2,
            },
            "http": {
                "listen": f"127.0.0.1:{self.http_ports[name]}",
                "tokens": [{"name": "acceptance", "token": TOKEN, "role": "admin"}],
            },
            "log": {"level": "info", "format": "json"},
            "notify": {
                "roster": roster,
                "routes": [{"name": "fire", "min_severity": "fire", "tiers": [{"roles": ["grid_worker"]}]}],
                "webhooks": [
                    {"url": self.webhooks.url, "secret": WEBHOOK_SECRET, "allow_private": True, "timeout_s": 2}
                ],
                "sms": sms_section("aliyun", self.sms.url),
                "retry": {"base_s": 0.2, "max_s": 2},
            },
            **registry(self.layout),
        }

    def write_configs(self) -> dict[str, Path]:
        """Every config file.  Written before :meth:`start_services` (to ask check-config early) they must be written
        again after it: a NATS node whose port was taken meanwhile starts on another."""
        paths: dict[str, Path] = {}
        for name in [*self.members, None]:
            home = self.workdir / (name or "console")
            home.mkdir(parents=True, exist_ok=True)
            path = home / "firegrid.yaml"
            dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
            path.write_text(yaml.dump(self.config_for(name), Dumper=dumper, allow_unicode=True, sort_keys=False))
            paths[name or "console"] = path
        return paths

    def config_path(self, name: str) -> Path:
        return self.workdir / name / "firegrid.yaml"

    # processes
    def gateway(self, member: str) -> Process:
        if member not in self.gateways:
            self.gateways[member] = Process(
                name=member,
                argv=firegrid_argv("run", self.config_path(member)),
                http_port=self.http_ports[member],
                workdir=self.workdir / member,
            )
        return self.gateways[member]

    def restart_gateway(self, member: str, *, timeout: float = 90.0) -> Process:
        """Start a gateway that was killed again, as its rebooted host would, on a new HTTP port: its old one may
        have been handed to some other process's outgoing connection meanwhile (free ports are ephemeral ones)."""
        self.http_ports[member] = free_port()
        home = self.workdir / member
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        (home / "firegrid.yaml").write_text(
            yaml.dump(self.config_for(member), Dumper=dumper, allow_unicode=True, sort_keys=False)
        )
        self.gateways.pop(member, None)
        return self.gateway(member).start(timeout=timeout)

    def start_gateways(self, members: Sequence[str] | None = None, *, timeout: float = 90.0) -> None:
        for member in members or self.members:
            self.gateway(member).start(timeout=timeout)

    def start_console(self, *, timeout: float = 90.0) -> Process:
        self.console = Process(
            name="console",
            argv=firegrid_argv("console", self.config_path("console")),
            http_port=self.http_ports["console"],
            workdir=self.workdir / "console",
        )
        self.console.start(timeout=timeout)
        return self.console

    def start_watcher(self) -> LeaseWatcher:
        self.watcher = LeaseWatcher(self.pg_url, partitions=self.layout.partitions).start()
        return self.watcher

    def start_poller(self) -> ConsolePoller:
        if self.console is None:
            raise HarnessError("start the console first")
        self.poller = ConsolePoller(
            pg_url=self.pg_url, base_url=self.console.base_url, buildings=self.layout.building_ids()
        ).start()
        return self.poller

    def start_load(self, *, rate: float = 300.0, **kwargs: Any) -> LoadGenerator:
        self.load = LoadGenerator(self.nats.nodes, layout=self.layout, rate=rate, **kwargs).start()
        return self.load

    # readiness
    def consumers_by_node(self) -> dict[str, set[str]]:
        """Each running node's view of the MQTT consumers' filter subjects on ``$MQTT_msgs``."""
        views: dict[str, set[str]] = {node.name: set() for node in self.nats.running_nodes()}
        for node, detail in self.nats.stream_info(MQTT_MSGS_STREAM):
            for consumer in detail.get("consumer_detail") or []:
                config = consumer.get("config") or {}
                for subject in [config.get("filter_subject"), *(config.get("filter_subjects") or [])]:
                    if subject:
                        views[node.name].add(str(subject))
        return views

    def missing_consumers(self) -> list[str]:
        """Partitions (and the catch-all) without a consumer on some running node: their devices' publishes would
        be acknowledged and dropped (docs/cluster.md finding 7)."""
        missing: list[str] = []
        for name, subjects in self.consumers_by_node().items():
            for p in range(self.layout.partitions):
                if not any(s.startswith(f"$MQTT.msgs.fgp.{p}.") for s in subjects):
                    missing.append(f"{name}: fgp/{p}")
            if not any(s.startswith("$MQTT.msgs.firegrid.") for s in subjects):
                missing.append(f"{name}: the catch-all firegrid/+/+/+")
        return missing

    def unowned_partitions(self) -> list[int]:
        if self.watcher is None:
            raise HarnessError("start the lease watcher first")
        owners = self.watcher.snapshot()
        return [p for p in range(self.layout.partitions) if not owners.get(p)]

    def wait_cluster_ready(self, *, timeout: float = 90.0, spread: bool = True) -> None:
        """Every partition has a live owner, every running node shows every partition's consumer and the
        catch-all's, and (``spread``) every running gateway owns at least one partition."""
        running = [m for m, g in self.gateways.items() if g.running and not g.paused]

        def ready() -> bool:
            if self.unowned_partitions():
                return False
            if spread and any(not self.watcher.owned_by(m) for m in running):  # type: ignore[union-attr]
                return False
            return not self.missing_consumers()

        try:
            wait_for(ready, timeout=timeout, what="the cluster to be ready", interval=0.25)
        except AssertionError as exc:
            owners = self.watcher.snapshot() if self.watcher else {}
            raise AssertionError(
                f"{exc}; unowned partitions: {self.unowned_partitions()}; owners: {owners}; "
                f"missing consumers: {self.missing_consumers()[:10]}; "
                f"lease watcher errors: {self.watcher.errors[-3:] if self.watcher else []}"
            ) from None

    # faults on the broker tier
    def kill_stream_leader(self) -> str:
        leader = self.nats.stream_leader(MQTT_MSGS_STREAM)
        self.nats.kill(leader.name)
        return leader.name

    def restart_node(self, name: str) -> None:
        self.nats.restart(name, timeout=60)
        self.nats.wait_for_meta_leader(timeout=60)

    # checks
    def influx_missing(self, acks: Iterable[Ack]) -> list[Ack]:
        """The acknowledged readings InfluxDB does not hold (a point is a device's tags at its ``ts``)."""
        by_device: dict[str, dict[int, Ack]] = defaultdict(dict)
        for ack in acks:
            by_device[ack.device][ack.ts_ms] = ack
        if not by_device:
            return []
        since = min(ts for d in by_device.values() for ts in d) - 1
        counts: dict[str, int] = defaultdict(int)
        for measurement in ("smoke", "heat"):
            result = self.influx.query(
                f'SELECT count("battery") FROM "{measurement}" WHERE time >= {since}ms GROUP BY "device"'
            )
            for series in result["results"][0].get("series") or []:
                counts[series["tags"]["device"]] += int(series["values"][0][1])
        missing: list[Ack] = []
        for device, wanted in by_device.items():
            if counts.get(device, 0) >= len(wanted):
                continue
            measurement = self.layout_kind(device)
            rows = self.influx.rows(
                f'SELECT "battery" FROM "{measurement}" WHERE "device" = \'{device}\' AND time >= {since}ms'
            )
            present = {int(r["time"]) for r in rows}
            missing.extend(a for ts, a in sorted(wanted.items()) if ts not in present)
        return missing

    def layout_kind(self, device: str) -> str:
        return "smoke" if int(device.rsplit("-d", 1)[1]) < 2 * SMOKE_PAIRS else "heat"

    def alerts(self) -> list[dict[str, Any]]:
        return pg_rows(self.pg_url, "SELECT id, key, rule, building, floor, device, raised_ms FROM alerts ORDER BY id")

    def alarm_latencies(self, alarms: Sequence[ScheduledAlarm]) -> list[tuple[ScheduledAlarm, float | None]]:
        """Seconds from each alarm's publish to its alert's ``raised_ms`` (the store's commit clock): the detector's
        ``smoke-detector-alarm`` for a single alarm, the floor's ``fire-confirmed`` for a double knock."""
        rows = self.alerts()
        single = {(r["device"], r["rule"]): int(r["raised_ms"]) for r in rows}
        fires: dict[tuple[str, int], int] = {}
        for r in rows:
            if r["rule"] == "fire-confirmed" and r["floor"] is not None:
                key = (str(r["building"]), int(r["floor"]))
                fires[key] = min(fires.get(key, int(r["raised_ms"])), int(r["raised_ms"]))
        out: list[tuple[ScheduledAlarm, float | None]] = []
        for alarm in alarms:
            if alarm.kind == "single":
                raised = single.get((alarm.records[0].device, "smoke-detector-alarm"))
            else:
                raised = fires.get((alarm.building, alarm.floor))
            out.append((alarm, None if raised is None else (raised - alarm.published_ms) / 1000))
        return out

    def keys_raised_twice(self) -> list[str]:
        """Alert keys with more than one row, or more than one ``raised`` step in the audit trail (no alarm of the
        test ever clears, so a second raise can only be a second owner raising it again)."""
        twice = [
            f"{r['key']} ({r['n']} rows)"
            for r in pg_rows(self.pg_url, "SELECT key, count(*) AS n FROM alerts GROUP BY key HAVING count(*) > 1")
        ]
        twice += [
            f"{r['key']} ({r['n']} raised steps)"
            for r in pg_rows(
                self.pg_url,
                "SELECT a.key AS key, count(*) AS n FROM audit u JOIN alerts a ON a.id = u.alert_id"
                " WHERE u.action = 'raised' GROUP BY a.key HAVING count(*) > 1",
            )
        ]
        return twice

    def sms_sent_twice(self) -> list[str]:
        seen: dict[str, int] = defaultdict(int)
        for message in list(self.sms.messages):
            seen[json.dumps([message["phone"], message["template"], message["params"]], sort_keys=True)] += 1
        return [f"{k} x{n}" for k, n in seen.items() if n > 1]

    def webhook_id_conflicts(self) -> list[str]:
        """An alert event (raised, cleared) delivered under more than one webhook-id: a repeat that a receiver
        deduplicating by webhook-id would take for a new event."""
        ids: dict[tuple[str, str], set[str]] = defaultdict(set)
        for hit in self.webhooks.snapshot():
            if hit.type in ("alert.raised", "alert.cleared") and hit.data.get("key"):
                ids[(hit.type, str(hit.data["key"]))].add(hit.msg_id)
        return [f"{t} {k}: {sorted(v)}" for (t, k), v in ids.items() if len(v) > 1]

    def stale_commits(self, member: str, *, since: float) -> list[dict[str, Any]]:
        """Rows ``member`` committed at or after ``since`` (epoch s) under an epoch older than one another member had
        already committed that partition under: commits a fence should have refused."""
        return pg_rows(
            self.pg_url,
            # An epoch's first commit is when it began; a join on those (a few per partition), not on every row.
            "WITH firsts AS (SELECT partition, epoch, min(at) AS first_at FROM cluster_commits"
            " GROUP BY partition, epoch)"
            " SELECT c.partition, c.epoch, c.at, max(f.epoch) AS newer_epoch FROM cluster_commits c"
            " JOIN firsts f ON f.partition = c.partition AND f.epoch > c.epoch AND f.first_at <= c.at"
            " WHERE c.member = %s AND c.at >= %s GROUP BY c.partition, c.epoch, c.at ORDER BY c.at",
            (member, dt.datetime.fromtimestamp(since, tz=dt.UTC)),
        )

    def stale_against_leases(self, member: str, *, since: float) -> list[str]:
        """The same judged by the lease watcher: a commit by ``member`` under an epoch lower than the epoch the
        partition's lease carried when another member took it before that commit."""
        if self.watcher is None:
            return []
        taken: dict[int | str, list[tuple[float, int]]] = defaultdict(list)
        for change in self.watcher.history():
            if change.after is not None and change.after != member and change.epoch is not None:
                taken[change.partition].append((change.at, change.epoch))
        rows = pg_rows(
            self.pg_url,
            "SELECT partition, epoch, extract(epoch FROM at) AS at FROM cluster_commits WHERE member = %s AND at >= %s",
            (member, dt.datetime.fromtimestamp(since, tz=dt.UTC)),
        )
        bad: list[str] = []
        for row in rows:
            p, epoch, at = _norm_partition(row["partition"]), int(row["epoch"]), float(row["at"])
            # 0.2 s: the watcher sees a change up to one poll late, so only a clearly later commit counts
            newer = [e for t, e in taken.get(p, []) if t + 0.2 < at and e > epoch]
            if newer:
                bad.append(f"partition {p}: epoch {epoch} at {at:.3f}, lease already at epoch {max(newer)}")
        return bad

    def takeovers(self, victim: str, partitions: Sequence[int], *, fault_at: float) -> list[Takeover]:
        """For each of the victim's partitions: when another member held its lease, and when another member first
        committed it, in seconds after ``fault_at``."""
        rows = pg_rows(
            self.pg_url,
            "SELECT partition, min(extract(epoch FROM at)) AS first FROM cluster_commits"
            " WHERE member <> %s AND at >= %s GROUP BY partition",
            (victim, dt.datetime.fromtimestamp(fault_at, tz=dt.UTC)),
        )
        first_commit = {_norm_partition(r["partition"]): float(r["first"]) for r in rows}
        history = self.watcher.history() if self.watcher else []
        out: list[Takeover] = []
        for p in partitions:
            moved = next(
                (c for c in history if c.partition == p and c.at >= fault_at and c.after not in (None, victim)), None
            )
            committed = first_commit.get(p)
            out.append(
                Takeover(
                    partition=p,
                    lease_moved_s=None if moved is None else moved.at - fault_at,
                    committed_s=None if committed is None else committed - fault_at,
                    new_owner=None if moved is None else moved.after,
                )
            )
        return out

    # teardown
    def close(self) -> None:
        for stopper in (
            (lambda: self.poller.stop()) if self.poller else None,
            (lambda: self.load.stop()) if self.load else None,
            (lambda: self.watcher.stop()) if self.watcher else None,
            (lambda: self.console.stop(timeout=10)) if self.console else None,
            *[(lambda g=g: g.stop(timeout=15)) for g in self.gateways.values()],
        ):
            if stopper is not None:
                with contextlib.suppress(Exception):
                    stopper()
        for stopper in reversed(self._started):
            with contextlib.suppress(Exception):
                stopper()
        self._started.clear()

    def __enter__(self) -> ClusterHarness:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank (as bench.common's): the value at rank ceil(p/100 * n)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def puback_stall(acks: Iterable[Ack], *, since_mono: float, until_mono: float) -> tuple[float, float]:
    """Around a broker fault: the longest publish->PUBACK of readings published in the window, and the longest gap
    with no PUBACK at all."""
    window = [a for a in acks if since_mono <= a.published_mono <= until_mono]
    longest = max((a.acked_mono - a.published_mono for a in window), default=0.0)
    times = sorted(a.acked_mono for a in acks if a.acked_mono >= since_mono)
    gaps = [b - a for a, b in zip([since_mono, *times], times, strict=False)]
    return longest, max(gaps, default=0.0)


# --------------------------------------------------------------------------------------------------------------------
# Alarms around faults, and how the acceptance test reads the figures


class AlarmScheduler:
    """Publishes alarms and remembers them: around a fault (aimed at the victim's buildings, :meth:`around`) and in
    the background (every ``background_every_s``, anywhere) from a thread of its own.  Single alarms and double
    knocks alternate."""

    def __init__(self, load: LoadGenerator, *, background_every_s: float = 2.0, seed: int = 11) -> None:
        self.load = load
        self.plan = AlarmPlan(load.layout)
        self.background_every_s = background_every_s
        self.fired: list[ScheduledAlarm] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name="background-alarms", daemon=True)
        self._double = False

    def fire(self, buildings: Sequence[str], label: str) -> ScheduledAlarm | None:
        """One alarm in one of ``buildings`` (None when all their floors have had theirs)."""
        site = self.plan.take(buildings)
        if site is None:
            return None
        building, floor = site
        with self._lock:
            self._double = not self._double
            double = self._double
        if double:
            alarm = ScheduledAlarm("double", building, floor, self.load.double_knock(building, floor), label)
        else:
            first, _ = self.load.layout.smoke_pair(building, floor)
            alarm = ScheduledAlarm("single", building, floor, (self.load.alarm(first),), label)
        with self._lock:
            self.fired.append(alarm)
        return alarm

    def around(
        self, buildings: Sequence[str], label: str, offsets: Sequence[float], fault: Callable[[], object]
    ) -> float:
        """Alarms at ``offsets`` seconds from the fault (negative: before it), the fault itself at 0; returns the
        fault's wall-clock time."""
        steps = sorted([(o, False) for o in offsets] + [(0.0, True)], key=lambda s: (s[0], not s[1]))
        origin = time.monotonic() - min(0.0, steps[0][0])
        fault_at = 0.0
        for offset, is_fault in steps:
            delay = origin + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if is_fault:
                fault_at = time.time()
                fault()
            else:
                self.fire(buildings, label)
        return fault_at

    def snapshot(self) -> list[ScheduledAlarm]:
        with self._lock:
            return list(self.fired)

    def _background(self) -> None:
        everywhere = self.load.layout.building_ids()
        while not self._stop.wait(self.background_every_s):
            self.fire(self._random.sample(everywhere, 10), "background")

    def start(self) -> AlarmScheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


def affected(
    alarm: ScheduledAlarm,
    history: Sequence[LeaseChange],
    *,
    partition: int,
    broker_fault: tuple[float, float] | None = None,
    before_s: float = 3.0,
    after_s: float = 15.0,
) -> bool:
    """Whether an alarm falls under a fault's budget: aimed at a fault; or published while the broker tier
    recovered (``broker_fault``: from the kill to 5 s after the node was back); or in a partition whose owner
    changed from ``before_s`` before its publish to ``after_s`` after (a takeover, a rebalance)."""
    if alarm.label != "background":
        return True
    at = alarm.published_ms / 1000
    if broker_fault is not None and broker_fault[0] - 1 <= at <= broker_fault[1] + 5:
        return True
    return any(c.partition == partition and at - before_s <= c.at <= at + after_s for c in history)


def takeover_report(name: str, takeovers: Sequence[Takeover], limit: float) -> tuple[list[str], list[str]]:
    """The figure line for one takeover and the failures: a partition never committed elsewhere, or later than
    ``limit``; a victim that owned nothing (so nothing was tested)."""
    failures: list[str] = []
    committed = [t.committed_s for t in takeovers if t.committed_s is not None]
    moved = [t.lease_moved_s for t in takeovers if t.lease_moved_s is not None]
    per_partition = ", ".join(
        f"p{t.partition}->{t.new_owner}:{'never' if t.committed_s is None else f'{t.committed_s:.2f}'}"
        for t in takeovers
    )
    line = (
        f"{name}: {len(takeovers)} partitions; lease moved within {max(moved, default=float('nan')):.2f} s, "
        f"committing elsewhere within {max(committed, default=float('nan')):.2f} s (limit {limit:g} s); "
        f"per partition {per_partition}"
    )
    for t in takeovers:
        if t.committed_s is None or t.committed_s > limit:
            failures.append(f"{name}: partition {t.partition} committing elsewhere after {t.committed_s} s > {limit} s")
    if not takeovers:
        failures.append(f"{name}: the victim owned no partition at the fault, nothing was taken over")
    return [line], failures
