"""``/incidents``: alerts of one building grouped in time."""

from __future__ import annotations

from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import Call, operation
from gateway.api.routes.listing import page, scope
from gateway.api.routes.state import alert_store


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
    where = scope(call, building=q.building, grid=q.grid)
    store = alert_store(call)
    listed = await page(
        call,
        limit=q.limit,
        offset=q.offset,
        fetch=lambda limit, offset: store.list_incidents(
            building=where.building,
            grid=where.grid,
            state=None if q.active is None else "open" if q.active else "resolved",
            since_ms=q.since,
            limit=limit,
            offset=offset,
        ),
        convert=lambda record: v.incident(record, building_grids=where.building_grids),
    )
    return m.IncidentPage(items=listed.items, limit=q.limit, offset=q.offset, next_offset=listed.next_offset)
