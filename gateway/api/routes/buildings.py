"""``/buildings``: every building with its status rollup (devices online, offline, low on battery, extinguishers
out of service; the worst open alert), and one building in detail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.gc_pause import gc_paused
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.routes.alerts import active_alerts
from gateway.api.routes.devices import device_rows, device_sources, supervised_devices
from gateway.api.routes.state import check_scope, state_of


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
        location=None if b.location is None else m.GeoPoint(lat=b.location.lat, lon=b.location.lon),
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
    check_scope(call.who, grid=q.grid)
    listed = [
        b
        for b in state_of(call).config.buildings
        if (q.grid is None or b.grid == q.grid) and call.who.sees_building(b.id)
    ]
    alerts = await active_alerts(call)
    supervised = supervised_devices(alerts)
    # One pass over the listed buildings' devices, each counted into its own building's tally (nothing of a whole
    # district is held at once); alerts grouped by building once.
    tallies = {b.id: _Tally() for b in listed}
    sources, reader = await device_sources(call, set(tallies))
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
    check_scope(call.who, building=building_id)
    b = state_of(call).config.building(building_id)
    if b is None:
        raise ApiError(404, f"no building {building_id!r}")
    active = await active_alerts(call)
    devices = [d for d in await device_rows(call, active, buildings=[b.id]) if d.building == b.id]
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
