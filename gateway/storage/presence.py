"""Device registry and presence, kept in the store (the SQLite file, or in cluster mode the shared PostgreSQL store)
so that a restart does not forget it.

A device is *online* when its retained ``status`` says so and it has spoken within its kind's heartbeat period;
*offline* when its status (or last will) says ``offline`` or it has been silent longer than the heartbeat;
*unknown* when it has never been heard.  Devices missing from the registry are listed with ``registered: false``.

Presence is kept in memory and flushed to SQLite about once a second: it is not on the acknowledgement path (losing
the last second of "last seen" in a crash is harmless; the next message restores it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from common.db import DATABASE_ERRORS, Connection, dialect_of, open_database
from gateway.config import FiregridConfig
from rules.types import DeviceRef, MetricValue, Reading, StatusChange


@dataclass(slots=True)
class DeviceState:
    device: str
    building: str
    kind: str
    floor: int | None = None
    grid: str | None = None
    registered: bool = True
    location: str | None = None
    heartbeat_s: int = 300
    last_seen_ms: int | None = None
    last_values: dict[str, MetricValue] = field(default_factory=dict)
    battery: float | None = None
    status: str | None = None  # the device's own retained status: online / offline
    status_ts_ms: int | None = None

    def state(self, now_ms: int) -> str:
        if self.status == "offline" and (self.last_seen_ms is None or (self.status_ts_ms or 0) >= self.last_seen_ms):
            return "offline"
        if self.last_seen_ms is None:
            return "online" if self.status == "online" else "unknown"
        if now_ms - self.last_seen_ms > self.heartbeat_s * 1000:
            return "offline"
        return "online"

    def as_dict(self, now_ms: int) -> dict[str, Any]:
        state = self.state(now_ms)
        return {
            "id": self.device,
            "building": self.building,
            "kind": self.kind,
            "floor": self.floor,
            "grid": self.grid,
            "location": self.location,
            "registered": self.registered,
            "last_seen_ms": self.last_seen_ms,
            "last_values": dict(self.last_values),
            "battery": self.battery,
            "status": self.status,
            "state": state,
            "online": state == "online",
            "heartbeat_s": self.heartbeat_s,
        }


_COLUMNS = "device, building, kind, floor, grid, registered, last_seen_ms, last_values, battery, status, status_ts_ms"
_UPSERT_DEVICE = (
    f"INSERT INTO gateway_devices ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (device) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])
)


class Presence:
    """Registry + presence.  ``list_devices``/``get_device`` are what the API serves."""

    def __init__(self, *, config: FiregridConfig, db_path: Path) -> None:
        """``db_path``: the SQLite store; with ``store.url`` (cluster mode) the PostgreSQL store is used instead."""
        url = config.store.url
        self._db: Connection = open_database(url) if url else open_database(db_path)
        self._postgres = dialect_of(self._db) == "postgres"
        self._lock = threading.Lock()
        self._heartbeats = {kind.value: s for kind, s in config.presence.heartbeat_s.items()}
        grids = {b.id: b.grid for b in config.buildings}
        self.devices: dict[str, DeviceState] = {}
        for d in config.devices:
            self.devices[d.id] = DeviceState(
                device=d.id,
                building=d.building,
                kind=d.kind.value,
                floor=d.floor,
                grid=grids.get(d.building),
                location=d.location,
                heartbeat_s=d.heartbeat_s or self._heartbeats.get(d.kind.value, 300),
            )
        self._owns = config.owns
        self._load(self._db.execute(f"SELECT {_COLUMNS} FROM gateway_devices"))
        # Cluster mode: the buildings whose devices this gateway judges (those of the partitions it holds a lease
        # on); the sweep looks only at theirs, so a gateway does not report another's devices falling silent.
        # None: every device (a single gateway).
        self.scope: set[str] | None = None
        self._dirty: set[str] = set()
        self._history: list[tuple[str, str, str, int, str]] = []
        self.keep_history = False  # no InfluxDB: recent telemetry lives in the store (demo)
        self.history_limit = 200_000
        # Called with a device's dict when its state (online/offline/unknown) changes: the SSE hub's "device" event.
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        self._last_state: dict[str, str] = {}
        self._round: list[str] = []  # the devices of a sliced sweep's round, and how far it has got
        self._round_at = 0
        self._closed = False

    def _load(self, rows: Iterable[Any]) -> None:
        for row in rows:
            device, building, kind, floor, grid, registered, seen, values, battery, status, status_ts = row
            state = self.devices.get(device)
            if state is None:
                if registered or not self._owns(building):
                    continue  # removed from the registry since, or its building moved to another gateway
                state = self.devices[device] = DeviceState(
                    device=device,
                    building=building,
                    kind=kind,
                    floor=floor,
                    grid=grid,
                    registered=False,
                    heartbeat_s=self._heartbeats.get(kind, 300),
                )
            state.last_seen_ms = seen
            state.last_values = orjson.loads(values) if values else {}
            state.battery = battery
            state.status = status
            state.status_ts_ms = status_ts

    def reload(self, buildings: Collection[str]) -> None:
        """Read the buildings' devices again from the store (cluster mode: a partition was just taken over; its last
        owner flushed what it knew), and look at them from now on."""
        wanted = sorted(buildings)
        if not wanted:
            return
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM gateway_devices WHERE building IN ({','.join('?' * len(wanted))})", wanted
            ).fetchall()
        self._load(rows)
        if self.scope is not None:
            self.scope.update(wanted)

    def _state(self, ref: DeviceRef) -> DeviceState:
        state = self.devices.get(ref.device)
        if state is None:
            state = self.devices[ref.device] = DeviceState(
                device=ref.device,
                building=ref.building,
                kind=ref.kind,
                floor=ref.floor,
                grid=ref.grid,
                registered=ref.registered,
                heartbeat_s=self._heartbeats.get(ref.kind, 300),
            )
        elif not state.registered and state.kind == "unknown" and ref.kind != "unknown":
            state.kind = ref.kind
        return state

    def seen(self, ref: DeviceRef, ts_ms: int) -> None:
        state = self._state(ref)
        if state.last_seen_ms is None or ts_ms > state.last_seen_ms:
            state.last_seen_ms = ts_ms
        self._dirty.add(ref.device)

    def reading(self, reading: Reading) -> None:
        state = self._state(reading.ref)
        if state.last_seen_ms is None or reading.ts_ms >= state.last_seen_ms:
            state.last_seen_ms = reading.ts_ms
            state.last_values.update(reading.values)
            battery = reading.values.get("battery")
            if isinstance(battery, (int, float)) and not isinstance(battery, bool):
                state.battery = float(battery)
        self._dirty.add(reading.ref.device)
        if self.keep_history and reading.values:
            self._history.append(
                (
                    reading.ref.device,
                    reading.ref.building,
                    reading.ref.kind,
                    reading.ts_ms,
                    orjson.dumps(reading.values).decode(),
                )
            )

    def status(self, change: StatusChange) -> None:
        state = self._state(change.ref)
        state.status = "online" if change.online else "offline"
        state.status_ts_ms = change.ts_ms
        if change.online:
            state.last_seen_ms = max(state.last_seen_ms or 0, change.ts_ms)
        self._dirty.add(change.ref.device)

    def sweep(self, *, now_ms: int, limit: int | None = None) -> int:
        """Find state changes (a status message, a device falling silent); returns how many changed.

        With ``limit``, look at no more than that many devices, going on where the previous call stopped: a
        district's devices in slices, so that no single call holds the event loop for long (docs/performance.md)."""
        scope = self.scope
        if limit is None:
            everything = self.devices.items()
            return self._sweep(
                everything if scope is None else [(d, s) for d, s in everything if s.building in scope], now_ms
            )
        if self._round_at >= len(self._round):
            # a copy: devices first heard of join the next round
            self._round = (
                list(self.devices) if scope is None else [d for d, s in self.devices.items() if s.building in scope]
            )
            self._round_at = 0
        devices = self.devices
        part = [(d, devices[d]) for d in self._round[self._round_at : self._round_at + limit]]
        self._round_at += limit
        return self._sweep(part, now_ms)

    def _sweep(self, devices: Iterable[tuple[str, DeviceState]], now_ms: int) -> int:
        changed = 0
        for device, s in devices:
            state = s.state(now_ms)
            previous = self._last_state.get(device)
            if previous == state:
                continue
            self._last_state[device] = state
            if previous is None:
                continue  # first look after start: not a change
            changed += 1
            if self.on_change is not None:
                self.on_change(s.as_dict(now_ms))
        return changed

    def flush(self) -> None:
        """Write what changed since the last flush (about once a second, and on shutdown)."""
        dirty, self._dirty = self._dirty, set()
        history, self._history = self._history, []
        if not dirty and not history:
            return
        rows = []
        for device in dirty:
            s = self.devices[device]
            rows.append(
                (
                    s.device,
                    s.building,
                    s.kind,
                    s.floor,
                    s.grid,
                    int(s.registered),
                    s.last_seen_ms,
                    orjson.dumps(s.last_values).decode(),
                    s.battery,
                    s.status,
                    s.status_ts_ms,
                )
            )
        with self._lock:
            if self._closed:
                return
            self._db.execute("BEGIN")
            try:
                self._db.executemany(_UPSERT_DEVICE, rows)
                if history:
                    self._db.executemany(
                        "INSERT INTO gateway_readings (device, building, kind, ts_ms, value) VALUES (?,?,?,?,?)",
                        history,
                    )
                    self._db.execute(
                        "DELETE FROM gateway_readings WHERE id <= (SELECT MAX(id) FROM gateway_readings) - ?",
                        (self.history_limit,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def list_devices(
        self,
        *,
        now_ms: int,
        building: str | None = None,
        grid: str | None = None,
        kind: str | None = None,
        state: str | None = None,
        registered: bool | None = None,
        buildings: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        allowed = set(buildings) if buildings is not None else None
        out = []
        for s in self.devices.values():
            if building is not None and s.building != building:
                continue
            if allowed is not None and s.building not in allowed:
                continue
            if grid is not None and s.grid != grid:
                continue
            if kind is not None and s.kind != kind:
                continue
            if registered is not None and s.registered != registered:
                continue
            item = s.as_dict(now_ms)
            if state is not None and item["state"] != state:
                continue
            out.append(item)
        out.sort(key=lambda d: (d["building"], d["id"]))
        return out

    def get_device(self, device: str, *, now_ms: int) -> dict[str, Any] | None:
        s = self.devices.get(device)
        return None if s is None else s.as_dict(now_ms)

    def history(self, device: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """Recent readings kept in the store when there is no InfluxDB (newest first)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts_ms, value FROM gateway_readings WHERE device = ? ORDER BY ts_ms DESC LIMIT ?",
                (device, limit),
            ).fetchall()
        return [{"ts_ms": ts, **orjson.loads(value)} for ts, value in rows]

    def writable(self) -> bool:
        try:
            with self._lock:
                # SQLite: can we take the write lock?  PostgreSQL: does the server answer a transaction?
                self._db.execute("BEGIN" if self._postgres else "BEGIN IMMEDIATE")
                if self._postgres:
                    self._db.execute("SELECT 1")
                self._db.execute("ROLLBACK")
            return True
        except DATABASE_ERRORS:
            return False

    def close(self) -> None:
        self.flush()
        with self._lock:  # a housekeeping flush may still be running in its thread
            self._closed = True
            self._db.close()
