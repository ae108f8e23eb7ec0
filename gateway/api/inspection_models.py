"""Request and response models of ``/inspection-points``, ``/inspections``, ``/hazards`` and ``/photos`` (see
``gateway/api/models.py`` for the conventions: closed responses, strict queries, stripped bodies)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from alerts.inspections.records import HazardRecord, InspectionRecord
from common.ids import Ident
from gateway.api.models import Body, EpochMs, Limit, Model, Name, Note, Offset, Query, Since

PhotoId = Annotated[str, StringConstraints(pattern=r"^ph-[0-9a-f]{32}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
Days = Annotated[int, Field(ge=1, le=365)]


class HazardState(StrEnum):
    reported = "reported"
    assigned = "assigned"
    rectifying = "rectifying"
    rectified = "rectified"
    verified = "verified"


class PointKind(StrEnum):
    extinguisher = "extinguisher"
    hydrant = "hydrant"
    exit = "exit"
    shop = "shop"
    generic = "generic"


# --- inspection points -------------------------------------------------------------------------------------------


class InspectionPointQuery(Query):
    building: Ident | None = None
    grid: Ident | None = None


class InspectionPointOut(Model):
    id: str
    building: str
    grid: str | None = None
    floor: int | None = None
    location: str
    kind: PointKind
    checklist: list[str]
    interval: str
    responsible: str | None = None
    device: str | None = Field(default=None, description="the monitored extinguisher that inspects this point")
    last_inspected_ms: int | None = None
    due_ms: int | None = Field(default=None, description="null: never due (a healthy monitored extinguisher)")
    overdue: bool


class InspectionPointList(Model):
    items: list[InspectionPointOut]


# --- inspections -------------------------------------------------------------------------------------------------


class CheckResultModel(Model):
    item: Text
    ok: bool


class InspectionQuery(Query):
    point: Ident | None = None
    building: Ident | None = None
    grid: Ident | None = None
    since: Since | None = None
    limit: Limit = 100
    offset: Offset = 0


class InspectionOut(Model):
    id: int
    point: str
    building: str
    grid: str | None = None
    inspector: str
    ts_ms: int
    results: list[CheckResultModel]
    failed: int
    note: str | None = None
    photo: str | None = None
    source: str

    @classmethod
    def of(cls, r: InspectionRecord) -> InspectionOut:
        return cls(
            id=r.id,
            point=r.point,
            building=r.building,
            grid=r.grid,
            inspector=r.inspector,
            ts_ms=r.ts_ms,
            results=[CheckResultModel(item=c.item, ok=c.ok) for c in r.results],
            failed=r.failed,
            note=r.note,
            photo=r.photo,
            source=r.source,
        )


class InspectionPage(Model):
    items: list[InspectionOut]
    limit: int
    offset: int
    next_offset: int | None = None


class InspectionIn(Body):
    """An inspection recorded through the API (a tablet app, the governance platform); each failed item becomes a
    hazard, as on the mobile page."""

    point: Ident
    inspector: Name
    results: list[CheckResultModel] = Field(min_length=1, max_length=30)
    note: Note | None = None
    photo: PhotoId | None = None


# --- hazards -----------------------------------------------------------------------------------------------------


class HazardAuditOut(Model):
    ts_ms: int
    action: str
    by: str | None = None
    detail: dict[str, Any]


class HazardOut(Model):
    id: int
    building: str
    building_name: str
    grid: str | None = None
    floor: int | None = None
    point: str | None = None
    location: str | None = None
    category: str
    description: str
    state: HazardState
    source: str
    reporter: str | None = None
    inspection_id: int | None = None
    photo: str | None = None
    assignee: str | None = None
    deadline_ms: int | None = None
    overdue: bool
    rectify_photo: str | None = None
    rectify_note: str | None = None
    reported_ms: int
    updated_ms: int
    rectified_ms: int | None = None
    verified_ms: int | None = None
    verified_by: str | None = None
    audit: list[HazardAuditOut] | None = Field(default=None, description="every step, oldest first (single reads)")

    @classmethod
    def of(cls, h: HazardRecord, *, now_ms: int, audit: bool = False) -> HazardOut:
        return cls(
            id=h.id,
            building=h.building,
            building_name=h.building_name,
            grid=h.grid,
            floor=h.floor,
            point=h.point,
            location=h.location,
            category=h.category,
            description=h.description,
            state=HazardState(h.state),
            source=h.source,
            reporter=h.reporter,
            inspection_id=h.inspection_id,
            photo=h.photo,
            assignee=h.assignee,
            deadline_ms=h.deadline_ms,
            overdue=h.state in ("assigned", "rectifying") and h.deadline_ms is not None and now_ms >= h.deadline_ms,
            rectify_photo=h.rectify_photo,
            rectify_note=h.rectify_note,
            reported_ms=h.reported_ms,
            updated_ms=h.updated_ms,
            rectified_ms=h.rectified_ms,
            verified_ms=h.verified_ms,
            verified_by=h.verified_by,
            audit=[HazardAuditOut(ts_ms=a.ts_ms, action=a.action, by=a.by, detail=a.detail) for a in h.audit]
            if audit
            else None,
        )


class HazardQuery(Query):
    state: HazardState | None = None
    open: bool | None = Field(default=None, description="true: not yet verified")
    building: Ident | None = None
    grid: Ident | None = None
    point: Ident | None = None
    limit: Limit = 100
    offset: Offset = 0


class HazardPage(Model):
    items: list[HazardOut]
    limit: int
    offset: int
    next_offset: int | None = None


class InspectionCreated(Model):
    inspection: InspectionOut
    hazards: list[HazardOut]


class HazardIn(Body):
    building: Ident
    floor: Annotated[int, Field(ge=-20, le=200)] | None = None
    point: Ident | None = None
    location: Annotated[str, StringConstraints(max_length=100)] | None = None
    category: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    description: Text
    photo: PhotoId | None = None
    reporter: Name | None = None


class AssignIn(Body):
    to: Name = Field(description="a roster member's name or a station")
    deadline_ms: EpochMs | None = Field(default=None, description="default: now + inspections.rectify_days")
    days: Days | None = Field(default=None, description="the deadline in days from now, instead of deadline_ms")
    note: Note | None = None


class RectifyIn(Body):
    photo: PhotoId = Field(description="a photo of the result, uploaded with POST /photos")
    note: Note | None = None


class StepIn(Body):
    note: Note | None = None


class ReopenIn(Body):
    note: Note | None = None
    deadline_ms: EpochMs | None = None
    days: Days | None = None


# --- photos and figures ------------------------------------------------------------------------------------------


class PhotoOut(Model):
    id: str
    mime: str
    width: int
    height: int
    bytes: int


class GridCompliance(Model):
    grid: str
    points: int
    inspected: int = Field(description="points inspected (or healthy monitored extinguishers) this month")
    rate: float = Field(description="inspected / points, 0..1 (1 when the grid has no points)")
    overdue: int


class ComplianceQuery(Query):
    month: Annotated[str, StringConstraints(pattern=r"^\d{4}-\d{2}$")] | None = Field(
        default=None, description="YYYY-MM in the roster's time zone; default: this month"
    )
    grid: Ident | None = None


class ComplianceOut(Model):
    month: str
    grids: list[GridCompliance]
    open_hazards: int
    overdue_hazards: int
    rectified_this_month: int
    mean_hours_to_rectify: float | None = Field(
        default=None, description="from report to rectification, over hazards rectified this month"
    )
