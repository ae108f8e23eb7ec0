"""Turning the gateway's records into the API's response models.

Alerts, incidents, their audit trails and evidence come from the alert store as typed records
(:mod:`alerts.records`) and are read by their fields; what the API adds is its own limits (text cut to length, a
grid taken from the building when the alert has none).  Devices are presence's own records
(:class:`gateway.storage.presence.DeviceState`) over their registry entries, read by :class:`DeviceReader`.  Nothing
here raises on odd data: a value of the wrong type is dropped (``None``), never turned into a 500.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, TypeVar

from alerts.records import AlertDetail, AlertRecord, AuditEntry, IncidentDetail, IncidentRecord
from gateway.api import models as m
from gateway.config import Device
from gateway.ingest.rejections import Rejection
from gateway.storage.presence import DeviceState
from rules.model import RuleConfig
from rules.reasons import AlertFacts, localized_reasons
from rules.types import Evidence, Severity

_A = TypeVar("_A", bound=m.Alert)

LOW_BATTERY_PERCENT = 20.0
# The gauge's green zone (the same band as the shipped rule ``extinguisher-pressure`` in rules/defaults.yaml).
EXTINGUISHER_MPA = (1.0, 1.4)


def as_str(value: Any, limit: int = 2000) -> str | None:
    if type(value) is str:  # the common case first (a district lists 100,000 devices per request)
        return value if len(value) <= limit else value[:limit]
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:limit]


def as_int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return ts_from_text(value)
    return None


def ts_from_text(value: str) -> int | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def as_float(value: Any) -> float | None:
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def as_bool(value: Any) -> bool | None:
    if value is True or value is False:
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # SQLite stores booleans as integers
        return bool(value)
    return None


def metric(value: Any) -> m.MetricValue | None:
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is bool or kind is int or (kind is str and len(value) <= 200):
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool | int | str):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def severity_name(value: Any) -> m.SeverityName | None:
    try:
        if isinstance(value, Severity):
            return m.SeverityName(value.label)
        if isinstance(value, int) and not isinstance(value, bool):
            return m.SeverityName(Severity(value).label)
        if isinstance(value, str):
            return m.SeverityName(Severity.parse(value).label) if not value.isdigit() else severity_name(int(value))
    except (KeyError, ValueError):
        return None
    return None


def severity_rank(name: m.SeverityName | str | None) -> int:
    if name is None:
        return 0
    try:
        return int(Severity.parse(str(name.value if isinstance(name, Enum) else name)))
    except (KeyError, ValueError):
        return 0


def _enum(enum: type[Enum], value: Any) -> Any:
    value = value.value if isinstance(value, Enum) else value
    try:
        return enum(value)
    except ValueError:
        return None


def alert(
    record: AlertRecord,
    *,
    building_grids: Mapping[str, str],
    rules: Mapping[str, RuleConfig] | None = None,
    locations: Mapping[str, str] | None = None,
) -> m.Alert:
    """An alert as the API shows it (text cut to the API's limits, the grid from the building when it has none, the
    device's place from ``locations``: device id -> the registry's location).  ``rules`` (rule id -> rule as
    configured) words the localized reason; without it the shipped rules do."""
    return _alert(m.Alert, record, building_grids, rules, locations)


def reason_i18n(record: AlertRecord, rules: Mapping[str, RuleConfig] | None) -> m.LocalizedText:
    """The alert's reason in Chinese and English, from its rule and machine fields (never from the English text)."""
    by_id = shipped_rules() if rules is None else rules
    flapping = next((r for r in by_id.values() if r.kind == "flapping" and r.enabled), None)
    facts = AlertFacts(rule=record.rule, value=record.value, floor=record.floor, flapping=record.flapping)
    window = flapping.window_ms if flapping is not None and flapping.window_ms else 600_000
    text = localized_reasons(by_id.get(record.rule), facts, flap_window_ms=window)
    return m.LocalizedText(zh=text["zh"], en=text["en"])


_SHIPPED: dict[str, RuleConfig] = {}


def shipped_rules() -> Mapping[str, RuleConfig]:
    """rules/defaults.yaml by rule id, read once (what a gateway without its own rules runs)."""
    if not _SHIPPED:
        from rules.loader import DEFAULTS_PATH, read_rules_file

        _SHIPPED.update({r.id: r for r in read_rules_file(DEFAULTS_PATH, label="rules/defaults.yaml: ")})
    return _SHIPPED


def _alert(
    model: type[_A],
    record: AlertRecord,
    building_grids: Mapping[str, str],
    rules: Mapping[str, RuleConfig] | None = None,
    locations: Mapping[str, str] | None = None,
) -> _A:
    building = as_str(record.building, 64) or ""
    location = locations.get(record.device) if locations is not None and record.device is not None else None
    cause = record.cause
    return model(
        id=record.id,
        key=as_str(record.key, 300),
        rule=as_str(record.rule, 200) or "?",
        severity=m.SeverityName(record.severity.label),
        state=m.AlertState(record.state),
        building=building,
        grid=as_str(record.grid, 64) or building_grids.get(building),
        floor=record.floor,
        device=as_str(record.device, 64),
        location=as_str(location, 200),
        reason=as_str(record.reason, 2000),
        reason_i18n=reason_i18n(record, rules),
        value=metric(record.value),
        confirmed=record.confirmed,
        flapping=record.flapping,
        test=record.test,
        condition_cleared=record.condition == "cleared",
        incident_id=record.incident_id,
        raised_ms=record.raised_ms,
        updated_ms=record.updated_ms,
        acknowledged_by=as_str(record.acknowledged_by, 100),
        acknowledged_ms=record.acknowledged_ms,
        dispatched_to=as_str(record.dispatched_to, 100),
        dispatched_ms=record.dispatched_ms,
        resolved_by=as_str(record.resolved_by, 100),
        resolved_ms=record.resolved_ms,
        cleared_ms=record.cleared_ms,
        building_name=as_str(record.building_name, 200),
        drill=record.drill,
        count=record.count,
        cause=_enum(m.Cause, cause) if cause is not None else None,
        note=as_str(record.note, 2000),
    )


def alert_detail(
    record: AlertDetail,
    *,
    building_grids: Mapping[str, str],
    rules: Mapping[str, RuleConfig] | None = None,
    locations: Mapping[str, str] | None = None,
) -> m.AlertDetail:
    detail = _alert(m.AlertDetail, record, building_grids, rules, locations)
    audit = [audit_entry(a) for a in record.audit]
    return detail.model_copy(update={"audit": audit, "evidence": [evidence(e) for e in record.evidence]})


def audit_entry(entry: AuditEntry) -> m.AuditEntry:
    """The ``note`` an action carried is shown on its own; the rest of what it said (``to``, ``cause``, ``tier``
    ...) as ``detail``, at most 32 values, each a metric value."""
    source = dict(entry.detail) if isinstance(entry.detail, Mapping) else {}
    note = source.pop("note", None)
    values = {str(k)[:64]: metric(x) for k, x in list(source.items())[:32]}
    return m.AuditEntry(
        ts_ms=entry.ts_ms,
        action=as_str(entry.action, 64) or "",
        by=as_str(entry.by, 100),
        note=as_str(note, 2000),
        detail={k: x for k, x in values.items() if x is not None} or None,
    )


def evidence(sample: Evidence) -> m.Evidence:
    return m.Evidence(
        ts_ms=sample.ts_ms,
        device=as_str(sample.device, 64) or "",
        metric=as_str(sample.metric, 64) or "",
        value=metric(sample.value),
    )


def incident(record: IncidentRecord, *, building_grids: Mapping[str, str]) -> m.Incident:
    building = as_str(record.building, 64) or ""
    return m.Incident(
        id=record.id,
        building=building,
        grid=as_str(record.grid, 64) or building_grids.get(building),
        severity=m.SeverityName(record.severity.label),
        state=record.state,
        alert_ids=list(record.alert_ids),
        alert_count=record.alert_count,
        opened_ms=record.opened_ms,
        updated_ms=record.updated_ms,
        closed_ms=record.closed_ms,
        open_count=record.open_count,
        drill=record.drill,
        station=as_str(record.station, 64),
        floors=list(record.floors),
        device_count=record.device_count,
        confirmed=record.confirmed,
        building_name=as_str(record.building_name, 200),
        cause=_enum(m.Cause, record.cause) if record.cause is not None else None,
        external_ref=as_str(record.external_ref, 200),
        ack_code=as_str(record.ack_code, 32),
    )


def incident_detail(
    detail: IncidentDetail,
    *,
    building_grids: Mapping[str, str],
    rules: Mapping[str, RuleConfig] | None = None,
    locations: Mapping[str, str] | None = None,
) -> m.IncidentDetail:
    """An incident with its alerts, their evidence (oldest first, at most 200), who was paged, its timeline and its
    response clock."""
    record = detail.incident
    base = incident(record, building_grids=building_grids)
    samples = sorted((e for a in detail.alerts for e in a.evidence), key=lambda e: e.ts_ms)[:200]
    pages = [
        m.PageSent(
            ts_ms=e.ts_ms,
            channel=as_str((e.detail or {}).get("channel"), 32) or "sms",
            recipient=as_str((e.detail or {}).get("recipient"), 100),
        )
        for e in detail.timeline
        if e.action == "paged"
    ]
    timeline = [
        m.TimelineEntry(
            ts_ms=e.ts_ms,
            action=as_str(e.action, 64) or "",
            by=as_str(e.by, 100),
            actor=as_str(e.actor, 100),
            detail=json_safe(e.detail) if isinstance(e.detail, Mapping) else None,
        )
        for e in detail.timeline
    ]
    return m.IncidentDetail(
        **base.model_dump(),
        alerts=[
            alert_detail(a, building_grids=building_grids, rules=rules, locations=locations) for a in detail.alerts
        ],
        evidence=[evidence(e) for e in samples],
        pages=pages,
        timeline=timeline,
        clock=incident_clock(detail),
    )


def incident_clock(detail: IncidentDetail) -> m.IncidentClock:
    """The response clock: when each step of the loop first happened (the latest dispatch: a re-dispatch restarts
    the station's clock), and the station's on-scene deadline."""
    record = detail.incident
    dispatched = max((e.ts_ms for e in detail.timeline if e.action == "dispatched"), default=None)
    target = record.on_scene_target_s
    return m.IncidentClock(
        raised_ms=record.opened_ms,
        acknowledged_ms=detail.first("acknowledged") or detail.first("dispatched"),
        dispatched_ms=dispatched,
        on_scene_ms=detail.first("on_scene"),
        resolved_ms=record.closed_ms,
        on_scene_target_s=target,
        on_scene_deadline_ms=None if dispatched is None or target is None else dispatched + target * 1000,
    )


@dataclasses.dataclass(slots=True)
class DeviceRow:
    """A device as the API shows it, as plain Python: what rollups, filters and sorting read, so that only the
    devices actually returned become :class:`models.Device` (100,000 pydantic models per request were most of the
    cost of ``GET /api/v1/buildings`` for a district)."""

    id: str
    building: str
    grid: str | None
    kind: str | None
    floor: int | None
    location: str | None
    registered: bool
    status: m.DeviceStatus
    last_seen_ms: int | None
    battery: float | None
    low_battery: bool
    out_of_service: bool
    values: dict[str, m.MetricValue | None]

    def model(self) -> m.Device:
        return m.Device(
            id=self.id,
            building=self.building,
            grid=self.grid,
            kind=self.kind,
            floor=self.floor,
            location=self.location,
            registered=self.registered,
            status=self.status,
            last_seen_ms=self.last_seen_ms,
            battery=self.battery,
            low_battery=self.low_battery,
            out_of_service=self.out_of_service,
            values=self.values,
        )

    def sort_key(self) -> tuple[str, int, str]:
        return (self.building, self.floor if self.floor is not None else -999, self.id)


_STATUS_BY_TEXT = {s.value: s for s in m.DeviceStatus}


def _metric_values(raw: Mapping[str, Any] | None) -> dict[str, m.MetricValue | None]:
    """A device's last values as the API shows them (at most 64, a ``{"value": x}`` record read as ``x``)."""
    values: dict[str, m.MetricValue | None] = {}
    if raw and isinstance(raw, Mapping):
        for key, value in list(raw.items())[:64]:
            name = key if type(key) is str and len(key) <= 64 else str(key)[:64]
            values[name] = _metric_value(value)
    return values


def _metric_value(value: Any) -> m.MetricValue | None:
    if isinstance(value, Mapping):  # a value sent as a record (``{"value": 1.2, "unit": "MPa"}``)
        return metric(value.get("value"))
    return metric(value)


# The last values _upkeep reads (extinguisher_out_of_service: present, obstructed, pressure_mpa, fault).
_UPKEEP_VALUES = ("battery", "present", "obstructed", "pressure_mpa", "fault")


def _upkeep_values(raw: Mapping[str, Any]) -> dict[str, m.MetricValue | None]:
    """Of :func:`_metric_values`, only the values :func:`_upkeep` reads, without reading the others.  The same
    values: a device's values are a JSON object (text keys), so a key is kept exactly when it is one of these."""
    if len(raw) > 64:  # over 64: which are kept depends on all of them
        return _metric_values(raw)
    return {name: _metric_value(raw[name]) for name in _UPKEEP_VALUES if name in raw}


def _upkeep(
    kind: str | None,
    own_battery: float | None,
    raw_values: Mapping[str, Any] | None,
    values: Mapping[str, Any] | None = None,
) -> tuple[float | None, bool, bool]:
    """A device's battery (its own ``battery`` field, else its last ``battery`` value), whether that is low, and
    whether it is an extinguisher out of service by its last values.  ``values``: ``raw_values`` already read by
    :func:`_metric_values`, when the caller has them; else only the few needed are read, and only when needed (a
    device with its own battery figure that is not an extinguisher, most of a district, needs none)."""
    # The common cases without a call (100,000 devices per request): no figure, or a finite float (NaN fails both).
    if own_battery is None:
        battery = None
    elif type(own_battery) is float and -math.inf < own_battery < math.inf:
        battery = own_battery
    else:
        battery = as_float(own_battery)
    extinguisher = kind == "extinguisher"
    if battery is None or extinguisher:
        if values is None:
            values = _upkeep_values(raw_values) if raw_values else _NO_VALUES
        if battery is None and values:
            battery = as_float(values.get("battery"))
    low = battery is not None and battery < LOW_BATTERY_PERCENT
    return battery, low, extinguisher and values is not None and bool(values) and extinguisher_out_of_service(values)


_NO_VALUES: Mapping[str, Any] = MappingProxyType({})


@dataclasses.dataclass(slots=True)
class DeviceFacts:
    """What a building's rollup counts of one device: the fields of its :class:`DeviceRow` of the same names."""

    id: str
    building: str
    kind: str | None
    status: m.DeviceStatus
    low_battery: bool
    out_of_service: bool


class DeviceReader:
    """One request's reading of devices: presence's own records (:class:`gateway.storage.presence.DeviceState`) read
    straight from their attributes over the registry entry (:class:`gateway.config.Device`), and a registry device
    presence has no record of read from its entry alone.  ``facts`` is what a rollup counts, at a fraction of a row's
    cost (``GET /api/v1/buildings`` reads each of a district's 100,000 devices); ``row`` the full device, built only
    for the devices a request returns.  ``registry`` (device id -> entry) is asked only when a record leaves a field
    to the registry."""

    __slots__ = ("building_grids", "now_ms", "registry")

    def __init__(
        self, *, now_ms: int, building_grids: Mapping[str, str], registry: Callable[[str], Device | None]
    ) -> None:
        self.now_ms = now_ms
        self.building_grids = building_grids
        self.registry = registry

    def facts(self, device_id: str, record: DeviceState | None) -> DeviceFacts | None:
        if record is None:
            return self._registered_facts(self.registry(device_id))
        identifier: str | None = record.device
        building: str | None = record.building
        kind: str | None = record.kind
        # What as_str would return unchanged, checked inline: this runs 100,000 times per request.
        if not (
            type(identifier) is str
            and type(building) is str
            and type(kind) is str
            and 0 < len(identifier) <= 64
            and 0 < len(building) <= 64
            and 0 < len(kind) <= 32
        ):
            identifier, building, kind = self._identity(device_id, record)
            if identifier is None or building is None:
                return None
        status = _STATUS_BY_TEXT[record.state(self.now_ms)]
        _battery, low_battery, out_of_service = _upkeep(kind, record.battery, record.last_values)
        return DeviceFacts(identifier, building, kind, status, low_battery, out_of_service)  # positional: cheaper

    @staticmethod
    def _registered_facts(entry: Device | None) -> DeviceFacts | None:
        """A registry device presence has not heard from: its entry's identity, status unknown, nothing to judge."""
        if entry is None:
            return None
        identifier, building = as_str(entry.id, 64), as_str(entry.building, 64)
        if identifier is None or building is None:
            return None
        return DeviceFacts(identifier, building, as_str(entry.kind, 32), m.DeviceStatus.unknown, False, False)

    def _identity(self, device_id: str, record: DeviceState) -> tuple[str | None, str | None, str | None]:
        """An empty field falls back to the registry; text is cut to its limit."""
        own_id: str | None = record.device
        own_building: str | None = record.building
        own_kind: str | None = record.kind
        if not (own_id and own_building and own_kind):
            entry = self.registry(device_id)
            own_id = own_id or (entry.id if entry is not None else None)
            own_building = own_building or (entry.building if entry is not None else None)
            own_kind = own_kind or (entry.kind if entry is not None else None)
        return as_str(own_id, 64), as_str(own_building, 64), as_str(own_kind, 32)

    def row(self, device_id: str, record: DeviceState | None, facts: DeviceFacts) -> DeviceRow:
        """The full row of a device whose ``facts`` this reader gave (their ``out_of_service`` may have been set by
        an open supervisory alert since: the row keeps it)."""
        if record is None:
            entry = self.registry(device_id)
            return DeviceRow(
                id=facts.id,
                building=facts.building,
                grid=self.building_grids.get(facts.building),
                kind=facts.kind,
                floor=entry.floor if entry is not None else None,
                location=as_str(entry.location, 200) if entry is not None else None,
                registered=entry is not None,
                status=facts.status,
                last_seen_ms=None,
                battery=None,
                low_battery=facts.low_battery,
                out_of_service=facts.out_of_service,
                values={},
            )
        floor, location = record.floor, record.location
        entry = self.registry(device_id) if floor is None or not location else None
        values = _metric_values(record.last_values)
        battery, _low, _out = _upkeep(facts.kind, record.battery, None, values)
        return DeviceRow(
            id=facts.id,
            building=facts.building,
            grid=as_str(record.grid, 64) or self.building_grids.get(facts.building),
            kind=facts.kind,
            floor=floor if floor is not None else (entry.floor if entry is not None else None),
            location=as_str(location or (entry.location if entry is not None else None), 200),
            registered=record.registered,
            status=facts.status,
            last_seen_ms=record.last_seen_ms,
            battery=battery,
            low_battery=facts.low_battery,
            out_of_service=facts.out_of_service,
            values=values,
        )


def extinguisher_out_of_service(values: Mapping[str, Any]) -> bool:
    if values.get("present") is False or values.get("obstructed") is True:
        return True
    pressure = as_float(values.get("pressure_mpa"))
    if pressure is not None and not EXTINGUISHER_MPA[0] <= pressure <= EXTINGUISHER_MPA[1]:
        return True
    fault = values.get("fault")
    return isinstance(fault, str) and bool(fault)


def rejection_from(item: Rejection) -> m.Rejection:
    """A rejected message as :class:`gateway.ingest.rejections.Rejections` keeps it (the payload itself is never
    kept: it may be hostile, and it is counted, not stored)."""
    return m.Rejection(
        ts_ms=item.ts_ms,
        topic=as_str(item.topic, 300),
        reason=item.reason,
        detail=as_str(item.detail, 500),
        building=as_str(item.building, 64),
        device=as_str(item.device, 64),
        payload=None,
    )


def history_from_rows(rows: list[dict[str, Any]], *, tags: set[str]) -> list[m.HistoryPoint]:
    points: list[m.HistoryPoint] = []
    for row in rows:
        ts = as_int(row.get("time"))
        if ts is None:
            continue
        values = {
            str(k)[:64]: metric(v) for k, v in row.items() if k != "time" and k not in tags and metric(v) is not None
        }
        if values:
            points.append(m.HistoryPoint(ts_ms=ts, values=values))
    points.sort(key=lambda p: p.ts_ms)
    return points


def json_safe(value: Any, depth: int = 0) -> Any:
    """A JSON-encodable copy of a record's free-form detail (enums as their names, severities as labels, non-finite
    numbers as null, at most 200 items and 6 levels deep)."""
    if depth > 6:
        return None
    if isinstance(value, Severity):
        return value.label
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:200]}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in list(value)[:200]]
    return str(value)
