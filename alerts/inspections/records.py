"""What the inspection store hands out: frozen records; the webhook ``data`` of ``inspection.*`` and ``hazard.*`` events
is rendered from them (:meth:`InspectionRecord.payload`, :meth:`HazardRecord.payload`), as the API's are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from alerts.records import iso, iso_or_none
from common.db import Row

HazardState = Literal["reported", "assigned", "rectifying", "rectified", "verified"]
HAZARD_STATES: Final[tuple[str, ...]] = ("reported", "assigned", "rectifying", "rectified", "verified")
# A hazard is open until someone verified its rectification.
OPEN_HAZARD_STATES: Final[tuple[str, ...]] = ("reported", "assigned", "rectifying", "rectified")
# The states in which the rectification deadline runs (an overdue one raises a supervisory alert).
DEADLINE_STATES: Final[tuple[str, ...]] = ("assigned", "rectifying")
HazardSource = Literal["inspection", "mobile", "api"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    item: str
    ok: bool


@dataclass(frozen=True, slots=True)
class InspectionRecord:
    id: int
    point: str
    building: str
    grid: str | None
    inspector: str
    ts_ms: int
    results: tuple[CheckResult, ...]
    failed: int
    note: str | None
    photo: str | None
    source: str

    @classmethod
    def from_row(cls, row: Row) -> InspectionRecord:
        results = tuple(CheckResult(item=str(r["item"]), ok=bool(r["ok"])) for r in orjson.loads(row["results"]))
        return cls(
            row["id"],
            row["point"],
            row["building"],
            row["grid"],
            row["inspector"],
            row["ts_ms"],
            results,
            row["failed"],
            row["note"],
            row["photo"],
            row["source"],
        )

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "point": self.point,
            "building": self.building,
            "grid": self.grid,
            "inspector": self.inspector,
            "results": [{"item": r.item, "ok": r.ok} for r in self.results],
            "failed": self.failed,
            "note": self.note,
            "photo": self.photo,
            "source": self.source,
            "inspected_at": iso(self.ts_ms),
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class HazardAuditEntry:
    ts_ms: int
    action: str
    by: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HazardRecord:
    """A hazard and where it is in its lifecycle: reported -> assigned (to a person or station, with a deadline) ->
    rectifying -> rectified (with a photo) -> verified, or reopened (back to rectifying with a new deadline)."""

    id: int
    building: str
    building_name: str
    grid: str | None
    floor: int | None
    point: str | None
    location: str | None
    category: str
    description: str
    state: str
    source: str
    reporter: str | None
    inspection_id: int | None
    photo: str | None
    assignee: str | None
    deadline_ms: int | None
    rectify_photo: str | None
    rectify_note: str | None
    reported_ms: int
    updated_ms: int
    rectified_ms: int | None
    verified_ms: int | None
    verified_by: str | None
    audit: tuple[HazardAuditEntry, ...] = ()

    @classmethod
    def from_row(cls, row: Row, *, building_name: str, audit: tuple[HazardAuditEntry, ...] = ()) -> HazardRecord:
        return cls(
            row["id"],
            row["building"],
            building_name,
            row["grid"],
            row["floor"],
            row["point"],
            row["location"],
            row["category"],
            row["description"],
            row["state"],
            row["source"],
            row["reporter"],
            row["inspection_id"],
            row["photo"],
            row["assignee"],
            row["deadline_ms"],
            row["rectify_photo"],
            row["rectify_note"],
            row["reported_ms"],
            row["updated_ms"],
            row["rectified_ms"],
            row["verified_ms"],
            row["verified_by"],
            audit,
        )

    @property
    def open(self) -> bool:
        return self.state in OPEN_HAZARD_STATES

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "building": self.building,
            "building_name": self.building_name,
            "grid": self.grid,
            "floor": self.floor,
            "point": self.point,
            "location": self.location,
            "category": self.category,
            "description": self.description,
            "state": self.state,
            "source": self.source,
            "reporter": self.reporter,
            "inspection_id": self.inspection_id,
            "photo": self.photo,
            "assignee": self.assignee,
            "deadline_at": iso_or_none(self.deadline_ms),
            "rectify_photo": self.rectify_photo,
            "rectify_note": self.rectify_note,
            "reported_at": iso(self.reported_ms),
            "updated_at": iso(self.updated_ms),
            "rectified_at": iso_or_none(self.rectified_ms),
            "verified_at": iso_or_none(self.verified_ms),
            "verified_by": self.verified_by,
            "deadline_ms": self.deadline_ms,
            "reported_ms": self.reported_ms,
            "updated_ms": self.updated_ms,
            "rectified_ms": self.rectified_ms,
            "verified_ms": self.verified_ms,
        }


@dataclass(frozen=True, slots=True)
class InspectionChange:
    """A committed inspection or hazard step, told to the store's live listeners (the dashboard's stream).
    ``type``: the event's name, as the webhooks carry it (``inspection.recorded``, ``hazard.reported``,
    ``hazard.assigned`` ...); exactly one of ``inspection`` and ``hazard`` is set."""

    type: str
    ts_ms: int
    inspection: InspectionRecord | None = None
    hazard: HazardRecord | None = None

    @property
    def building(self) -> str:
        record = self.inspection or self.hazard
        return record.building if record is not None else ""


@dataclass(frozen=True, slots=True)
class PhotoRecord:
    id: str
    building: str | None
    mime: str
    width: int
    height: int
    bytes: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class PointState:
    """When the store first knew a point, and when it was last inspected (None: never)."""

    point: str
    since_ms: int
    last_ms: int | None
