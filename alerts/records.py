"""What the alert store hands out: frozen records with the store's own field names and types.

Callers (the API, the SMS reply handler, the engine restore, the notifier) read fields, never spell column names:
a renamed column is a type error here, not a silent ``None`` somewhere else.  The webhook ``data`` objects are
rendered from the same records (:meth:`AlertRecord.payload`, :meth:`IncidentRecord.payload`), so what a webhook says
and what the API shows come from one reading of a row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from rules.types import Evidence, Severity

Cause = Literal["real_fire", "false_alarm", "test", "device_fault", "other"]
CAUSES: Final[tuple[str, ...]] = ("real_fire", "false_alarm", "test", "device_fault", "other")
# An alert is open (someone still has to act) in these states; ``resolved`` is the only closed one.
OPEN_STATES: Final[tuple[str, ...]] = ("raised", "acknowledged", "dispatched")


# The columns of an alert joined with its incident (``a``, ``i``) in AlertRecord's field order (but building_name).
ALERT_COLUMNS = (
    "a.id, a.key, a.rule, a.severity, a.state, a.condition, a.building, a.floor, a.device, a.grid, a.reason,"
    " a.value, a.confirmed, a.flapping, a.test, a.drill, a.incident_id, i.code, a.count, a.tier, a.ts_ms,"
    " a.raised_ms, a.updated_ms, a.cleared_ms, a.acknowledged_ms, a.acknowledged_by, a.dispatched_ms,"
    " a.dispatched_to, a.resolved_ms, a.resolved_by, a.cause, a.note"
)


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_or_none(ts_ms: int | None) -> str | None:
    return None if ts_ms is None else iso(ts_ms)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as stored.  ``severity`` is the highest it reached; ``condition`` is ``active`` or ``cleared``
    (the detector's view, which never closes an alert); ``ack_code`` is its incident's SMS reply code."""

    id: int
    key: str
    rule: str
    severity: Severity
    state: str
    condition: str
    building: str
    building_name: str
    floor: int | None
    device: str | None
    grid: str | None
    reason: str | None
    value: Any
    confirmed: bool | None
    flapping: bool
    test: bool
    drill: bool
    incident_id: int
    ack_code: str | None
    count: int
    tier: int
    ts_ms: int
    raised_ms: int
    updated_ms: int
    cleared_ms: int | None
    acknowledged_ms: int | None
    acknowledged_by: str | None
    dispatched_ms: int | None
    dispatched_to: str | None
    resolved_ms: int | None
    resolved_by: str | None
    cause: str | None
    note: str | None

    @staticmethod
    def fields_from_row(row: Sequence[Any], *, building_name: str) -> tuple[Any, ...]:
        """The constructor's arguments, in field order, from a row of :data:`ALERT_COLUMNS` (read by position:
        this runs for every event the store writes, and a named look-up in ``sqlite3.Row`` scans the columns)."""
        (
            id_,
            key,
            rule,
            severity,
            state,
            condition,
            building,
            floor,
            device,
            grid,
            reason,
            value,
            confirmed,
            flapping,
            test,
            drill,
            incident_id,
            *rest,
        ) = row
        return (
            id_,
            key,
            rule,
            Severity(severity),
            state,
            condition,
            building,
            building_name,
            floor,
            device,
            grid,
            reason,
            None if value is None else orjson.loads(value),
            None if confirmed is None else bool(confirmed),
            bool(flapping),
            bool(test),
            bool(drill),
            incident_id,
            *rest,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any], *, building_name: str) -> AlertRecord:
        return cls(*cls.fields_from_row(row, building_name=building_name))

    def payload(self) -> dict[str, Any]:
        """The webhook ``data`` object of an alert event (and of the SSE ``alert`` event)."""
        return {
            "id": self.id,
            "key": self.key,
            "rule": self.rule,
            "severity": self.severity.label,
            "state": self.state,
            "condition": self.condition,
            "building": self.building,
            "building_name": self.building_name,
            "floor": self.floor,
            "device": self.device,
            "grid": self.grid,
            "reason": self.reason,
            "value": self.value,
            "confirmed": self.confirmed,
            "flapping": self.flapping,
            "test": self.test,
            "drill": self.drill,
            "incident_id": self.incident_id,
            "ack_code": self.ack_code,
            "count": self.count,
            "tier": self.tier,
            "raised_at": iso(self.raised_ms),
            "updated_at": iso(self.updated_ms),
            "cleared_at": iso_or_none(self.cleared_ms),
            "acknowledged_by": self.acknowledged_by,
            "dispatched_to": self.dispatched_to,
            "resolved_by": self.resolved_by,
            "cause": self.cause,
            "note": self.note,
            # Epoch-ms twins of the timestamps, for programs (the API, the engine restore).
            "ts_ms": self.ts_ms,
            "raised_ms": self.raised_ms,
            "updated_ms": self.updated_ms,
            "cleared_ms": self.cleared_ms,
            "acknowledged_ms": self.acknowledged_ms,
            "dispatched_ms": self.dispatched_ms,
            "resolved_ms": self.resolved_ms,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One step in an alert's life: ``action`` (raised, updated, cleared, acknowledged, ...), who did it (None for
    the gateway itself) and what it said (``note``, ``to``, ``cause``, ``tier`` ...)."""

    ts_ms: int
    action: str
    by: str | None
    detail: Mapping[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> AuditEntry:
        detail = row["detail"]
        return cls(row["ts_ms"], row["action"], row["by"], orjson.loads(detail) if detail else None)


@dataclass(frozen=True, slots=True)
class AlertDetail(AlertRecord):
    """An alert with its audit trail (oldest first) and the readings that raised it."""

    audit: tuple[AuditEntry, ...]
    evidence: tuple[Evidence, ...]


IncidentState = Literal["open", "acknowledged", "dispatched", "on_scene", "resolved"]
INCIDENT_STATES: Final[tuple[str, ...]] = ("open", "acknowledged", "dispatched", "on_scene", "resolved")


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """Alerts of one building close in time, grouped so that people are paged once, and the unit of work of the duty
    room: ``state`` walks ``open`` -> ``acknowledged`` -> ``dispatched`` -> ``on_scene`` -> ``resolved``.
    ``ack_code`` is the code an SMS reply acknowledges it with; ``station`` the station dispatched to it;
    ``alert_ids`` (oldest first, at most 1,000), ``floors``, ``device_count`` and ``confirmed`` are filled by
    listings and events (what its alerts say, read in one aggregate)."""

    id: int
    building: str
    building_name: str
    grid: str | None
    drill: bool
    severity: Severity
    ack_code: str
    state: IncidentState
    alert_count: int
    open_count: int
    opened_ms: int
    updated_ms: int
    closed_ms: int | None
    alert_ids: tuple[int, ...] = ()
    station: str | None = None
    cause: str | None = None
    note: str | None = None
    external_ref: str | None = None
    on_scene_target_s: int | None = None
    arrive_by_ms: int | None = None
    floors: tuple[int, ...] = ()
    device_count: int = 0
    confirmed: bool = False

    @classmethod
    def from_row(
        cls,
        row: sqlite3.Row,
        *,
        building_name: str,
        alert_ids: tuple[int, ...] = (),
        facts: IncidentFacts | None = None,
    ) -> IncidentRecord:
        closed = row["closed_ms"]
        state = row["state"]
        return cls(
            row["id"],
            row["building"],
            building_name,
            row["grid"],
            bool(row["drill"]),
            Severity(row["severity"]),
            row["code"],
            state if state in INCIDENT_STATES else ("open" if closed is None else "resolved"),
            row["alert_count"],
            row["open_count"],
            row["opened_ms"],
            row["updated_ms"],
            closed,
            alert_ids,
            row["station"],
            row["cause"],
            row["note"],
            row["external_ref"],
            row["on_scene_target_s"],
            row["arrive_by_ms"],
            *(facts or IncidentFacts()),
        )

    def payload(self) -> dict[str, Any]:
        """The webhook ``data`` object of an incident event."""
        return {
            "id": self.id,
            "building": self.building,
            "building_name": self.building_name,
            "grid": self.grid,
            "drill": self.drill,
            "severity": self.severity.label,
            "ack_code": self.ack_code,
            "state": self.state,
            "alert_count": self.alert_count,
            "open_count": self.open_count,
            "opened_at": iso(self.opened_ms),
            "updated_at": iso(self.updated_ms),
            "closed_at": iso_or_none(self.closed_ms),
            "opened_ms": self.opened_ms,
            "updated_ms": self.updated_ms,
            "closed_ms": self.closed_ms,
            "station": self.station,
            "cause": self.cause,
            "note": self.note,
            "external_ref": self.external_ref,
            "on_scene_target_s": self.on_scene_target_s,
            "floors": list(self.floors),
            "device_count": self.device_count,
            "confirmed": self.confirmed,
        }


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What an incident's alerts say about it: the floors they are on, how many devices, whether any confirmed a
    fire.  Iterable in :class:`IncidentRecord`'s field order."""

    floors: tuple[int, ...] = ()
    device_count: int = 0
    confirmed: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.floors, self.device_count, self.confirmed))


IncidentAction = Literal[
    "opened",
    "acknowledged",
    "dispatched",
    "paged",
    "on_scene",
    "escalated",
    "on_scene_breach",
    "resolved",
    "external_ref",
    "reopened",
]


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One step on an incident's timeline.  ``actor`` is the authenticated principal (an API token's name,
    ``sms:+86138****0001``, ``system`` for timers); ``by_name`` the person's name given beside it."""

    id: int
    incident_id: int
    ts_ms: int
    action: str
    actor: str | None
    by_name: str | None
    detail: Mapping[str, object] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> IncidentEvent:
        detail = row["detail"]
        return cls(
            row["id"],
            row["incident_id"],
            row["ts_ms"],
            row["action"],
            row["actor"],
            row["by_name"],
            orjson.loads(detail) if detail else None,
        )

    @property
    def by(self) -> str | None:
        """Who, as a timeline shows it: the person's name, else the principal."""
        return self.by_name or self.actor


@dataclass(frozen=True, slots=True)
class IncidentDetail:
    """An incident with its alerts (oldest first) and its timeline (oldest first)."""

    incident: IncidentRecord
    alerts: tuple[AlertDetail, ...]
    timeline: tuple[IncidentEvent, ...]

    def first(self, action: str) -> int | None:
        """When ``action`` first happened, or None."""
        return next((e.ts_ms for e in self.timeline if e.action == action), None)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A notification waiting to be delivered, as the notifier reads it."""

    id: int
    msg_id: str
    channel: str  # "webhook" | "governance" | "sms" | "robot" | "voice"
    target: str  # webhook URL, "governance", "sms", "robot:<name>" or "voice"
    event: str
    priority: int
    alert_id: int | None
    incident_id: int | None
    recipient: str | None
    phone: str | None
    body: bytes
    state: str
    attempts: int
    next_ms: int
    created_ms: int

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OutboxItem:
        return cls(*_item_fields(r))


def _item_fields(r: sqlite3.Row) -> tuple[Any, ...]:
    return (
        r["id"],
        r["msg_id"],
        r["channel"],
        r["target"],
        r["event"],
        r["priority"],
        r["alert_id"],
        r["incident_id"],
        r["recipient"],
        r["phone"],
        bytes(r["body"]),
        r["state"],
        r["attempts"],
        r["next_ms"],
        r["created_ms"],
    )


@dataclass(frozen=True, slots=True)
class OutboxRecord(OutboxItem):
    """An outbox row with its delivery history, for operators (and tests) looking at what happened."""

    attempt_ms: int | None
    done_ms: int | None
    last_error: str | None
    dedup: str | None

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> OutboxRecord:
        return cls(*(*_item_fields(r), r["attempt_ms"], r["done_ms"], r["last_error"], r["dedup"]))


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One thing that happened, as published to listeners and the SSE hub: ``type`` is the webhook event type
    (``alert.raised`` ... ``incident.resolved``), ``data`` the webhook ``data`` object, ``record`` the alert or
    incident it was rendered from (None for notices that are not a stored change)."""

    type: str
    alert_id: int | None
    incident_id: int | None
    ts_ms: int
    data: Mapping[str, Any] = field(default_factory=dict)
    record: AlertRecord | IncidentRecord | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt, recorded in batches: ``state`` ``pending`` means retry at ``next_ms``."""

    id: int
    state: str
    now_ms: int
    error: str | None = None
    next_ms: int | None = None
    attempted: bool = True
