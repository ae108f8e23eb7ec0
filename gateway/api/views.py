"""Turning the gateway's records into the API's response models.

Alerts, incidents, their audit trails and evidence come from the alert store as typed records
(:mod:`alerts.records`) and are read by their fields; what the API adds is its own limits (text cut to length, a
grid taken from the building when the alert has none).  Presence entries may come from the gateway's presence
registry or any object with its methods, as dataclasses, mappings or sqlite rows: :func:`fields_of` reads any of
them.  Nothing here raises on odd data: a value of the wrong type is dropped (``None``), never turned into a 500.
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
from gateway.storage.presence import DeviceState
from rules.model import RuleConfig
from rules.reasons import AlertFacts, localized_reasons
from rules.types import Evidence, Severity

_A = TypeVar("_A", bound=m.Alert)

LOW_BATTERY_PERCENT = 20.0
# The gauge's green zone (the same band as the shipped rule ``extinguisher-pressure`` in rules/defaults.yaml).
EXTINGUISHER_MPA = (1.0, 1.4)


def fields_of(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "model_dump"):
        try:
            return dict(obj.model_dump())
        except Exception:  # pragma: no cover - a broken model: fall back to attributes
            pass
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(obj, "keys"):  # sqlite3.Row
        try:
            return {k: obj[k] for k in obj.keys()}
        except Exception:  # pragma: no cover
            return {}
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    if hasattr(obj, "__slots__"):
        return {k: getattr(obj, k) for k in obj.__slots__ if hasattr(obj, k)}
    return {}


def first(data: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = data.get(name)
        if value is not None:
            return value
    return None


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
    record: AlertRecord, *, building_grids: Mapping[str, str], rules: Mapping[str, RuleConfig] | None = None
) -> m.Alert:
    """An alert as the API shows it (text cut to the API's limits, the grid from the building when it has none).
    ``rules`` (rule id -> rule as configured) words the localized reason; without it the shipped rules do."""
    return _alert(m.Alert, record, building_grids, rules)


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
) -> _A:
    building = as_str(record.building, 64) or ""
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
    record: AlertDetail, *, building_grids: Mapping[str, str], rules: Mapping[str, RuleConfig] | None = None
) -> m.AlertDetail:
    detail = _alert(m.AlertDetail, record, building_grids, rules)
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
    )


def incident_detail(
    detail: IncidentDetail, *, building_grids: Mapping[str, str], rules: Mapping[str, RuleConfig] | None = None
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
        alerts=[alert_detail(a, building_grids=building_grids, rules=rules) for a in detail.alerts],
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


def _in_registry(config_device: Any) -> bool:
    if config_device is None:
        return False
    return bool(config_device) if isinstance(config_device, Mapping) else True


# device_row and device_facts read a record through the same helpers below, so a building's rollup counts exactly
# what its device list shows.


def _merged(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = obj if type(obj) is dict else fields_of(obj)
    ref = data.get("ref")
    if ref is None:
        return data  # a None value reads as missing everywhere below, as if it had been dropped
    return {**fields_of(ref), **{k: v for k, v in data.items() if v is not None}}


def _registry(config_device: Any) -> tuple[Any, Any, Any, Any, Any]:
    """The registry entry's id, building, kind, floor and location."""
    if config_device is None:
        return None, None, None, None, None
    if isinstance(config_device, Mapping):
        get = config_device.get
        return get("id"), get("building"), get("kind"), get("floor"), get("location")
    c = config_device
    return (
        getattr(c, "id", None),
        getattr(c, "building", None),
        getattr(c, "kind", None),
        getattr(c, "floor", None),
        getattr(c, "location", None),
    )


def _identity(merged: Mapping[str, Any], cfg_id: Any, cfg_building: Any) -> tuple[str | None, str | None]:
    identifier = as_str(first(merged, "device", "device_id", "id") or cfg_id, 64)
    return identifier, as_str(merged.get("building") or cfg_building, 64)


_VALUE_FIELDS = ("values", "last_values", "metrics")


def _values(merged: Mapping[str, Any]) -> dict[str, m.MetricValue | None]:
    return _metric_values(first(merged, *_VALUE_FIELDS))


def _metric_values(raw: Any) -> dict[str, m.MetricValue | None]:
    """A device's last values as the API shows them (at most 64, a ``{"value": x}`` record read as ``x``)."""
    values: dict[str, m.MetricValue | None] = {}
    if raw and isinstance(raw, Mapping):
        for key, value in list(raw.items())[:64]:
            name = key if type(key) is str and len(key) <= 64 else str(key)[:64]
            values[name] = _metric_value(value)
    return values


def _metric_value(value: Any) -> m.MetricValue | None:
    return metric(fields_of(value).get("value") if _is_record(value) else value)


# The last values _upkeep reads (extinguisher_out_of_service: present, obstructed, pressure_mpa, fault).
_UPKEEP_VALUES = ("battery", "present", "obstructed", "pressure_mpa", "fault")


def _upkeep_values(raw: Any) -> dict[str, m.MetricValue | None]:
    """Of :func:`_metric_values`, only the values :func:`_upkeep` reads, without reading the others.  The same
    values: a dict's keys are text (a device's values are a JSON object), and ``name`` is the only text key that
    :func:`_metric_values` would name ``name``."""
    if not raw or type(raw) is not dict or len(raw) > 64:  # over 64: which are kept depends on all of them
        return _metric_values(raw)
    return {name: _metric_value(raw[name]) for name in _UPKEEP_VALUES if name in raw}


def _upkeep(
    kind: str | None, own_battery: Any, raw_values: Any, values: Mapping[str, Any] | None = None
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


def _status(merged: Mapping[str, Any]) -> m.DeviceStatus:
    # Presence's "state" judges heartbeats too; "status" is only what the device last said about itself.
    text = first(merged, "state", "status")
    status = _STATUS_BY_TEXT.get(text) if type(text) is str else None
    if status is not None:
        return status
    text = as_str(text, 16)
    if text in _STATUS_BY_TEXT:
        return _STATUS_BY_TEXT[text]
    online = as_bool(merged.get("online"))
    if online is None:
        return m.DeviceStatus.unknown
    return m.DeviceStatus.online if online else m.DeviceStatus.offline


def device_row(obj: Any, *, building_grids: Mapping[str, str], config_device: Any = None) -> DeviceRow | None:
    """A presence record (dict, dataclass, model, row) over the registry entry ``config_device``; None when the
    record names no device or building."""
    merged = _merged(obj)
    cfg_id, cfg_building, cfg_kind, cfg_floor, cfg_location = _registry(config_device)
    identifier, building = _identity(merged, cfg_id, cfg_building)
    if identifier is None or building is None:
        return None
    values = _values(merged)
    kind = as_str(merged.get("kind") or cfg_kind, 32)
    battery, low_battery, out_of_service = _upkeep(kind, merged.get("battery"), None, values)
    registered = as_bool(merged.get("registered"))
    floor = merged.get("floor")
    return DeviceRow(
        id=identifier,
        building=building,
        grid=as_str(merged.get("grid"), 64) or building_grids.get(building),
        kind=kind,
        floor=as_int(floor if floor is not None else cfg_floor),
        location=as_str(merged.get("location") or cfg_location, 200),
        registered=registered if registered is not None else _in_registry(config_device),
        status=_status(merged),
        last_seen_ms=as_int(first(merged, "last_seen_ms", "last_seen", "seen_ms")),
        battery=battery,
        low_battery=low_battery,
        out_of_service=out_of_service,
        values=values,
    )


@dataclasses.dataclass(slots=True)
class DeviceFacts:
    """What a building's rollup counts of one device: the fields of its :class:`DeviceRow` of the same names."""

    id: str
    building: str
    kind: str | None
    status: m.DeviceStatus
    low_battery: bool
    out_of_service: bool


def device_facts(obj: Any, *, config_device: Any = None) -> DeviceFacts | None:
    """:func:`device_row` cut to what a rollup needs, at a fraction of its cost (``GET /api/v1/buildings`` reads
    every device)."""
    merged = _merged(obj)
    cfg_id, cfg_building, cfg_kind, _floor, _location = _registry(config_device)
    identifier, building = _identity(merged, cfg_id, cfg_building)
    if identifier is None or building is None:
        return None
    kind = as_str(merged.get("kind") or cfg_kind, 32)
    _battery, low_battery, out_of_service = _upkeep(kind, merged.get("battery"), first(merged, *_VALUE_FIELDS))
    # positional: measurably cheaper, 100,000 times per request
    return DeviceFacts(identifier, building, kind, _status(merged), low_battery, out_of_service)


class DeviceReader:
    """One request's reading of presence's own records (:class:`gateway.storage.presence.DeviceState`) straight from
    their attributes: the same :class:`DeviceFacts` and :class:`DeviceRow` that :func:`device_facts` and
    :func:`device_row` make of the record's ``as_dict``, without building that dict (and the generic path's
    merging and spelling look-ups) for each of a district's 100,000 devices.  Any other record, or none (a
    registry device presence does not know), is read the generic way.  ``registry`` (device id -> registry entry)
    is asked only when a record leaves a field to the registry."""

    __slots__ = ("building_grids", "now_ms", "registry")

    def __init__(self, *, now_ms: int, building_grids: Mapping[str, str], registry: Callable[[str], Any]) -> None:
        self.now_ms = now_ms
        self.building_grids = building_grids
        self.registry = registry

    def facts(self, device_id: str, record: Any) -> DeviceFacts | None:
        if type(record) is not DeviceState:
            return device_facts(record or {}, config_device=self.registry(device_id))
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
        status = _STATUS_BY_TEXT.get(record.state(self.now_ms))
        _battery, low_battery, out_of_service = _upkeep(kind, record.battery, record.last_values)
        status = status or self._status(record)
        return DeviceFacts(identifier, building, kind, status, low_battery, out_of_service)  # positional: cheaper

    def _identity(self, device_id: str, record: DeviceState) -> tuple[str | None, str | None, str | None]:
        """As device_facts reads them: an empty field falls back to the registry; text is cut to its limit."""
        own_id, own_building, own_kind = record.device, record.building, record.kind
        if not (own_id and own_building and own_kind):
            cfg_id, cfg_building, cfg_kind, _floor, _location = _registry(self.registry(device_id))
            own_id, own_building, own_kind = own_id or cfg_id, own_building or cfg_building, own_kind or cfg_kind
        return as_str(own_id, 64), as_str(own_building, 64), as_str(own_kind, 32)

    def row(self, device_id: str, record: Any, facts: DeviceFacts) -> DeviceRow | None:
        """The full row of a device whose ``facts`` this reader gave (their ``out_of_service`` may have been set by
        an open supervisory alert since: the row keeps it)."""
        if type(record) is not DeviceState:
            row = device_row(record or {}, building_grids=self.building_grids, config_device=self.registry(device_id))
            if row is not None:
                row.out_of_service = facts.out_of_service
            return row
        floor, location, registered = record.floor, record.location, as_bool(record.registered)
        entry = self.registry(device_id) if floor is None or not location or registered is None else None
        _id, _building, _kind, cfg_floor, cfg_location = _registry(entry)
        values = _metric_values(record.last_values)
        battery, _low, _out = _upkeep(facts.kind, record.battery, None, values)
        return DeviceRow(
            id=facts.id,
            building=facts.building,
            grid=as_str(record.grid, 64) or self.building_grids.get(facts.building),
            kind=facts.kind,
            floor=as_int(floor if floor is not None else cfg_floor),
            location=as_str(location or cfg_location, 200),
            registered=registered if registered is not None else _in_registry(entry),
            status=facts.status,
            last_seen_ms=as_int(record.last_seen_ms),
            battery=battery,
            low_battery=facts.low_battery,
            out_of_service=facts.out_of_service,
            values=values,
        )

    def _status(self, record: DeviceState) -> m.DeviceStatus:
        text = record.state(self.now_ms)
        status = _STATUS_BY_TEXT.get(text) if type(text) is str else None
        if status is None:  # not one of presence's three states: read as the generic path reads as_dict
            status = _status({"state": text, "status": record.status, "online": text == "online"})
        return status


def device_from(obj: Any, *, building_grids: Mapping[str, str], config_device: Any = None) -> m.Device | None:
    row = device_row(obj, building_grids=building_grids, config_device=config_device)
    return row.model() if row is not None else None


def _is_record(value: Any) -> bool:
    return not isinstance(value, bool | int | float | str) and value is not None


def extinguisher_out_of_service(values: Mapping[str, Any]) -> bool:
    if values.get("present") is False or values.get("obstructed") is True:
        return True
    pressure = as_float(values.get("pressure_mpa"))
    if pressure is not None and not EXTINGUISHER_MPA[0] <= pressure <= EXTINGUISHER_MPA[1]:
        return True
    fault = values.get("fault")
    return isinstance(fault, str) and bool(fault)


def rejection_from(obj: Any) -> m.Rejection | None:
    """A rejection as ``gateway.ingest.rejections.Rejections.recent`` gives it (a dict of its ``Rejection``)."""
    data = fields_of(obj)
    reason = as_str(data.get("reason"), 64)
    if reason is None:
        return None
    payload = data.get("payload")
    return m.Rejection(
        ts_ms=as_int(data.get("ts_ms")),
        topic=as_str(data.get("topic"), 300),
        reason=reason,
        detail=as_str(data.get("detail"), 500),
        building=as_str(data.get("building"), 64),
        device=as_str(data.get("device"), 64),
        payload=as_str(payload, 512),
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
    """A JSON-encodable copy of a record, for live events (enums as their names, severities as labels)."""
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
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in list(value)[:200]]
    data = value if isinstance(value, Mapping) else fields_of(value)
    return {str(k): json_safe(v, depth + 1) for k, v in data.items()}
