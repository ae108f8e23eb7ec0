"""Value objects shared by the gateway (which produces them), the rules engine (which consumes them) and the alerts
pipeline (which consumes the transitions).  They are frozen so that one reading can safely fan out to many stages.

Times are integer epoch milliseconds everywhere: the engine never reads a clock, it is given one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Literal

MetricValue = float | int | bool | str


class Severity(IntEnum):
    """Alert severity.  The integer order *is* the priority: a higher value is never delayed behind a lower one."""

    WARNING = 1  # pre-alarm
    TROUBLE = 2  # a device or the system is not able to protect
    SUPERVISORY = 3  # protection is impaired (extinguisher missing, out of pressure, obstructed)
    FIRE = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        return cls[value.upper()]


class DeviceKind(StrEnum):
    SMOKE = "smoke"
    HEAT = "heat"
    EXTINGUISHER = "extinguisher"
    CALL_POINT = "call_point"
    # A point (detector, module, call point) of a fire alarm control panel, heard through its UITD (GB/T 26875.3):
    # the panel has already judged it, so it reports states, not measurements.
    PANEL_POINT = "panel_point"


class EventType(StrEnum):
    PRESSED = "pressed"
    TEST = "test"
    TAMPER = "tamper"
    FAULT = "fault"
    RESET = "reset"
    # A detector entered alarm: sent on the event channel (the gateway's fast lane) next to the telemetry that shows
    # it, so the alarm never waits behind a telemetry backlog (docs/telemetry.md).
    ALARM = "alarm"


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """Where a device is: everything a rule's ``match`` selector can look at."""

    building: str
    device: str
    kind: str
    floor: int | None = None
    grid: str | None = None
    registered: bool = True


@dataclass(frozen=True, slots=True)
class Reading:
    """One telemetry sample of one device: the metrics it carried at ``ts_ms``."""

    ref: DeviceRef
    ts_ms: int
    values: Mapping[str, MetricValue]
    seq: int | None = None
    drill: bool = False  # traffic marked as a drill by the simulator (`firegrid verify`)


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A discrete event reported by a device (a call point pressed, a fault, ...)."""

    ref: DeviceRef
    ts_ms: int
    type: str
    detail: str | None = None
    drill: bool = False


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The device's retained ``online``/``offline`` status (its MQTT last will says ``offline``)."""

    ref: DeviceRef
    ts_ms: int
    online: bool


Input = Reading | DeviceEvent | StatusChange

TransitionKind = Literal["raised", "updated", "cleared"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One sample that contributed to an alert, so an operator can see *why* it was raised."""

    ts_ms: int
    device: str
    metric: str
    value: MetricValue


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """What the engine decided: an alert, identified by ``key``, was raised, updated or cleared.

    ``key`` is stable for one condition in one scope (rule id + building + floor + device), so that re-triggering an
    open alert updates it instead of duplicating it.
    """

    transition: TransitionKind
    key: str
    rule: str
    severity: Severity
    building: str
    floor: int | None
    device: str | None  # None for a floor- or building-scope alert
    ts_ms: int
    reason: str
    value: MetricValue | None = None
    confirmed: bool | None = None  # for fire: confirmed by a second, independent sensor
    flapping: bool = False
    test: bool = False  # raised under a maintenance window, silence or drill: recorded, never paged
    grid: str | None = None
    evidence: tuple[Evidence, ...] = field(default_factory=tuple)
    # Raised by drill-flagged traffic (``firegrid verify``): real-looking, but routed only to drill receivers.  Drill
    # alerts have their own keys (prefix ``drill:``), so a drill never masks or clears a real alarm.
    drill: bool = False


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A device, floor or building under test from ``start_ms`` to ``end_ms``: alerts raised inside it are ``test``.

    ``floor``/``device`` None widen the scope to the whole floor or building.
    """

    id: str
    building: str
    floor: int | None
    device: str | None
    start_ms: int
    end_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """An alert the store holds open, handed to ``Engine.seed_active`` after a restart so it is not raised twice."""

    key: str
    rule: str
    building: str
    floor: int | None
    device: str | None
    since_ms: int
    severity: Severity = Severity.FIRE
    value: MetricValue | None = None
    confirmed: bool | None = None
    test: bool = False
    drill: bool = False
