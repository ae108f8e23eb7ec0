"""The ``/api/v1`` operations.  Each is declared with :func:`operation`, which is also what ``/openapi.json`` reads.

Scope rule applied everywhere: a scoped token's view is filtered *before* anything is counted or paged, so totals,
rollups and live events never reveal a building outside it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from aiohttp import web

from alerts.store import AlertChange, AlertNotFound, AlertStore, InvalidTransition
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.auth import Principal
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.hub import Event, Hub, ResumeGap, SubscriberLagged
from gateway.service.gc_pause import gc_paused
from gateway.storage.presence import DeviceState, Presence
from rules.types import AlertTransition, MaintenanceWindow

log = logging.getLogger("firegrid.api")

_OPEN_STATES = (m.AlertState.raised, m.AlertState.acknowledged, m.AlertState.dispatched)


class DeviceIndex:
    """Building -> the ids of its devices: the registry's (config) and those presence learnt while running (a device
    missing from the registry, with ``contract.allow_unregistered``).  Built once, then extended as presence learns
    devices, so a request about one building reads only that building's devices, and one about every building
    reads each device once (issue 10: a district of 2,000 buildings and 100,000 devices)."""

    def __init__(self, config: Any, presence: Any) -> None:
        self.config = config
        self.presence = presence
        self._building_of: dict[str, str] = {}
        self._by_building: dict[str, list[str]] = {}
        for device in config.devices:
            self._add(device.id, device.building)
        self._looked_at = 0  # how many of presence's devices were indexed

    @property
    def follows_presence(self) -> bool:
        """The gateway's presence (``gateway.storage.presence.Presence``) keeps its devices in a dict this index can
        follow, and the API reads their records directly; with anything else, every request asks presence for its whole
        list."""
        return isinstance(self.presence, Presence)

    def _add(self, device_id: str, building: str) -> None:
        if device_id not in self._building_of:
            self._building_of[device_id] = building
            self._by_building.setdefault(building, []).append(device_id)

    def refresh(self) -> None:
        devices: dict[str, DeviceState] = self.presence.devices
        count = len(devices)
        if count == self._looked_at:
            return
        # Presence never forgets a device while it runs, and a dict keeps insertion order: the new ones are last.
        fresh = list(islice(reversed(devices), count - self._looked_at)) if count > self._looked_at else list(devices)
        for device_id in fresh:
            if device_id in self._building_of:
                continue
            # Only the building is needed: read it from the record (the device's as_dict would do it the long way).
            building = v.as_str(devices[device_id].building, 64)
            if building:
                self._add(device_id, building)
        self._looked_at = count

    def buildings(self) -> list[str]:
        return sorted(self._by_building)

    def ids(self, building: str) -> list[str]:
        return self._by_building.get(building, [])


@dataclass
class ApiState:
    runtime: Any
    hub: Hub
    clock_ms: Callable[[], int]
    maintenance: dict[str, m.MaintenanceWindowOut] = field(default_factory=dict)
    _grids: tuple[Any, dict[str, str]] | None = field(default=None, init=False, repr=False)
    _index: DeviceIndex | None = field(default=None, init=False, repr=False)

    @property
    def config(self) -> Any:
        return self.runtime.config

    @property
    def building_grids(self) -> dict[str, str]:
        """Building id -> grid id (built once per config; treat it as read-only)."""
        config = self.config
        if self._grids is None or self._grids[0] is not config:
            self._grids = (config, {b.id: b.grid for b in config.buildings})
        return self._grids[1]

    def device_index(self) -> DeviceIndex:
        presence = getattr(self.runtime, "presence", None)
        index = self._index
        if index is None or index.config is not self.config or index.presence is not presence:
            index = self._index = DeviceIndex(self.config, presence)
        return index


STATE_KEY: web.AppKey[ApiState] = web.AppKey("firegrid_api_state", ApiState)


def state_of(call: Call) -> ApiState:
    return call.app[STATE_KEY]


def _dep(call: Call, name: str) -> Any:
    value = getattr(state_of(call).runtime, name, None)
    if value is None:
        raise ApiError(503, f"the {name} is not available in this gateway", type="urn:firegrid:problem:unavailable")
    return value


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _check_scope(who: Principal, *, building: str | None = None, grid: str | None = None) -> None:
    if building is not None and not who.sees_building(building):
        raise ApiError(403, f"building {building!r} is outside this token's scope", type="urn:firegrid:problem:scope")
    if grid is not None and not who.sees_grid(grid):
        raise ApiError(403, f"grid {grid!r} is outside this token's scope", type="urn:firegrid:problem:scope")


# --- alerts ------------------------------------------------------------------------------------------------------


def _store(call: Call) -> AlertStore:
    """The alert store.  Call it off the event loop (``asyncio.to_thread``): its writes fsync (synchronous=FULL) and
    its lock may be held by the gateway's group commit; neither should stall every other request and the live
    stream."""
    store: AlertStore = _dep(call, "store")
    return store


def _alert_filters(who: Principal, grids: Mapping[str, str], building: str | None, grid: str | None) -> dict[str, Any]:
    """The store's building filter: the asked building, or for a scoped token every building it may see."""
    if building is not None:
        return {"building": building}
    if who.scoped:
        visible = [b for b in who.visible_buildings(grids) if grid is None or grids[b] == grid]
        return {"building": visible}
    return {"grid": grid} if grid is not None else {}


@operation(
    "GET",
    "/alerts",
    summary="List alerts, newest first",
    tag="alerts",
    query=m.AlertQuery,
    response=m.AlertPage,
    errors=(403,),
)
async def list_alerts(call: Call) -> m.AlertPage:
    """Filters combine with AND.  `active=true` lists alerts not yet resolved; `since` is epoch ms or RFC 3339."""
    q: m.AlertQuery = call.query
    who = call.who
    _check_scope(who, building=q.building, grid=q.grid)
    grids = state_of(call).building_grids
    filters = _alert_filters(who, grids, q.building, q.grid)
    if q.building is not None and q.grid is not None:
        filters["grid"] = q.grid
    states = {s.value for s in m.AlertState}
    if q.active is True:
        states &= {s.value for s in _OPEN_STATES}
    elif q.active is False:
        states &= {m.AlertState.resolved.value}
    if q.state is not None:
        states &= {q.state.value}
    if len(states) < len(m.AlertState):
        filters["state"] = sorted(states)
    if q.severity is not None:
        filters["severity"] = q.severity.value
    if q.since is not None:
        filters["since_ms"] = q.since
    rows = await asyncio.to_thread(_store(call).list_alerts, limit=q.limit + 1, offset=q.offset, **filters)
    alerts = [v.alert(r, building_grids=grids) for r in rows]
    # The store already filtered by scope; this second check means a store bug cannot leak another grid's alert.
    alerts = [a for a in alerts if who.sees_building(a.building)]
    more = len(rows) > q.limit
    return m.AlertPage(
        items=alerts[: q.limit], limit=q.limit, offset=q.offset, next_offset=q.offset + q.limit if more else None
    )


async def _get_alert(call: Call, raw_id: str) -> m.AlertDetail:
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise ApiError(404, f"no alert {raw_id!r}")
    row = await asyncio.to_thread(_store(call).get_alert, int(raw_id))
    if row is None:
        raise ApiError(404, f"no alert {raw_id!r}")
    alert = v.alert_detail(row, building_grids=state_of(call).building_grids)
    _check_scope(call.who, building=alert.building)
    return alert


@operation(
    "GET",
    "/alerts/{id}",
    summary="One alert with its audit trail and the readings that raised it",
    tag="alerts",
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
)
async def get_alert(call: Call) -> m.AlertDetail:
    return await _get_alert(call, call.params["id"])


async def _lifecycle(call: Call, step: Callable[[int, int], AlertChange]) -> m.AlertDetail:
    """``step(alert_id, now_ms)``: one of the store's lifecycle methods, run off the event loop."""
    raw_id = call.params["id"]
    await _get_alert(call, raw_id)  # 404 / 403 before anything changes
    now_ms = state_of(call).clock_ms()
    try:
        await asyncio.to_thread(step, int(raw_id), now_ms)
    except AlertNotFound:
        raise ApiError(404, f"no alert {raw_id!r}") from None
    except InvalidTransition as exc:  # e.g. acknowledging an alert someone already resolved
        raise ApiError(409, _short(exc), type="urn:firegrid:problem:lifecycle") from None
    return await _get_alert(call, raw_id)


def _short(exc: BaseException) -> str:
    return str(exc)[:300] or type(exc).__name__


def _by(call: Call, given: str | None) -> str:
    return given or call.who.name


@operation(
    "POST",
    "/alerts/{id}/ack",
    summary="Acknowledge an alert (stops escalation)",
    tag="alerts",
    role="operator",
    body=m.AckRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def ack_alert(call: Call) -> m.AlertDetail:
    body: m.AckRequest = call.body
    store, by = _store(call), _by(call, body.by)
    return await _lifecycle(call, lambda alert_id, now: store.acknowledge(alert_id, by=by, note=body.note, now_ms=now))


@operation(
    "POST",
    "/alerts/{id}/dispatch",
    summary="Dispatch a task-force member or team to an alert",
    tag="alerts",
    role="operator",
    body=m.DispatchRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def dispatch_alert(call: Call) -> m.AlertDetail:
    body: m.DispatchRequest = call.body
    store, by = _store(call), _by(call, body.by)
    return await _lifecycle(
        call, lambda alert_id, now: store.dispatch(alert_id, by=by, to=body.to, note=body.note, now_ms=now)
    )


@operation(
    "POST",
    "/alerts/{id}/resolve",
    summary="Resolve an alert with its cause",
    tag="alerts",
    role="operator",
    body=m.ResolveRequest,
    response=m.AlertDetail,
    path_params=(id_param("id", "alert id"),),
    errors=(409,),
)
async def resolve_alert(call: Call) -> m.AlertDetail:
    body: m.ResolveRequest = call.body
    store, by, cause = _store(call), _by(call, body.by), body.cause.value
    return await _lifecycle(
        call, lambda alert_id, now: store.resolve(alert_id, by=by, cause=cause, note=body.note, now_ms=now)
    )


# --- incidents ---------------------------------------------------------------------------------------------------


@operation(
    "GET",
    "/incidents",
    summary="List incidents (alerts of one building grouped in time), newest first",
    tag="alerts",
    query=m.IncidentQuery,
    response=m.IncidentPage,
    errors=(403,),
)
async def list_incidents(call: Call) -> m.IncidentPage:
    q: m.IncidentQuery = call.query
    who = call.who
    _check_scope(who, building=q.building, grid=q.grid)
    grids = state_of(call).building_grids
    filters = _alert_filters(who, grids, q.building, q.grid)
    if q.building is not None and q.grid is not None:
        filters["grid"] = q.grid
    if q.active is not None:
        filters["state"] = "open" if q.active else "resolved"
    if q.since is not None:
        filters["since_ms"] = q.since
    rows = await asyncio.to_thread(_store(call).list_incidents, limit=q.limit + 1, offset=q.offset, **filters)
    items = [v.incident(r, building_grids=grids) for r in rows]
    items = [i for i in items if who.sees_building(i.building)]
    more = len(rows) > q.limit
    return m.IncidentPage(
        items=items[: q.limit], limit=q.limit, offset=q.offset, next_offset=q.offset + q.limit if more else None
    )


# --- devices -----------------------------------------------------------------------------------------------------


async def _device_sources(call: Call, wanted: set[str] | None) -> tuple[Iterable[tuple[str, Any]], v.DeviceReader]:
    """(device id, presence record or None) of each device of the ``wanted`` buildings (of every building when None):
    the registry from the config overlaid with what presence knows, and the reader that turns them into facts and
    rows.  With the gateway's presence, only the devices of those buildings are read, one at a time as the caller
    iterates (never across an ``await``), each record as presence keeps it (no per-device copy); the caller still
    checks each device's own building and scope."""
    state = state_of(call)
    config = state.config
    now = state.clock_ms()
    reader = v.DeviceReader(now_ms=now, building_grids=state.building_grids, registry=config.device)
    index = state.device_index()
    if index.follows_presence:
        index.refresh()
        records = index.presence.devices
        who = call.who
        return (
            (device_id, records.get(device_id))
            for building in (index.buildings() if wanted is None else wanted)
            if who.sees_building(building)
            for device_id in index.ids(building)
        ), reader
    by_id: dict[str, Any] = {
        device.id: None for device in config.devices if wanted is None or device.building in wanted
    }
    presence = getattr(state.runtime, "presence", None)
    if presence is not None:
        for record in await _maybe_await(presence.list_devices(now_ms=now)) or ():
            named = v.as_str(v.first(v.fields_of(record), "device", "device_id", "id"), 64)
            if named is not None:
                by_id[named] = record
    return list(by_id.items()), reader


def _supervised(active: Sequence[m.Alert]) -> set[str]:
    """Devices with an open supervisory alert: an extinguisher with one (missing, obstructed, pressure) stays out of
    service until someone resolves it, even when its last reading looks fine again."""
    return {a.device for a in active if a.device and a.severity == m.SeverityName.supervisory}


async def _device_rows(
    call: Call,
    active: Sequence[m.Alert],
    *,
    buildings: Iterable[str] | None = None,
    keep: Callable[[v.DeviceRow | v.DeviceFacts], bool] | None = None,
) -> list[v.DeviceRow]:
    """The devices of ``buildings`` (of every building when None) the token may see and ``keep`` accepts, sorted by
    building, floor and id.  ``active``: the open alerts.  ``keep`` is asked first with a device's facts (it must
    not reject a device on a field they lack), and only a device it keeps becomes a full row: a scan for a status
    builds rows for the matches, not for the district."""
    who = call.who
    scoped = who.scoped
    wanted = None if buildings is None else set(buildings)
    supervised = _supervised(active)
    rows: list[v.DeviceRow] = []
    sources, reader = await _device_sources(call, wanted)
    with gc_paused():
        for device_id, record in sources:
            facts = reader.facts(device_id, record)
            if facts is None or (wanted is not None and facts.building not in wanted):
                continue
            if scoped and not who.sees_building(facts.building):
                continue
            if facts.id in supervised and facts.kind == "extinguisher":
                facts.out_of_service = True
            if keep is not None and not keep(facts):
                continue
            row = reader.row(device_id, record, facts)
            if row is not None and (keep is None or keep(row)):
                rows.append(row)
        rows.sort(key=v.DeviceRow.sort_key)
    return rows


async def _active_alerts(call: Call) -> list[m.Alert]:
    if getattr(state_of(call).runtime, "store", None) is None:
        return []
    grids = state_of(call).building_grids
    rows = await asyncio.to_thread(_store(call).active_alerts)
    alerts = [v.alert(r, building_grids=grids) for r in rows]
    return [a for a in alerts if a.state != m.AlertState.resolved and call.who.sees_building(a.building)]


def _device_matches(device: v.DeviceRow | v.DeviceFacts, q: m.DeviceQuery) -> bool:
    """The query's filters on a device; its facts (no grid, no registration) are judged on what they have."""
    if not (
        (q.building is None or device.building == q.building)
        and (q.kind is None or device.kind == q.kind.value)
        and (q.status is None or device.status == q.status)
        and (q.low_battery is None or device.low_battery == q.low_battery)
        and (q.out_of_service is None or device.out_of_service == q.out_of_service)
    ):
        return False
    if isinstance(device, v.DeviceRow):
        return (q.grid is None or device.grid == q.grid) and (
            q.unregistered is None or device.registered != q.unregistered
        )
    return True


@operation(
    "GET",
    "/devices",
    summary="List devices with presence and last values",
    tag="devices",
    query=m.DeviceQuery,
    response=m.DevicePage,
    errors=(403,),
)
async def list_devices(call: Call) -> m.DevicePage:
    q: m.DeviceQuery = call.query
    _check_scope(call.who, building=q.building, grid=q.grid)
    active = await _active_alerts(call)
    devices = await _device_rows(
        call, active, buildings=None if q.building is None else [q.building], keep=lambda d: _device_matches(d, q)
    )
    page = [d.model() for d in devices[q.offset : q.offset + q.limit]]
    more = len(devices) > q.offset + q.limit
    return m.DevicePage(
        items=page, total=len(devices), limit=q.limit, offset=q.offset, next_offset=q.offset + q.limit if more else None
    )


@operation(
    "GET",
    "/devices/{id}",
    summary="One device: last values, presence, active alerts and recent history",
    tag="devices",
    query=m.HistoryQuery,
    response=m.DeviceDetail,
    path_params=(id_param("id", "device id"),),
)
async def get_device(call: Call) -> m.DeviceDetail:
    """History comes from InfluxDB (InfluxQL) when one is configured, else from the gateway's local store."""
    q: m.HistoryQuery = call.query
    device_id: str = call.params["id"]
    state = state_of(call)
    presence = getattr(state.runtime, "presence", None)
    record = (
        await _maybe_await(presence.get_device(device_id, now_ms=state.clock_ms())) if presence is not None else None
    )
    registered = state.config.device(device_id)
    row = (
        v.device_row(record or {}, building_grids=state.building_grids, config_device=registered)
        if record is not None or registered is not None
        else None
    )
    if row is None or row.id != device_id:
        raise ApiError(404, f"no device {device_id!r}")
    _check_scope(call.who, building=row.building)
    active = [a for a in await _active_alerts(call) if a.device == row.id]
    if row.kind == "extinguisher" and any(a.severity == m.SeverityName.supervisory for a in active):
        row.out_of_service = True  # as in the device list: an open supervisory alert keeps it out of service
    device = row.model()
    history, source, error = await _history(call, device, minutes=q.minutes, points=q.points)
    return m.DeviceDetail(
        **device.model_dump(), history=history, history_source=source, history_error=error, active_alerts=active
    )


_INFLUX_TAGS = {"building", "device", "floor", "grid", "kind", "_measurement"}


async def _history(
    call: Call, device: m.Device, *, minutes: int, points: int
) -> tuple[list[m.HistoryPoint], Any, str | None]:
    runtime = state_of(call).runtime
    influx = getattr(runtime, "influx", None)
    if influx is not None and hasattr(influx, "query") and device.kind:
        # gateway/storage/influx.py: measurement = device kind, tag "device".  Both matched ^[A-Za-z0-9_-]{1,64}$
        # (the id on the way in, the kind from the registry), so quoting them cannot break out of the statement.
        kind = "".join(ch for ch in device.kind if ch.isalnum() or ch in "_-")
        statement = (
            f'SELECT * FROM "{kind}" WHERE "device" = \'{device.id}\' '
            f"AND time > now() - {int(minutes)}m ORDER BY time DESC LIMIT {int(points)}"
        )
        try:
            rows = await asyncio.wait_for(influx.query(statement), timeout=5)
        except Exception as exc:  # InfluxDB down must not break the device page
            return [], "influxdb", f"InfluxDB query failed: {type(exc).__name__}"
        return v.history_from_rows(list(rows or []), tags=_INFLUX_TAGS), "influxdb", None
    presence = getattr(runtime, "presence", None)
    history_fn = getattr(presence, "history", None)
    if history_fn is not None:
        since = state_of(call).clock_ms() - minutes * 60_000
        rows = await asyncio.to_thread(history_fn, device.id, limit=points)
        out: list[m.HistoryPoint] = []
        for row in rows or ():
            data = v.fields_of(row)
            ts = v.as_int(v.first(data, "ts_ms", "time"))
            if ts is None or ts < since:
                continue
            vals = {str(k)[:64]: v.metric(x) for k, x in data.items() if k not in ("ts_ms", "time")}
            out.append(m.HistoryPoint(ts_ms=ts, values={k: x for k, x in vals.items() if x is not None}))
        out.sort(key=lambda p: p.ts_ms)
        return out, "local", None
    return [], "none", None


# --- buildings ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """A building's device counts, added up one device at a time."""

    total: int = 0
    online: int = 0
    offline: int = 0
    unknown: int = 0
    low_battery: int = 0
    out_of_service: int = 0

    def add(self, device: v.DeviceRow | v.DeviceFacts) -> None:
        self.total += 1
        if device.status is m.DeviceStatus.online:
            self.online += 1
        elif device.status is m.DeviceStatus.offline:
            self.offline += 1
        else:
            self.unknown += 1
        self.low_battery += device.low_battery
        self.out_of_service += device.out_of_service


def _rollup(tally: _Tally, alerts: Sequence[m.Alert]) -> m.BuildingStatus:
    live = [a for a in alerts if not a.test]
    worst = max(live, key=lambda a: v.severity_rank(a.severity), default=None)
    return m.BuildingStatus(
        worst_severity=worst.severity if worst else None,
        active_alerts=len(live),
        devices_total=tally.total,
        devices_online=tally.online,
        devices_offline=tally.offline,
        devices_unknown=tally.unknown,
        low_battery=tally.low_battery,
        extinguishers_out_of_service=tally.out_of_service,
    )


def _building(b: Any, tally: _Tally, alerts: Sequence[m.Alert]) -> m.Building:
    return m.Building(
        id=b.id,
        name=b.name,
        grid=b.grid,
        address=b.address,
        floors=b.floors,
        basements=b.basements,
        status=_rollup(tally, alerts),
    )


@operation(
    "GET",
    "/buildings",
    summary="Every building with its status rollup",
    tag="buildings",
    query=m.BuildingQuery,
    response=m.BuildingList,
    errors=(403,),
)
async def list_buildings(call: Call) -> m.BuildingList:
    q: m.BuildingQuery = call.query
    _check_scope(call.who, grid=q.grid)
    listed = [
        b
        for b in state_of(call).config.buildings
        if (q.grid is None or b.grid == q.grid) and call.who.sees_building(b.id)
    ]
    alerts = await _active_alerts(call)
    supervised = _supervised(alerts)
    # One pass over the listed buildings' devices, each counted into its own building's tally (nothing of a whole
    # district is held at once); alerts grouped by building once.
    tallies = {b.id: _Tally() for b in listed}
    sources, reader = await _device_sources(call, set(tallies))
    with gc_paused():
        for device_id, record in sources:
            device = reader.facts(device_id, record)
            if device is None:
                continue
            tally = tallies.get(device.building)
            if tally is None:  # only the listed buildings have a tally, and every one of them is in scope
                continue
            if device.kind == "extinguisher" and device.id in supervised:
                device.out_of_service = True
            tally.add(device)
    alerts_of: dict[str, list[m.Alert]] = {}
    for alert in alerts:
        alerts_of.setdefault(alert.building, []).append(alert)
    return m.BuildingList(items=[_building(b, tallies[b.id], alerts_of.get(b.id, ())) for b in listed])


@operation(
    "GET",
    "/buildings/{id}",
    summary="One building: rollup, active alerts, offline and low-battery devices, extinguishers out of service",
    tag="buildings",
    response=m.BuildingDetail,
    path_params=(id_param("id", "building id"),),
)
async def get_building(call: Call) -> m.BuildingDetail:
    building_id: str = call.params["id"]
    # Scope first: a scoped token learns nothing about whether an outside id exists.
    _check_scope(call.who, building=building_id)
    b = state_of(call).config.building(building_id)
    if b is None:
        raise ApiError(404, f"no building {building_id!r}")
    active = await _active_alerts(call)
    devices = [d for d in await _device_rows(call, active, buildings=[b.id]) if d.building == b.id]
    alerts = [a for a in active if a.building == b.id]
    alerts.sort(key=lambda a: (v.severity_rank(a.severity), a.raised_ms or 0), reverse=True)
    tally = _Tally()
    for device in devices:
        tally.add(device)
    base = _building(b, tally, alerts)
    return m.BuildingDetail(
        **base.model_dump(),
        active_alerts=alerts,
        offline_devices=[d.model() for d in devices if d.status == m.DeviceStatus.offline],
        low_battery_devices=[d.model() for d in devices if d.low_battery],
        extinguishers_out_of_service=[d.model() for d in devices if d.out_of_service],
    )


# --- rejections --------------------------------------------------------------------------------------------------


@operation(
    "GET",
    "/rejections",
    summary="Recent payloads the gateway rejected, with the reason",
    tag="devices",
    query=m.RejectionQuery,
    response=m.RejectionList,
    errors=(403,),
)
async def list_rejections(call: Call) -> m.RejectionList:
    q: m.RejectionQuery = call.query
    _check_scope(call.who, building=q.building)
    rejections = _dep(call, "rejections")
    rows = await _maybe_await(rejections.recent(1000))
    items: list[m.Rejection] = []
    for row in rows or ():
        rejection = v.rejection_from(row)
        if rejection is None or not call.who.sees_building(rejection.building):
            continue
        if (q.reason is not None and rejection.reason != q.reason) or (
            q.building is not None and rejection.building != q.building
        ):
            continue
        items.append(rejection)
    items.sort(key=lambda r: r.ts_ms or 0, reverse=True)
    return m.RejectionList(items=items[: q.limit])


# --- maintenance windows -----------------------------------------------------------------------------------------


def _window_out(window: MaintenanceWindow, created_by: str | None) -> m.MaintenanceWindowOut:
    return m.MaintenanceWindowOut(
        id=window.id,
        building=window.building,
        floor=window.floor,
        device=window.device,
        start_ms=window.start_ms,
        end_ms=window.end_ms,
        reason=window.reason,
        created_by=created_by,
    )


def _live_windows(state: ApiState) -> list[m.MaintenanceWindowOut]:
    """The engine's windows (it is the authority: windows from the config and restored snapshots count too)."""
    now = state.clock_ms()
    engine = getattr(state.runtime, "engine", None)
    listed = engine.maintenance() if engine is not None and hasattr(engine, "maintenance") else []
    created = {w.id: w.created_by for w in state.maintenance.values()}
    out = [_window_out(w, created.get(w.id)) for w in listed if w.end_ms > now]
    return sorted(out, key=lambda w: (w.start_ms, w.id))


async def _engine_change(call: Call, change: Callable[[Any], list[AlertTransition]]) -> None:
    """Change the engine under its lock, then commit what the change caused (test alerts cleared when a window
    closes) through the gateway's own commit path, so the store, outbox and engine snapshot stay consistent."""
    state = state_of(call)
    engine = _dep(call, "engine")
    lock = getattr(state.runtime, "engine_lock", None)
    if lock is not None:
        async with lock:
            transitions = list(change(engine) or [])
    else:
        transitions = list(change(engine) or [])
    if not transitions:
        return
    apply = getattr(state.runtime, "apply_transitions", None)
    if apply is not None:
        await _maybe_await(apply(transitions))
    elif getattr(state.runtime, "store", None) is not None:
        await asyncio.to_thread(_store(call).apply, transitions, now_ms=state.clock_ms())


@operation(
    "POST",
    "/maintenance",
    summary="Open a maintenance window: alerts in its scope are recorded as tests and never paged",
    tag="maintenance",
    role="operator",
    body=m.MaintenanceRequest,
    response=m.MaintenanceWindowOut,
    status=201,
    errors=(403,),
)
async def create_maintenance(call: Call) -> m.MaintenanceWindowOut:
    """Give `end_ms` or `duration_s`; `start_ms` defaults to now.  Scope: a whole building, a floor or one device."""
    body: m.MaintenanceRequest = call.body
    _check_scope(call.who, building=body.building)
    state = state_of(call)
    now = state.clock_ms()
    start = body.start_ms if body.start_ms is not None else now
    if body.end_ms is not None and body.duration_s is not None:
        raise ApiError(422, "give end_ms or duration_s, not both", type="urn:firegrid:problem:invalid-body")
    end = body.end_ms if body.end_ms is not None else start + (body.duration_s or 0) * 1000
    if body.end_ms is None and body.duration_s is None:
        raise ApiError(422, "give end_ms or duration_s", type="urn:firegrid:problem:invalid-body")
    if end <= start or end <= now:
        raise ApiError(
            422, "the window must end after it starts and in the future", type="urn:firegrid:problem:invalid-body"
        )
    window_id = "mw-" + uuid.uuid4().hex[:12]
    window = MaintenanceWindow(
        id=window_id,
        building=body.building,
        floor=body.floor,
        device=body.device,
        start_ms=start,
        end_ms=end,
        reason=body.reason,
    )
    await _engine_change(call, lambda engine: engine.set_maintenance(window))
    out = _window_out(window, call.who.name)
    state.maintenance[window_id] = out
    log.info("maintenance window %s opened on %s by %s", window_id, body.building, call.who.name)
    return out


@operation(
    "GET",
    "/maintenance",
    summary="Maintenance windows that have not ended",
    tag="maintenance",
    query=m.MaintenanceQuery,
    response=m.MaintenanceList,
    errors=(403,),
)
async def list_maintenance(call: Call) -> m.MaintenanceList:
    q: m.MaintenanceQuery = call.query
    _check_scope(call.who, building=q.building)
    windows = [
        w
        for w in _live_windows(state_of(call))
        if call.who.sees_building(w.building) and (q.building is None or w.building == q.building)
    ]
    return m.MaintenanceList(items=windows)


@operation(
    "DELETE",
    "/maintenance/{id}",
    summary="Close a maintenance window early",
    tag="maintenance",
    role="operator",
    response=m.Deleted,
    path_params=(id_param("id", "maintenance window id"),),
)
async def delete_maintenance(call: Call) -> m.Deleted:
    window_id: str = call.params["id"]
    state = state_of(call)
    window = next((w for w in _live_windows(state) if w.id == window_id), None)
    if window is None or not call.who.sees_building(window.building):
        raise ApiError(404, f"no open maintenance window {window_id!r}")
    await _engine_change(call, lambda engine: engine.clear_maintenance(window_id))
    state.maintenance.pop(window_id, None)
    return m.Deleted(id=window_id, deleted=True)


# --- who am I, live stream ---------------------------------------------------------------------------------------


@operation("GET", "/whoami", summary="The calling token's name, role and scope", tag="meta", response=m.WhoAmI)
async def whoami(call: Call) -> m.WhoAmI:
    who = call.who
    return m.WhoAmI(
        name=who.name,
        role=who.role,
        grids=sorted(who.grids) if who.grids is not None else None,
        buildings=sorted(who.buildings) if who.buildings is not None else None,
    )


def _event_filter(who: Principal) -> Callable[[Event], bool] | None:
    if not who.scoped:
        return None

    def accept(event: Event) -> bool:
        building = event.data.get("building") if isinstance(event.data, Mapping) else None
        return isinstance(building, str) and who.sees_building(building)

    return accept


@operation(
    "GET",
    "/stream",
    summary="Live Server-Sent Events: every alert transition and device status change",
    tag="meta",
    query=m.StreamQuery,
    stream=True,
)
async def stream(call: Call) -> web.StreamResponse:
    """`text/event-stream`.  Events: `hello` (on connect), `alert` (any alert transition or lifecycle step), `device`
    (status change), `reset` (events were missed: reload), `lagged` (the client was too slow; reconnect).  Comment
    lines are heartbeats.  Send `Last-Event-ID` to resume.  Tokens go in the Authorization header, never the URL."""
    request = call.request
    hub = state_of(call).hub
    accept = _event_filter(call.who)
    raw_last = request.headers.get("Last-Event-ID", "").strip()
    last_id = int(raw_last) if raw_last.isdigit() and len(raw_last) < 18 else None
    reset = False
    try:
        sub = hub.subscribe(last_event_id=last_id, accept=accept)
    except ResumeGap:
        sub = hub.subscribe(accept=accept)
        reset = True
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
    )
    try:
        await response.prepare(request)
        hello = b'retry: 1000\nevent: hello\ndata: {"last_id": %d}\n\n' % hub.last_id
        await response.write(hello)
        if reset:
            await response.write(b'event: reset\ndata: {"reason": "events were missed; reload"}\n\n')
        while True:
            try:
                event = await sub.get(within=hub.heartbeat_s)
            except SubscriberLagged:
                await response.write(b'event: lagged\ndata: {"reason": "too slow; reconnect with Last-Event-ID"}\n\n')
                break
            except StopAsyncIteration:
                break
            if event is None:
                await response.write(b": heartbeat %d\n\n" % int(time.time()))
            else:
                await response.write(event.encode_sse())
    except ConnectionResetError:  # the client went away
        pass
    finally:
        sub.close()
    return response
