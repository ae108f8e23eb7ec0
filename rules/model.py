"""The rule configuration as written in YAML (the ``rules`` section or a ``rules_file``), validated by pydantic.

One flat model for every kind rather than a discriminated union, so that a typo reports the plain path the operator
wrote (``rules[2].for: ...``) instead of one with the union's tag in it.  Which keys belong to which kind is checked
by the model's validator; ``docs/rules.md`` documents each kind.

Durations are written ``500ms``, ``5s``, ``2m``, ``1h``, ``1d`` or as a bare number of seconds, and held as integer
milliseconds.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from rules.types import DeviceKind, EventType

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration(value: Any) -> int:
    """``5s`` / ``2m`` / ``120`` (seconds) -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '5s', '2m', '1h'")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a duration must be a finite, non-negative number of seconds")
        return round(value * 1000)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return round(float(match.group(1)) * _UNIT_MS[match.group(2)])
    raise ValueError(f"not a duration: {value!r} (write e.g. '500ms', '5s', '2m', '1h' or a number of seconds)")


def parse_instant(value: Any) -> int:
    """Epoch milliseconds, or an RFC 3339 string with an offset."""
    if isinstance(value, bool):
        raise ValueError("a time must be epoch milliseconds or an RFC 3339 string")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time needs a UTC offset")
        return int(value.timestamp() * 1000)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from None
        if parsed.tzinfo is None:
            raise ValueError(f"time {value!r} has no UTC offset")
        return int(parsed.timestamp() * 1000)
    raise ValueError("a time must be epoch milliseconds or an RFC 3339 string")


def _listify(value: Any) -> Any:
    """Let a selector be written as a scalar (``building: yg01``) or a list."""
    if value is None or isinstance(value, list):
        return value
    return [value]


DurationMs = Annotated[int, BeforeValidator(parse_duration)]
InstantMs = Annotated[int, BeforeValidator(parse_instant)]
RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
IdList = Annotated[list[str], BeforeValidator(_listify)]
FloorList = Annotated[list[int], BeforeValidator(_listify)]
KindList = Annotated[list[DeviceKind], BeforeValidator(_listify)]

RuleKind = Literal[
    "threshold", "rate_of_rise", "state", "event", "absence", "correlate", "count", "flapping", "maintenance", "silence"
]
SeverityName = Literal["fire", "supervisory", "trouble", "warning"]

# Kinds that raise alerts of their own (the others modify how alerts behave).
ALERTING_KINDS = ("threshold", "rate_of_rise", "state", "event", "absence", "correlate", "count")
LEVEL_KINDS = ("threshold", "rate_of_rise", "state")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Match(_Strict):
    """Which devices a rule applies to; every given selector must match (an absent one matches everything)."""

    kind: KindList | None = None
    building: IdList | None = None
    floor: FloorList | None = None
    devices: IdList | None = None
    grid: IdList | None = None

    def matches(self, *, kind: str, building: str, floor: int | None, device: str, grid: str | None) -> bool:
        return (
            (self.kind is None or kind in self.kind)
            and (self.building is None or building in self.building)
            and (self.floor is None or floor in self.floor)
            and (self.devices is None or device in self.devices)
            and (self.grid is None or grid in self.grid)
        )


# Keys an override may change: the tunables, never the rule's identity, kind or metric.
TUNABLE_KEYS = (
    "enabled",
    "severity",
    "above",
    "below",
    "outside",
    "clear_below",
    "clear_above",
    "for_ms",
    "clear_after_ms",
    "rate_per_min",
    "window_ms",
    "min_samples",
    "equals",
    "heartbeat_factor",
    "silent_for_ms",
    "offline_for_ms",
    "count",
    "changes",
    "hold_ms",
)


class Override(_Strict):
    """Per-building / per-floor / per-device changes to a rule (later overrides win over earlier ones)."""

    building: IdList | None = None
    floor: FloorList | None = None
    devices: IdList | None = None
    enabled: bool | None = None
    severity: SeverityName | None = None
    above: float | None = None
    below: float | None = None
    outside: tuple[float, float] | None = None
    clear_below: float | None = None
    clear_above: float | None = None
    for_ms: DurationMs | None = Field(default=None, alias="for")
    clear_after_ms: DurationMs | None = Field(default=None, alias="clear_after")
    rate_per_min: float | None = Field(default=None, gt=0)
    window_ms: DurationMs | None = Field(default=None, alias="window")
    min_samples: int | None = Field(default=None, ge=4, le=64)
    equals: bool | float | str | None = None
    heartbeat_factor: float | None = Field(default=None, gt=0)
    silent_for_ms: DurationMs | None = Field(default=None, alias="silent_for")
    offline_for_ms: DurationMs | None = Field(default=None, alias="offline_for")
    count: int | None = Field(default=None, ge=1)
    changes: int | None = Field(default=None, ge=2)
    hold_ms: DurationMs | None = Field(default=None, alias="hold")

    def applies(self, *, building: str, floor: int | None, device: str) -> bool:
        return (
            (self.building is None or building in self.building)
            and (self.floor is None or floor in self.floor)
            and (self.devices is None or device in self.devices)
        )

    def changes_set(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in TUNABLE_KEYS if getattr(self, key) is not None}


# Which keys (beyond the common ones) each kind accepts; anything else given for that kind is an error.
_COMMON = {"id", "kind", "enabled", "match", "overrides", "description", "severity"}
_KIND_KEYS: dict[str, set[str]] = {
    "threshold": {"metric", "above", "below", "outside", "clear_below", "clear_above", "for_ms", "clear_after_ms"},
    "rate_of_rise": {"metric", "rate_per_min", "window_ms", "min_samples", "for_ms", "clear_after_ms"},
    "state": {"metric", "equals", "for_ms", "clear_after_ms"},
    "event": {"event", "clear_on", "clear_after_ms"},
    "absence": {"heartbeat_factor", "silent_for_ms", "offline_for_ms"},
    "correlate": {"rules", "scope", "window_ms", "min_devices", "clear_after_ms"},
    "count": {"rules", "count", "window_ms"},
    "flapping": {"rules", "changes", "window_ms", "hold_ms"},
    "maintenance": {"start", "end", "reason"},
    "silence": {"start", "end", "reason"},
}


class RuleConfig(_Strict):
    """One entry of the ``rules`` list.  ``kind`` decides which of the other keys apply."""

    id: RuleId
    kind: RuleKind
    enabled: bool = True
    description: str | None = None
    severity: SeverityName | None = None
    match: Match = Field(default_factory=Match)
    overrides: list[Override] = Field(default_factory=list)
    # level rules
    metric: str | None = None
    above: float | None = None  # raise when value >= above
    below: float | None = None  # raise when value <= below
    outside: tuple[float, float] | None = None  # raise when value < low or value > high
    clear_below: float | None = None  # hysteresis for `above`: clear only when value < clear_below
    clear_above: float | None = None  # hysteresis for `below`: clear only when value > clear_above
    for_ms: DurationMs = Field(default=0, alias="for")
    clear_after_ms: DurationMs = Field(default=0, alias="clear_after")
    rate_per_min: float | None = Field(default=None, gt=0)
    window_ms: DurationMs | None = Field(default=None, alias="window")
    min_samples: int = Field(default=4, ge=4, le=64)
    equals: bool | float | str | None = None
    # event
    event: EventType | None = None
    clear_on: list[EventType] = Field(default_factory=lambda: [EventType.RESET])
    # absence
    heartbeat_factor: float = Field(default=2.0, gt=0)
    silent_for_ms: DurationMs | None = Field(default=None, alias="silent_for")
    offline_for_ms: DurationMs | None = Field(default=30_000, alias="offline_for")
    # correlate / count / flapping
    rules: IdList | None = None
    scope: Literal["floor", "building"] = "floor"
    min_devices: int = Field(default=2, ge=2, le=100)
    count: int | None = Field(default=None, ge=1)
    changes: int = Field(default=6, ge=2)
    hold_ms: DurationMs = Field(default=300_000, alias="hold")
    # maintenance / silence
    start: InstantMs | None = None
    end: InstantMs | None = None
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys_of_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            return data
        allowed = _KIND_KEYS.get(data["kind"])
        if allowed is None:
            return data
        aliases = {"for_ms": "for", "clear_after_ms": "clear_after", "window_ms": "window"}
        aliases |= {"silent_for_ms": "silent_for", "offline_for_ms": "offline_for", "hold_ms": "hold"}
        allowed_names = _COMMON | allowed | {aliases[k] for k in allowed if k in aliases}
        known = set(cls.model_fields) | set(aliases.values())
        wrong = sorted(k for k in data if k in known and k not in allowed_names)
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not used by kind {data['kind']!r}")
        return data

    @model_validator(mode="after")
    def _complete(self) -> RuleConfig:
        kind = self.kind
        if kind in ALERTING_KINDS and self.severity is None and kind not in ("absence", "count", "correlate"):
            raise ValueError(f"kind {kind!r} needs a severity (fire, supervisory, trouble or warning)")
        if kind in LEVEL_KINDS and not self.metric:
            raise ValueError(f"kind {kind!r} needs a metric")
        if kind == "threshold":
            given = [k for k in ("above", "below", "outside") if getattr(self, k) is not None]
            if len(given) != 1:
                raise ValueError("a threshold needs exactly one of above, below, outside")
            check_threshold(self.above, self.below, self.outside, self.clear_below, self.clear_above)
        if kind == "rate_of_rise" and self.rate_per_min is None:
            raise ValueError("a rate_of_rise rule needs rate_per_min")
        if kind == "state" and self.equals is None:
            raise ValueError("a state rule needs equals")
        if kind == "event" and self.event is None:
            raise ValueError("an event rule needs event (pressed, test, tamper, fault or reset)")
        if kind in ("correlate", "count") and not self.rules:
            raise ValueError(f"a {kind} rule needs rules (the ids of the rules it watches)")
        if kind == "correlate" and self.window_ms is None:
            raise ValueError("a correlate rule needs window")
        if kind == "count" and (self.count is None or self.window_ms is None):
            raise ValueError("a count rule needs count and window")
        if kind == "flapping" and self.window_ms is None:
            raise ValueError("a flapping rule needs window")
        if kind in ("maintenance", "silence"):
            if self.start is None or self.end is None:
                raise ValueError(f"a {kind} window needs start and end")
            if self.end <= self.start:
                raise ValueError("end must be after start")
            if not self.match.building:
                raise ValueError(f"a {kind} window needs match.building")
        return self

    @property
    def severity_or_default(self) -> SeverityName:
        if self.severity is not None:
            return self.severity
        return "fire" if self.kind == "correlate" else "trouble"


def check_threshold(
    above: float | None,
    below: float | None,
    outside: tuple[float, float] | None,
    clear_below: float | None,
    clear_above: float | None,
) -> None:
    """Hysteresis must point the right way, or an alert could never clear (or clear while still in alarm)."""
    if outside is not None and outside[0] > outside[1]:
        raise ValueError("outside: the low bound must not exceed the high bound")
    if clear_below is not None and (above is None or clear_below > above):
        raise ValueError("clear_below goes with above and must not exceed it")
    if clear_above is not None and (below is None or clear_above < below):
        raise ValueError("clear_above goes with below and must not be less than it")
