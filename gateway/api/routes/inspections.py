"""``/inspection-points``, ``/inspections`` (and this month's compliance) and ``/photos``: the people's half of the
information collection.  Scoped like the rest: a token sees the points, inspections and photos of its buildings."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from aiohttp import web

from alerts.inspections.figures import month_figures
from alerts.inspections.photos import PhotoRefused
from alerts.inspections.records import CheckResult
from alerts.inspections.store import PhotoNotFound
from gateway.api import inspection_models as im
from gateway.api.framework import ApiError, Call, id_param, operation
from gateway.api.inspection_parts import parts_of, refused
from gateway.api.routes.listing import page, scope
from gateway.api.routes.state import check_scope

_PHOTO_CSP = "default-src 'none'; sandbox"


@operation(
    "GET",
    "/inspection-points",
    summary="Inspection points (extinguishers, hydrants, exits, shops) with their last inspection and deadline",
    tag="inspections",
    query=im.InspectionPointQuery,
    response=im.InspectionPointList,
    errors=(403,),
)
async def list_inspection_points(call: Call) -> im.InspectionPointList:
    q: im.InspectionPointQuery = call.query
    check_scope(call.who, building=q.building, grid=q.grid)
    parts = parts_of(call.app)
    now = parts.clock_ms()
    dues = await asyncio.to_thread(parts.deadlines.due, now_ms=now)
    items = []
    for point in parts.deadlines.config.inspection_points:
        grid = parts.grid_of(point.building)
        if not call.who.sees_building(point.building):
            continue
        if (q.building is not None and point.building != q.building) or (q.grid is not None and grid != q.grid):
            continue
        due = dues.get(point.id)
        items.append(
            im.InspectionPointOut(
                id=point.id,
                building=point.building,
                grid=grid,
                floor=point.floor,
                location=point.location,
                kind=im.PointKind(point.kind),
                checklist=list(point.items),
                interval=point.interval,
                responsible=point.responsible,
                device=point.device,
                last_inspected_ms=None if due is None else due.last_ms,
                due_ms=None if due is None else due.due_ms,
                overdue=due is not None and due.overdue(now),
            )
        )
    return im.InspectionPointList(items=items)


@operation(
    "GET",
    "/inspections",
    summary="Inspections, newest first",
    tag="inspections",
    query=im.InspectionQuery,
    response=im.InspectionPage,
    errors=(403,),
)
async def list_inspections(call: Call) -> im.InspectionPage:
    q: im.InspectionQuery = call.query
    where = scope(call, building=q.building, grid=q.grid)
    store = parts_of(call.app).store
    listed = await page(
        call,
        limit=q.limit,
        offset=q.offset,
        fetch=lambda limit, offset: store.list_inspections(
            point=q.point, building=where.building, grid=where.grid, since_ms=q.since, limit=limit, offset=offset
        ),
        convert=im.InspectionOut.of,
    )
    return im.InspectionPage(items=listed.items, limit=q.limit, offset=q.offset, next_offset=listed.next_offset)


@operation(
    "POST",
    "/inspections",
    summary="Record an inspection; each failed item becomes a hazard",
    tag="inspections",
    role="operator",
    body=im.InspectionIn,
    response=im.InspectionCreated,
    status=201,
    errors=(403, 404),
)
async def create_inspection(call: Call) -> im.InspectionCreated:
    """The checklist items are the point's (`GET /inspection-points`); an item not on it is refused."""
    body: im.InspectionIn = call.body
    parts = parts_of(call.app)
    point = parts.point(body.point)
    if point is None or not call.who.sees_building(point.building):
        raise ApiError(404, f"no inspection point {body.point!r}")
    unknown = [r.item for r in body.results if r.item not in point.items]
    if unknown:
        raise ApiError(
            422, f"not on the checklist of {point.id}: {unknown[0]!r}", type="urn:firegrid:problem:invalid-body"
        )
    try:
        inspection, hazards = await asyncio.to_thread(
            parts.store.record_inspection,
            point=point,
            grid=parts.grid_of(point.building),
            inspector=body.inspector,
            results=[CheckResult(item=r.item, ok=r.ok) for r in body.results],
            note=body.note,
            photo=body.photo,
            source="api",
            now_ms=parts.clock_ms(),
        )
    except PhotoNotFound as exc:
        raise ApiError(422, str(exc), type="urn:firegrid:problem:invalid-body") from None
    await parts.after_change()
    now = parts.clock_ms()
    return im.InspectionCreated(
        inspection=im.InspectionOut.of(inspection), hazards=[im.HazardOut.of(h, now_ms=now) for h in hazards]
    )


def _month_bounds(month: str | None, tz: ZoneInfo, now_ms: int) -> tuple[str, int, int]:
    now = datetime.fromtimestamp(now_ms / 1000, tz=tz)
    year, mon = (int(month[:4]), int(month[5:])) if month else (now.year, now.month)
    if not 1 <= mon <= 12 or not 2000 <= year <= 2999:
        raise ApiError(400, f"invalid month {month!r}", type="urn:firegrid:problem:invalid-query")
    start = datetime(year, mon, 1, tzinfo=tz)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=tz)
    return f"{year:04d}-{mon:02d}", int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@operation(
    "GET",
    "/inspections/compliance",
    summary="Inspection compliance per grid for a month, open and overdue hazards, and time to rectify",
    tag="inspections",
    query=im.ComplianceQuery,
    response=im.ComplianceOut,
    errors=(403,),
)
async def compliance(call: Call) -> im.ComplianceOut:
    """A point counts as inspected when it was inspected in the month, or is a monitored extinguisher whose
    telemetry is healthy now."""
    q: im.ComplianceQuery = call.query
    check_scope(call.who, grid=q.grid)
    parts = parts_of(call.app)
    config = parts.deadlines.config
    now = parts.clock_ms()
    month, start, end = _month_bounds(q.month, ZoneInfo(config.notify.timezone), now)
    inspected = await asyncio.to_thread(parts.store.inspected_between, start_ms=start, end_ms=end)
    dues = await asyncio.to_thread(parts.deadlines.due, now_ms=now)
    where = scope(call, building=None, grid=q.grid)
    hazards = await asyncio.to_thread(
        parts.store.list_hazards, building=where.building, grid=where.grid, limit=1_000_000
    )
    figures = month_figures(
        points=[
            p
            for p in config.inspection_points
            if call.who.sees_building(p.building) and (q.grid is None or parts.grid_of(p.building) == q.grid)
        ],
        grid_of=parts.grid_of,
        inspected=inspected,
        dues=dues,
        hazards=[h for h in hazards if call.who.sees_building(h.building)],
        start_ms=start,
        end_ms=end,
        now_ms=now,
    )
    return im.ComplianceOut(
        month=month,
        grids=[
            im.GridCompliance(grid=g.grid, points=g.points, inspected=g.inspected, rate=g.rate, overdue=g.overdue)
            for g in figures.grids
        ],
        open_hazards=figures.open_hazards,
        overdue_hazards=figures.overdue_hazards,
        rectified_this_month=figures.rectified,
        mean_hours_to_rectify=figures.mean_hours_to_rectify,
    )


@operation(
    "POST",
    "/photos",
    summary="Upload a photo (JPEG or PNG); it is re-encoded, and its id is what hazards and inspections refer to",
    tag="inspections",
    role="operator",
    response=im.PhotoOut,
    status=201,
    request_media=("image/jpeg", "image/png"),
)
async def upload_photo(call: Call) -> im.PhotoOut:
    """The type is judged from the content, never the name or Content-Type; SVG and other documents are refused,
    as are images over `inspections.photo_max_kb` or `photo_max_pixels`.  EXIF (a phone's GPS position) is dropped."""
    parts = parts_of(call.app)
    limit = parts.deadlines.config.inspections.photo_max_kb * 1024
    request = call.request
    if request.content_length is not None and request.content_length > limit:
        parts.refused("photo")
        raise ApiError(413, f"the photo is {request.content_length} bytes; the limit is {limit // 1024} KB")
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        parts.refused("photo")
        raise ApiError(413, f"the photo is larger than the limit of {limit // 1024} KB")
    try:
        saved = await parts.save_photo(data, filename=None, building=None)
    except PhotoRefused as exc:
        parts.refused("photo")
        raise refused(exc) from None
    return im.PhotoOut(id=saved.id, mime=saved.mime, width=saved.width, height=saved.height, bytes=saved.bytes)


@operation(
    "GET",
    "/photos/{id}",
    summary="A stored photo, as the re-encoded JPEG (never the uploaded bytes)",
    tag="inspections",
    response_media=("image/jpeg",),
    path_params=(id_param("id", "photo id"),),
)
async def get_photo(call: Call) -> web.StreamResponse:
    parts = parts_of(call.app)
    photo_id: str = call.params["id"]
    record = await asyncio.to_thread(parts.store.photo, photo_id)
    if record is None or (record.building is not None and not call.who.sees_building(record.building)):
        raise ApiError(404, f"no photo {photo_id!r}")
    try:
        data = await asyncio.to_thread(parts.store.photo_path(record.id).read_bytes)
    except OSError:
        raise ApiError(404, f"no photo {photo_id!r}") from None
    return web.Response(
        body=data,
        headers={
            "Content-Type": "image/jpeg",
            "Content-Disposition": f'inline; filename="{record.id}.jpg"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": _PHOTO_CSP,
            "Cache-Control": "private, max-age=86400",
        },
    )
