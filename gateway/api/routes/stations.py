"""``/stations``: the micro fire stations, who of each is on duty now, and the open incident each is committed to."""

from __future__ import annotations

import asyncio

from alerts.routing import on_duty_by_name
from gateway.api import models as m
from gateway.api.framework import Call, operation
from gateway.api.routes.state import alert_store, state_of
from gateway.config import StationConfig

# The "15-minute rescue circle" (15分钟消防救援圈): what a station reaches in 15 minutes at the dispatch speed.
RESCUE_CIRCLE_MIN = 15


@operation(
    "GET",
    "/stations",
    summary="Micro fire stations with their on-duty members and what they are committed to",
    tag="alerts",
    response=m.StationList,
)
async def list_stations(call: Call) -> m.StationList:
    """A scoped token sees the stations covering a building it may see."""
    state = state_of(call)
    config = state.config
    committed = await asyncio.to_thread(alert_store(call).committed_stations)
    duty = on_duty_by_name(config.notify, now_ms=state.clock_ms())
    who = call.who
    grids = state.building_grids
    visible = set(who.visible_buildings(grids)) if who.scoped else None
    speed = config.dispatch.travel_speed_kmh
    items = []
    for station in config.stations:
        if visible is not None and not _covers_any(station, visible, grids):
            continue
        members = [m.StationMember(name=name, on_duty=duty(name)) for name in station.members]
        items.append(
            m.StationOut(
                id=station.id,
                name=station.name,
                location=m.GeoPoint(lat=station.location.lat, lon=station.location.lon),
                grids=list(station.grids),
                buildings=list(station.buildings),
                on_scene_target_s=station.on_scene_target_s,
                equipment=[m.EquipmentItem(name=e.name, count=e.count) for e in station.equipment],
                members=members,
                on_duty=[x.name for x in members if x.on_duty],
                committed_to=committed.get(station.id),
                travel_speed_kmh=speed,
                rescue_radius_m=round(speed * 1000 * RESCUE_CIRCLE_MIN / 60),
            )
        )
    return m.StationList(items=items)


def _covers_any(station: StationConfig, buildings: set[str], grids: dict[str, str]) -> bool:
    return any(b in station.buildings or grids.get(b) in station.grids for b in buildings)
