"""The engine's mutable state: per building (the unit of partitioning), its devices and their per-rule state, and
the alerts it holds active.  Plain ``__slots__`` classes rather than dataclasses: a district keeps one ``DevState``
per device and the hot path reads their fields on every reading.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import Any

from rules.compiled import Plan
from rules.types import AlertTransition, DeviceRef, Evidence, MetricValue, Severity, TransitionKind

__all__ = [
    "DRILL",
    "EVIDENCE_MAX",
    "MAINT",
    "REAL",
    "BState",
    "DevState",
    "Live",
    "RState",
    "Transitions",
    "alert_key",
]

# The device spaces: real traffic and drill traffic never share state; MAINT marks a maintenance window's end in
# the timer heap (where a device space would be).
REAL, DRILL, MAINT = 0, 1, 2
EVIDENCE_MAX = 20  # samples kept per alert as its evidence (the first one and the latest 19)


def alert_key(rule: str, building: str, floor: int | None, device: str | None, *, drill: bool = False) -> str:
    """Stable identity of one condition in one scope: rule + building + floor + device."""
    if device is not None:
        key = f"{rule}/{building}/{device}"
    elif floor is not None:
        key = f"{rule}/{building}/F{floor}"
    else:
        key = f"{rule}/{building}"
    return "drill:" + key if drill else key


class Live:
    """An active alert, as the engine last reported it."""

    __slots__ = (
        "confirmed",
        "device",
        "drill",
        "flapping",
        "floor",
        "key",
        "rule",
        "severity",
        "since",
        "test",
        "value",
    )

    def __init__(
        self,
        *,
        key: str,
        rule: str,
        severity: Severity,
        floor: int | None,
        device: str | None,
        since: int,
        value: MetricValue | None,
        confirmed: bool | None,
        test: bool,
        drill: bool,
        flapping: bool = False,
    ) -> None:
        self.key = key
        self.rule = rule
        self.severity = severity
        self.floor = floor
        self.device = device
        self.since = since
        self.value = value
        self.confirmed = confirmed
        self.test = test
        self.drill = drill
        self.flapping = flapping

    def to_json(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in Live.__slots__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Live:
        data = dict(data)
        data["severity"] = Severity(data["severity"])
        return cls(**data)


class RState:
    """Per (device, rule) state.  Allocated only while the rule has something to remember."""

    __slots__ = ("buf", "csince", "ev", "hist", "live", "since", "value")

    def __init__(self) -> None:
        self.live: Live | None = None
        self.since: int | None = None  # alarm condition (or last occurrence, for events) since
        self.csince: int | None = None  # clear condition since (for clear_after / flapping hold)
        self.value: MetricValue | None = None  # the value that raised or is about to raise
        self.ev: list[tuple[int, MetricValue]] | None = None  # evidence while pending
        self.buf: array[float] | None = None  # rate of rise: ts, value, ts, value, ...
        self.hist: list[int] | None = None  # state changes (flapping) or raise times (count)

    def idle(self) -> bool:
        return self.live is None and self.since is None and self.csince is None and self.buf is None and not self.hist

    def to_json(self) -> dict[str, Any]:
        return {
            "live": self.live.key if self.live else None,
            "since": self.since,
            "csince": self.csince,
            "value": self.value,
            "ev": self.ev,
            "buf": list(self.buf) if self.buf is not None else None,
            "hist": self.hist,
        }


class DevState:
    """One device in one space (real or drill): its plan, one state slot per planned rule, and presence."""

    __slots__ = ("due", "last_seen", "last_ts", "mark", "offline_since", "plan", "ref", "rs", "saved_seen", "space")

    def __init__(self, ref: DeviceRef, plan: Plan, space: int, last_seen: int) -> None:
        self.ref = ref
        self.plan = plan
        self.space = space
        self.rs: list[RState | None] = [None] * len(plan.rules)
        self.last_ts = -(2**62)  # newest sample ts
        self.last_seen = last_seen  # engine time the device was last heard from
        self.offline_since: int | None = None
        self.due: int | None = None  # the deadline this device has in the timer heap
        self.saved_seen = last_seen  # last_seen as of the building's latest snapshot
        # The fast lane's watermark: the ts of the device's latest ``alarm`` event.  Telemetry stamped at or before it
        # was overtaken by the alarm on its way in; it is stored but never judged (it must not clear the alarm, and
        # one older by more than REORDER_MS must not look like the device's clock jumping back).
        self.mark: int | None = None


class BState:
    """One building: its devices (real and drill) and the alerts active in it."""

    __slots__ = ("alerts", "devices", "drills", "id")

    def __init__(self, building: str) -> None:
        self.id = building
        self.devices: dict[str, DevState] = {}
        self.drills: dict[str, DevState] = {}
        self.alerts: dict[str, Live] = {}  # active alerts of this building, by key

    def space(self, space: int) -> dict[str, DevState]:
        return self.drills if space == DRILL else self.devices


class Transitions:
    """Makes the engine's output from an alert's live state.  A transition names its grid: the caller passes it when
    it has the device at hand; otherwise it is looked up in the registry by the alert's device."""

    __slots__ = ("_registry",)

    def __init__(self, registry: Mapping[str, DeviceRef]) -> None:
        self._registry = registry

    def __call__(
        self,
        kind: TransitionKind,
        building: str,
        live: Live,
        ts: int,
        reason: str,
        evidence: tuple[Evidence, ...] = (),
        *,
        grid: str | None = None,
    ) -> AlertTransition:
        if grid is None and live.device is not None:
            ref = self._registry.get(live.device)
            grid = ref.grid if ref is not None else None
        return AlertTransition(
            transition=kind,
            key=live.key,
            rule=live.rule,
            severity=live.severity,
            building=building,
            floor=live.floor,
            device=live.device,
            ts_ms=ts,
            reason=reason,
            value=live.value,
            confirmed=live.confirmed,
            flapping=live.flapping,
            test=live.test,
            grid=grid,
            evidence=evidence,
            drill=live.drill,
        )
