"""Rules compiled for one device: every selector and override resolved once, at the device's first message.

The engine's hot path then only compares numbers: a ``CRule`` carries its *quiet band* (``lo <= value <= hi`` means
the rule has nothing to do for this sample), so a normal reading costs a dict lookup and two comparisons per rule.
Compiled rules and plans are shared between devices with the same effective configuration, which keeps the memory per
device to a few pointers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rules.model import RuleConfig
from rules.types import Severity

THRESHOLD, RATE, STATE, EVENT, ABSENCE, CORRELATE, COUNT = range(7)
_KIND_CODES = {
    "threshold": THRESHOLD,
    "rate_of_rise": RATE,
    "state": STATE,
    "event": EVENT,
    "absence": ABSENCE,
    "correlate": CORRELATE,
    "count": COUNT,
}
INF = math.inf


class CRule:
    """One rule with its overrides applied, for one device (or one building, for ``correlate``)."""

    __slots__ = (
        "above",
        "below",
        "clear_after_ms",
        "clear_on",
        "clr_above",
        "clr_below",
        "count",
        "equals",
        "event",
        "fast",
        "flap_changes",
        "flap_hold_ms",
        "flap_window_ms",
        "for_ms",
        "hi",
        "id",
        "idx",
        "kind",
        "label",
        "lo",
        "members",
        "metric",
        "min_devices",
        "min_samples",
        "offline_ms",
        "out_hi",
        "out_lo",
        "rate",
        "scope_floor",
        "severity",
        "silent_ms",
        "window_ms",
    )

    def __init__(self, rule: RuleConfig, *, idx: int, heartbeat_s: int, flap: tuple[int, int, int] | None) -> None:
        self.id = rule.id
        self.idx = idx
        self.kind = _KIND_CODES[rule.kind]
        self.severity = Severity.parse(rule.severity_or_default)
        self.label = rule.description or rule.id
        self.metric = rule.metric or ""
        self.above = rule.above
        self.below = rule.below
        self.out_lo, self.out_hi = rule.outside if rule.outside is not None else (-INF, INF)
        self.clr_below = rule.clear_below if rule.clear_below is not None else rule.above
        self.clr_above = rule.clear_above if rule.clear_above is not None else rule.below
        self.equals = rule.equals
        self.for_ms = rule.for_ms
        self.clear_after_ms = rule.clear_after_ms
        self.rate = rule.rate_per_min or 0.0
        self.window_ms = rule.window_ms or 60_000
        self.min_samples = rule.min_samples
        self.event = rule.event.value if rule.event is not None else ""
        self.clear_on = frozenset(e.value for e in rule.clear_on)
        silent = rule.silent_for_ms
        self.silent_ms: int = round(heartbeat_s * 1000 * rule.heartbeat_factor) if silent is None else silent
        self.offline_ms = rule.offline_for_ms
        self.count = rule.count or 0
        self.members = frozenset(rule.rules or ())
        self.scope_floor = rule.scope == "floor"
        self.min_devices = rule.min_devices
        self.flap_changes, self.flap_window_ms, self.flap_hold_ms = flap or (0, 0, 0)
        self.lo, self.hi, self.fast = _quiet_band(rule)

    def alarm(self, value: float | int | bool | str) -> bool:
        """The raise condition for threshold and state rules."""
        if self.kind == STATE:
            return bool(value == self.equals)
        assert not isinstance(value, str)
        if self.above is not None:
            return value >= self.above
        if self.below is not None:
            return value <= self.below
        return value < self.out_lo or value > self.out_hi

    def clear(self, value: float | int | bool | str) -> bool:
        """The clear condition (with hysteresis) for threshold and state rules."""
        if self.kind == STATE:
            return bool(value != self.equals)
        assert not isinstance(value, str)
        if self.clr_below is not None:
            return value < self.clr_below
        if self.clr_above is not None:
            return value > self.clr_above
        return self.out_lo <= value <= self.out_hi

    def describe(self) -> str:
        if self.kind == THRESHOLD:
            if self.above is not None:
                cond = f"{self.metric} >= {self.above:g}"
            elif self.below is not None:
                cond = f"{self.metric} <= {self.below:g}"
            else:
                cond = f"{self.metric} outside {self.out_lo:g}..{self.out_hi:g}"
        elif self.kind == STATE:
            cond = f"{self.metric} is {_show(self.equals)}"
        elif self.kind == RATE:
            cond = f"{self.metric} rising >= {self.rate:g}/min"
        else:
            return self.label
        held = f" for {self.for_ms / 1000:g} s" if self.for_ms else ""
        return f"{self.label}: {cond}{held}"


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quiet_band(rule: RuleConfig) -> tuple[float, float, bool]:
    """(lo, hi, usable): a value with ``lo <= value <= hi`` can neither start nor advance an alarm."""
    if rule.kind == "threshold":
        if rule.above is not None:
            return -INF, math.nextafter(rule.above, -INF), True
        if rule.below is not None:
            return math.nextafter(rule.below, INF), INF, True
        assert rule.outside is not None
        return rule.outside[0], rule.outside[1], True
    if rule.kind == "state":
        if rule.equals is True:
            return -INF, 0.0, True
        if rule.equals is False:
            return 1.0, INF, True
    return INF, -INF, False


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything that applies to one device, pre-sorted by what triggers it."""

    rules: tuple[CRule, ...]  # index = CRule.idx = slot in the device's state list
    by_metric: dict[str, tuple[CRule, ...]]
    events: dict[str, tuple[CRule, ...]]  # event type -> rules it raises
    event_clears: dict[str, tuple[CRule, ...]]  # event type -> event rules it clears
    absence: CRule | None
    counts: dict[str, tuple[CRule, ...]]  # watched rule id -> count rules
    by_id: dict[str, CRule]
    # by_metric flattened for the hot path: (state slot, quiet low, quiet high or None when unusable, rule)
    quiet: dict[str, tuple[tuple[int, float | None, float, CRule], ...]]


def build_plan(crules: list[CRule]) -> Plan:
    by_metric: dict[str, list[CRule]] = {}
    events: dict[str, list[CRule]] = {}
    clears: dict[str, list[CRule]] = {}
    counts: dict[str, list[CRule]] = {}
    absence: CRule | None = None
    for cr in crules:
        if cr.kind in (THRESHOLD, RATE, STATE):
            by_metric.setdefault(cr.metric, []).append(cr)
        elif cr.kind == EVENT:
            events.setdefault(cr.event, []).append(cr)
            for etype in cr.clear_on:
                clears.setdefault(etype, []).append(cr)
        elif cr.kind == ABSENCE and absence is None:
            absence = cr
        elif cr.kind == COUNT:
            for member in cr.members:
                counts.setdefault(member, []).append(cr)
    # fire rules first, so a reading that trips several rules reports the fire one first
    order = {k: tuple(sorted(v, key=lambda c: -c.severity)) for k, v in by_metric.items()}
    return Plan(
        rules=tuple(crules),
        by_metric=order,
        events={k: tuple(v) for k, v in events.items()},
        event_clears={k: tuple(v) for k, v in clears.items()},
        absence=absence,
        counts={k: tuple(v) for k, v in counts.items()},
        by_id={cr.id: cr for cr in crules},
        quiet={
            metric: tuple((cr.idx, cr.lo if cr.fast else None, cr.hi, cr) for cr in crs)
            for metric, crs in order.items()
        },
    )
