"""``/incidents``: alerts of one building grouped in time, and the unit of the duty room's work: read one with its
alerts, evidence, pages, timeline and clock; acknowledge, dispatch, mark on scene, resolve; attach the governance
platform's work-order id.

``{id}`` is the incident's id, or ``ref:<work-order id>`` for a platform acting by its own id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from pydantic import AfterValidator, StringConstraints, TypeAdapter

from alerts.dispatch import DispatchError, UnknownMembers, UnknownStation
from alerts.store import IncidentNotFound, InvalidTransition
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.framework import ApiError, Call, PathParam, operation
from gateway.api.routes.listing import page, scope
from gateway.api.routes.state import alert_store, check_scope, state_of

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class IncidentKey:
    """An incident's id as the path gives it: its number, or ``ref:<work-order id>`` (not an id the framework's
    id check would pass: the platform chose its characters)."""

    raw: str


def _key(raw: str) -> IncidentKey:
    if not (raw.isdigit() and len(raw) <= 18) and not (raw.startswith("ref:") and len(raw) > 4):
        raise ValueError("an incident id, or ref:<work-order id>")
    return IncidentKey(raw)


_INCIDENT_ID = PathParam(
    name="id",
    adapter=TypeAdapter(Annotated[str, StringConstraints(max_length=204), AfterValidator(_key)]),
    schema={"type": "string", "pattern": r"^([0-9]{1,18}|ref:.{1,200})$"},
    description="incident id, or ref:<the governance platform's work-order id>",
)


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
            external_ref=q.external_ref,
            limit=limit,
            offset=offset,
        ),
        convert=lambda record: v.incident(record, building_grids=where.building_grids),
    )
    return m.IncidentPage(items=listed.items, limit=q.limit, offset=q.offset, next_offset=listed.next_offset)


async def _resolve_id(call: Call) -> int:
    key: IncidentKey = call.params["id"]
    raw = key.raw
    if raw.startswith("ref:"):
        record = await asyncio.to_thread(alert_store(call).incident_by_ref, raw[4:])
        if record is None:
            raise ApiError(404, f"no incident with work-order id {raw[4:]!r}")
        return record.id
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, f"no incident {raw!r}")
    return int(raw)


async def _get(call: Call, incident_id: int) -> m.IncidentDetail:
    detail = await asyncio.to_thread(alert_store(call).get_incident, incident_id)
    if detail is None:
        raise ApiError(404, f"no incident {incident_id}")
    check_scope(call.who, building=detail.incident.building)
    state = state_of(call)
    return v.incident_detail(
        detail, building_grids=state.building_grids, rules=state.rules, locations=state.device_locations
    )


@operation(
    "GET",
    "/incidents/{id}",
    summary="One incident with its alerts, evidence, pages, timeline and response clock",
    tag="alerts",
    response=m.IncidentDetail,
    path_params=(_INCIDENT_ID,),
)
async def get_incident(call: Call) -> m.IncidentDetail:
    return await _get(call, await _resolve_id(call))


async def _step(call: Call, run: Callable[[int, int], _T]) -> tuple[m.IncidentDetail, _T]:
    """``run(incident_id, now_ms)``: one of the store's incident steps, run off the event loop, after the 404/403
    checks; the incident as it then stands."""
    incident_id = await _resolve_id(call)
    await _get(call, incident_id)  # 404 / 403 before anything changes
    now_ms = state_of(call).clock_ms()
    try:
        result = await asyncio.to_thread(run, incident_id, now_ms)
    except IncidentNotFound:
        raise ApiError(404, f"no incident {incident_id}") from None
    except InvalidTransition as exc:  # e.g. arriving at an incident someone already resolved
        raise ApiError(409, str(exc)[:300], type="urn:firegrid:problem:lifecycle") from None
    except (UnknownStation, UnknownMembers) as exc:
        raise ApiError(422, str(exc)[:300], type="urn:firegrid:problem:dispatch") from None
    except DispatchError as exc:  # no station covers the building
        raise ApiError(409, str(exc)[:300], type="urn:firegrid:problem:dispatch") from None
    return await _get(call, incident_id), result


@operation(
    "POST",
    "/incidents/{id}/ack",
    summary="Acknowledge an incident and every alert of it still raised",
    tag="alerts",
    role="operator",
    body=m.IncidentStepRequest,
    response=m.IncidentDetail,
    path_params=(_INCIDENT_ID,),
    errors=(409,),
)
async def ack_incident(call: Call) -> m.IncidentDetail:
    body: m.IncidentStepRequest = call.body
    store, actor = alert_store(call), call.who.name
    detail, _ = await _step(
        call,
        lambda i, now: store.acknowledge_incident(
            i, by=body.by or actor, actor=actor, by_name=body.by, note=body.note, now_ms=now
        ),
    )
    return detail


@operation(
    "POST",
    "/incidents/{id}/dispatch",
    summary="Dispatch a station (or named members) to an incident and page them",
    tag="alerts",
    role="operator",
    body=m.IncidentDispatchRequest,
    response=m.IncidentDispatched,
    path_params=(_INCIDENT_ID,),
    errors=(409,),
)
async def dispatch_incident(call: Call) -> m.IncidentDispatched:
    """With neither `station` nor `members`, the nearest available on-duty station covering the building is sent
    (straight-line distance at `dispatch.travel_speed_kmh`); `dispatch.reason` says why.  Every member sent is
    paged at once and the station's on-scene clock starts."""
    body: m.IncidentDispatchRequest = call.body
    store, actor = alert_store(call), call.who.name
    detail, (_, decision) = await _step(
        call,
        lambda i, now: store.dispatch_incident(
            i, actor=actor, by_name=body.by, station=body.station, members=body.members, note=body.note, now_ms=now
        ),
    )
    out = m.DispatchDecision(
        station=decision.station,
        members=list(decision.members),
        reason=decision.reason,
        distance_m=decision.distance_m,
        eta_s=decision.eta_s,
    )
    return m.IncidentDispatched(**detail.model_dump(), dispatch=out)


@operation(
    "POST",
    "/incidents/{id}/arrive",
    summary="Mark an incident on scene (stops the station's clock)",
    tag="alerts",
    role="operator",
    body=m.IncidentStepRequest,
    response=m.IncidentDetail,
    path_params=(_INCIDENT_ID,),
    errors=(409,),
)
async def arrive_incident(call: Call) -> m.IncidentDetail:
    body: m.IncidentStepRequest = call.body
    store, actor = alert_store(call), call.who.name
    detail, _ = await _step(
        call,
        lambda i, now: store.arrive_incident(i, actor=actor, by_name=body.by, via="api", note=body.note, now_ms=now),
    )
    return detail


@operation(
    "POST",
    "/incidents/{id}/resolve",
    summary="Resolve an incident with its cause (closes every alert of it)",
    tag="alerts",
    role="operator",
    body=m.IncidentResolveRequest,
    response=m.IncidentDetail,
    path_params=(_INCIDENT_ID,),
    errors=(409,),
)
async def resolve_incident(call: Call) -> m.IncidentDetail:
    body: m.IncidentResolveRequest = call.body
    store, actor, cause = alert_store(call), call.who.name, body.cause.value
    detail, _ = await _step(
        call,
        lambda i, now: store.resolve_incident(i, actor=actor, by_name=body.by, cause=cause, note=body.note, now_ms=now),
    )
    return detail


@operation(
    "POST",
    "/incidents/{id}/external-ref",
    summary="Attach the governance platform's work-order id to an incident",
    tag="alerts",
    role="operator",
    body=m.ExternalRefRequest,
    response=m.IncidentDetail,
    path_params=(_INCIDENT_ID,),
)
async def external_ref(call: Call) -> m.IncidentDetail:
    """The platform may then find the incident by it (`GET /incidents?external_ref=`) and act on it as
    `/incidents/ref:<id>/...`."""
    body: m.ExternalRefRequest = call.body
    store, actor = alert_store(call), call.who.name
    detail, _ = await _step(
        call, lambda i, now: store.set_external_ref(i, actor=actor, ref=body.ref, system=body.system, now_ms=now)
    )
    return detail
