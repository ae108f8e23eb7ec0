"""``/hazards``: list, report, read, and the lifecycle steps (assign, start, rectify with a photo, verify, reopen).
Every step is audited on the hazard and sent, signed, to the governance platform as ``hazard.<step>``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from alerts.inspections.records import OPEN_HAZARD_STATES
from alerts.inspections.store import HazardNotFound, InvalidHazardStep, PhotoNotFound
from gateway.api import inspection_models as im
from gateway.api.framework import ApiError, Call, Handler, id_param, operation
from gateway.api.inspection_parts import InspectionParts, parts_of
from gateway.api.routes.listing import page, scope
from gateway.api.routes.state import check_scope

_ID = (id_param("id", "hazard id"),)
_DAY_MS = 86_400_000


@operation(
    "GET",
    "/hazards",
    summary="Hazards, newest first",
    tag="hazards",
    query=im.HazardQuery,
    response=im.HazardPage,
    errors=(403,),
)
async def list_hazards(call: Call) -> im.HazardPage:
    """`open=true`: hazards not yet verified."""
    q: im.HazardQuery = call.query
    where = scope(call, building=q.building, grid=q.grid)
    states: list[str] | None = None
    if q.open is True:
        states = list(OPEN_HAZARD_STATES)
    elif q.open is False:
        states = ["verified"]
    if q.state is not None:
        states = [s for s in (states or [q.state.value]) if s == q.state.value]
    parts = parts_of(call.app)
    now = parts.clock_ms()
    listed = await page(
        call,
        limit=q.limit,
        offset=q.offset,
        fetch=lambda limit, offset: parts.store.list_hazards(
            building=where.building, grid=where.grid, states=states, point=q.point, limit=limit, offset=offset
        ),
        convert=lambda hazard: im.HazardOut.of(hazard, now_ms=now),
    )
    return im.HazardPage(items=listed.items, limit=q.limit, offset=q.offset, next_offset=listed.next_offset)


@operation(
    "POST",
    "/hazards",
    summary="Report a hazard",
    tag="hazards",
    role="operator",
    body=im.HazardIn,
    response=im.HazardOut,
    status=201,
    errors=(403,),
)
async def report_hazard(call: Call) -> im.HazardOut:
    body: im.HazardIn = call.body
    check_scope(call.who, building=body.building)
    parts = parts_of(call.app)
    if parts.deadlines.config.building(body.building) is None:
        raise ApiError(422, f"unknown building {body.building!r}", type="urn:firegrid:problem:invalid-body")
    if body.point is not None:
        point = parts.point(body.point)
        if point is None or point.building != body.building:
            raise ApiError(
                422,
                f"no inspection point {body.point!r} in building {body.building!r}",
                type="urn:firegrid:problem:invalid-body",
            )
    try:
        hazard = await asyncio.to_thread(
            parts.store.report_hazard,
            building=body.building,
            grid=parts.grid_of(body.building),
            floor=body.floor,
            point=body.point,
            location=body.location,
            category=body.category,
            description=body.description,
            photo=body.photo,
            reporter=body.reporter or call.who.name,
            source="api",
            now_ms=parts.clock_ms(),
        )
    except PhotoNotFound as exc:
        raise ApiError(422, str(exc), type="urn:firegrid:problem:invalid-body") from None
    return im.HazardOut.of(hazard, now_ms=parts.clock_ms())


async def _visible(call: Call, parts: InspectionParts, raw_id: str) -> int:
    if not raw_id.isdigit() or len(raw_id) > 18:
        raise ApiError(404, f"no hazard {raw_id!r}")
    hazard = await asyncio.to_thread(parts.store.get_hazard, int(raw_id))
    if hazard is None or not call.who.sees_building(hazard.building):
        raise ApiError(404, f"no hazard {raw_id!r}")
    return hazard.id


@operation(
    "GET",
    "/hazards/{id}",
    summary="One hazard with its audit trail",
    tag="hazards",
    response=im.HazardOut,
    path_params=_ID,
)
async def get_hazard(call: Call) -> im.HazardOut:
    parts = parts_of(call.app)
    hazard_id = await _visible(call, parts, call.params["id"])
    hazard = await asyncio.to_thread(parts.store.get_hazard, hazard_id)
    if hazard is None:
        raise ApiError(404, f"no hazard {hazard_id}")
    return im.HazardOut.of(hazard, now_ms=parts.clock_ms(), audit=True)


def _deadline(parts: InspectionParts, deadline_ms: int | None, days: int | None) -> int | None:
    if deadline_ms is not None and days is not None:
        raise ApiError(422, "give deadline_ms or days, not both", type="urn:firegrid:problem:invalid-body")
    if days is not None:
        return parts.clock_ms() + days * _DAY_MS
    if deadline_ms is not None and deadline_ms <= parts.clock_ms():
        raise ApiError(422, "the deadline must be in the future", type="urn:firegrid:problem:invalid-body")
    return deadline_ms


def _step_operation(name: str, *, summary: str, body: type[BaseModel]) -> Callable[[Handler], Handler]:
    """A lifecycle step: ``POST /hazards/{id}/<name>`` by an operator, 409 when the hazard's state does not allow it."""
    return operation(
        "POST",
        f"/hazards/{{id}}/{name}",
        summary=summary,
        tag="hazards",
        role="operator",
        body=body,
        response=im.HazardOut,
        path_params=_ID,
        errors=(409,),
    )


async def _step(
    call: Call,
    step: str,
    *,
    assignee: str | None = None,
    deadline_ms: int | None = None,
    photo: str | None = None,
    note: str | None = None,
) -> im.HazardOut:
    parts = parts_of(call.app)
    hazard_id = await _visible(call, parts, call.params["id"])
    try:
        hazard = await asyncio.to_thread(
            parts.store.step,
            hazard_id,
            step,
            by=call.who.name,
            now_ms=parts.clock_ms(),
            assignee=assignee,
            deadline_ms=deadline_ms,
            photo=photo,
            note=note,
        )
    except InvalidHazardStep as exc:
        raise ApiError(409, str(exc), type="urn:firegrid:problem:invalid-transition") from None
    except (HazardNotFound, PhotoNotFound) as exc:
        raise ApiError(404 if isinstance(exc, HazardNotFound) else 422, str(exc)) from None
    await parts.after_change()
    return im.HazardOut.of(hazard, now_ms=parts.clock_ms())


@_step_operation(
    "assign", summary="Assign a hazard to a roster member or a station, with a rectification deadline", body=im.AssignIn
)
async def assign_hazard(call: Call) -> im.HazardOut:
    """The deadline defaults to now + `inspections.rectify_days`; past it an overdue alert is raised."""
    body: im.AssignIn = call.body
    parts = parts_of(call.app)
    deadline = _deadline(parts, body.deadline_ms, body.days)
    return await _step(call, "assigned", assignee=body.to, deadline_ms=deadline, note=body.note)


@_step_operation("start", summary="The assignee started the rectification", body=im.StepIn)
async def start_hazard(call: Call) -> im.HazardOut:
    body: im.StepIn = call.body
    return await _step(call, "rectifying", note=body.note)


@_step_operation("rectify", summary="Report the hazard rectified, with a photo of the result", body=im.RectifyIn)
async def rectify_hazard(call: Call) -> im.HazardOut:
    body: im.RectifyIn = call.body
    return await _step(call, "rectified", photo=body.photo, note=body.note)


@_step_operation("verify", summary="Verify a rectification: the hazard is closed", body=im.StepIn)
async def verify_hazard(call: Call) -> im.HazardOut:
    body: im.StepIn = call.body
    return await _step(call, "verified", note=body.note)


@_step_operation(
    "reopen", summary="The rectification did not hold: back to rectifying, with a new deadline", body=im.ReopenIn
)
async def reopen_hazard(call: Call) -> im.HazardOut:
    body: im.ReopenIn = call.body
    parts = parts_of(call.app)
    deadline = _deadline(parts, body.deadline_ms, body.days)
    return await _step(call, "reopened", deadline_ms=deadline, note=body.note)
