"""``/devices``: presence and last values of every device, with history from InfluxDB or the local store.

A district may have 100,000 devices: a listing reads presence's own records (``views.DeviceReader``) one building
at a time, and only the devices it returns become pydantic models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from common.gc_pause import gc_paused
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.routes.alerts import active_alerts
from gateway.api.routes.state import check_scope, state_of
from gateway.storage.presence import DeviceState


def device_sources(
    call: Call, wanted: set[str] | None
) -> tuple[Iterable[tuple[str, DeviceState | None]], v.DeviceReader]:
    """(device id, presence record or None) of each device of the ``wanted`` buildings (of every building when None):
    the registry from the config overlaid with what presence knows, and the reader that turns them into facts and
    rows.  Only the devices of those buildings are read, one at a time as the caller iterates (never across an
    ``await``), each record as presence keeps it (no per-device copy); the caller still checks each device's own
    building and scope."""
    state = state_of(call)
    reader = v.DeviceReader(now_ms=state.clock_ms(), building_grids=state.building_grids, registry=state.config.device)
    index = state.device_index()
    index.refresh()
    records = index.records()
    who = call.who
    return (
        (device_id, records.get(device_id))
        for building in (index.buildings() if wanted is None else wanted)
        if who.sees_building(building)
        for device_id in index.ids(building)
    ), reader


def supervised_devices(active: Sequence[m.Alert]) -> set[str]:
    """Devices with an open supervisory alert: an extinguisher with one (missing, obstructed, pressure) stays out of
    service until someone resolves it, even when its last reading looks fine again."""
    return {a.device for a in active if a.device and a.severity == m.SeverityName.supervisory}


async def device_rows(
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
    supervised = supervised_devices(active)
    rows: list[v.DeviceRow] = []
    sources, reader = device_sources(call, wanted)
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
    check_scope(call.who, building=q.building, grid=q.grid)
    active = await active_alerts(call)
    devices = await device_rows(
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
    presence = state.runtime.presence
    record = presence.devices.get(device_id) if presence is not None else None
    reader = v.DeviceReader(now_ms=state.clock_ms(), building_grids=state.building_grids, registry=state.config.device)
    facts = reader.facts(device_id, record)
    if facts is None or facts.id != device_id:
        raise ApiError(404, f"no device {device_id!r}")
    row = reader.row(device_id, record, facts)
    check_scope(call.who, building=row.building)
    active = [a for a in await active_alerts(call) if a.device == row.id]
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
    influx = runtime.influx
    if influx is not None and device.kind:
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
    presence = runtime.presence
    if presence is not None:
        since = state_of(call).clock_ms() - minutes * 60_000
        rows = await asyncio.to_thread(presence.history, device.id, limit=points)
        out: list[m.HistoryPoint] = []
        for data in rows:
            ts = v.as_int(data.get("ts_ms"))
            if ts is None or ts < since:
                continue
            vals = {str(k)[:64]: v.metric(x) for k, x in data.items() if k not in ("ts_ms", "time")}
            out.append(m.HistoryPoint(ts_ms=ts, values={k: x for k, x in vals.items() if x is not None}))
        out.sort(key=lambda p: p.ts_ms)
        return out, "local", None
    return [], "none", None
