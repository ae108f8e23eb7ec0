"""Request and response models of the HTTP API.

These pydantic models are the single source of truth: routes validate query strings and bodies with them, build
every response through them, and ``/openapi.json`` is generated from their JSON schemas (``gateway/api/openapi.py``).
Changing a field here changes validation, responses and the published schema together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema, model_validator

from common.ids import Ident
from rules.types import DeviceKind

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
ExternalRef = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Note = Annotated[str, StringConstraints(max_length=2000)]
MetricValue = float | int | bool | str
EpochMs = Annotated[int, Field(ge=0, le=32_503_680_000_000, description="milliseconds since the Unix epoch (UTC)")]


def _since_ms(value: object) -> object:
    """Epoch milliseconds, or an RFC 3339 time (UTC when it has no offset).  A plain ``int | datetime`` union would
    take "-1" for 1969; this keeps one meaning per spelling."""
    if isinstance(value, str) and not value.lstrip("-").isdigit():
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("must be epoch milliseconds or an RFC 3339 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    return value


Since = Annotated[
    int,
    Field(ge=0, le=32_503_680_000_000),
    BeforeValidator(_since_ms),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 32_503_680_000_000},
                {"type": "string", "format": "date-time"},
            ],
            "description": "epoch milliseconds or an RFC 3339 time",
        }
    ),
]
Limit = Annotated[int, Field(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Field(ge=0, le=1_000_000, description="items to skip")]


class SeverityName(StrEnum):
    warning = "warning"
    trouble = "trouble"
    supervisory = "supervisory"
    fire = "fire"


class AlertState(StrEnum):
    raised = "raised"
    acknowledged = "acknowledged"
    dispatched = "dispatched"
    resolved = "resolved"


class Cause(StrEnum):
    real_fire = "real_fire"
    false_alarm = "false_alarm"
    test = "test"
    device_fault = "device_fault"
    other = "other"


class DeviceStatus(StrEnum):
    online = "online"
    offline = "offline"
    unknown = "unknown"  # never heard from since the gateway started


class Model(BaseModel):
    """Responses: closed objects (clients can rely on the documented fields)."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """Query strings: an unknown parameter is an error (``?buiding=`` must not silently list everything)."""

    model_config = ConfigDict(extra="forbid")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- problems (RFC 9457) -----------------------------------------------------------------------------------------


class FieldError(Model):
    loc: str = Field(description="where: 'query.limit', 'body.cause', ...")
    message: str


class Problem(Model):
    """An error, as an RFC 9457 problem document (``application/problem+json``)."""

    type: str = Field(default="about:blank", description="a URI naming the kind of problem")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = Field(default=None, description="the request path")
    errors: list[FieldError] | None = Field(default=None, description="one entry per invalid field")


# --- alerts ------------------------------------------------------------------------------------------------------


class AlertQuery(Query):
    state: AlertState | None = None
    active: bool | None = Field(default=None, description="true: only alerts not yet resolved")
    severity: SeverityName | None = Field(default=None, description="minimum severity: `supervisory` includes fire")
    building: Ident | None = None
    grid: Ident | None = None
    since: Since | None = Field(
        default=None, description="only alerts changed at or after this time (epoch ms or RFC 3339)"
    )
    limit: Limit = 100
    offset: Offset = 0


class Evidence(Model):
    ts_ms: int
    device: str
    metric: str
    value: MetricValue | None = None


class AuditEntry(Model):
    ts_ms: int
    action: str = Field(description="raised, updated, cleared, acknowledged, dispatched, escalated, resolved, ...")
    by: str | None = None
    note: str | None = None
    detail: dict[str, MetricValue | None] | None = None


class LocalizedText(Model):
    """One text in every language the dashboard speaks."""

    zh: str
    en: str


class Alert(Model):
    id: int | str
    key: str | None = None
    rule: str
    severity: SeverityName
    state: AlertState
    building: str
    grid: str | None = None
    floor: int | None = None
    device: str | None = None
    location: str | None = Field(default=None, description="where the device is, from the device registry")
    reason: str | None = None
    reason_i18n: LocalizedText | None = Field(
        default=None,
        description="the reason in Chinese and in English, rendered from the rule and the alert's fields "
        "(`reason` keeps the engine's own text)",
    )
    value: MetricValue | None = None
    confirmed: bool | None = None
    flapping: bool = False
    test: bool = False
    condition_cleared: bool = Field(default=False, description="the condition stopped, but nobody resolved it yet")
    incident_id: int | str | None = None
    raised_ms: int | None = None
    updated_ms: int | None = None
    acknowledged_by: str | None = None
    acknowledged_ms: int | None = None
    dispatched_to: str | None = None
    dispatched_ms: int | None = None
    resolved_by: str | None = None
    resolved_ms: int | None = None
    cleared_ms: int | None = None
    cause: Cause | None = None
    note: str | None = None
    building_name: str | None = None
    drill: bool = False
    count: int | None = Field(default=None, description="how many times the condition triggered while open")


class AlertDetail(Alert):
    audit: list[AuditEntry] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)


class AlertPage(Model):
    items: list[Alert]
    limit: int
    offset: int
    next_offset: int | None = Field(description="offset of the next page, null on the last page")


class AckRequest(Body):
    by: Name | None = Field(default=None, description="who acknowledges (defaults to the token's name)")
    note: Note | None = None


class DispatchRequest(Body):
    by: Name | None = Field(default=None, description="who dispatches (defaults to the token's name)")
    to: Name = Field(description="the task-force member or team sent to the scene")
    note: Note | None = None


class ResolveRequest(Body):
    by: Name | None = Field(default=None, description="who resolves (defaults to the token's name)")
    cause: Cause
    note: Note | None = None


# --- incidents ---------------------------------------------------------------------------------------------------


class IncidentQuery(Query):
    building: Ident | None = None
    grid: Ident | None = None
    active: bool | None = Field(default=None, description="true: only incidents with an unresolved alert")
    since: Since | None = Field(default=None, description="changed at or after (epoch ms or RFC 3339)")
    external_ref: ExternalRef | None = Field(default=None, description="the governance platform's work-order id")
    limit: Limit = 100
    offset: Offset = 0


class Incident(Model):
    id: int | str
    building: str
    grid: str | None = None
    severity: SeverityName | None = None
    state: str | None = Field(default=None, description="open, acknowledged, dispatched, on_scene or resolved")
    alert_ids: list[int | str] = Field(default_factory=list)
    alert_count: int = 0
    opened_ms: int | None = None
    updated_ms: int | None = None
    closed_ms: int | None = None
    open_count: int | None = None
    drill: bool = False
    station: str | None = Field(default=None, description="the station dispatched to it")
    floors: list[int] = Field(default_factory=list, description="the floors its alerts are on")
    device_count: int = Field(default=0, description="how many devices its alerts came from")
    confirmed: bool = Field(default=False, description="whether any of its alerts is a confirmed fire")
    building_name: str | None = None
    cause: Cause | None = None
    external_ref: str | None = None
    ack_code: str | None = Field(
        default=None,
        description="the incident's code: an SMS reply of `<code> 到` marks it on scene (`<code>` acknowledges)",
    )


class GeoPoint(Model):
    lat: float
    lon: float


class TimelineEntry(Model):
    ts_ms: int
    action: str = Field(
        description="opened, acknowledged, dispatched, paged, on_scene, escalated, on_scene_breach, resolved,"
        " external_ref, reopened"
    )
    by: str | None = Field(default=None, description="the person's name given, else the actor")
    actor: str | None = Field(default=None, description="the authenticated principal: a token's name, sms:+86…, system")
    detail: dict[str, Any] | None = None


class PageSent(Model):
    ts_ms: int
    channel: str
    recipient: str | None = None


class IncidentClock(Model):
    raised_ms: int
    acknowledged_ms: int | None = None
    dispatched_ms: int | None = None
    on_scene_ms: int | None = None
    resolved_ms: int | None = None
    on_scene_target_s: int | None = None
    on_scene_deadline_ms: int | None = None


class IncidentDetail(Incident):
    alerts: list[AlertDetail] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    pages: list[PageSent] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    clock: IncidentClock | None = None


class DispatchDecision(Model):
    station: str | None = None
    members: list[str]
    reason: str
    distance_m: int | None = None
    eta_s: int | None = None


class IncidentDispatched(IncidentDetail):
    dispatch: DispatchDecision


class IncidentStepRequest(Body):
    by: Name | None = Field(default=None, description="the person's name (the actor is the token)")
    note: Note | None = None


class IncidentDispatchRequest(IncidentStepRequest):
    station: Ident | None = Field(default=None, description="the station to send")
    members: list[Name] | None = Field(default=None, max_length=50, description="roster members to send instead")

    @model_validator(mode="after")
    def _one_choice(self) -> IncidentDispatchRequest:
        if self.station is not None and self.members:
            raise ValueError("give a station or members, not both")
        return self


class IncidentResolveRequest(IncidentStepRequest):
    cause: Cause


class ExternalRefRequest(Body):
    ref: ExternalRef
    system: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class StationMember(Model):
    name: str
    on_duty: bool


class EquipmentItem(Model):
    name: str
    count: int


class StationOut(Model):
    id: str
    name: str
    location: GeoPoint
    grids: list[str]
    buildings: list[str]
    on_scene_target_s: int
    equipment: list[EquipmentItem]
    members: list[StationMember]
    on_duty: list[str]
    committed_to: int | None = Field(default=None, description="the open incident it is dispatched to or on scene at")
    travel_speed_kmh: float | None = Field(
        default=None, description="dispatch.travel_speed_kmh: how fast it is assumed to travel"
    )
    rescue_radius_m: int | None = Field(
        default=None, description="its 15-minute rescue circle: how far it gets in 15 minutes at travel_speed_kmh"
    )


class StationList(Model):
    items: list[StationOut]


class IncidentPage(Model):
    items: list[Incident]
    limit: int
    offset: int
    next_offset: int | None


# --- devices -----------------------------------------------------------------------------------------------------


class DeviceQuery(Query):
    building: Ident | None = None
    grid: Ident | None = None
    kind: DeviceKind | None = None
    status: DeviceStatus | None = None
    unregistered: bool | None = Field(default=None, description="true: only devices not in the registry")
    low_battery: bool | None = None
    out_of_service: bool | None = Field(default=None, description="true: only extinguishers out of service")
    limit: Limit = 500
    offset: Offset = 0


class Device(Model):
    id: str
    building: str
    grid: str | None = None
    kind: str | None = None
    floor: int | None = None
    location: str | None = None
    registered: bool = True
    status: DeviceStatus = DeviceStatus.unknown
    last_seen_ms: int | None = None
    battery: float | None = None
    low_battery: bool = False
    out_of_service: bool = Field(default=False, description="an extinguisher missing, under pressure or obstructed")
    values: dict[str, MetricValue | None] = Field(default_factory=dict, description="last value of each metric")


class HistoryPoint(Model):
    ts_ms: int
    values: dict[str, MetricValue | None]


class HistoryQuery(Query):
    minutes: Annotated[int, Field(ge=1, le=10_080)] = 60
    points: Annotated[int, Field(ge=1, le=2000)] = 200


class DeviceDetail(Device):
    history: list[HistoryPoint] = Field(default_factory=list, description="oldest first")
    history_source: Literal["influxdb", "local", "none"] = "none"
    history_error: str | None = Field(default=None, description="why history is empty when InfluxDB failed")
    active_alerts: list[Alert] = Field(default_factory=list)


class DevicePage(Model):
    items: list[Device]
    total: int
    limit: int
    offset: int
    next_offset: int | None


# --- buildings ---------------------------------------------------------------------------------------------------


class BuildingQuery(Query):
    grid: Ident | None = None


class BuildingStatus(Model):
    worst_severity: SeverityName | None = Field(description="worst unresolved alert, null when calm")
    active_alerts: int
    devices_total: int
    devices_online: int
    devices_offline: int
    devices_unknown: int
    low_battery: int
    extinguishers_out_of_service: int


class Building(Model):
    id: str
    name: str
    grid: str
    address: str | None = None
    floors: int
    basements: int
    status: BuildingStatus
    location: GeoPoint | None = Field(default=None, description="WGS-84, for the district map and dispatch")


class BuildingDetail(Building):
    active_alerts: list[Alert]
    offline_devices: list[Device]
    low_battery_devices: list[Device]
    extinguishers_out_of_service: list[Device]


class BuildingList(Model):
    items: list[Building]


# --- rejections --------------------------------------------------------------------------------------------------


class RejectionQuery(Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")] | None = None
    building: Ident | None = None


class Rejection(Model):
    ts_ms: int | None = None
    topic: str | None = None
    reason: str
    detail: str | None = None
    building: str | None = None
    device: str | None = None
    payload: str | None = Field(default=None, description="the start of the payload, as text")


class RejectionList(Model):
    items: list[Rejection]


# --- maintenance -------------------------------------------------------------------------------------------------


class MaintenanceRequest(Body):
    building: Ident
    floor: Annotated[int, Field(ge=-20, le=200)] | None = None
    device: Ident | None = None
    start_ms: EpochMs | None = Field(default=None, description="default: now")
    end_ms: EpochMs | None = Field(default=None, description="give end_ms or duration_s")
    duration_s: Annotated[int, Field(ge=1, le=30 * 86_400)] | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class MaintenanceWindowOut(Model):
    id: str
    building: str
    floor: int | None = None
    device: str | None = None
    start_ms: int
    end_ms: int
    reason: str
    created_by: str | None = None


class MaintenanceList(Model):
    items: list[MaintenanceWindowOut]


class MaintenanceQuery(Query):
    building: Ident | None = None


class Deleted(Model):
    id: str
    deleted: bool


# --- misc --------------------------------------------------------------------------------------------------------


class WhoAmI(Model):
    name: str
    role: Literal["viewer", "operator", "admin", "ingest"]
    grids: list[str] | None
    buildings: list[str] | None


class NoQuery(Query):
    pass


class StreamQuery(Query):
    pass
